"""Text -> video in one process: T5, DiT denoising loop, VAE decode.

`MochiPipeline.from_dir` loads either checkpoint layout (or the embedded tiny
default when no directory is given) straight into the target device and dtype.
The denoising loop takes a `Velocity` object, so the same pipeline drives a
local DiT or a sequence-parallel worker group.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from .loading.loaders import check_text_width, load_dit, load_text_encoder, load_vae, open_model_dir, resolve_device, resolve_dtype
from .models.dit import AsymmDiT
from .models.step_cache import step_cache_for
from .sampler import CFGVelocity, StepCallback, euler_sample, initial_noise, linear_quadratic_schedule
from .models.text_encoder import CFGText, TextEncoder
from .timing import StageTimes
from .validation import GenerationRequest, Limits, validate
from .models.vae import VAEDecoder, frames_to_uint8
from .models.vae_tiling import TilePlan, decode_tiled, grid_plan

log = logging.getLogger(__name__)

@dataclass
class GenerationResult:
    frames: np.ndarray  # uint8 [F, H, W, 3]
    latents: torch.Tensor  # fp32 [1, 12, T, h, w] on CPU
    times: StageTimes = field(default_factory=StageTimes)
    steps: int = 0  # denoising steps run
    steps_skipped: int = 0  # of them, steps whose block stack the step cache skipped

    @property
    def steps_computed(self) -> int:
        return self.steps - self.steps_skipped


class Denoiser(Protocol):
    """Runs the whole sampling loop for one request and returns fp32 latents on CPU."""

    def denoise(self, request: GenerationRequest, text: CFGText, on_step: StepCallback | None = None
                ) -> torch.Tensor: ...


def run_sampler(dit: AsymmDiT, request: GenerationRequest, text: CFGText, on_step: StepCallback | None = None
                ) -> torch.Tensor:
    """Seeded noise -> Euler loop with CFG on one DiT; the reference every layout must reproduce.

    Args:
        text: both branches' T5 embeddings, [1, 256, 4096] each at full size.
    Returns:
        fp32 latents [1, 12, T, H/8, W/8] on CPU (T = (frames - 1) / 6 + 1).
    """
    device = next(dit.parameters()).device
    cache = step_cache_for(request)
    velocity = CFGVelocity(dit, text.to(device), request.guidance, cache)
    z = initial_noise(request.seed, request.latent_shape).to(device)
    with torch.inference_mode():
        return euler_sample(velocity, z, linear_quadratic_schedule(request.steps), on_step, cache).cpu()


class LocalDenoiser:
    def __init__(self, dit: AsymmDiT) -> None:
        self.dit = dit

    def denoise(self, request, text, on_step=None) -> torch.Tensor:
        return run_sampler(self.dit, request, text, on_step)


class MochiPipeline:
    def __init__(self, text_encoder: TextEncoder, denoiser: Denoiser, vae: VAEDecoder, limits: Limits = Limits(),
                 tile_plan: TilePlan = TilePlan(), parallel_decode: bool = False):
        if parallel_decode and not hasattr(denoiser, "decode"):
            raise ValueError("parallel decode needs a worker group as the denoiser")
        self.text_encoder, self.denoiser, self.vae, self.limits = text_encoder, denoiser, vae, limits
        self.tile_plan = tile_plan
        self.parallel_decode = parallel_decode

    @classmethod
    def from_dir(
        cls,
        model_dir: str | Path | None = None,
        device: str | torch.device | None = "auto",
        dtype: str = "auto",
        attention: str = "auto",
        limits: Limits = Limits(),
        denoiser: Denoiser | None = None,
        t5_dir: str | Path | None = None,
        parallel_decode: bool = False,
        offload_text_encoder: bool = False,
        tile_plan: TilePlan = TilePlan(),
        compile: bool | None = None,
    ) -> "MochiPipeline":
        """Load T5 and the VAE here; the DiT too unless a `denoiser` (e.g. a parallel group) is given.

        compile: None = torch.compile the DiT blocks on GPU only; False gives latents that are bit-identical
        across processes on GPU (compiled multi-GPU groups are not: docs/operations.md), ~1.4x slower."""
        md = open_model_dir(model_dir)
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        # The DiT first: an fp8 DiT is read in bf16 and quantised in place, and that transient full-width copy
        # must not meet T5 on the GPU (18.7 + 9.5 GiB at full size would not fit a 24 GiB card).
        dit = None if denoiser is not None else load_dit(md, dev, dt, attention, compile, fp8=dtype == "fp8")
        te = load_text_encoder(md, dev, torch.float32 if dev.type == "cpu" else dt, t5_dir, offload_text_encoder)
        if dit is not None:
            check_text_width(te, dit.cfg.t5_feat_dim)
            denoiser = LocalDenoiser(dit)
        vae = load_vae(md, dev, dt)
        return cls(te, denoiser, vae, limits, tile_plan=tile_plan, parallel_decode=parallel_decode)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def encode_text(self, request: GenerationRequest) -> CFGText:
        return self.text_encoder.encode_cfg(request.prompt, request.negative_prompt)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Streamed decode (exact: equals the untiled decode) -> uint8 [F, H, W, 3]; or tiles over the group."""
        if self.parallel_decode:
            # one spatial tile per rank, under this pipeline's trim rule
            plan = grid_plan(tuple(latents.shape[-2:]), self.denoiser.spec.layout.world,  # type: ignore[attr-defined]
                             trim=self.tile_plan.trim)
            return self.denoiser.decode(latents, plan)[0].numpy()  # type: ignore[attr-defined]
        video = decode_tiled(self.vae, latents.to(self.device), self.tile_plan)
        return frames_to_uint8(video, device="cpu")[0].numpy()

    def generate(self, request: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        request = validate(request, self.limits)
        times = StageTimes()
        dev = self.device
        with times.stage("text", dev):
            text = self.encode_text(request)
        skipped = [0]

        def step(i: int, total: int, n_skipped: int) -> None:
            skipped[0] = n_skipped
            if on_step is not None:
                on_step(i, total, n_skipped)

        with times.stage("denoise", dev):
            latents = self.denoiser.denoise(request, text, step)
        with times.stage("decode", dev):
            frames = self.decode(latents)
        assert frames.shape == (request.num_frames, request.height, request.width, 3), frames.shape
        return GenerationResult(frames, latents, times, request.steps, skipped[0])
