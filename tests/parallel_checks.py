"""Functions run inside real gloo worker processes by tests/parallel/test_parallel.py (must be importable)."""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

from numerics import error, threads


class ForwardAudit(TorchDispatchMode):
    """Counts concatenations of [B, H, S, D] tensors along S: [visual; text] Q/K/V built by copying. (The
    projections' own write of each joint buffer concatenates token-major [B, S, H, D] along dim 1.)

    Also counts tensors made from host data inside the forward (`lift_fresh`: a Python list used as an index,
    `torch.tensor(...)`): on a GPU each is a copy from pageable host memory, which blocks the host until the
    GPU has drained its queue."""

    def __init__(self) -> None:
        super().__init__()
        self.four_d = 0
        self.host_tensors = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dim = args[1] if len(args) > 1 else (kwargs or {}).get("dim", 0)
        if func is torch.ops.aten.cat.default and args[0] and args[0][0].dim() == 4 and dim in (2, -2):
            self.four_d += 1
        if func is torch.ops.aten.lift_fresh.default:
            self.host_tensors += 1
        return func(*args, **(kwargs or {}))


def forward_check(rank: int, world: int, layout, port: int, model_dir: str, out_q) -> None:
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.parallel.bootstrap import joined
    from mochi_runtime.parallel.usp import ParallelCFGVelocity, SequenceParallelDiT
    from mochi_runtime.loading.loaders import load_dit
    from mochi_runtime.models.text_encoder import CFGText

    torch.set_num_threads(threads())
    assert layout.world == world
    with joined(layout, False, rank, port, timedelta(minutes=5)) as groups:
        md = ModelDir.open(model_dir)
        ref_dit = load_dit(md, torch.device("cpu"), torch.float32)
        par = SequenceParallelDiT(load_dit(md, torch.device("cpu"), torch.float32), groups, "sdpa")
        used = {"token_major": 0}  # forwards that took the token-major Ulysses exchange
        inner = par.attention._ulysses_token_major

        def counted(*args):
            used["token_major"] += 1
            return inner(*args)

        par.attention._ulysses_token_major = counted
        g = torch.Generator().manual_seed(5)
        # 3 x 5 x 7 = 105 patches: does not divide 2 or 4.
        x = torch.randn(1, 12, 3, 10, 14, generator=g)
        feats = torch.randn(2, 256, ref_dit.cfg.t5_feat_dim, generator=g)
        mask = torch.zeros(2, 256, dtype=torch.bool)
        mask[CFGText.STACKED.index("uncond"), :6] = True  # uncond: 6 tokens; cond: 17 tokens
        mask[CFGText.STACKED.index("cond"), :17] = True
        text = CFGText.from_stacked(feats, mask)
        sigma = torch.tensor([0.8, 0.8])
        with torch.inference_mode():
            # Full forward, batch 2 with different text lengths, on the sp group.
            ref = ref_dit(x.expand(2, -1, -1, -1, -1), sigma, feats, mask)
            with ForwardAudit() as cats:
                out = par(x.expand(2, -1, -1, -1, -1), sigma, feats, mask)
            fwd_err = error(out, ref)
            qkv_cats = cats.four_d
            with ForwardAudit() as again:  # text groups are cached now: what every later forward does
                par(x.expand(2, -1, -1, -1, -1), sigma, feats, mask)
            # A text mask that is not a prefix (a hole in it) takes the general path
            holes = mask.clone()
            holes[1, 4] = False
            hole_err = error(par(x.expand(2, -1, -1, -1, -1), sigma, feats, holes),
                             ref_dit(x.expand(2, -1, -1, -1, -1), sigma, feats, holes))
            # Guided velocity (exercises CFG-parallel when cfg=2).
            from mochi_runtime.sampler import CFGVelocity

            v_ref = CFGVelocity(ref_dit, text, 4.5)(x, 0.8)
            v_par = ParallelCFGVelocity(par, text, 4.5)(x, 0.8)
            vel_err = error(v_par, v_ref)
        out_q.put({"rank": rank, "fwd_err": fwd_err, "vel_err": vel_err, "hole_err": hole_err, "qkv_cats": qkv_cats,
                   "token_major_calls": used["token_major"], "host_tensors": again.host_tensors})
        # Every rank past its last collective before any tears its group down (as the benchmarks do): a rank that
        # destroyed its gloo group while a peer's transfer was still in flight aborted at exit once in CI
        # (2026-11-28, "terminate called without an active exception")
        dist.barrier()


def local_reference(model_dir: str, request, text, n_threads: int):
    """The single-process sampler in a fresh process with `n_threads` CPU threads (a thread count lowered after
    start-up does not reach every kernel)."""
    torch.set_num_threads(n_threads)
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.pipeline import run_sampler
    from mochi_runtime.loading.loaders import load_dit

    dit = load_dit(ModelDir.open(model_dir), torch.device("cpu"), torch.float32)
    return run_sampler(dit, request, text)


def sharded_check(rank: int, world: int, layout, shard_over: str, port: int, model_dir: str, out_q) -> None:
    """Sharded (FSDP2) vs replicated weights on the same layout: outputs and per-rank parameter counts."""
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.parallel.sharded import load_sharded_dit, local_parameter_count
    from mochi_runtime.parallel.bootstrap import joined
    from mochi_runtime.parallel.usp import SequenceParallelDiT
    from mochi_runtime.loading.loaders import load_dit

    torch.set_num_threads(threads())
    assert layout.world == world
    with joined(layout, False, rank, port, timedelta(minutes=5)) as groups:
        md = ModelDir.open(model_dir)
        replicated = SequenceParallelDiT(load_dit(md, torch.device("cpu"), torch.float32), groups, "sdpa")
        over = dist.group.WORLD if shard_over == "world" else groups.sp_group
        sharded_dit = load_sharded_dit(md, over, torch.device("cpu"), torch.float32)
        sharded = SequenceParallelDiT(sharded_dit, groups, "sdpa")
        g = torch.Generator().manual_seed(9)
        x = torch.randn(2, 12, 3, 10, 14, generator=g)
        feats = torch.randn(2, 256, md.dit_config().t5_feat_dim, generator=g)
        mask = torch.zeros(2, 256, dtype=torch.bool)
        mask[0, :3] = True
        mask[1, :12] = True
        sigma = torch.tensor([0.6, 0.6])
        with torch.inference_mode():
            a = replicated(x, sigma, feats, mask)
            b = sharded(x, sigma, feats, mask)
            c = sharded(x, sigma, feats, mask)  # a second pass re-gathers the freed blocks
        total = sum(p.numel() for p in replicated.dit.parameters())
        out_q.put((rank, error(b, a), float((b - c).abs().max()), local_parameter_count(sharded_dit), total))
        dist.barrier()  # see forward_check


def local_runs(model_dir: str, requests: list, text, n_threads: int) -> list:
    """The single-process sampler on each request, in a fresh process with `n_threads` CPU threads: per request
    (latents, skipped steps so far after each step)."""
    torch.set_num_threads(n_threads)
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.pipeline import run_sampler
    from mochi_runtime.loading.loaders import load_dit

    dit = load_dit(ModelDir.open(model_dir), torch.device("cpu"), torch.float32)
    out = []
    for request in requests:
        skipped: list[int] = []
        latents = run_sampler(dit, request, text, on_step=lambda i, n, s: skipped.append(s))
        out.append((latents, skipped))
    return out
