"""Command line: `python -m mochi_runtime generate|write-tiny ...`."""
from __future__ import annotations

import argparse
import logging
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


def request_from_args(a: argparse.Namespace) -> GenerationRequest:
    return GenerationRequest(a.prompt, a.negative_prompt, a.frames, a.height, a.width, a.steps, a.guidance, a.seed)


def cmd_generate(a: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .parallel import GroupSpec, Layout, LayoutError, WorkerGroup
    from .pipeline import MochiPipeline
    from .validation import Limits, validate
    from .vae_tiling import TilePlan
    from .video import encode_mp4

    limits = Limits(max_frames=10_000, max_pixels=4096 * 4096, max_steps=1000)
    compile_dit = {"auto": None, "on": True, "off": False}[a.compile]
    request = validate(request_from_args(a), limits)
    t0 = time.perf_counter()
    denoiser = None
    layout = Layout(2 if a.cfg_parallel else 1, a.ulysses, a.ring)
    weights, offload_t5, tile_plan = a.weights, a.offload_t5, TilePlan()
    if a.gpu_memory_budget_gib:
        plan = plan_for_budget_from_args(a, layout, request)
        weights, offload_t5, tile_plan = plan.weights, a.offload_t5 or plan.offload_t5, plan.vae_plan
        print(f"memory plan for {a.gpu_memory_budget_gib:g} GiB per GPU: DiT {weights}, T5 "
              f"{'offloaded' if offload_t5 else 'resident'}, VAE tiles {tile_plan.tile_h or '-'}x"
              f"{tile_plan.tile_w or '-'} (peak ~{plan.peak_bytes / 2**30:.2f} GiB)", file=sys.stderr)
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
    pipe = MochiPipeline.from_dir(a.model_dir, device=a.device, dtype=a.dtype, attention=a.attention, limits=limits,
                                  denoiser=denoiser, parallel_decode=a.parallel_vae,
                                  offload_text_encoder=offload_t5, tile_plan=tile_plan, compile=compile_dit)
    load_s = time.perf_counter() - t0
    bar = tqdm(total=request.steps, desc="denoise", unit="step", disable=a.quiet)

    def on_step(i: int, total: int) -> None:
        bar.update(1)

    try:
        result = pipe.generate(request, on_step=on_step)
    finally:
        bar.close()
        if denoiser is not None:
            denoiser.close()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    codec = encode_mp4(result.frames, out)
    result.times["encode"] = time.perf_counter() - t1
    print(f"load {load_s:.2f}s  {result.times.summary()}  ({codec}, {result.frames.shape[0]} frames "
          f"{request.width}x{request.height})", file=sys.stderr)
    print(out.resolve())
    return 0


def plan_for_budget_from_args(a: argparse.Namespace, layout, request):
    """Weights mode, T5 offload and VAE tiles for --gpu-memory-budget-gib (RequestError when nothing fits)."""
    import torch

    from .memory import DiTMemoryModel, plan_pipeline
    from .pipeline import open_model_dir, resolve_device, resolve_dtype
    from .vae import VAEDecoder

    md = open_model_dir(a.model_dir)
    gpu = bool(a.gpus) or resolve_device(a.device).type == "cuda"
    dtype = resolve_dtype(a.dtype, torch.device("cuda" if gpu else "cpu"))
    with torch.device("meta"):
        vae = VAEDecoder(md.vae_config()).to(dtype)
    t5_bytes = sum(f.stat().st_size for f in md.t5_paths()[0].glob("*.safetensors"))
    dit = DiTMemoryModel(md.dit_config(), layout.cfg, layout.ulysses, layout.ring, "replicated", layout.world,
                         torch.finfo(dtype).bits // 8, gpu)
    return plan_pipeline(int(a.gpu_memory_budget_gib * 2**30), dit, request, t5_bytes, vae)


def cmd_write_tiny(a: argparse.Namespace) -> int:
    from .tiny import write_tiny_checkpoint

    print(write_tiny_checkpoint(a.out, a.layout))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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
                   help="per-GPU budget: picks DiT weights (replicated/sharded), T5 offload and VAE tiles to fit, "
                        "or refuses the request before loading anything")
    g.add_argument("--offload-t5", action="store_true",
                   help="keep T5's weights in host memory between encodes (frees ~9.5 GB of GPU memory)")
    g.add_argument("--parallel-vae", action="store_true",
                   help="spread the VAE decode's spatial tiles over the DiT group (blended tiles, not exact)")
    g.set_defaults(fn=cmd_generate)

    w = sub.add_parser("write-tiny", help="write a tiny random-weight checkpoint")
    w.add_argument("--out", required=True)
    w.add_argument("--layout", default="official", choices=["official", "diffusers"])
    w.set_defaults(fn=cmd_write_tiny)

    a = ap.parse_args(argv)
    try:
        return a.fn(a)
    except (RequestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
