"""FSDP2-sharded DiT weights on real gloo process groups: same outputs as replicated, 1/N of the parameters."""
from __future__ import annotations

import pytest
import torch.multiprocessing as mp

from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup
from mochi_runtime.parallel.topology import free_port
from mochi_runtime.pipeline import MochiPipeline
from mochi_runtime.validation import GenerationRequest

from numerics import assert_close, check, threads
from parallel_checks import sharded_check

# Sharded and replicated weights run the same arithmetic on the same values (the gathered block is the replicated
# block): bit-equal in every configuration of the margin matrix (tests/numerics.py); the bound leaves room for a
# matmul kernel that blocks gathered rows differently.
SHARDED = dict(rel_l2=2e-6, max_rel=4e-6)

CASES = [(Layout(1, 2, 1), "world"), (Layout(1, 4, 1), "world"), (Layout(1, 2, 2), "world"),
         (Layout(2, 2, 1), "world"), (Layout(2, 2, 1), "sp")]


@pytest.mark.numeric
@pytest.mark.parametrize("layout,over", CASES, ids=lambda v: v.describe().split(" (")[0] if hasattr(v, "cfg") else v)
def test_sharded_forward_equals_replicated(layout, over, official_dir):
    _check_sharded(layout, over, official_dir)


@pytest.mark.numeric
def test_sharded_load_from_a_diffusers_checkpoint(diffusers_dir):
    """Rank rows cut through diffusers' split Q/K/V and swapped modulation halves."""
    _check_sharded(Layout(1, 1, 3), "world", diffusers_dir)  # 3 ranks: uneven rows everywhere


def _check_sharded(layout, over, model_dir):
    q = mp.get_context("spawn").Queue()
    mp.start_processes(sharded_check, args=(layout.world, layout, over, free_port(), str(model_dir), q),
                       nprocs=layout.world, start_method="spawn")
    results = [q.get(timeout=60) for _ in range(layout.world)]
    shards = layout.world if over == "world" else layout.sp
    for rank, err, repeat_err, local, total in results:
        check(err, **SHARDED)
        assert repeat_err == 0.0, (rank, repeat_err)
        # Dim-0 chunks are uneven for small tensors: within 2% of an even share.
        assert abs(local - total / shards) <= 0.02 * total / shards, (rank, local, total)


@pytest.mark.numeric
def test_sharded_group_generates_the_replicated_result(official_dir):
    request = GenerationRequest("a boat on a lake", num_frames=7, height=48, width=64, steps=3, seed=4)
    pipe = MochiPipeline.from_dir(official_dir, device="cpu")
    text = pipe.encode_text(request)
    out = {}
    for weights in ("replicated", "sharded"):
        with WorkerGroup(GroupSpec(Layout(2, 2, 1), model_dir=str(official_dir), threads=threads(),
                                   weights=weights)) as g:
            out[weights] = g.denoise(request, text)
    assert_close(out["sharded"], out["replicated"], **SHARDED)


def test_weights_mode_is_checked():
    with pytest.raises(ValueError, match="weights must be"):
        GroupSpec(Layout(1, 2, 1), weights="fsdp")
