"""Step caching in one process: the modes' rules, which steps run the blocks (counted), bit-identity when
nothing is skipped, and the memory it keeps. The parallel layouts are in tests/parallel/test_step_cache_layouts.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.weights import build_dit
from mochi_runtime.memory import DiTMemoryModel
from mochi_runtime.models.config import get_preset
from mochi_runtime.models.step_cache import (TEACACHE_MOCHI_COEFFICIENTS, TEACACHE_MOCHI_PEAK, StepCache,
                                             teacache_rescale)
from mochi_runtime.ops.fp8 import quantize_blocks_
from mochi_runtime.pipeline import MochiPipeline, run_sampler
from mochi_runtime.validation import CacheMode, GenerationRequest, RequestError, validate

REQUEST = GenerationRequest("a cat walking on a fence", negative_prompt="blurry", num_frames=13, height=48,
                            width=80, steps=8, guidance=4.5, seed=11)


# -- the modes ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,canonical", [("off", "off"), ("teacache:0.06", "teacache:0.06"),
                                            (" FBCache:0.1 ", "fbcache:0.1"), ("interval:2", "interval:2"),
                                            ("interval:3:1", "interval:3"), ("interval:2:4", "interval:2:4"),
                                            ("teacache:0", "teacache:0.0")])
def test_modes_parse_to_one_spelling(text, canonical):
    assert str(CacheMode.parse(text)) == canonical
    assert validate(REQUEST.with_(cache=text)).cache == canonical


@pytest.mark.parametrize("bad,rule", [("", "must be off, teacache"), ("teacache", "the threshold must be a number"),
                                      ("teacache:-0.1", "finite and >= 0"), ("fbcache:inf", "finite and >= 0"),
                                      ("interval:0", ">= 1"), ("interval:2:0", ">= 1"), ("interval:1.5", "integers"),
                                      ("pab:2", "must be off"), ("x" * 100, "100 characters"), (3, "got int")])
def test_bad_modes_are_refused_naming_the_field(bad, rule):
    with pytest.raises(RequestError, match=rule) as e:
        validate(REQUEST.with_(cache=bad))
    assert e.value.field == "cache"


def test_teacache_rescale_is_the_published_polynomial_held_at_its_peak():
    poly = np.poly1d(TEACACHE_MOCHI_COEFFICIENTS)
    for x in (0.0, 0.01, 0.05, 0.1):
        assert teacache_rescale(x) == pytest.approx(poly(x), rel=1e-12)
    assert np.polyder(poly)(TEACACHE_MOCHI_PEAK) == pytest.approx(0, abs=1e-6)  # the peak is the maximum
    assert teacache_rescale(0.3) == teacache_rescale(5.0) == pytest.approx(poly(TEACACHE_MOCHI_PEAK))
    assert poly(0.3) < 0  # what the unheld polynomial would add for a large change
    xs = np.linspace(0, 1, 200)
    assert all(np.diff([teacache_rescale(x) for x in xs]) >= 0)


def _feed(mode: str, changes: list[float]) -> list[bool]:
    """Decisions of a StepCache fed synthetic measures whose relative L1 change from the one before is given."""
    cache = StepCache(CacheMode.parse(mode), len(changes) + 1)
    signal = torch.ones(1, 4, 3)
    out = [cache.decide(signal)]
    cache.remember(torch.zeros(1, 4, 3))
    for c in changes:
        signal = signal * (1 + c)  # relative to the previous measure (teacache's reference)
        out.append(cache.decide(signal))
    return out


def test_teacache_accumulates_rescaled_changes_and_resets_on_a_computed_step():
    r = teacache_rescale(0.05)  # ~0.0514 per step
    # threshold 0.12: skip while the sum is under it: r, 2r under; 3r over -> compute and reset
    assert 2 * r < 0.12 <= 3 * r
    got = _feed("teacache:0.12", [0.05] * 7)
    assert got == [True, False, False, True, False, False, True, True]  # the last step is always computed
    assert _feed("teacache:0", [0.0] * 5) == [True] * 6  # threshold 0: never skips
    assert _feed("teacache:1e9", [0.5] * 5) == [True] + [False] * 4 + [True]


def test_fbcache_compares_with_the_last_computed_step():
    # each step moves the measure 4% from the one before; against the last computed one it adds up:
    # 4%, 8.2% (over 0.06: computed, the reference moves), 4%, 8.2%, ...
    assert _feed("fbcache:0.06", [0.04] * 6) == [True, False, True, False, True, False, True]
    assert _feed("fbcache:0", [0.0] * 4) == [True] * 5


@pytest.mark.parametrize("mode,computed", [("interval:1", "11111111"), ("interval:2", "10101011"),
                                           ("interval:3", "10010011"), ("interval:2:3", "11101011"),
                                           ("interval:100", "10000001")])
def test_interval_computes_the_first_the_warm_up_every_nth_and_the_last(mode, computed):
    cache = StepCache(CacheMode.parse(mode), 8)
    for _ in range(8):
        if cache.decide(None):
            cache.remember(torch.zeros(1))
    assert "".join("1" if d else "0" for d in cache.decisions) == computed
    with pytest.raises(RuntimeError, match="made for 8 steps"):
        cache.decide(None)


def test_interval_2_computes_33_of_64_steps():
    cache = StepCache(CacheMode.parse("interval:2"), 64)
    for _ in range(64):
        cache.decide(None)
        cache.remember(torch.zeros(1))
    assert cache.computed == 33 and cache.skipped == 31


# -- in the DiT -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    pipe = MochiPipeline.from_dir(None, device="cpu")
    return pipe.denoiser.dit, pipe.encode_text(REQUEST)


class BlockCalls:
    """Per step (one DiT forward), which blocks ran: forward hooks on every block, steps cut by the sampler's
    callback."""

    def __init__(self, dit) -> None:
        self.current: list[int] = []
        self.steps: list[list[int]] = []
        self.skipped: list[int] = []
        self.handles = [b.register_forward_hook(lambda m, a, kw, out, i=i: self.current.append(i), with_kwargs=True)
                        for i, b in enumerate(dit.blocks)]

    def on_step(self, i: int, total: int, skipped: int) -> None:
        self.steps.append(self.current)
        self.current = []
        self.skipped.append(skipped)

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _run(dit, text, mode: str, request=REQUEST):
    calls = BlockCalls(dit)
    try:
        out = run_sampler(dit, request.with_(cache=mode), text, on_step=calls.on_step)
    finally:
        calls.close()
    return out, calls


@pytest.mark.parametrize("mode", ["teacache:0", "fbcache:0", "interval:1"])
def test_nothing_skipped_is_bit_identical_to_no_cache(tiny, mode):
    dit, text = tiny
    off, _ = _run(dit, text, "off")
    out, calls = _run(dit, text, mode)
    assert torch.equal(out, off)
    assert calls.skipped[-1] == 0


def test_the_reported_counts_are_the_block_calls(tiny):
    dit, text = tiny
    depth = len(dit.blocks)
    everything = list(range(depth))
    # interval:2: steps 0, 2, 4, 6 and the last run every block; the others none
    _, calls = _run(dit, text, "interval:2")
    ran = [bool(s) for s in calls.steps]
    assert ran == [True, False, True, False, True, False, True, True]
    assert all(s in ([], everything) for s in calls.steps)
    assert calls.skipped == list(np.cumsum([not r for r in ran]))
    # teacache with a huge threshold: only the first and last steps compute; block 0 runs once more on each
    # step for the measure (its modulated input), the stack does not
    _, calls = _run(dit, text, "teacache:1e9")
    stack = [[i for i in s if i > 0] for s in calls.steps]
    assert [bool(s) for s in stack] == [True] + [False] * 6 + [True]
    assert calls.skipped[-1] == 6
    # fbcache with a huge threshold: block 0 every step, the rest on the first and last
    _, calls = _run(dit, text, "fbcache:1e9")
    assert all(s[0] == 0 for s in calls.steps)
    assert [s[1:] == everything[1:] for s in calls.steps] == [True] + [False] * 6 + [True]
    assert calls.skipped[-1] == 6


def test_skipping_changes_the_video_and_a_skip_reuses_the_residual(tiny):
    """A skipped step is not a no-op: the video moves away from the uncached one, by less than skipping the
    blocks outright (residual dropped) would move it."""
    dit, text = tiny
    off, _ = _run(dit, text, "off")
    cached, _ = _run(dit, text, "interval:2")
    dropped = StepCache.reuse
    try:
        StepCache.reuse = lambda self, tokens: tokens  # a planted defect: the residual forgotten
        broken, _ = _run(dit, text, "interval:2")
    finally:
        StepCache.reuse = dropped
    err = float((cached - off).norm() / off.norm())
    assert 0 < err < float((broken - off).norm() / off.norm())


def test_generation_result_reports_the_counts():
    pipe = MochiPipeline.from_dir(None, device="cpu")
    result = pipe.generate(REQUEST.with_(cache="interval:2"))
    assert (result.steps, result.steps_computed, result.steps_skipped) == (8, 5, 3)


def test_fp8_and_compiled_dits_cache_like_the_eager_one():
    """The same rule on an fp8 DiT and on a torch.compiled one: nothing skipped is bit-identical to no cache
    (their own), and interval:2 skips the same steps."""
    cfg = get_preset("tiny").dit
    dit = build_dit("tiny", "cpu", torch.bfloat16, seed=3)
    quantize_blocks_(dit)
    compiled = build_dit("tiny", "cpu", torch.float32, seed=3).compile_blocks()
    feats = torch.randn(1, 256, cfg.t5_feat_dim, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(1, 256, dtype=torch.bool)
    mask[0, :7] = True
    from mochi_runtime.models.text_encoder import CFGText, TextEmbedding

    text = CFGText(TextEmbedding(feats, mask), TextEmbedding(torch.zeros_like(feats), torch.zeros_like(mask)))
    request = REQUEST.with_(steps=5, num_frames=7, height=32, width=48)
    for model in (dit, compiled):
        off, _ = _run(model, text, "off", request)
        same, _ = _run(model, text, "fbcache:0", request)
        assert torch.equal(same, off)
        _, calls = _run(model, text, "interval:2", request)
        assert [bool(s) for s in calls.steps] == [True, False, True, False, True]


# -- memory ---------------------------------------------------------------------------------------------------
def test_the_memory_model_counts_what_the_cache_keeps():
    full = get_preset("mochi-1-preview").dit
    request = GenerationRequest("", num_frames=49, height=480, width=848)
    tokens = 9 * 30 * 53
    one = DiTMemoryModel(full)
    assert one.cache_bytes(request) == 0
    assert one.cache_bytes(request.with_(cache="interval:2")) == 2 * tokens * 3072 * 2  # CFG batch 2, bf16
    assert one.cache_bytes(request.with_(cache="teacache:0.06")) == 2 * 2 * tokens * 3072 * 2  # + the reference
    split = DiTMemoryModel(full, cfg_degree=2, ulysses=2)  # each rank: one branch, half the tokens
    assert split.cache_bytes(request.with_(cache="interval:2")) == -(-tokens // 2) * 3072 * 2
    both = one.total_bytes(request.with_(cache="fbcache:0.1"))
    assert both == one.total_bytes(request) + one.cache_bytes(request.with_(cache="fbcache:0.1"))
    # a budget that holds the generation but not its cache refuses naming the cache
    budget = one.total_bytes(request) + 1
    one.check(request, budget)
    with pytest.raises(RequestError, match="cannot hold beside the generation") as e:
        one.check(request.with_(cache="teacache:0.06"), budget)
    assert e.value.field == "cache"


# -- previews (the sampler's hook; the colour map: tests/unit/test_latent_preview.py) -----------------------------
def test_the_sampler_previews_every_n_steps_but_not_after_the_last(tiny):
    dit, text = tiny
    from mochi_runtime.sampler import CFGVelocity, euler_sample, initial_noise, linear_quadratic_schedule

    seen = []
    z = initial_noise(1, REQUEST.latent_shape)
    with torch.inference_mode():
        plain = euler_sample(CFGVelocity(dit, text, 4.5), z, linear_quadratic_schedule(8))
        out = euler_sample(CFGVelocity(dit, text, 4.5), z, linear_quadratic_schedule(8), None, None,
                           lambda i, x0: seen.append((i, x0.shape)), 3)
    assert [i for i, _ in seen] == [3, 6] and all(s == z.shape for _, s in seen)
    assert torch.equal(out, plain)  # previews read the state, never change it
