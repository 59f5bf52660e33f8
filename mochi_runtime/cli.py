"""Command line: `python -m mochi_runtime generate|write-tiny ...`.

Each command imports the engine when it runs: `--help`, and the argument helpers that torchrun and the
benchmarks borrow from here, stay free of torch and transformers.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from .validation import GenerationRequest, RequestError


def add_generation_args(p: argparse.ArgumentParser) -> None:
    d = GenerationRequest(prompt="")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--frames", type=int, default=d.num_frames, help="6k+1 frames (default %(default)s)")
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--guidance", type=float, default=d.guidance)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--cache", default=d.cache,
                   help="step caching: off, teacache:<threshold> (e.g. 0.06), fbcache:<threshold>, interval:<n> "
                        "(default %(default)s; docs/operations.md says what each costs)")


def request_from_args(a: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(a.prompt, a.negative_prompt, a.frames, a.height, a.width, a.steps, a.guidance, a.seed,
                             a.cache)


@dataclasses.dataclass
class Prepared:
    """A validated request and the pipeline that will run it (what `generate` does before denoising)."""

    request: GenerationRequest
    pipeline: object  # pipeline.MochiPipeline
    denoiser: object | None  # the worker group, when there is one (close it after)
    plan: object | None  # memory.PipelinePlan under --gpu-memory-budget-gib
    load_s: float


def prepare_generation(a: argparse.Namespace) -> Prepared:
    """Validate, plan for the memory budget (and hold this process's GPU to it), start the worker group if the
    layout asks for one, load the pipeline. Shared with `bench pipeline`, which runs it under budgets on a GPU."""
    from .memory import cap_gpu_memory
    from .parallel import GroupSpec, Layout, LayoutError, WorkerGroup
    from .pipeline import MochiPipeline
    from .loading.loaders import resolve_device
    from .validation import Limits, validate
    from .models.vae_tiling import TilePlan

    if a.gpu_memory_budget_gib:  # fewer stranded blocks under a cap (read when CUDA's allocator starts)
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    limits = Limits(max_frames=10_000, max_pixels=4096 * 4096, max_steps=1000)
    compile_dit = {"auto": None, "on": True, "off": False}[a.compile]
    request = validate(request_from_args(a), limits)
    t0 = time.perf_counter()
    denoiser = None
    layout = Layout(2 if a.cfg_parallel else 1, a.ulysses, a.ring)
    weights, offload_t5, tile_plan, plan = a.weights, a.offload_t5, TilePlan(trim=a.vae_trim), None
    if a.gpu_memory_budget_gib:
        plan = plan_for_budget_from_args(a, layout, request)
        weights, offload_t5 = plan.weights, a.offload_t5 or plan.offload_t5
        tile_plan = dataclasses.replace(plan.vae_plan, trim=a.vae_trim)
        if plan.dit.fp8 and a.dtype != "fp8":
            print(f"only the fp8 DiT fits {a.gpu_memory_budget_gib:g} GiB per GPU: using --dtype fp8", file=sys.stderr)
            a.dtype = "fp8"
        print(f"memory plan for {a.gpu_memory_budget_gib:g} GiB per GPU: {plan.describe()} (peak ~"
              f"{plan.peak_bytes / 2**30:.2f} GiB)", file=sys.stderr)
        cap_gpu_memory(int(a.gpu_memory_budget_gib * 2**30), resolve_device(a.device))
    if a.attention_engine != "ours" and layout.world == 1 and not a.gpus:
        raise ValueError(f"--attention-engine {a.attention_engine} is the DiT group's attention: it needs --gpus and "
                         "a parallel layout (--ulysses/--ring/--cfg-parallel)")
    if a.parallel_vae and layout.world == 1:
        raise ValueError("--parallel-vae spreads the decode over the DiT group: "
                         "it needs --ulysses/--ring/--cfg-parallel")
    if layout.world > 1 or a.gpus:
        import torch

        layout.validate(guidance=request.guidance)
        gpus = a.gpus or (layout.world if torch.cuda.is_available() else 0)
        if gpus and gpus != layout.world:
            raise LayoutError(f"--gpus {gpus} must equal cfg x ulysses x ring = {layout.world}")
        denoiser = WorkerGroup(GroupSpec(layout, a.model_dir, tuple(range(gpus)) if gpus else None, a.dtype,
                                         a.attention, compile_dit, weights=weights,
                                         attention_engine=a.attention_engine))
    try:
        pipe = MochiPipeline.from_dir(a.model_dir, device=a.device, dtype=a.dtype, attention=a.attention,
                                      limits=limits, denoiser=denoiser, parallel_decode=a.parallel_vae,
                                      offload_text_encoder=offload_t5, tile_plan=tile_plan, compile=compile_dit)
    except BaseException:
        if denoiser is not None:
            denoiser.close()
        raise
    return Prepared(request, pipe, denoiser, plan, time.perf_counter() - t0)


def cmd_generate(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .video import encode_mp4

    run = prepare_generation(a)
    request = run.request
    bar = tqdm(total=request.steps, desc="denoise", unit="step", disable=a.quiet)

    def on_step(i: int, total: int, skipped: int) -> None:
        bar.update(1)
        if skipped:
            bar.set_postfix(skipped=skipped, refresh=False)

    try:
        result = run.pipeline.generate(request, on_step=on_step)
    finally:
        bar.close()
        if run.denoiser is not None:
            run.denoiser.close()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    codec = encode_mp4(result.frames, out)
    result.times["encode"] = time.perf_counter() - t1
    cached = f", {result.steps_computed} of {result.steps} steps computed ({request.cache})" \
        if request.cache != "off" else ""
    print(f"load {run.load_s:.2f}s  {result.times.summary()}  ({codec}, {result.frames.shape[0]} frames "
          f"{request.width}x{request.height}{cached})", file=sys.stderr)
    print(out.resolve())
    return 0


def plan_for_budget_from_args(a: argparse.Namespace, layout, request):
    """DiT weights (and dtype), T5 offload and VAE tiles for --gpu-memory-budget-gib; with --dtype auto the fp8
    DiT is chosen when only it fits. RequestError when nothing fits."""
    import torch

    from .memory import DiTMemoryModel, plan_pipeline
    from .loading.loaders import open_model_dir, resolve_device, resolve_dtype
    from .models.vae import VAEDecoder

    md = open_model_dir(a.model_dir)
    gpu = bool(a.gpus) or resolve_device(a.device).type == "cuda"
    dtype = resolve_dtype(a.dtype, torch.device("cuda" if gpu else "cpu"))
    with torch.device("meta"):
        vae = VAEDecoder(md.vae_config())
    dit = DiTMemoryModel(md.dit_config(), layout.cfg, layout.ulysses, layout.ring, "replicated", layout.world,
                         torch.finfo(dtype).bits // 8, gpu, fp8=a.dtype == "fp8")
    return plan_pipeline(int(a.gpu_memory_budget_gib * 2**30), dit, request, md.t5_parameters(), vae,
                         allow_fp8=a.dtype == "auto" and gpu)


def cmd_write_tiny(a: argparse.Namespace) -> int:
    from .loading.tiny import write_tiny_checkpoint

    print(write_tiny_checkpoint(a.out, a.layout))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mochi_runtime", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="text -> mp4 in this process (embedded tiny model by default)")
    add_generation_args(g)
    g.add_argument("--model-dir", default=None, help="official or diffusers-layout checkpoint (default: embedded tiny)")
    g.add_argument("--out", default="video.mp4")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16", "fp8"],
                   help="fp8: the DiT's block linears in e4m3 (per-channel scales), the rest bf16")
    g.add_argument("--attention", default="auto")
    g.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the DiT blocks (auto: on GPU). off: bit-reproducible latents across runs "
                        "of multi-GPU groups, ~1.4x slower DiT (docs/operations.md)")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--ulysses", type=int, default=1, help="Ulysses (head-sharding) degree")
    g.add_argument("--ring", type=int, default=1, help="Ring-attention degree")
    g.add_argument("--cfg-parallel", action="store_true", help="run the two guidance branches on two halves")
    g.add_argument("--attention-engine", default="ours", choices=["ours", "xdit"],
                   help="the group's joint attention: ours, or xfuser 0.7.0's USP for comparison (GPUs only, "
                        "pip install '.[xdit]')")
    g.add_argument("--gpus", type=int, default=None,
                   help="GPUs for the DiT group (= cfg x ulysses x ring); without GPUs, CPU processes with gloo")
    g.add_argument("--weights", default="replicated", choices=["replicated", "sharded"],
                   help="DiT weights per rank: a full copy, or a 1/N FSDP2 shard gathered block by block")
    g.add_argument("--gpu-memory-budget-gib", type=float, default=None,
                   help="per-GPU budget: picks DiT weights (replicated/sharded), T5 offload and VAE tiles to fit "
                        "(and the fp8 DiT when --dtype is auto and only it fits), or refuses the request before "
                        "loading anything; this process's GPU is then held to the budget")
    g.add_argument("--offload-t5", action="store_true",
                   help="keep T5's weights in host memory between encodes (frees ~9.5 GB of GPU memory)")
    g.add_argument("--vae-trim", default="genmo", choices=["genmo", "end"],
                   help="where the VAE drops its causal warm-up frames: genmo = inside each up-sampling block, as "
                        "Genmo's decoder (the one the VAE was trained with) does; end = keep them through the decoder and "
                        "drop the first 5 output frames, as diffusers does (to compare with diffusers)")
    g.add_argument("--parallel-vae", action="store_true",
                   help="spread the VAE decode's spatial tiles over the DiT group (blended tiles, not exact)")
    g.set_defaults(fn=cmd_generate)

    w = sub.add_parser("write-tiny", help="write a tiny random-weight checkpoint")
    w.add_argument("--out", required=True)
    w.add_argument("--layout", default="official", choices=["official", "diffusers"])
    w.set_defaults(fn=cmd_write_tiny)

    return ap


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (RequestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
