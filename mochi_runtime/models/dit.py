"""Mochi's asymmetric diffusion transformer (AsymmDiT).

Parameter names follow Genmo's `dit.safetensors` keys exactly, so the official
checkpoint loads with no renaming. The joint attention itself is delegated to a
`JointAttention` object (`self.joint_attention`): the blocks compute Q/K/V and
never know whether attention runs in one process or across a parallel group.

The forward pass is split into `embed` / `run_blocks` / `unembed` so the
sequence-parallel wrapper can shard the visual tokens between the stages.
"""
from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import qk_rope
from ..ops.attention import JointAttention, LocalJointAttention
from .config import DiTConfig
from .step_cache import StepCache


def rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS-normalise the last dim in fp32 (returns fp32)."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def modulated_rmsnorm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """rmsnorm(x) * (1 + scale), computed in fp32, returned in x's dtype. scale: [B, D]."""
    return (rms(x, eps) * (1 + scale.float().unsqueeze(1))).to(x.dtype)


def gated_residual(x: torch.Tensor, res: torch.Tensor, gate: torch.Tensor, eps: float) -> torch.Tensor:
    """x + rmsnorm(res) * tanh(gate). gate: [B, D]."""
    return x + (rms(res, eps) * torch.tanh(gate.float()).unsqueeze(1)).to(x.dtype)


def cond_linear(linear: nn.Linear, c: torch.Tensor) -> torch.Tensor:
    """A linear on per-sample conditioning vectors [B, D] whose rows do not depend on B.

    CPU BLAS takes a different (gemv) path for a single row, so a CFG-parallel
    half (batch 1) would round differently from the batch-2 reference. Running a
    lone row as a duplicated pair keeps every layout bit-identical to one process.
    """
    if c.shape[0] == 1 and not c.is_cuda:
        return linear(c.expand(2, -1))[:1]
    return linear(c)


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of t (any float tensor [B])."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (rms(x, self.eps) * self.weight.float()).to(x.dtype)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h = cond_linear(self.mlp[0], timestep_frequencies(t * self.scale, self.freq_dim).to(dtype))
        return cond_linear(self.mlp[2], self.mlp[1](h))


class AttentionPool(nn.Module):
    """Attention pooling of the valid T5 tokens into one vector, queried by their mean."""

    def __init__(self, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        assert mask.shape == (b, l), f"mask {tuple(mask.shape)} vs tokens {tuple(x.shape)}"
        weights = mask.to(x.dtype)[:, :, None]
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = (x * weights).sum(dim=1, keepdim=True)
        tokens = torch.cat([pooled, x], dim=1)
        keep = F.pad(mask.bool(), (1, 0), value=True)[:, None, None, :]
        hd = d // self.heads
        k, v = self.to_kv(tokens).view(b, l + 1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        q = cond_linear(self.to_q, pooled[:, 0]).view(b, self.heads, 1, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return cond_linear(self.to_out, out.reshape(b, d))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b * t, c, h, w))
        return x.flatten(2).transpose(1, 2).reshape(b, -1, x.shape[1])


class FeedForward(nn.Module):
    """SwiGLU without bias: w2(silu(a) * b) with [a, b] = w1(x)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(a) * b)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved (even, odd) pairs. x [B, N, H, D], cos/sin [N, H, D/2] fp32."""
    xe, xo = x[..., 0::2].float(), x[..., 1::2].float()
    return torch.stack([xe * cos - xo * sin, xe * sin + xo * cos], dim=-1).flatten(-2).to(x.dtype)


class AsymmetricAttention(nn.Module):
    def __init__(self, cfg: DiTConfig, update_y: bool) -> None:
        super().__init__()
        dx, dy, hd = cfg.hidden_size_x, cfg.hidden_size_y, cfg.head_dim
        self.num_heads = cfg.num_heads
        self.update_y = update_y
        self.qkv_x = nn.Linear(dx, 3 * dx, bias=False)
        self.qkv_y = nn.Linear(dy, 3 * dx, bias=False)
        self.q_norm_x = RMSNorm(hd, cfg.qk_norm_eps)
        self.k_norm_x = RMSNorm(hd, cfg.qk_norm_eps)
        self.q_norm_y = RMSNorm(hd, cfg.qk_norm_eps)
        self.k_norm_y = RMSNorm(hd, cfg.qk_norm_eps)
        self.proj_x = nn.Linear(dx, dx)
        if update_y:
            self.proj_y = nn.Linear(dx, dy)
        # QK-norm + RoPE + layout write as one Triton pass where it can run (CUDA); False keeps the eager /
        # inductor code everywhere (benchmarks compare the two: AsymmDiT.use_fused_qk_rope).
        self.fused_qk_rope = True

    def project(self, x: torch.Tensor, y: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                visual_split: int | None = None):
        """Q/K/V of both streams, QK-normed, RoPE on visual Q/K; [B, H, S, D] views of token-major memory.

        Each of Q, K, V is written as one token-major [B, N+L, H, D] buffer, visual tokens then text, and handed
        over as two [B, H, S, D] views: the attention can take "visual + valid text" as a slice instead of
        concatenating copies, and the kernels read the token-major layout as it is. On GPU the visual QK-norm,
        RoPE and these writes are one Triton pass (qk_rope.py); elsewhere the eager code below, which
        torch.compile fuses into the same writes.

        visual_split=U (Ulysses over U ranks, token-major exchange): the visual Q, K, V instead come as the
        three [B, U, N, H/U, D] slots of one [B, U, N, 3, H/U, D] buffer, each (sample, destination rank) block
        contiguous and token-major with a token's Q, K and V side by side, so the exchange sends each block as
        it is and receives each source's rows in one piece (usp.interleaved_blocks); text Q/K/V stay
        [B, H, L, D].
        """
        b, n, _ = x.shape
        l = y.shape[1]
        qkv = self.qkv_x(x).view(b, n, 3, self.num_heads, -1)
        q_y, k_y, v_y = self.qkv_y(y).view(b, l, 3, self.num_heads, -1).unbind(2)
        q_y, k_y = self.q_norm_y(q_y), self.k_norm_y(k_y)
        if self.fused_qk_rope and qk_rope.usable(qkv):  # one Triton pass on GPU (qk_rope.py says why)
            norms = (self.q_norm_x.weight, self.k_norm_x.weight, self.q_norm_x.eps)  # one eps: both from cfg
            if visual_split is not None:
                visual = qk_rope.exchange_qkv(qkv, *rope, *norms, visual_split)
            else:
                joint = qk_rope.joint_qkv(qkv, *rope, *norms, q_y, k_y, v_y)
        else:
            q_x, k_x, v_x = qkv.unbind(2)
            q_x = apply_rope(self.q_norm_x(q_x), *rope)
            k_x = apply_rope(self.k_norm_x(k_x), *rope)
            if visual_split is not None:
                u = visual_split
                visual = torch.stack([t.view(b, n, u, self.num_heads // u, -1) for t in (q_x, k_x, v_x)], dim=3)
                visual = visual.permute(0, 2, 1, 3, 4, 5).contiguous()
            else:
                joint = [torch.cat([vis, txt], dim=1) for vis, txt in ((q_x, q_y), (k_x, k_y), (v_x, v_y))]
        if visual_split is not None:
            return (*visual.unbind(3), *(t.transpose(1, 2) for t in (q_y, k_y, v_y)))
        joint = [j.transpose(1, 2) for j in joint]  # [B, H, N+L, D] views of [B, N+L, H, D]
        return tuple(j[:, :, :n] for j in joint) + tuple(j[:, :, n:] for j in joint)

    def output(self, out_x: torch.Tensor, out_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, _, n, _ = out_x.shape
        out_x = self.proj_x(out_x.transpose(1, 2).reshape(b, n, -1))
        if not self.update_y:
            return out_x, None
        return out_x, self.proj_y(out_y.transpose(1, 2).reshape(b, out_y.shape[2], -1))


class AsymmetricJointBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, update_y: bool) -> None:
        super().__init__()
        self.update_y = update_y
        self.eps = cfg.mod_norm_eps
        dx, dy = cfg.hidden_size_x, cfg.hidden_size_y
        self.mod_x = nn.Linear(dx, 4 * dx)
        self.mod_y = nn.Linear(dx, 4 * dy if update_y else dy)
        self.attn = AsymmetricAttention(cfg, update_y)
        self.mlp_x = FeedForward(dx, cfg.mlp_hidden_x)
        if update_y:
            self.mlp_y = FeedForward(dy, cfg.mlp_hidden_y)

    def pre_attention(self, x, c, y, rope, visual_split: int | None = None):
        """Modulation, pre-norms and Q/K/V (pointwise-heavy: the part torch.compile fuses)."""
        c = F.silu(c)
        scale_msa_x, gate_msa_x, scale_mlp_x, gate_mlp_x = cond_linear(self.mod_x, c).chunk(4, dim=1)
        mod_y = cond_linear(self.mod_y, c)
        mods_y = mod_y.chunk(4, dim=1) if self.update_y else (mod_y,)
        qkv = self.attn.project(
            modulated_rmsnorm(x, scale_msa_x, self.eps), modulated_rmsnorm(y, mods_y[0], self.eps), rope,
            visual_split,
        )
        return qkv, (gate_msa_x, scale_mlp_x, gate_mlp_x), mods_y[1:]

    def post_attention(self, x, y, out_x, out_y, mods_x, mods_y):
        """Output projections, gated residuals and the SwiGLU MLPs."""
        gate_msa_x, scale_mlp_x, gate_mlp_x = mods_x
        attn_x, attn_y = self.attn.output(out_x, out_y)
        x = gated_residual(x, attn_x, gate_msa_x, self.eps)
        x = gated_residual(x, self.mlp_x(modulated_rmsnorm(x, scale_mlp_x, self.eps)), gate_mlp_x, self.eps)
        if self.update_y:
            gate_msa_y, scale_mlp_y, gate_mlp_y = mods_y
            y = gated_residual(y, attn_y, gate_msa_y, self.eps)
            y = gated_residual(y, self.mlp_y(modulated_rmsnorm(y, scale_mlp_y, self.eps)), gate_mlp_y, self.eps)
        return x, y

    def modulated_input(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The attention's modulated visual input, rmsnorm(x) * (1 + scale_msa_x): TeaCache's change measure."""
        scale_msa_x = cond_linear(self.mod_x, F.silu(c)).chunk(4, dim=1)[0]
        return modulated_rmsnorm(x, scale_msa_x, self.eps)

    def forward(self, x, c, y, y_mask, rope, joint_attention: JointAttention, modulated_input_only: bool = False):
        if modulated_input_only:  # through __call__, so sharded (FSDP) weights are gathered for it
            return self.modulated_input(x, c)
        # An attention may ask for the visual Q/K/V in the layout it exchanges (see AsymmetricAttention.project).
        qkv, mods_x, mods_y = self.pre_attention(x, c, y, rope, getattr(joint_attention, "visual_split", None))
        out_x, out_y = joint_attention(*qkv, y_mask)
        return self.post_attention(x, y, out_x, out_y, mods_x, mods_y)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.mod = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = cond_linear(self.mod, F.silu(c)).chunk(2, dim=1)
        x = F.layer_norm(x, (x.shape[-1],), eps=1e-6)
        return self.linear(x * (1 + scale[:, None]) + shift[:, None])


def rope_positions(t: int, h: int, w: int, base_area: int, device=None) -> torch.Tensor:
    """(t, h, w) coordinates of every token [T*h*w, 3]; h/w are bin centres rescaled to base_area."""
    scale = math.sqrt(base_area / (h * w))

    def centres(n: int) -> torch.Tensor:
        edges = torch.linspace(-n * scale / 2, n * scale / 2, n + 1, device=device, dtype=torch.float32)
        return (edges[:-1] + edges[1:]) / 2

    grid = torch.meshgrid(torch.arange(t, device=device, dtype=torch.float32), centres(h), centres(w), indexing="ij")
    return torch.stack(grid, dim=-1).view(-1, 3)


class AsymmDiT(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dx = cfg.hidden_size_x
        self.x_embedder = PatchEmbed(cfg.patch_size, cfg.in_channels, dx)
        self.t_embedder = TimestepEmbedder(dx, cfg.timestep_freq_dim)
        self.t5_y_embedder = AttentionPool(cfg.t5_feat_dim, cfg.pool_heads, dx)
        self.t5_yproj = nn.Linear(cfg.t5_feat_dim, cfg.hidden_size_y)
        self.pos_frequencies = nn.Parameter(torch.zeros(3, cfg.num_heads, cfg.head_dim // 2))
        self.blocks = nn.ModuleList(
            [AsymmetricJointBlock(cfg, update_y=i < cfg.depth - 1) for i in range(cfg.depth)]
        )
        self.final_layer = FinalLayer(dx, cfg.patch_size**2 * cfg.in_channels)
        self.joint_attention: JointAttention = LocalJointAttention()

    # -- stages -----------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, sigma: torch.Tensor, y_feat: torch.Tensor, y_mask: torch.Tensor):
        """Latents and text -> (visual tokens, conditioning c, text tokens)."""
        b, ch, t, h, w = x.shape
        p = self.cfg.patch_size
        assert ch == self.cfg.in_channels and h % p == 0 and w % p == 0, f"bad latent shape {tuple(x.shape)}"
        assert sigma.shape == (b,), f"sigma must be [B], got {tuple(sigma.shape)}"
        assert y_feat.shape[0] == b and y_feat.shape[2] == self.cfg.t5_feat_dim, f"bad text {tuple(y_feat.shape)}"
        assert y_mask.shape == y_feat.shape[:2], "y_mask must be [B, L]"
        dtype = self.x_embedder.proj.weight.dtype
        tokens = self.x_embedder(x.to(dtype))
        y_feat = y_feat.to(dtype)
        c = self.t_embedder(1 - sigma.float(), dtype) + self.t5_y_embedder(y_feat, y_mask)
        return tokens, c, self.t5_yproj(y_feat)

    def rope(self, t: int, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [T*h*w, H, D/2] for a post-patch grid, in fp32."""
        pos = rope_positions(t, h, w, self.cfg.rope_base_area, device)
        angles = torch.einsum("nd,dhf->nhf", pos, self.pos_frequencies.float())
        return torch.cos(angles), torch.sin(angles)

    def use_fused_qk_rope(self, enabled: bool) -> "AsymmDiT":
        """Whether the blocks take qk_rope's fused pass on GPU (the default) or the eager/inductor code."""
        for block in self.blocks:
            block.attn.fused_qk_rope = enabled
        return self

    COMPILED_PARTS = ("pre_attention", "post_attention")

    def compile_blocks(self, parts: tuple[str, ...] = COMPILED_PARTS, **options) -> "AsymmDiT":
        """torch.compile the pointwise-heavy halves of every block (attention stays eager).

        Blocks share code, so one graph serves all full blocks and one the last block. `parts` picks halves
        (benchmarks bisect numerics with it); the default is both.
        """
        unknown = set(parts) - set(self.COMPILED_PARTS)
        if unknown:
            raise ValueError(f"compile parts must be among {self.COMPILED_PARTS}, got {sorted(unknown)}")
        for block in self.blocks:
            for part in parts:
                setattr(block, part, torch.compile(getattr(block, part), dynamic=False, **options))
        return self

    def run_blocks(self, tokens, c, y, y_mask, rope, cache: StepCache | None = None, valid_rows: int | None = None):
        """The block stack over the visual tokens [B, n, D] (this rank's share under sequence parallelism).

        cache: the generation's StepCache; it decides whether this step runs the stack or reuses its last
        residual (step_cache.py). valid_rows: rows of `tokens` that are real tokens, not padding (the measures
        see only those)."""
        blocks = list(self.blocks)
        if cache is None:
            for block in blocks:
                tokens, y = block(tokens, c, y, y_mask, rope, self.joint_attention)
            return tokens
        signal = None
        if cache.measure == "modulated_input":
            signal = blocks[0](tokens, c, y, y_mask, rope, self.joint_attention, modulated_input_only=True)
        elif cache.measure == "first_block":
            before = tokens
            tokens, y = blocks[0](tokens, c, y, y_mask, rope, self.joint_attention)
            signal, blocks = tokens - before, blocks[1:]
        if not cache.decide(None if signal is None else signal[:, :valid_rows]):
            return cache.reuse(tokens)
        start = tokens
        for block in blocks:
            tokens, y = block(tokens, c, y, y_mask, rope, self.joint_attention)
        cache.remember(tokens - start)
        return tokens

    def unembed(self, tokens: torch.Tensor, c: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, ch, t, h, w = shape
        p = self.cfg.patch_size
        out = self.final_layer(tokens, c)
        out = out.view(b, t, h // p, w // p, p, p, ch).permute(0, 6, 1, 2, 4, 3, 5)
        return out.reshape(b, ch, t, h, w)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, y_feat: torch.Tensor, y_mask: torch.Tensor,
                sharding: TokenSharding | None = None, cache: StepCache | None = None):
        """x [B, 12, T, H, W] latents, sigma [B], y_feat [B, L, 4096], y_mask [B, L] -> velocity like x.

        With `sharding` the blocks see only this rank's share of the visual tokens (sequence parallelism);
        the whole pass still goes through this module's __call__, which FSDP's hooks rely on. With `cache`
        (one per generation, this forward being its next step) the block stack may be skipped
        (step_cache.py).
        """
        tokens, c, y = self.embed(x, sigma, y_feat, y_mask)
        p = self.cfg.patch_size
        rope = self.rope(x.shape[2], x.shape[3] // p, x.shape[4] // p, x.device)
        valid_rows = tokens.shape[1]
        if sharding is not None:
            tokens, rope = sharding.split(tokens, rope)
            valid_rows = sharding.valid_rows
        tokens = self.run_blocks(tokens, c, y, y_mask.bool(), rope, cache, valid_rows)
        if sharding is not None:
            tokens = sharding.gather(tokens)
        return self.unembed(tokens, c, x.shape)


class TokenSharding(Protocol):
    """Where the visual tokens live during the blocks (see `parallel.usp.SequenceParallelDiT`)."""

    def split(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]: ...

    def gather(self, tokens: torch.Tensor) -> torch.Tensor: ...

    @property
    def valid_rows(self) -> int:
        """Rows of this rank's share (after `split`) that are tokens, not padding."""
        ...
