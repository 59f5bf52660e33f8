"""Live previews: the sampler's current denoised estimate as a small RGB video, without the VAE.

At step i the flow-matching sampler holds z_i and the velocity v_i (z = sigma * noise + (1 - sigma) * x0,
v = x0 - noise), so its estimate of the clean latents is x0 = z_i + sigma_i * v_i. A preview maps each
latent pixel of x0 to a colour with one linear map (12 channels -> RGB, plus a bias): an 848x480x49 video
previews as 9 frames of 106x60, ~170 KB, at the cost of a few elementwise passes over the latents.

The map is fitted once, from the checkpoint's own VAE decoder, when the model loads (`LatentRGB.fit`): it
decodes a few random latents (normalised, as the DiT produces them) and solves the least-squares fit of each
latent pixel to the mean colour of the 8x8 pixels (and the frames) it decodes to. So it fits any checkpoint,
and the tiny random default as well as Mochi's weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .vae import VAEDecoder


def denoised_estimate(z: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 predicted at noise level sigma from the latents z and the (guided) velocity, both [1, 12, T, h, w]."""
    return z.float() + sigma * velocity.float()


@dataclass(frozen=True)
class LatentRGB:
    """A linear map from normalised latent channels to RGB in [0, 1]: rgb = weight @ latent + bias.

    weight: 3 rows of `channels` floats; bias: 3 floats (plain tuples: it travels to the workers pickled)."""

    weight: tuple[tuple[float, ...], ...]
    bias: tuple[float, float, float]

    def to_uint8(self, latents: torch.Tensor) -> np.ndarray:
        """Latents [1, C, T, h, w] (any device) -> uint8 RGB frames [T, h, w, 3] on the host."""
        assert latents.ndim == 5 and latents.shape[0] == 1 and latents.shape[1] == len(self.weight[0]), \
            f"bad latents {tuple(latents.shape)}"
        w = torch.tensor(self.weight, dtype=torch.float32, device=latents.device)  # [3, C]
        b = torch.tensor(self.bias, dtype=torch.float32, device=latents.device)
        rgb = torch.einsum("oc,cthw->thwo", w, latents[0].float()) + b
        return rgb.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()

    @classmethod
    @torch.no_grad()
    def fit(cls, vae: VAEDecoder, samples: int = 4, size: tuple[int, int] = (8, 8), seed: int = 0) -> "LatentRGB":
        """Least-squares fit on `samples` random latents of 2 frames x `size` decoded by `vae` (any device).

        Latent frame 0 decodes to video frame 0 and frame 1 to the next temporal_factor frames; each latent
        pixel is paired with the mean colour of the frames and the 8x8 block it decodes to."""
        device = next(vae.parameters()).device
        gen = torch.Generator("cpu").manual_seed(seed)
        c, s = vae.cfg.latent_channels, vae.cfg.spatial_factor
        xs, ys = [], []
        for _ in range(samples):
            z = torch.randn(1, c, 2, *size, generator=gen)
            video = ((vae.decode(z.to(device)).float().cpu() + 1) / 2)[0]  # [3, F, 8h, 8w], unclipped: the fit is linear
            frames = [video[:, :1], video[:, 1:]]  # what latent frame 0 and latent frame 1 decode to
            for t, part in enumerate(frames):
                colour = torch.nn.functional.avg_pool2d(part.mean(1), s)  # [3, h, w]
                xs.append(z[0, :, t].reshape(c, -1).T)
                ys.append(colour.reshape(3, -1).T)
        x = torch.cat(xs).double()
        y = torch.cat(ys).double()
        design = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        sol = torch.linalg.lstsq(design, y).solution  # [C + 1, 3]
        weight = tuple(tuple(float(v) for v in sol[:c, o]) for o in range(3))
        return cls(weight, tuple(float(v) for v in sol[c]))  # type: ignore[arg-type]
