"""mochi_dit's deployment from its config.pbtxt parameters: which GPU sets (lanes) an instance drives, and
how the DiT's weights are held on them (replicated, sharded, or chosen by the memory budget).

Pure functions of the parameters (`adapters.Params`) and Triton's model args, so the Triton adapter stays thin.
"""
from __future__ import annotations

import dataclasses
import json

from ..memory import DiTMemoryModel, choose_weights
from ..validation import GenerationRequest


def plan_weights(p, dit_cfg, layout, devices, limits):
    """Weight mode ('auto' picks by the budget), the per-GPU budget, and the memory model requests are checked on."""
    budget = p.int("memory_budget_bytes", 0)
    weights = p.text("weights", "replicated")
    over = p.text("shard_over", "world")
    dtype = p.text("dtype", "auto")
    dtype_bytes = 4 if dtype == "fp32" or (dtype == "auto" and not devices) else 2
    model = DiTMemoryModel(dit_cfg, layout.cfg, layout.ulysses, layout.ring, weights,
                           layout.world if over == "world" else layout.sp, dtype_bytes, gpu=bool(devices),
                           fp8=dtype == "fp8")
    if weights == "auto":
        height = min(480, limits.max_pixels // 16 // 16 * 16)  # the largest request the caps allow
        width = max(16, limits.max_pixels // height // 16 * 16)
        largest = GenerationRequest("", num_frames=limits.max_frames, height=height, width=width, steps=1)
        weights = choose_weights(model, largest, budget)
        model = dataclasses.replace(model, weights=weights)
    if budget and model.weight_bytes() > budget:
        raise ValueError(f"memory_budget_bytes={budget} cannot hold the DiT's {model.weights} weights "
                         f"({model.weight_bytes() / 2**30:.2f} GiB per GPU); use weights=sharded or more GPUs")
    return weights, budget, model


def instance_index(args) -> int:
    try:
        return int(args["model_instance_name"].rsplit("_", 1)[-1])
    except (KeyError, ValueError):
        return 0


def lane_devices(p, args) -> list[tuple[int, ...] | None]:
    """GPU sets (`;`-separated) this instance drives, one worker group (lane) each; [None] * cpu_groups on CPU.

    With one instance (the default) every set is a lane of it: one queue feeds whichever group is free, and
    control requests see every generation. With `count: N` instance i takes sets i, i+N, ...
    """
    try:
        sets = [tuple(int(d) for d in s.split(",")) for s in p.text("gpus").split(";") if s.strip()]
    except ValueError:
        raise ValueError(f"parameter 'gpus' (MOCHI_MOCHI_DIT_GPUS) must be GPU indices like '0,1' or '0,1;2,3', "
                         f"got {p.text('gpus')!r}") from None
    if not sets:
        return [None] * max(1, p.int("cpu_groups", 1))
    cfg = json.loads(args["model_config"])
    count = sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [])) or 1
    mine = sets[instance_index(args)::count]
    if not mine:
        raise ValueError(f"instance {instance_index(args)} of {count} has no GPU set in gpus={p['gpus']!r}")
    return mine
