"""Live previews: the denoised estimate, and the latent -> RGB map fitted from a VAE decoder."""
from __future__ import annotations

import torch
import torch.nn as nn

from mochi_runtime.models.config import VAEConfig
from mochi_runtime.models.latent_preview import LatentRGB, denoised_estimate


def test_the_denoised_estimate_is_the_clean_latent_on_a_straight_flow():
    """z = sigma * noise + (1 - sigma) * x0 and v = x0 - noise (the flow the sampler integrates): z + sigma v = x0."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(1, 12, 3, 4, 5, generator=g), torch.randn(1, 12, 3, 4, 5, generator=g)
    for sigma in (1.0, 0.7, 0.1):
        z = sigma * noise + (1 - sigma) * x0
        assert torch.allclose(denoised_estimate(z, x0 - noise, sigma), x0, atol=1e-5)


class LinearDecoder(nn.Module):
    """A decoder whose colours are a known linear map of the latents: each latent pixel paints its 8x8 block,
    latent frame 0 one frame and every later one 6 frames, as Mochi's decoder lays them out."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.cfg = VAEConfig()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        rgb = torch.einsum("oc,bcthw->bothw", self.weight, z) + self.bias.view(1, 3, 1, 1, 1)  # [0, 1]
        rgb = rgb.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)
        frames = torch.cat([rgb[:, :, :1], rgb[:, :, 1:].repeat_interleave(6, dim=2)], dim=2)
        return frames * 2 - 1  # the decoder's [-1, 1]


def test_the_fit_recovers_a_linear_decoders_colours():
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(3, 12, generator=g) * 0.05, torch.tensor([0.5, 0.4, 0.6])
    fitted = LatentRGB.fit(LinearDecoder(weight, bias))
    assert torch.allclose(torch.tensor(fitted.weight), weight, atol=1e-5)
    assert torch.allclose(torch.tensor(fitted.bias), bias, atol=1e-5)
    z = torch.randn(1, 12, 3, 4, 5, generator=g)
    frames = fitted.to_uint8(z)
    assert frames.shape == (3, 4, 5, 3) and frames.dtype.name == "uint8"
    want = ((torch.einsum("oc,cthw->thwo", weight, z[0]) + bias).clamp(0, 1) * 255).round()
    assert (torch.from_numpy(frames).float() - want).abs().max() <= 1  # rounding only


def test_the_fit_runs_on_the_embedded_vae():
    from mochi_runtime.pipeline import MochiPipeline

    vae = MochiPipeline.from_dir(None, device="cpu").vae
    fitted = LatentRGB.fit(vae, samples=2)
    assert len(fitted.weight) == 3 and len(fitted.weight[0]) == vae.cfg.latent_channels
    assert fitted.to_uint8(torch.randn(1, 12, 2, 3, 4)).shape == (2, 3, 4, 3)
