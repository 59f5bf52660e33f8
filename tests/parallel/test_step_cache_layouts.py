"""Step caching on real gloo process groups: every layout skips the steps one process skips and gives its
video; nothing skipped is bit-identical to no cache. (The rules themselves: tests/unit/test_step_cache.py.)"""
from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup

from numerics import assert_close, threads
from parallel_checks import local_runs
from test_parallel import EIGHT, LAYOUTS, REQUEST, SAMPLES

# Thresholds with room on both sides on the tiny model (6 steps, guidance 4.5): teacache's rescaled change is
# ~0.099 a step (skip one, compute the next); fbcache's changes are 0.47 / 0.61 / 0.52 against 0.6. A layout
# changes a measure by ~1e-6 of itself, far from flipping a decision.
SKIPPING = ("teacache:0.15", "fbcache:0.6", "interval:2")
NOTHING_SKIPPED = ("teacache:0", "fbcache:0", "interval:1")
STEPS = 6


@pytest.fixture(scope="module")
def references(official_dir):
    from mochi_runtime.pipeline import MochiPipeline

    pipe = MochiPipeline.from_dir(official_dir, device="cpu")
    text = pipe.encode_text(REQUEST)
    requests = [REQUEST.with_(steps=STEPS, cache=m) for m in SKIPPING]
    with mp.get_context("spawn").Pool(1) as pool:
        runs = pool.apply(local_runs, (str(official_dir), requests, text, threads()))
    for mode, (_, skipped) in zip(SKIPPING, runs):
        assert 0 < skipped[-1] < STEPS - 1, (mode, skipped)  # each mode skips some steps, not all
    return text, dict(zip(SKIPPING, runs))


def _run(group, text, mode: str):
    skipped: list[int] = []
    out = group.denoise(REQUEST.with_(steps=STEPS, cache=mode), text, on_step=lambda i, n, s: skipped.append(s))
    return out, skipped


@pytest.mark.numeric
@pytest.mark.parametrize("layout,weights", [(l, "replicated") for l in LAYOUTS + EIGHT]
                         + [(Layout(2, 2, 1), "sharded"), (Layout(1, 2, 2), "sharded")],
                         ids=lambda v: v.describe().split(" (")[0] if isinstance(v, Layout) else v)
def test_every_layout_skips_the_steps_one_process_skips(layout, weights, official_dir, references):
    text, refs = references
    with WorkerGroup(GroupSpec(layout, model_dir=str(official_dir), threads=threads(), weights=weights)) as group:
        off, none_skipped = _run(group, text, "off")
        assert none_skipped == [0] * STEPS
        for mode in NOTHING_SKIPPED:
            same, skipped = _run(group, text, mode)
            assert torch.equal(same, off), mode
            assert skipped == [0] * STEPS, mode
        for mode in SKIPPING:
            out, skipped = _run(group, text, mode)
            ref, ref_skipped = refs[mode]
            assert skipped == ref_skipped, mode
            assert_close(out, ref, **SAMPLES, label=mode)
