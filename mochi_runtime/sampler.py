"""Sigma schedule, classifier-free guidance and the Euler flow-matching loop.

Latents, the Euler update and the CFG combination stay in fp32 whatever the
model dtype. The initial noise comes from a seeded CPU generator, so one seed
gives the same video on any device and any parallel layout.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch

from .models.latent_preview import denoised_estimate
from .models.step_cache import StepCache
from .models.text_encoder import CFGText


def linear_quadratic_schedule(steps: int, threshold_noise: float = 0.025) -> list[float]:
    """Mochi's schedule: linear from 1 to 1-threshold for half the steps, quadratic to 0 after.

    Returns steps + 1 sigmas, the last being 0.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if steps == 1:
        return [1.0, 0.0]
    linear_steps = steps // 2
    quad_steps = steps - linear_steps
    diff = linear_steps - threshold_noise * steps
    quad_coef = diff / (linear_steps * quad_steps**2)
    lin_coef = threshold_noise / linear_steps - 2 * diff / quad_steps**2
    const = quad_coef * linear_steps**2
    schedule = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    schedule += [quad_coef * i**2 + lin_coef * i + const for i in range(linear_steps, steps)]
    return [1.0 - s for s in schedule] + [0.0]


def initial_noise(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """fp32 standard normal noise from a CPU generator (device-independent)."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float32)


class Velocity(Protocol):
    """The guided velocity at (z, sigma): fp32 tensor shaped like z."""

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor: ...


def cfg_combine(v_uncond: torch.Tensor, v_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    return v_uncond.float() + guidance * (v_cond.float() - v_uncond.float())


def guide(both: torch.Tensor, guidance: float) -> torch.Tensor:
    """The guided velocity from both branches' velocities, stacked as `CFGText.stacked()` ordered them."""
    v_cond, v_uncond = CFGText.split(both)
    return cfg_combine(v_uncond, v_cond, guidance)


class CFGVelocity:
    """Runs a DiT on the conditional and unconditional branches as one batch of 2.

    cache: the generation's StepCache (None: every step computed); each call is its next step."""

    def __init__(self, dit: torch.nn.Module, text: CFGText, guidance: float, cache: StepCache | None = None):
        self.dit, self.guidance, self.cache = dit, guidance, cache
        self.use_cfg = guidance != 1.0  # guidance 1 is the prompt's branch alone
        emb = text.stacked() if self.use_cfg else text.cond
        self.feats, self.mask = emb.features, emb.mask

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        b = 2 if self.use_cfg else 1
        x = z.expand(b, *z.shape[1:]) if self.use_cfg else z
        s = torch.full((b,), sigma, dtype=torch.float32, device=z.device)
        v = self.dit(x, s, self.feats, self.mask, cache=self.cache).float()
        return guide(v, self.guidance) if self.use_cfg else v


# on_step(step, total, skipped): `step` of `total` steps done, `skipped` of them reused a cached residual
StepCallback = Callable[[int, int, int], None]


# on_preview(step, x0): the denoised estimate [1, 12, T, h, w] after `step` steps (latent_preview.py)
PreviewCallback = Callable[[int, torch.Tensor], None]


def euler_sample(velocity: Velocity, z: torch.Tensor, sigmas: list[float], on_step: StepCallback | None = None,
                 cache: StepCache | None = None, on_preview: PreviewCallback | None = None,
                 preview_every: int = 0) -> torch.Tensor:
    """z_{i+1} = z_i + (sigma_i - sigma_{i+1}) * v(z_i, sigma_i), in fp32.

    on_step(i, total, skipped) after each step may raise to stop. cache: the StepCache the velocity uses, whose
    count of skipped steps on_step reports. on_preview(i, x0) every `preview_every` steps (not after the last:
    the video itself comes then), before that step's on_step."""
    z = z.float()
    total = len(sigmas) - 1
    for i in range(total):
        v = velocity(z, sigmas[i])
        if on_preview is not None and preview_every > 0 and (i + 1) % preview_every == 0 and i + 1 < total:
            on_preview(i + 1, denoised_estimate(z, v, sigmas[i]))
        z = z + (sigmas[i] - sigmas[i + 1]) * v
        if on_step is not None:
            on_step(i + 1, total, 0 if cache is None else cache.skipped)
    return z
