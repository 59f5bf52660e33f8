"""Model configurations and presets.

One config object per model (diffusers style). The `tiny` preset is the same
architecture with small widths: the embedded default and every CPU test run the
exact code path of `mochi-1-preview`.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


def swiglu_hidden(dim: int, multiple_of: int = 256) -> int:
    """Mochi's SwiGLU width: int(2 * 4 * dim / 3) rounded up to `multiple_of`."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class _JsonConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {unknown}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class DiTConfig(_JsonConfig):
    depth: int = 48
    hidden_size_x: int = 3072
    hidden_size_y: int = 1536
    num_heads: int = 24
    in_channels: int = 12
    patch_size: int = 2
    t5_feat_dim: int = 4096
    t5_token_length: int = 256
    timestep_freq_dim: int = 256
    pool_heads: int = 8
    rope_base_area: int = 192 * 192
    qk_norm_eps: float = 1e-5
    mod_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size_x // self.num_heads

    @property
    def mlp_hidden_x(self) -> int:
        return swiglu_hidden(self.hidden_size_x)

    @property
    def mlp_hidden_y(self) -> int:
        return swiglu_hidden(self.hidden_size_y)

    def __post_init__(self) -> None:
        if self.hidden_size_x % self.num_heads:
            raise ValueError("hidden_size_x must be divisible by num_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")
        if self.t5_feat_dim % self.pool_heads:
            raise ValueError("t5_feat_dim must be divisible by pool_heads")


@dataclass(frozen=True)
class VAEConfig(_JsonConfig):
    latent_channels: int = 12
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 768)
    layers_per_block: tuple[int, ...] = (3, 3, 4, 6, 3)
    temporal_expansions: tuple[int, ...] = (1, 2, 3)
    spatial_expansions: tuple[int, ...] = (2, 2, 2)
    norm_groups: int = 32
    # Per-channel latent statistics used to de-normalise DiT latents (Mochi's values).
    latents_mean: tuple[float, ...] = (
        -0.06730895953510081, -0.038011381506090416, -0.07477820912866141, -0.05565264470995561,
        0.012767231469026969, -0.04703542746246419, 0.043896967884726704, -0.09346305707025976,
        -0.09918314763016893, -0.008729793427399178, -0.011931556316503654, -0.0321993391887285,
    )
    latents_std: tuple[float, ...] = (
        0.9263795028493863, 0.9248894543193766, 0.9393059390890617, 0.959253732819592,
        0.8244560132752793, 0.917259975397747, 0.9294154431013696, 1.3720942357788521,
        0.881393668867029, 0.9168315692124348, 0.9185249279345552, 0.9274757570805041,
    )

    @property
    def temporal_factor(self) -> int:
        out = 1
        for t in self.temporal_expansions:
            out *= t
        return out

    @property
    def spatial_factor(self) -> int:
        out = 1
        for s in self.spatial_expansions:
            out *= s
        return out

    def frames_out(self, latent_frames: int) -> int:
        """Video frames a decode of `latent_frames` latent frames gives: 6(T-1)+1 (the causal warm-up dropped)."""
        return (latent_frames - 1) * self.temporal_factor + 1

    def __post_init__(self) -> None:
        if len(self.layers_per_block) != len(self.block_out_channels) + 1:
            raise ValueError("layers_per_block needs one entry per block plus the middle block")
        if len(self.latents_mean) != self.latent_channels or len(self.latents_std) != self.latent_channels:
            raise ValueError("latents_mean/std need one value per latent channel")


@dataclass(frozen=True)
class T5Config(_JsonConfig):
    """Arguments for transformers.T5Config (encoder only)."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    feed_forward_proj: str = "gated-gelu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128


@dataclass(frozen=True)
class ModelPreset:
    name: str
    dit: DiTConfig
    vae: VAEConfig
    t5: T5Config = field(default_factory=T5Config)


TINY_T5 = T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)

PRESETS: dict[str, ModelPreset] = {
    "mochi-1-preview": ModelPreset("mochi-1-preview", DiTConfig(), VAEConfig(), T5Config()),
    # Widths chosen so Mochi's SwiGLU rounding and diffusers' (8*dim)//3 agree
    # (192 -> 512, 96 -> 256): the converted tiny weights load into diffusers.
    "tiny": ModelPreset(
        "tiny",
        DiTConfig(
            depth=3, hidden_size_x=192, hidden_size_y=96, num_heads=8, t5_feat_dim=TINY_T5.d_model,
            timestep_freq_dim=64,
        ),
        VAEConfig(block_out_channels=(32, 32, 32, 64), layers_per_block=(1, 1, 1, 1, 1), norm_groups=32),
        TINY_T5,
    ),
}


def get_preset(name: str) -> ModelPreset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
