"""Whole-pipeline memory under a per-GPU budget: T5-XXL, the DiT, the VAE decode.
In docs/benchmarks.md: "Memory", the whole pipeline under a cap (1x H100; sharded over 4x H200).

Two modes.

`--runs LAYOUT:WEIGHTS:BUDGET_GIB:FRAMES,...` (N GPUs): full-size random bf16
weights built in place. Each rank caps its allocator at the budget
(torch.cuda.set_per_process_memory_fraction), so "fits" means no allocation
ever went past it. Rank 0 encodes the prompts with T5 and frees it before the
DiT loads; the DiT runs `--steps` denoising steps in the chosen layout and
weight mode; the VAE decode is spread over the group (one tile per GPU), or
run on rank 0 alone with `--no-spread-vae`.

`--model-dir DIR --budget-runs DTYPE:BUDGET_GIB:FRAMES,...` (one GPU): the
`generate` command's own path on a checkpoint directory (`bench load` writes a
full-size random one): its planner picks the arrangement for the budget (or
refuses), the process is capped at the budget, and T5, the DiT and the VAE
stay loaded as the command keeps them. Each case runs in a fresh process and
records the plan, the estimate and every stage's measured peak.
"""
from __future__ import annotations

import argparse
import gc
import queue
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mochi_runtime.models.config import get_preset
from mochi_runtime.parallel.bootstrap import joined
from mochi_runtime.parallel.topology import Layout, free_port
from mochi_runtime.sampler import euler_sample, initial_noise, linear_quadratic_schedule
from mochi_runtime.models.text_encoder import CFGText
from .common import print_table, run_ranks, write_record
from .weights import build_dit, build_t5


def _gib(x: float) -> float:
    return round(x / 2**30, 2)


def _t5_embeddings(device, tokens: int = 256, preset: str = "mochi-1-preview") -> CFGText:
    """Random full-size T5-XXL encoder on `device`, two prompts encoded, the model freed again."""
    c = get_preset(preset).t5
    t5 = build_t5(preset, device, torch.bfloat16)
    ids = torch.randint(0, c.vocab_size, (2, tokens), device=device, generator=torch.Generator(device).manual_seed(0))
    mask = torch.zeros(2, tokens, dtype=torch.bool, device=device)
    mask[CFGText.STACKED.index("cond"), :64] = True  # the negative prompt is empty (no valid tokens)
    with torch.inference_mode():
        feats = t5(input_ids=ids, attention_mask=mask.long()).last_hidden_state.float()
    del t5
    gc.collect()
    torch.cuda.empty_cache()
    feats = torch.nan_to_num(feats).masked_fill(~mask[..., None], 0.0).cpu()  # random bf16 T5 may overflow
    return CFGText.from_stacked(feats, mask.cpu())


def _rank_main(rank: int, opts: dict, port: int, out_q) -> None:
    from mochi_runtime.parallel.usp import ParallelCFGVelocity, SequenceParallelDiT
    from mochi_runtime.parallel.vae_decode import decode_distributed
    from mochi_runtime.models.vae_tiling import TilePlan, decode_tiled, grid_plan
    from .vae import build_vae

    layout = Layout.parse(opts["layout"])
    with joined(layout, True, rank, port, timedelta(minutes=20)) as groups:
        dev = torch.device("cuda", rank)
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, opts["budget_gib"] * 2**30 / total), dev)
        stages: dict[str, float] = {}
        error = None
        t0 = time.perf_counter()
        try:
            box = [None]
            if rank == 0:
                box = [_t5_embeddings(dev)]
            stages["t5_peak"] = _gib(torch.cuda.max_memory_allocated(dev))
            dist.broadcast_object_list(box, src=0, group=groups.control)
            text = box[0]
            torch.cuda.reset_peak_memory_stats(dev)
            shard = {"replicated": None, "sharded": dist.group.WORLD, "sharded-sp": groups.sp_group}[opts["weights"]]
            dit = build_dit("mochi-1-preview", dev, torch.bfloat16, shard_group=shard)
            dit.compile_blocks()
            model = SequenceParallelDiT(dit, groups, "auto")
            velocity = ParallelCFGVelocity(model, text.to(dev), 4.5)
            t = (opts["frames"] - 1) // 6 + 1
            z = initial_noise(0, (1, 12, t, opts["height"] // 8, opts["width"] // 8)).to(dev)
            with torch.inference_mode():
                latents = euler_sample(velocity, z, linear_quadratic_schedule(opts["steps"]))
            stages["dit_peak"] = _gib(torch.cuda.max_memory_allocated(dev))
            del velocity, model, dit
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            vae = build_vae("mochi-1-preview", dev, torch.bfloat16)
            with torch.inference_mode():
                if opts["spread_vae"]:
                    video = decode_distributed(vae, latents, grid_plan(tuple(latents.shape[-2:]), layout.world))
                else:
                    video = decode_tiled(vae, latents, TilePlan()) if rank == 0 else None
            if video is not None:
                stages["frames"] = int(video.shape[2])
            stages["vae_peak"] = _gib(torch.cuda.max_memory_allocated(dev))
            torch.cuda.synchronize(dev)
        except torch.OutOfMemoryError as e:
            error = f"out of memory: {str(e).splitlines()[0]}"
        stages["seconds"] = round(time.perf_counter() - t0, 1)
        everyone = [None] * layout.world
        dist.all_gather_object(everyone, {"stages": stages, "error": error})
        if rank == 0:
            out_q.put(everyone)
        dist.barrier()


def _budget_case(argv: list[str], out_q) -> None:
    """One generation through `generate`'s own preparation (planner, memory cap, pipeline), in this fresh process."""
    from mochi_runtime.cli import build_parser, prepare_generation
    from mochi_runtime.validation import RequestError

    a = build_parser().parse_args(["generate", *argv])
    row: dict = {"fits": False}
    try:
        run = prepare_generation(a)
        row.update(plan=run.plan.describe(), dtype=a.dtype, estimate_gib=_gib(run.plan.peak_bytes),
                   load_peak_gib=_gib(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0,
                   load_s=round(run.load_s, 1))
        res = run.pipeline.generate(run.request)
        row.update(fits=True, stage_peak_gib=res.times.peak_gib, frames_out=int(res.frames.shape[0]),
                   stage_s={k: round(v, 2) for k, v in res.times.items()})
        row["peak_gib"] = max([row["load_peak_gib"], *res.times.peak_gib.values()])
    except RequestError as e:
        row["refused"] = str(e)
    except torch.OutOfMemoryError as e:
        row["error"] = f"out of memory: {str(e).splitlines()[0]}"
    except Exception as e:  # noqa: BLE001 - a case that breaks is a row; the others still run
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    out_q.put(row)


def budget_runs(model_dir: str, specs: str, height: int, width: int, steps: int) -> list[dict]:
    import torch.multiprocessing as mp

    rows = []
    for spec in specs.split(","):
        dtype, budget, frames = spec.split(":")
        argv = ["--model-dir", model_dir, "--prompt", "a red fox running through fresh snow", "--dtype", dtype,
                "--gpu-memory-budget-gib", budget, "--frames", frames, "--height", str(height), "--width", str(width),
                "--steps", str(steps), "--quiet"]
        q = mp.get_context("spawn").Queue()
        p = mp.get_context("spawn").Process(target=_budget_case, args=(argv, q))
        p.start()
        row = None
        deadline = time.monotonic() + 900
        while row is None and time.monotonic() < deadline:
            try:
                row = q.get(timeout=1.0)
            except queue.Empty:
                if not p.is_alive():  # died without a row (killed, a crash in C++)
                    row = {"fits": False, "error": f"the case's process exited with {p.exitcode}"}
        row = row or {"fits": False, "error": "no result in 900 s"}
        p.join(60)
        row = {"asked_dtype": dtype, "budget_gib": float(budget), "frames": int(frames), **row}
        rows.append(row)
        print(row, flush=True)
    return rows


def run(opts: dict) -> list[dict]:
    return run_ranks(_rank_main, Layout.parse(opts["layout"]).world, (opts, free_port()), opts["layout"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks pipeline")
    ap.add_argument("--runs", default="2x2x1:sharded:24:49,2x2x1:sharded:48:163",
                    help="comma list of LAYOUT:WEIGHTS:BUDGET_GIB:FRAMES")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--no-spread-vae", action="store_true")
    ap.add_argument("--model-dir", default=None, help="checkpoint for --budget-runs (bench load writes one)")
    ap.add_argument("--budget-runs", default=None, help="comma list of DTYPE:BUDGET_GIB:FRAMES (one GPU, the "
                                                        "generate command's planner and pipeline)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.budget_runs:
        if not a.model_dir:
            raise SystemExit("--budget-runs needs --model-dir")
        rows = budget_runs(a.model_dir, a.budget_runs, a.height, a.width, a.steps)
        print_table(rows, ["asked_dtype", "budget_gib", "frames", "fits", "dtype", "estimate_gib", "peak_gib",
                           "plan"])
        write_record(a.json, "pipeline-budget", rows, None, {
            "shape": {"height": a.height, "width": a.width, "steps": a.steps}}, subcommand="pipeline")
        return 0
    rows = []
    for spec in a.runs.split(","):
        layout, weights, budget, frames = spec.split(":")
        opts = {"layout": layout, "weights": weights, "budget_gib": float(budget), "frames": int(frames),
                "height": a.height, "width": a.width, "steps": a.steps, "spread_vae": not a.no_spread_vae}
        try:
            ranks = run(opts)
        except RuntimeError as e:
            ranks = [{"stages": {}, "error": str(e)}]
        errors = [r["error"] for r in ranks if r["error"]]
        row = {"layout": layout, "weights": weights, "budget_gib": float(budget), "frames": int(frames),
               "fits": not errors, "error": errors[0] if errors else None,
               "t5_peak_gib": ranks[0]["stages"].get("t5_peak"),
               "dit_peak_gib": [r["stages"].get("dit_peak") for r in ranks],
               "vae_peak_gib": [r["stages"].get("vae_peak") for r in ranks],
               "frames_out": ranks[0]["stages"].get("frames"), "seconds": ranks[0]["stages"].get("seconds")}
        rows.append(row)
        print(row, flush=True)
    print_table(rows, ["layout", "weights", "budget_gib", "frames", "fits", "t5_peak_gib", "dit_peak_gib",
                       "vae_peak_gib", "frames_out"])
    write_record(a.json, "pipeline-memory", rows, None, {
        "shape": {"height": a.height, "width": a.width, "steps": a.steps}, "spread_vae": not a.no_spread_vae,
    }, subcommand="pipeline")
    return 0
