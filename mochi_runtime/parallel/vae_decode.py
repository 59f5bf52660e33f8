"""One video's VAE decode spread over a process group: spatial tiles round-robin, blended on rank 0.

Tiles are independent, so rank r decoding tiles r, r+N, ... and rank 0 blending
them in the plan's order computes exactly what the single-process tiled decode
computes with the same plan (`vae_tiling.grid_plan` cuts one tile per rank).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..models.vae import VAEDecoder
from ..models.vae_tiling import TilePlan, blend_tiles, decode_tile, decode_tiled, tiles_of


@torch.inference_mode()
def decode_distributed(vae: VAEDecoder, latents: torch.Tensor, plan: TilePlan,
                       group: dist.ProcessGroup | None = None) -> torch.Tensor | None:
    """Normalised latents (same on every rank) -> on the group's first rank, what `decode_tiled` returns for the
    same plan (frames [B, 3, F, 8h, 8w] in the decoder's dtype); None elsewhere."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    dst = dist.get_global_rank(group, 0) if group is not None else 0
    h, w = latents.shape[-2:]
    tiles = tiles_of(plan, h, w)
    if len(tiles) == 1 or world == 1:  # nothing to spread: the first rank decodes alone
        return decode_tiled(vae, latents, plan) if rank == 0 else None
    z = vae.denormalize(latents)
    per_rank = math.ceil(len(tiles) / world)
    mine = [decode_tile(vae, z, t, plan) for t in tiles[rank::world]]
    shape = (per_rank, *mine[0].shape) if mine else None
    # Every tile has the same kept size, so one stacked tensor per rank (zero-padded) carries them, in the
    # decoder's dtype: rank 0 then blends exactly the values decode_tiled would.
    if shape is None:
        s = vae.cfg.spatial_factor
        shape = (per_rank, z.shape[0], vae.cfg.out_channels, vae.cfg.frames_out(z.shape[2]), tiles[0].th * s,
                 tiles[0].tw * s)
    stack = torch.zeros(shape, dtype=vae.output_proj.weight.dtype, device=z.device)
    for i, part in enumerate(mine):
        stack[i] = part
    gathered = [torch.empty_like(stack) for _ in range(world)] if rank == 0 else None
    dist.gather(stack, gathered, dst=dst, group=group)
    if rank != 0:
        return None
    assert gathered is not None
    parts = ((t, gathered[i % world][i // world]) for i, t in enumerate(tiles))
    return blend_tiles(parts, plan, h, w, vae.cfg.spatial_factor)
