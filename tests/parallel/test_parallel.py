"""Sequence/CFG-parallel DiT on real gloo process groups (spawned CPU processes)."""
from __future__ import annotations

import os
import signal
import time

import pytest
import torch
import torch.multiprocessing as mp

from mochi_runtime.parallel import Cancelled, GroupSpec, Layout, LayoutError, WorkerGroup, WorkerGroupError
from mochi_runtime.parallel.topology import free_port
from mochi_runtime.pipeline import MochiPipeline
from mochi_runtime.validation import GenerationRequest

from numerics import assert_close, check, threads, worst
from parallel_checks import forward_check, local_reference

LAYOUTS = [Layout(1, 2, 1), Layout(1, 1, 2), Layout(2, 1, 1), Layout(1, 2, 2), Layout(2, 2, 1)]
# The 8-rank layouts of the 8-GPU scaling run (#8), here as 8 CPU processes: cfg 2 x ulysses 4, ulysses 8,
# cfg 2 x ulysses 2 x ring 2, ulysses 4 x ring 2.
EIGHT = [Layout(2, 4, 1), Layout(1, 8, 1), Layout(2, 2, 2), Layout(1, 4, 2)]
# 13 frames at 48x80 -> 3 x 3 x 5 = 45 visual tokens: divides none of 2, 4 and 8.
REQUEST = GenerationRequest("a cat walking on a fence", negative_prompt="blurry", num_frames=13, height=48,
                            width=80, steps=3, guidance=4.5, seed=11)


# Bounds for a layout against one process, relative to the reference's size (tests/numerics.py). Sequence and
# head splits reorder fp32 sums (attention over a split sequence merges partial softmaxes; CFG-parallel runs the
# two branches as batch 1 instead of 2), so each forward differs by a few fp32 roundings. Largest measured over
# the margin matrix (threads 1/2/4 x ATEN_CPU_CAPABILITY default/avx2, rel_l2 / max_rel): forward 3.6e-7 / 5.2e-7;
# guided velocity (4.5 v_c - 3.5 v_u amplifies them) 7.1e-7 / 9.3e-7; three sampler steps 8.5e-7 / 1.2e-6.
# A dropped ring chunk or a wrong text mask moves them by 1e-2 or more.
FORWARD = dict(rel_l2=5e-6, max_rel=2e-5)
VELOCITY = dict(rel_l2=1e-5, max_rel=4e-5)
SAMPLES = dict(rel_l2=1e-5, max_rel=4e-5)


@pytest.fixture(scope="module")
def reference(official_dir):
    """Single-process result in a fresh process (a thread count lowered after start-up misses some kernels)."""
    pipe = MochiPipeline.from_dir(official_dir, device="cpu")
    text = pipe.encode_text(REQUEST)
    assert int(text.cond.mask.sum()) != int(text.uncond.mask.sum())  # batch 2 with different text lengths
    with mp.get_context("spawn").Pool(1) as pool:
        ref = pool.apply(local_reference, (str(official_dir), REQUEST, text, threads()))
    return pipe, text, ref


@pytest.mark.numeric
@pytest.mark.parametrize("layout", LAYOUTS + [Layout(1, 4, 1)] + EIGHT, ids=lambda l: l.describe().split(" (")[0])
def test_forward_and_velocity_match_single_process(layout, official_dir):
    q = mp.get_context("spawn").Queue()
    mp.start_processes(forward_check, args=(layout.world, layout, free_port(), str(official_dir), q),
                       nprocs=layout.world, start_method="spawn")
    results = [q.get(timeout=60) for _ in range(layout.world)]
    check(worst(r["fwd_err"] for r in results), **FORWARD, label="forward")
    check(worst(r["hole_err"] for r in results), **FORWARD, label="forward, mask with a hole")
    check(worst(r["vel_err"] for r in results), **VELOCITY, label="guided velocity")
    for r in results:
        if layout.ring == 1:  # T5-style (prefix) masks: attention inputs are slices, not concatenated copies
            assert r["qkv_cats"] == 0, r
        # On a GPU each host-made tensor would block the host until the queue drains. (A one-element list index
        # in the token-major path did, twice a block, until 2026-11-27.)
        assert r["host_tensors"] == 0, r
        # Ring 1 with Ulysses exchanges token-major blocks (prefix masks; the holed mask takes the general path)
        assert (r["token_major_calls"] > 0) == (layout.ring == 1 and layout.ulysses > 1), r


@pytest.mark.numeric
@pytest.mark.parametrize("layout", LAYOUTS + EIGHT, ids=lambda l: l.describe().split(" (")[0])
def test_three_step_generation_matches_single_process(layout, official_dir, reference):
    _, text, ref = reference
    with WorkerGroup(GroupSpec(layout, model_dir=str(official_dir), threads=threads())) as group:
        steps = []
        out = group.denoise(REQUEST, text, on_step=lambda i, n, k: steps.append((i, n)))
        again = group.denoise(REQUEST, text)  # the group serves several requests
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert_close(out, ref, **SAMPLES)
    assert torch.equal(out, again)


@pytest.mark.numeric
def test_cancel_stops_within_a_step_and_next_request_runs(official_dir, reference):
    _, text, ref = reference
    long = REQUEST.with_(steps=50)
    with WorkerGroup(GroupSpec(Layout(1, 2, 1), model_dir=str(official_dir), threads=threads())) as group:
        seen = []

        def stop_at_2(i, n, k):
            seen.append(i)
            if i == 2:
                raise Cancelled("user cancelled")

        with pytest.raises(Cancelled):
            group.denoise(long, text, on_step=stop_at_2)
        assert seen[-1] <= 3  # rank 0 saw the flag at the next step boundary
        out = group.denoise(REQUEST, text)
        assert_close(out, ref, **SAMPLES)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_killed_worker_raises_quickly_and_leaves_no_orphans(official_dir, reference):
    _, text, _ = reference
    group = WorkerGroup(GroupSpec(Layout(1, 1, 2), model_dir=str(official_dir)))
    pids = group.pids
    victim = pids[1]

    def kill_on_first_step(i, n, k):
        if i == 1:
            os.kill(victim, signal.SIGKILL)

    t0 = time.monotonic()
    with pytest.raises(WorkerGroupError, match="worker group is down"):
        group.denoise(REQUEST.with_(steps=200), text, on_step=kill_on_first_step)
    assert time.monotonic() - t0 < 30
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)
    assert not group.alive()
    with pytest.raises(WorkerGroupError):
        group.denoise(REQUEST, text)


def test_exchange_sends_the_projections_buffer_as_it_is():
    """The Ulysses exchange takes the visual Q/K/V as the one [B, U, n, 3, H/U, D] buffer the projections wrote
    (a view, no copy); three separate tensors are packed into the same layout."""
    import dataclasses

    from mochi_runtime.models.config import DiTConfig
    from mochi_runtime.models.dit import AsymmetricAttention
    from mochi_runtime.parallel.usp import interleaved_blocks

    cfg = dataclasses.replace(DiTConfig(), hidden_size_x=96, hidden_size_y=64, num_heads=4)
    attn = AsymmetricAttention(cfg, update_y=True).eval()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 10, 96, generator=g), torch.randn(2, 5, 64, generator=g)
    angles = torch.randn(10, 4, 12, generator=g)
    with torch.inference_mode():
        q_x, k_x, v_x, *_ = attn.project(x, y, (angles.cos(), angles.sin()), visual_split=2)
        blocks = interleaved_blocks(q_x, k_x, v_x)
        packed = interleaved_blocks(q_x.clone(), k_x.clone(), v_x.clone())
    assert blocks.shape == packed.shape == (2, 2, 10, 3, 2, 24) and blocks.is_contiguous()
    assert blocks.data_ptr() == q_x.data_ptr()  # the projections' buffer itself
    assert packed.data_ptr() != q_x.data_ptr() and torch.equal(blocks, packed)
    for t, part in enumerate((q_x, k_x, v_x)):
        assert torch.equal(blocks[:, :, :, t], part)


@pytest.mark.numeric
def test_compiled_projections_still_hand_over_one_buffer():
    """torch.compile returns the three views of the projections' buffer as views of one output, so the exchange
    still sends it without packing (a packing copy would cost each block what the one-message exchange saves)."""
    import dataclasses

    from mochi_runtime.models.config import DiTConfig
    from mochi_runtime.models.dit import AsymmetricJointBlock
    from mochi_runtime.parallel.usp import interleaved_blocks

    cfg = dataclasses.replace(DiTConfig(), hidden_size_x=96, hidden_size_y=64, num_heads=4)
    block = AsymmetricJointBlock(cfg, update_y=True).eval()
    g = torch.Generator().manual_seed(3)
    x, y, c = torch.randn(1, 10, 96, generator=g), torch.randn(1, 5, 64, generator=g), torch.randn(1, 96, generator=g)
    angles = torch.randn(10, 4, 12, generator=g)
    compiled = torch.compile(block.pre_attention, dynamic=False)
    with torch.inference_mode():
        (q_x, k_x, v_x, *_), _, _ = compiled(x, c, y, (angles.cos(), angles.sin()), 2)
        want, _, _ = block.pre_attention(x, c, y, (angles.cos(), angles.sin()), 2)
    assert interleaved_blocks(q_x, k_x, v_x).data_ptr() == q_x.data_ptr()
    for got, ref, name in zip((q_x, k_x, v_x), want, "qkv"):
        assert_close(got, ref, **FORWARD, label=name)  # inductor's fused kernels round in another order


def test_layout_validation():
    with pytest.raises(LayoutError, match="ulysses degree 5 must divide the 24"):
        Layout(1, 5, 1).validate(num_heads=24)
    with pytest.raises(LayoutError, match="guidance"):
        Layout(2, 1, 1).validate(guidance=1.0)
    with pytest.raises(LayoutError, match="cfg degree"):
        Layout(3, 1, 1).validate()
    assert Layout(2, 2, 2).world == 8 and Layout(2, 2, 2).coords(5) == (1, 0, 1)


def test_cli_generates_with_a_cpu_group(tmp_path):
    import subprocess
    import sys

    from mochi_runtime.video import probe_mp4

    out = tmp_path / "par.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "a red fox", "--frames", "13", "--height", "48",
         "--width", "80", "--steps", "2", "--ulysses", "2", "--cfg-parallel", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert probe_mp4(out)[:3] == (13, 48, 80)


def test_cli_rejects_bad_layout(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--frames", "7", "--height", "48",
         "--width", "80", "--ulysses", "3", "--out", str(tmp_path / "x.mp4")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "ulysses degree 3 must divide" in proc.stderr


def test_torchrun_entry_matches_single_process(tmp_path, official_dir):
    """The same worker code under torchrun's env:// rendezvous (2 CPU ranks, gloo)."""
    import subprocess
    import sys

    from mochi_runtime.video import probe_mp4

    outs = {}
    for name, launcher in (
        ("torchrun", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                      str(free_port()), "-m", "mochi_runtime.parallel.torchrun", "--ulysses", "2"]),
    ):
        out = tmp_path / f"{name}.mp4"
        proc = subprocess.run(
            launcher + ["--model-dir", str(official_dir), "--prompt", "a red fox", "--frames", "13", "--height", "48",
                        "--width", "80", "--steps", "2", "--out", str(out)],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[name] = out
    assert probe_mp4(outs["torchrun"])[:3] == (13, 48, 80)


def test_attention_engine_is_validated_before_any_worker_starts():
    with pytest.raises(ValueError, match="attention_engine must be 'ours' or 'xdit'"):
        GroupSpec(Layout(1, 2, 1), attention_engine="yunchang")
    with pytest.raises(ValueError, match="attention_engine=xdit runs on GPUs only"):
        GroupSpec(Layout(1, 2, 1), attention_engine="xdit")
    GroupSpec(Layout(1, 2, 1), devices=(0, 1), attention_engine="xdit")  # accepted: checked again on the GPU


def test_xdit_engine_explains_itself_where_xfuser_cannot_run():
    from mochi_runtime.parallel.xdit import XDiTUnavailable, _import_usp

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(XDiTUnavailable, match="needs a GPU"):
        _import_usp()


def test_fresh_groups_of_one_layout_give_bit_equal_latents(official_dir, reference):
    """Same seed, same layout, two groups started one after the other: the same latents to the bit (what a
    server restart must preserve; on GPU this does not yet hold for multi-GPU groups, docs/benchmarks.md)."""
    _, text, _ = reference
    runs = []
    for _ in range(2):
        with WorkerGroup(GroupSpec(Layout(2, 2, 1), model_dir=str(official_dir), threads=1)) as group:
            runs.append(group.denoise(REQUEST, text))
    assert torch.equal(runs[0], runs[1])


def test_layout_names_round_trip_and_bad_names_are_refused():
    from mochi_runtime.parallel.topology import Layout, LayoutError

    assert Layout.parse("2x2x1") == Layout(2, 2, 1) and Layout(1, 4, 2).name() == "1x4x2"
    assert Layout.parse(Layout(2, 1, 2).name()) == Layout(2, 1, 2)
    for bad, rule in (("2x2", "CFGxULYSSESxRING"), ("axbxc", "CFGxULYSSESxRING"),
                      ("3x1x1", "cfg degree must be 1 or 2"), ("1x0x1", "ulysses degree must be >= 1")):
        with pytest.raises(LayoutError, match=rule):
            Layout.parse(bad)
