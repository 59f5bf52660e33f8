"""Step caching: skip the DiT's block stack on steps where it would barely change, and reuse its last residual.

One `StepCache` per generation (per rank in a group) is handed to every DiT forward of that generation
(`AsymmDiT.forward(..., cache=)`), one forward per denoising step. On each step it decides, from a change
measure or a schedule, whether the blocks run:

- computed: the blocks run as they do without a cache, and the residual of the visual tokens (stack output
  minus stack input; for fbcache, minus block 0's output) is kept;
- skipped: the kept residual is added to the stack's input instead, and the final layer runs as usual.

The measures (CacheMode in validation.py names the modes):
- teacache: relative L1 change of block 0's modulated visual input since the previous step,
  sum|m - m_prev| / sum|m_prev|, rescaled by the polynomial TeaCache fitted on mochi-1-preview; rescaled
  changes accumulate, a step is skipped while the sum stays under the threshold, a computed step resets it;
- fbcache: block 0 always runs; relative L1 change of its residual since the last computed step; the rest
  of the stack is skipped while it is under the threshold.

In a sequence- or CFG-parallel group each rank holds its share of the tokens of its CFG branch: the two sums
of a measure are reduced over the whole group (`reduce_sum`, two float64 scalars a step), so every rank
takes the same decision and runs the same collectives, and the decision is the one a single process holding
every token and both branches takes (up to the order of an fp64 sum). Residuals stay where their tokens are.
The first and the last step are always computed; nothing outlives the generation.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..validation import CacheMode

# TeaCache's rescaling polynomial for mochi-1-preview (ali-vilab/TeaCache, TeaCache4Mochi), highest power first.
TEACACHE_MOCHI_COEFFICIENTS = (-3.51241319e+03, 8.11675948e+02, -6.09400215e+01, 2.42429681e+00, 3.05291719e-03)
# The polynomial rises to its maximum at this change and falls (below zero from ~0.146) past it, outside the
# range it was fitted on; held at its maximum there, so a larger change never counts as a smaller one.
TEACACHE_MOCHI_PEAK = 0.10759509


def teacache_rescale(change: float, coefficients=TEACACHE_MOCHI_COEFFICIENTS, peak: float = TEACACHE_MOCHI_PEAK
                     ) -> float:
    """TeaCache's estimate of the output's change from the relative L1 change of the modulated input."""
    x = min(max(change, 0.0), peak)
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


ReduceSum = Callable[[torch.Tensor], torch.Tensor]


def relative_l1_sums(now: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """[sum|now - before|, sum|before|] in float64: the two halves of a relative L1 change, summable over ranks."""
    return torch.stack([(now - before).abs().sum(dtype=torch.float64), before.abs().sum(dtype=torch.float64)])


class StepCache:
    """What one generation's cache knows: its mode, the step it is at, the decisions so far, the residual.

    Args:
        mode: the request's CacheMode (`off` makes every step computed; callers pass no cache then).
        steps: the sampler's step count (one DiT forward per step).
        reduce_sum: sums a small float64 tensor over the parallel group in place and returns it (identity in
            one process).
    """

    def __init__(self, mode: CacheMode, steps: int, reduce_sum: ReduceSum | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.mode, self.steps = mode, steps
        self.reduce_sum = reduce_sum or (lambda t: t)
        self.decisions: list[bool] = []  # per step so far: True = the blocks ran
        self.changes: list[float] = []  # per step with a measure: the relative L1 change seen
        self.residual: torch.Tensor | None = None  # [B, n_local, D] in the model dtype
        self.reference: torch.Tensor | None = None  # teacache: last modulated input; fbcache: block 0's residual
        self.accumulated = 0.0  # teacache: rescaled changes since the last computed step

    @property
    def step(self) -> int:
        return len(self.decisions)

    @property
    def skipped(self) -> int:
        return self.decisions.count(False)

    @property
    def computed(self) -> int:
        return self.decisions.count(True)

    @property
    def measure(self) -> str | None:
        """What the blocks must hand over before the decision: "modulated_input" (teacache), "first_block"
        (fbcache), or None (interval, off)."""
        return {"teacache": "modulated_input", "fbcache": "first_block"}.get(self.mode.kind)

    def decide(self, signal: torch.Tensor | None) -> bool:
        """Whether this step runs the blocks. signal: this rank's valid rows of the measure (None without one).
        Called once per forward on every rank, in step order."""
        i = self.step
        if i >= self.steps:
            raise RuntimeError(f"step cache made for {self.steps} steps was asked for step {i + 1}")
        forced = i == 0 or i == self.steps - 1 or self.residual is None
        kind = self.mode.kind
        if kind == "teacache":
            compute = self._teacache(signal, forced)
        elif kind == "fbcache":
            compute = self._fbcache(signal, forced)
        elif kind == "interval":
            m = self.mode
            compute = forced or i < m.warmup or (i - m.warmup) % m.every == m.every - 1
        else:
            compute = True
        self.decisions.append(compute)
        return compute

    def _change(self, signal: torch.Tensor) -> float:
        sums = self.reduce_sum(relative_l1_sums(signal, self.reference))
        change = float(sums[0] / sums[1]) if float(sums[1]) > 0 else float("inf")
        self.changes.append(change)
        return change

    def _teacache(self, signal: torch.Tensor | None, forced: bool) -> bool:
        assert signal is not None, "teacache needs block 0's modulated input"
        if self.reference is not None:
            self.accumulated += teacache_rescale(self._change(signal))
        compute = forced or self.accumulated >= self.mode.threshold
        if compute:
            self.accumulated = 0.0
        self.reference = signal  # the previous step's input, computed or not (as TeaCache does)
        return compute

    def _fbcache(self, signal: torch.Tensor | None, forced: bool) -> bool:
        assert signal is not None, "fbcache needs block 0's residual"
        compute = forced or self._change(signal) >= self.mode.threshold
        if compute:
            self.reference = signal  # compared with the last computed step's, so slow drift still adds up
        return compute

    def remember(self, residual: torch.Tensor) -> None:
        """The residual of a computed step (what a skipped step adds)."""
        self.residual = residual

    def reuse(self, tokens: torch.Tensor) -> torch.Tensor:
        """A skipped step's stack output: its input plus the kept residual."""
        assert self.residual is not None and self.residual.shape == tokens.shape, \
            f"residual {None if self.residual is None else tuple(self.residual.shape)} vs tokens {tuple(tokens.shape)}"
        return tokens + self.residual


def step_cache_for(request, reduce_sum: ReduceSum | None = None) -> StepCache | None:
    """The StepCache of one generation (a GenerationRequest: its `cache` and `steps`), or None when its mode is
    off: the sampler then runs exactly as without step caching. reduce_sum: as StepCache's."""
    mode = CacheMode.parse(request.cache)
    return None if mode.kind == "off" else StepCache(mode, request.steps, reduce_sum)


def tensors_kept(mode: CacheMode) -> int:
    """Activation-sized tensors a generation's cache holds on each rank at once (memory.py counts them): the
    residual; teacache also the last modulated input; fbcache also block 0's last residual and, while the rest
    of the stack runs, block 0's output (the residual is taken from it). Measured on one H100 at 49 frames:
    +0.17, +0.33 and +0.49 GiB of peak over off, 0.164 GiB a tensor (docs/benchmarks.md)."""
    return {"off": 0, "interval": 1, "teacache": 2, "fbcache": 3}[mode.kind]
