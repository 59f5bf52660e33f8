from __future__ import annotations

import pytest
import torch

from mochi_runtime.loading.checkpoints import ModelDir
from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup
from mochi_runtime.models.config import get_preset
from mochi_runtime.loading.loaders import load_vae
from mochi_runtime.models.vae import VAEDecoder
from mochi_runtime.models.vae import frames_to_uint8
from mochi_runtime.models.vae_tiling import TilePlan, decode_tiled, estimate_bytes, grid_plan, plan_for_budget, tiles_of

from numerics import assert_close


@pytest.fixture(scope="module")
def vae(official_dir):
    return load_vae(ModelDir.open(official_dir), torch.device("cpu"), torch.float32)


# 169 frames is past the 163 Mochi saw in training. "frame": one frame per piece at every level; "latent k": pieces
# of k latent frames at the first level (and as many elements further down); "whole": one piece.
PIECES = ["frame", "latent 1", "latent 2", "latent 4", "whole"]


def _piece_elements(vae, piece: str, h: int, w: int) -> int:
    if piece == "frame":
        return 1
    if piece == "whole":
        return 10**9
    return int(piece.split()[1]) * vae.cfg.block_out_channels[-1] * h * w


@pytest.mark.numeric
@pytest.mark.parametrize("trim", ["genmo", "end"])
@pytest.mark.parametrize("frames", [7, 13, 31, pytest.param(49, marks=pytest.mark.slow),
                                    pytest.param(169, marks=pytest.mark.slow)])  # long videos: make test only
@pytest.mark.parametrize("piece", PIECES)
def test_streamed_decode_is_exact(vae, frames, piece, trim):
    t = (frames - 1) // 6 + 1
    z = torch.randn(1, 12, t, 4, 6, generator=torch.Generator().manual_seed(frames))
    with torch.inference_mode():
        ref = vae.decode(z, trim=trim)
    out = decode_tiled(vae, z, TilePlan(piece_elements=_piece_elements(vae, piece, 4, 6), trim=trim))
    assert out.shape[2] == ref.shape[2] == frames
    # Streaming changes only how each conv's input is cut (the same sums per output element; the conv kernel
    # blocks them differently for other input lengths): largest over the margin matrix 6.4e-7 rel_l2, 6.5e-7
    # max_rel (tests/numerics.py).
    assert_close(out, ref, rel_l2=1e-5, max_rel=1e-5)


def _border_mask(plan: TilePlan, h: int, w: int, s: int) -> torch.Tensor:
    mask = torch.zeros(h * s, w * s, dtype=torch.bool)
    for t in tiles_of(plan, h, w):
        if t.y0 > 0:
            mask[t.y0 * s:(t.y0 + plan.overlap) * s, :] = True
        if t.x0 > 0:
            mask[:, t.x0 * s:(t.x0 + plan.overlap) * s] = True
    return mask


def test_spatial_tiling_error_is_bounded_and_seamless(vae):
    """Tiles differ from the whole-frame decode through per-tile GroupNorm statistics; the halo keeps each tile's
    padded edge out of the result. Measured on the embedded random-weight decoder (24x24 latents, tiles 14, overlap 4,
    halo 2): max 0.44, mean 0.045 (outputs of mean magnitude ~1); blend band 0.042 vs tile interiors 0.047.
    Without the halo the band was 0.13 vs 0.06 inside: a visible seam."""
    torch.manual_seed(0)
    z = torch.randn(1, 12, 2, 24, 24)
    with torch.inference_mode():
        ref = vae.decode(z)
    plan = TilePlan(tile_h=14, tile_w=14, overlap=4, halo=2)
    out = decode_tiled(vae, z, plan)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = (out - ref).abs()
    assert float(err.max()) <= 0.5 and float(err.mean()) <= 0.05
    per_pixel = err.mean(dim=(0, 1, 2))
    border = _border_mask(plan, 24, 24, vae.cfg.spatial_factor)
    assert float(per_pixel[border].mean()) <= float(per_pixel[~border].mean())


def test_budget_picks_whole_frames_then_more_tiles():
    with torch.device("meta"):  # planning needs the full-size layer shapes, not weights
        vae = VAEDecoder(get_preset("mochi-1-preview").vae)
    shape = (1, 12, 9, 60, 106)  # 49 frames at 848x480
    whole = plan_for_budget(vae, shape, 24 * 2**30)
    assert whole.tile_h == whole.tile_w == 0
    plans = [plan_for_budget(vae, shape, b) for b in (2 * 2**30, 2**30, 2**29)]
    counts = [len(tiles_of(p, 60, 106)) for p in plans]
    assert 2 <= counts[0] <= counts[1] <= counts[2], counts
    for budget, p in zip((2 * 2**30, 2**30, 2**29), plans):
        assert estimate_bytes(vae, shape, p) <= budget
    with pytest.raises(ValueError, match="cannot hold"):
        plan_for_budget(vae, shape, 2**20)


def test_budget_plan_decodes_every_frame(vae):
    z = torch.randn(1, 12, 3, 12, 16, generator=torch.Generator().manual_seed(3))
    budget = estimate_bytes(vae, z.shape, TilePlan(), dtype_bytes=4) - 1  # whole frames just miss
    plan = plan_for_budget(vae, z.shape, budget, dtype_bytes=4)
    assert len(tiles_of(plan, 12, 16)) >= 2
    out = decode_tiled(vae, z, plan)
    assert out.shape == (1, 3, 13, 96, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize("world", [2, 3, 4])
def test_rank_plans_cut_one_tile_per_rank(world):
    plan = grid_plan((60, 106), world)
    assert len(tiles_of(plan, 60, 106)) == world


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
@pytest.mark.parametrize("world,trim", [(2, "genmo"), (4, "genmo"), (2, "end")])
def test_parallel_decode_equals_single_process_tiled_decode(vae, official_dir, world, trim):
    z = torch.randn(1, 12, 3, 10, 12, generator=torch.Generator().manual_seed(world))
    plan = grid_plan((10, 12), world, trim=trim)
    with torch.inference_mode():
        ref = frames_to_uint8(decode_tiled(vae, z, plan))
    with WorkerGroup(GroupSpec(Layout(1, world, 1), model_dir=str(official_dir), threads=1)) as group:
        out = group.decode(z, plan)
    assert out.shape == ref.shape == (1, 13, 80, 96, 3)
    diff = (out.int() - ref.int()).abs()
    # Same tiles, same blend; only CPU thread counts differ, which can flip a uint8 rounding.
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-3


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_piecewise_blend_equals_blending_whole_tiles_exactly(vae):
    """decode_tiled blends each streamed piece as it comes; the spread decode blends whole tiles: same frames."""
    from mochi_runtime.models.vae_tiling import blend_tiles, decode_tile

    z = torch.randn(1, vae.cfg.latent_channels, 5, 12, 16, generator=torch.Generator().manual_seed(3))
    plan = TilePlan(piece_elements=20_000, tile_h=8, tile_w=8, overlap=2, halo=1)
    assert plan.trim == "genmo"  # the default, in every path
    with torch.inference_mode():
        ours = decode_tiled(vae, z, plan)
        zd = vae.denormalize(z)
        tiles = tiles_of(plan, 12, 16)
        assert len(tiles) > 2
        whole = blend_tiles(((t, decode_tile(vae, zd, t, plan)) for t in tiles), plan, 12, 16,
                            vae.cfg.spatial_factor)
    assert ours.shape == whole.shape and torch.equal(ours, whole)


def test_frames_to_uint8_converts_in_chunks_onto_the_requested_device():
    from mochi_runtime.models.vae import frames_to_uint8

    video = torch.rand(2, 3, 19, 8, 10) * 2.4 - 1.2  # some values outside [-1, 1]
    ref = (((video + 1) / 2).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    for chunk in (1, 4, 8, 64):
        out = frames_to_uint8(video, device="cpu", chunk_frames=chunk)
        assert out.dtype == torch.uint8 and out.shape == (2, 19, 8, 10, 3) and torch.equal(out, ref)
