"""Random full-size models for the benchmarks: real weights are not downloadable here, and speed and
memory depend on shapes, not on values. Every rank builds the same weights from the same seed."""
from __future__ import annotations

import dataclasses

import torch
from transformers import T5Config, T5EncoderModel

from mochi_runtime.loading.tiny import init_random_, init_random_dit_
from mochi_runtime.models.config import get_preset
from mochi_runtime.models.dit import AsymmDiT
from mochi_runtime.models.text_encoder import CFGText
from mochi_runtime.parallel.sharded import shard_modules


def cfg_inputs(cfg, frames: int, height: int, width: int, cond_tokens: int, device, dtype, seed: int = 0):
    g = torch.Generator(device).manual_seed(seed)
    t = (frames - 1) // 6 + 1
    x = torch.randn(2, cfg.in_channels, t, height // 8, width // 8, generator=g, device=device, dtype=dtype)
    y = torch.randn(2, cfg.t5_token_length, cfg.t5_feat_dim, generator=g, device=device, dtype=dtype)
    mask = torch.zeros(2, cfg.t5_token_length, dtype=torch.bool, device=device)
    mask[CFGText.STACKED.index("cond"), :cond_tokens] = True  # the negative prompt is empty
    sigma = torch.full((2,), 0.7, device=device)
    return x, sigma, y, mask


def build_dit(preset: str, device, dtype, seed: int = 0, shard_group=None, prefetch: int = 1,
              depth: int | None = None) -> AsymmDiT:
    """Random full-size weights (the same on every rank); FSDP2-sharded over `shard_group` when given.

    depth: fewer blocks than the preset (error-growth checks: how a bf16 difference grows block by block)."""
    cfg = get_preset(preset).dit
    if depth is not None:
        cfg = dataclasses.replace(cfg, depth=depth)
    with torch.device("meta"):
        dit = AsymmDiT(cfg).to(dtype)
    if shard_group is not None:
        shard_modules(dit, shard_group, torch.device(device), prefetch)
    dit = init_random_dit_(dit.to_empty(device=device), seed)
    return dit.eval().requires_grad_(False)


def build_t5(preset: str, device, dtype: torch.dtype, seed: int = 7):
    """A T5 encoder of the preset's size with seeded random weights, built on meta and filled on `device`
    (the full-size one is 4.9B parameters: no host-side init). Scale 0.5 keeps 24 random layers finite."""
    c = get_preset(preset).t5
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**c.to_dict(), is_encoder_decoder=False, use_cache=False)).to(dtype)
    return init_random_(t5.to_empty(device=device), seed=seed, scale=0.5).eval()
