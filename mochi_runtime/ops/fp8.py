"""fp8 (e4m3) weights for the DiT's block linears (`--dtype fp8`).

Weights are quantised once, at load time, from the bf16 (or fp32) checkpoint: one
scale per output channel, so a single large row does not flatten the rest.
Activations are quantised on the fly with one scale per token (row); the product
runs through `torch._scaled_mm` with both scale vectors and a bf16 result, which
on Hopper is cuBLAS' fp8 tensor-core path (about 1.8x the bf16 matmul rate).

Only the linears inside the 48 blocks are quantised: they hold ~99% of the DiT's
parameters and ~55% of its FLOPs (the rest is attention, which stays bf16 unless
`--attention fp8` picks cuDNN's fp8 kernel, fp8_attention.py). Embedders, the final layer and norms stay in the
compute dtype. The conditioning linears (mod_x / mod_y) see one row per sample;
their rows are padded to the 16 that the fp8 kernels need.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
ROW_ALIGN = 16  # fp8 GEMMs want every dimension a multiple of 16


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D t -> (e4m3 values, fp32 scale per row [rows, 1]) with t ~= values * scale, each row's largest
    magnitude mapped to e4m3's largest."""
    scale = (t.float().abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    return (t.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Fp8Linear(nn.Module):
    """y = x W^T + b with W stored as e4m3 plus a per-output-channel fp32 scale."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 out_dtype: torch.dtype) -> None:
        super().__init__()
        assert weight.dtype == FP8 and weight.ndim == 2, f"weight must be 2-D {FP8}, got {weight.dtype}"
        assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32, "one fp32 scale per output row"
        out_features, in_features = weight.shape
        if in_features % ROW_ALIGN or out_features % ROW_ALIGN:
            raise ValueError(f"fp8 linear needs sizes divisible by {ROW_ALIGN}, got {out_features}x{in_features}")
        self.in_features, self.out_features, self.out_dtype = in_features, out_features, out_dtype
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Fp8Linear":
        w = linear.weight.detach()
        q, scale = quantize_rows(w)
        bias = linear.bias.detach().to(w.dtype) if linear.bias is not None else None
        return cls(q, scale[:, 0], bias, w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_features, f"expected {self.in_features} features, got {x.shape[-1]}"
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        pad = -n % ROW_ALIGN
        if pad:
            rows = F.pad(rows, (0, 0, 0, pad))
        xq, x_scale = quantize_rows(rows)
        out = torch._scaled_mm(xq, self.weight.t(), scale_a=x_scale, scale_b=self.weight_scale[None, :],
                               out_dtype=self.out_dtype)
        if pad:
            out = out[:n]
        if self.bias is not None:  # added here, not in the GEMM: not every row-wise scaled kernel takes a bias
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, e4m3 per-channel"


def quantize_blocks_(dit: nn.Module) -> int:
    """Replace every nn.Linear inside `dit.blocks` by an Fp8Linear, in place, one at a time (so the bf16 and fp8
    copies of all weights never coexist). Returns how many were replaced."""
    replaced = 0
    for block in dit.blocks:
        for module in list(block.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, child_name, Fp8Linear.from_linear(child))
                    replaced += 1
    return replaced


def weight_bytes(module: nn.Module) -> int:
    """Bytes of parameters and buffers (fp8 weights are buffers)."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
