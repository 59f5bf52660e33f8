"""Multi-GPU DiT step benchmark: one guided (CFG) velocity evaluation per step on a
cfg x ulysses x ring group, full-size random bf16 weights (identical on every rank),
against the 1-GPU run of the same weights and inputs in the same invocation.
"""
from __future__ import annotations

import copy
import gc
from datetime import timedelta

import torch
import torch.distributed as dist

from mochi_runtime.parallel.bootstrap import joined
from mochi_runtime.parallel.topology import Layout, ParallelGroups, free_port
from mochi_runtime.parallel.sharded import local_parameter_count
from mochi_runtime.parallel.usp import ParallelCFGVelocity, SequenceParallelDiT
from mochi_runtime.models.text_encoder import CFGText
from .common import gc_pauses, gc_summary, run_ranks, time_cuda, time_cuda_chained
from .weights import build_dit, cfg_inputs


def fp32_velocity(dit, groups: ParallelGroups, y: torch.Tensor, mask: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The guided velocity of an fp32 copy of `dit` (its bf16 weights upcast, so exactly the same numbers), eager,
    TF32 off, through the memory-efficient kernel (cuDNN has no fp32): the yardstick against which the 1-GPU and
    the sharded bf16 outputs are equally measured, where bf16 rounding alone separates them."""
    ref = copy.deepcopy(dit).float()
    kernel = "efficient" if z.is_cuda else "math"
    conv_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # matmuls already default to full fp32; convolutions do not
    try:
        with torch.inference_mode():
            model = SequenceParallelDiT(ref, groups, kernel)
            return ParallelCFGVelocity(model, CFGText.from_stacked(y.float(), mask), 4.5)(z, 0.7)
    finally:
        torch.backends.cudnn.allow_tf32 = conv_tf32
        del ref


def _rank_main(rank: int, layout: Layout, port: int, opts: dict, out_q) -> None:
    gpu = torch.cuda.is_available()
    if not gpu:  # CPU smoke runs (tiny preset) with gloo
        torch.set_num_threads(1)
    with joined(layout, gpu, rank, port, timedelta(minutes=20)) as groups:
        dev = torch.device("cuda", rank) if gpu else torch.device("cpu")
        dtype = torch.bfloat16 if gpu else torch.float32
        if gpu and opts.get("budget_gib"):
            torch.cuda.set_per_process_memory_fraction(
                min(1.0, opts["budget_gib"] * 2**30 / torch.cuda.get_device_properties(dev).total_memory), dev)
        weights, _, prefetch = opts.get("weights", "replicated").partition("@")
        shard_group = {"replicated": None, "sharded": dist.group.WORLD, "sharded-sp": groups.sp_group}[weights]
        dit = build_dit(opts["preset"], dev, dtype, shard_group=shard_group, prefetch=int(prefetch or 1),
                        depth=opts.get("depth"))
        weight_gib = local_parameter_count(dit) * dit.x_embedder.proj.weight.element_size() / 2**30
        x, _, y, mask = cfg_inputs(dit.cfg, opts["frames"], opts["height"], opts["width"], opts["cond_tokens"],
                                   dev, dtype)
        v_fp32 = None
        if opts.get("fp32_reference") and layout.world == 1:
            v_fp32 = fp32_velocity(dit, groups, y, mask, x[:1].float()).float().cpu().numpy()
            if gpu:
                torch.cuda.empty_cache()
        model = SequenceParallelDiT(dit, groups, opts["attention"], opts.get("engine", "ours"))
        velocity = ParallelCFGVelocity(model, CFGText.from_stacked(y, mask), 4.5)
        z = x[:1].float()
        error, v_eager = None, None
        try:
            with torch.inference_mode():
                if opts["compile"]:  # the correctness reference: compiled groups are not bit-reproducible
                    v_eager = velocity(z, 0.7)  # across processes on GPU (docs/operations.md), eager ones are
                    dit.compile_blocks(tuple(opts.get("compile_parts") or dit.COMPILED_PARTS))
                if gpu:
                    torch.cuda.reset_peak_memory_stats()
                if opts.get("gc_freeze"):  # what a serving worker could do once warm: compiled code, caches and
                    velocity(z, 0.7)  # weights' Python objects out of every later collector pass (no gain, 2026-11-28)
                    gc.collect()
                    gc.freeze()
                with gc_pauses() as pauses:
                    ms, all_ms = time_cuda(lambda: velocity(z, 0.7), opts["warmup"], opts["iters"])
                    chained_ms, _ = time_cuda_chained(lambda: velocity(z, 0.7), opts["iters"], repeats=2)
                v = velocity(z, 0.7)
                profile = None
                if opts.get("profile") and gpu:  # every rank runs the steps twice (collectives); rank 0 records
                    steps = opts.get("profile_steps", 1)  # several: back to back, as the sampler runs them

                    def run_steps() -> None:
                        for _ in range(steps):
                            velocity(z, 0.7)

                    if rank == 0:
                        from .step import profile_step

                        profile = profile_step(run_steps)
                    else:
                        run_steps()
                        run_steps()
        except torch.OutOfMemoryError as e:  # the same on every rank: the layout does not fit the budget
            error, ms, all_ms, v, profile = f"out of memory: {str(e).splitlines()[0]}", 0.0, [], None, None
            chained_ms, pauses = 0.0, []
        peak = torch.cuda.max_memory_allocated() / 2**30 if gpu else 0.0
        per_rank = [None] * layout.world  # (peak GiB, weight GiB, collector passes) of every rank, one gather
        dist.all_gather_object(per_rank, (peak, weight_gib, gc_summary(pauses)), group=groups.control)
        peaks, weights_gib, gcs = (list(column) for column in zip(*per_rank))
        if rank == 0:
            if error is not None:
                out_q.put({"error": error, "peak_gib": peaks, "weight_gib": weights_gib})
            else:
                out_q.put({"ms": ms, "all_ms": all_ms, "chained_ms": chained_ms, "peak_gib": peaks, "gc": gcs,
                           "weight_gib": weights_gib,
                           "v": v.float().cpu().numpy(), "profile": profile, "v_fp32": v_fp32,
                           "v_eager": (v if v_eager is None else v_eager).float().cpu().numpy()})
        dist.barrier(group=groups.control)


def run_layout(layout: Layout, opts: dict) -> dict:
    if torch.cuda.is_available() and torch.cuda.device_count() < layout.world:
        raise SystemExit(f"{layout.describe()} needs {layout.world} GPUs, {torch.cuda.device_count()} visible")
    r = run_ranks(_rank_main, layout.world, (layout, free_port(), opts), layout.describe())
    for key in ("v", "v_eager", "v_fp32"):
        if r.get(key) is not None:
            r[key] = torch.from_numpy(r[key])  # sent as numpy: a torch tensor would need the exited sender
    return r
