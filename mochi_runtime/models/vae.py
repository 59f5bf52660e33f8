"""Mochi's causal 3D VAE decoder (latents -> RGB frames).

Module names follow Genmo's `decoder.safetensors` keys (`blocks.0.0`,
`blocks.{i}.blocks.{j}.stack.{k}`, `blocks.{i}.proj`, `output_proj`).
Every temporal convolution is causal: the first frame is replicated in front,
so frame t depends only on frames <= t. That is what makes exact temporal
tiling possible (see `mochi_runtime.models.vae_tiling`): a conv that is fed its
previous `kernel_t - 1` input frames as a carry computes exactly what the
untiled decode computes.

Where the causal warm-up frames go (`trim`, see `TRIM_RULES`) changes the
video, not just its length. Genmo's decoder, the one the VAE was trained
with, drops the first `temporal_expansion - 1` frames inside every
up-sampling block, so each later causal conv pads by repeating the first
*kept* frame. diffusers keeps them through the whole decoder and drops
the first `temporal_factor - 1` output frames after it. Both give 6(T-1)+1 frames; on
random weights the first 15-36 frames differ. Genmo's rule is the default.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import VAEConfig

# "genmo": drop each up-sampling block's first temporal_expansion - 1 frames (Genmo's decoder, the default);
# "end": keep them through the decoder, drop the first temporal_factor - 1 output frames after it (diffusers').
TRIM_RULES = ("genmo", "end")
DEFAULT_TRIM = "genmo"


def check_trim(trim: str) -> str:
    if trim not in TRIM_RULES:
        raise ValueError(f"trim must be one of {list(TRIM_RULES)}, got {trim!r}")
    return trim


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame on its own (statistics over C/groups x H x W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, C, T, H, W]
        b, c, t, h, w = x.shape
        y = F.group_norm(x.transpose(1, 2).reshape(b * t, c, h, w), self.num_groups, self.weight, self.bias, self.eps)
        return y.view(b, t, c, h, w).transpose(1, 2)


class CausalConv3d(nn.Conv3d):
    """3x3x3 conv, replicate-padded in space and causally (first frame repeated) in time.

    When `carry` is set (temporal tiling), the last `kernel_t - 1` frames of the
    previous chunk are used instead of the replicated first frame, and the
    carry is updated with this chunk's tail.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, stride=1, padding=0)
        self.streaming = False
        self.carry: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt = self.kernel_size[0]
        x = F.pad(x, (1, 1, 1, 1, 0, 0), mode="replicate")
        if self.streaming and self.carry is not None:
            head = self.carry
        else:
            head = x[:, :, :1].expand(-1, -1, kt - 1, -1, -1)
        x = torch.cat([head, x], dim=2)
        if self.streaming:
            self.carry = x[:, :, -(kt - 1):].clone()
        return super().forward(x)


class ResBlock(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.stack = nn.Sequential(
            FrameGroupNorm(groups, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels),
            FrameGroupNorm(groups, channels),
            nn.SiLU(),
            CausalConv3d(channels, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stack(x)


class UpsampleBlock(nn.Module):
    """Residual blocks, then a per-voxel linear that expands into time and space (depth-to-space)."""

    def __init__(self, cin: int, cout: int, layers: int, t_exp: int, s_exp: int, groups: int) -> None:
        super().__init__()
        self.t_exp, self.s_exp = t_exp, s_exp
        self.blocks = nn.Sequential(*[ResBlock(cin, groups) for _ in range(layers)])
        self.proj = nn.Linear(cin, cout * t_exp * s_exp * s_exp)

    def forward(self, x: torch.Tensor, drop_head: bool = False) -> torch.Tensor:
        """[B, cin, t, h, w] -> [B, cout, t * t_exp, h * s_exp, w * s_exp]; with drop_head (the video's first
        frames under Genmo's rule) the first t_exp - 1 of those frames are dropped."""
        x = self.blocks(x)
        x = self.proj(x.movedim(1, -1)).movedim(-1, 1)
        b, _, t, h, w = x.shape
        st, ss = self.t_exp, self.s_exp
        x = x.view(b, -1, st, ss, ss, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, -1, t * st, h * ss, w * ss)
        return x[:, :, st - 1:] if drop_head else x


class VAEDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch, layers, g = cfg.block_out_channels, cfg.layers_per_block, cfg.norm_groups
        nb = len(ch) - 1
        first = [nn.Conv3d(cfg.latent_channels, ch[-1], kernel_size=1)]
        first += [ResBlock(ch[-1], g) for _ in range(layers[-1])]
        blocks: list[nn.Module] = [nn.Sequential(*first)]
        for b in range(nb):
            blocks.append(
                UpsampleBlock(ch[-b - 1], ch[-b - 2], layers[-b - 2], cfg.temporal_expansions[-b - 1],
                              cfg.spatial_expansions[-b - 1], g)
            )
        blocks.append(nn.Sequential(*[ResBlock(ch[0], g) for _ in range(layers[0])]))
        self.blocks = nn.ModuleList(blocks)
        self.output_proj = nn.Linear(ch[0], cfg.out_channels)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """DiT latents -> VAE latent space with Mochi's per-channel statistics (fp32)."""
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.cfg.latents_std, dtype=torch.float32, device=z.device).view(1, -1, 1, 1, 1)
        return z.float() * std + mean

    def run_block(self, level: int, x: torch.Tensor, first: bool, trim: str) -> torch.Tensor:
        """Decoder level `level` on x; `first`: x starts at the video's first frame (where Genmo's rule trims)."""
        block = self.blocks[level]
        if isinstance(block, UpsampleBlock):
            return block(x, drop_head=first and trim == "genmo")
        return block(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The last level's activations -> RGB (SiLU, then the per-voxel output projection)."""
        return self.output_proj(F.silu(x).movedim(1, -1)).movedim(-1, 1)

    def forward(self, z: torch.Tensor, trim: str = DEFAULT_TRIM) -> torch.Tensor:
        """De-normalised latents [B, 12, T, h, w] -> frames [B, 3, F, 8h, 8w]: F = 6(T-1)+1 with trim "genmo"
        (trimmed inside the blocks), 6T with trim "end" (the end trim is `decode`'s)."""
        assert z.ndim == 5 and z.shape[1] == self.cfg.latent_channels, f"bad latents {tuple(z.shape)}"
        check_trim(trim)
        x = z.to(self.output_proj.weight.dtype)
        for level in range(len(self.blocks)):
            x = self.run_block(level, x, True, trim)
        return self.head(x)

    def end_frames(self, trim: str) -> int:
        """Frames dropped at the end of the decoder under `trim` (the in-block rule drops none there)."""
        return self.cfg.temporal_factor - 1 if check_trim(trim) == "end" else 0

    def decode(self, latents: torch.Tensor, trim: str = DEFAULT_TRIM) -> torch.Tensor:
        """Normalised DiT latents [B, 12, T, h, w] -> frames [B, 3, 6(T-1)+1, 8h, 8w] in [-1, 1] (float).

        trim: "genmo" (default; Genmo's decoder) or "end" (diffusers'), see `TRIM_RULES`."""
        out = self(self.denormalize(latents.float()), trim)
        return out[:, :, self.end_frames(trim):]


def frames_to_uint8(video: torch.Tensor, device: torch.device | str | None = None,
                    chunk_frames: int = 8) -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3] on `device` (default: the video's).

    Converted a few frames at a time: a whole-video fp32 temporary would be twice the bf16 video (0.8 GB at
    163 frames of 848x480) and would set the decoder's peak memory.
    """
    b, c, f, h, w = video.shape
    out = torch.empty(b, f, h, w, c, dtype=torch.uint8, device=device or video.device)
    for i in range(0, f, chunk_frames):
        x = ((video[:, :, i:i + chunk_frames].float() + 1) / 2).clamp_(0, 1)
        out[:, i:i + chunk_frames] = x.mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 4, 1)
    return out
