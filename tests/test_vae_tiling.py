from __future__ import annotations

import pytest
import torch

from mochi_runtime.checkpoints import ModelDir
from mochi_runtime.pipeline import load_vae
from mochi_runtime.vae_tiling import TilePlan, decode_tiled, plan_for_budget


@pytest.fixture(scope="module")
def vae(official_dir):
    return load_vae(ModelDir.open(official_dir), torch.device("cpu"), torch.float32)


# 169 frames is past the 163 Mochi saw in training.
@pytest.mark.parametrize("frames", [7, 13, 31, 49, 169])
@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_temporal_tiling_is_exact(vae, frames, chunk):
    t = (frames - 1) // 6 + 1
    z = torch.randn(1, 12, t, 4, 6, generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        ref = vae.decode(z)
    out = decode_tiled(vae, z, TilePlan(frames=chunk))
    assert out.shape[2] == ref.shape[2] == frames
    assert float((out - ref).abs().max()) <= 1e-5


def test_spatial_tiling_error_is_bounded(vae):
    """Measured on the embedded random-weight decoder (tile 16, overlap 6 latents): max 0.65, mean 0.055 on
    outputs of mean magnitude ~1. Random weights make edge effects reach far; this bounds regressions."""
    torch.manual_seed(0)
    z = torch.randn(1, 12, 2, 24, 24)
    with torch.inference_mode():
        ref = vae.decode(z)
    out = decode_tiled(vae, z, TilePlan(frames=2, tile_h=16, tile_w=16, overlap=6))
    err = (out - ref).abs()
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert float(err.max()) <= 0.7 and float(err.mean()) <= 0.06


def test_budget_picks_smaller_tiles_for_smaller_budgets(vae):
    big = plan_for_budget(vae, (1, 12, 9, 60, 106), 24 * 2**30)
    small = plan_for_budget(vae, (1, 12, 9, 60, 106), 64 * 2**20)
    assert big.tile_h == 0 and big.frames >= 1
    assert small.frames == 1 and 0 < small.tile_h < 60
