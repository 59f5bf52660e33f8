"""Tiled VAE decoding: exact in time, blended in space, sized from a memory budget.

Temporal tiling is exact: the decoder's only temporal operators are causal 3x3x3
convolutions (norms, activations and the depth-to-space projections act per
frame), so decoding latent frames chunk by chunk while each conv carries the
last two input frames of the previous chunk computes the untiled result, frame
for frame, and the output has exactly 6(T-1)+1 frames.

Spatial tiling is approximate: tiles overlap by `overlap` latent pixels and are
blended with linear ramps across the overlap, which hides the replicate-padding
differences at tile edges.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from .vae import CausalConv3d, VAEDecoder


@dataclass(frozen=True)
class TilePlan:
    """Sizes in latent units. tile_h/tile_w <= 0 disables spatial tiling."""

    frames: int = 4  # latent frames per temporal chunk
    tile_h: int = 0
    tile_w: int = 0
    overlap: int = 4

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames per chunk must be >= 1")
        if self.tile_h > 0 and self.tile_h <= self.overlap or self.tile_w > 0 and self.tile_w <= self.overlap:
            raise ValueError("spatial tiles must be larger than the overlap")


def activation_bytes_per_latent_voxel(vae: VAEDecoder, dtype_bytes: int) -> float:
    """Rough peak activation bytes per latent voxel (t, h, w) of one decoder chunk.

    The widest tensors live after the last upsampling: channels[0] at 6x time and
    64x space; a residual block holds about four of them at once.
    """
    cfg = vae.cfg
    expand = cfg.temporal_factor * cfg.spatial_factor**2
    return 4.0 * cfg.block_out_channels[0] * expand * dtype_bytes


def plan_for_budget(vae: VAEDecoder, latent_shape: tuple[int, ...], budget_bytes: int,
                    dtype_bytes: int = 2, overlap: int = 4) -> TilePlan:
    """Largest chunks/tiles whose estimated activations fit the budget (whole frame first, then tiles)."""
    _, _, t, h, w = latent_shape
    per_voxel = activation_bytes_per_latent_voxel(vae, dtype_bytes)
    voxels = max(1, int(budget_bytes // per_voxel))
    frames_fit = voxels // (h * w)
    if frames_fit >= 1:
        return TilePlan(frames=int(min(t, frames_fit)), overlap=overlap)
    # Not even one whole latent frame fits: tile space, one frame per chunk.
    side = int(voxels**0.5)
    side = max(side, overlap + 2)
    return TilePlan(frames=1, tile_h=min(h, side), tile_w=min(w, side), overlap=overlap)


@contextmanager
def streaming(vae: VAEDecoder) -> Iterator[None]:
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d)]
    for c in convs:
        c.streaming, c.carry = True, None
    try:
        yield
    finally:
        for c in convs:
            c.streaming, c.carry = False, None


def decode_temporal(vae: VAEDecoder, z: torch.Tensor, frames: int) -> torch.Tensor:
    """De-normalised latents [B, C, T, h, w] -> raw decoder output, chunk by chunk (exact)."""
    with streaming(vae):
        return torch.cat([vae(z[:, :, i:i + frames]) for i in range(0, z.shape[2], frames)], dim=2)


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile <= 0 or tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _ramp(length: int, lo_overlap: int, hi_overlap: int, device) -> torch.Tensor:
    """Blend weights along one axis: ramps up over the leading overlap, down over the trailing one."""
    w = torch.ones(length, device=device)
    if lo_overlap > 0:
        w[:lo_overlap] = (torch.arange(lo_overlap, device=device) + 0.5) / lo_overlap
    if hi_overlap > 0:
        w[length - hi_overlap:] = torch.minimum(
            w[length - hi_overlap:], (torch.arange(hi_overlap, 0, -1, device=device) - 0.5) / hi_overlap)
    return w


@torch.inference_mode()
def decode_tiled(vae: VAEDecoder, latents: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Normalised DiT latents -> frames [B, 3, 6(T-1)+1, 8h, 8w] in [-1, 1], within the plan's tile sizes."""
    z = vae.denormalize(latents)
    b, _, t, h, w = z.shape
    s = vae.cfg.spatial_factor
    hs, ws = _starts(h, plan.tile_h, plan.overlap), _starts(w, plan.tile_w, plan.overlap)
    if len(hs) == 1 and len(ws) == 1:
        out = decode_temporal(vae, z, plan.frames)
    else:
        th = h if len(hs) == 1 else plan.tile_h
        tw = w if len(ws) == 1 else plan.tile_w
        out = None
        weight = torch.zeros(h * s, w * s, device=z.device)
        for y0 in hs:
            for x0 in ws:
                tile = decode_temporal(vae, z[:, :, :, y0:y0 + th, x0:x0 + tw], plan.frames).float()
                wy = _ramp(th * s, (plan.overlap * s) if y0 > 0 else 0, (plan.overlap * s) if y0 + th < h else 0,
                           z.device)
                wx = _ramp(tw * s, (plan.overlap * s) if x0 > 0 else 0, (plan.overlap * s) if x0 + tw < w else 0,
                           z.device)
                wt = wy[:, None] * wx[None, :]
                if out is None:
                    out = torch.zeros(b, tile.shape[1], tile.shape[2], h * s, w * s, device=z.device)
                ys, xs = slice(y0 * s, (y0 + th) * s), slice(x0 * s, (x0 + tw) * s)
                out[:, :, :, ys, xs] += tile * wt
                weight[ys, xs] += wt
        out = out / weight
    return out[:, :, vae.cfg.temporal_factor - 1:]
