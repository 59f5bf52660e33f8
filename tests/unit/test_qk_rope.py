"""The fused QK-norm + RoPE + layout pass (mochi_runtime/ops/qk_rope.py) against the eager code it replaces.

The kernel runs on a GPU with Triton; with Triton installed and TRITON_INTERPRET=1 it also runs on CPU in
Triton's interpreter, in float16 (the interpreter rounds bfloat16 by truncation, a GPU to nearest). Neither
is on the CPU CI machine, which runs only the checks that need no kernel."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from mochi_runtime.ops import qk_rope
from mochi_runtime.models.config import DiTConfig
from mochi_runtime.models.dit import AsymmetricAttention
from mochi_runtime.parallel.usp import interleaved_blocks


def kernel_targets() -> list[tuple[str, torch.dtype]]:
    if not qk_rope.available():
        return []
    if torch.cuda.is_available():
        return [("cuda", torch.bfloat16)]
    return [("cpu", torch.float16)] if os.environ.get("TRITON_INTERPRET") == "1" else []


def small_attention(device: str, dtype: torch.dtype) -> AsymmetricAttention:
    """Mochi's attention at a width whose head dim (64) is a power of two, random weights and norm scales."""
    cfg = dataclasses.replace(DiTConfig(), hidden_size_x=256, hidden_size_y=128, num_heads=4)
    torch.manual_seed(0)
    attn = AsymmetricAttention(cfg, update_y=True)
    with torch.no_grad():
        for norm in (attn.q_norm_x, attn.k_norm_x, attn.q_norm_y, attn.k_norm_y):
            norm.weight.uniform_(0.5, 1.5)
    return attn.to(device, dtype).eval().requires_grad_(False)


def inputs(attn: AsymmetricAttention, device: str, dtype: torch.dtype, b: int = 2, n: int = 37, l: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, n, 256, generator=g).to(device, dtype)
    y = torch.randn(b, l, 128, generator=g).to(device, dtype)
    angles = torch.randn(n, attn.num_heads, 32, generator=g).to(device)
    return x, y, (torch.cos(angles), torch.sin(angles))


def test_the_fused_pass_is_for_cuda_16_bit_and_power_of_two_heads():
    assert not qk_rope.usable(torch.zeros(1, 4, 3, 2, 128))  # CPU: the eager code
    assert not qk_rope.usable(torch.zeros(1, 4, 3, 2, 128, dtype=torch.bfloat16))
    meta = torch.zeros(1, 4, 3, 2, 24, dtype=torch.bfloat16, device="meta")
    assert not qk_rope.usable(meta)  # not CUDA, and 24 (the tiny preset's head dim) is not a power of two


def test_fake_shapes_match_what_the_ops_promise():
    """torch.compile plans buffers from the fake implementations: they must give the real outputs' shapes."""
    qkv = torch.empty(2, 10, 3, 4, 64, dtype=torch.bfloat16, device="meta")
    rot = torch.empty(10, 4, 32, device="meta")
    w = torch.empty(64, dtype=torch.bfloat16, device="meta")
    text = torch.empty(2, 5, 4, 64, dtype=torch.bfloat16, device="meta")
    joint = qk_rope.joint_qkv(qkv, rot, rot, w, w, 1e-6, text, text, text)
    assert [tuple(t.shape) for t in joint] == [(2, 15, 4, 64)] * 3
    assert tuple(qk_rope.exchange_qkv(qkv, rot, rot, w, w, 1e-6, 2).shape) == (2, 2, 10, 3, 2, 64)


@pytest.mark.skipif(not kernel_targets(), reason="needs Triton on a GPU, or Triton with TRITON_INTERPRET=1")
@pytest.mark.parametrize("split", [None, 2], ids=["joint", "ulysses2"])
def test_fused_projection_equals_the_eager_code(split, monkeypatch):
    monkeypatch.setattr(qk_rope, "usable", lambda qkv: True)  # on CPU too (the interpreter)
    for device, dtype in kernel_targets():
        attn = small_attention(device, dtype)
        x, y, rope = inputs(attn, device, dtype)
        attn.fused_qk_rope = False
        want = attn.project(x, y, rope, split)
        attn.fused_qk_rope = True
        got = attn.project(x, y, rope, split)
        if split:  # the three visual tensors are slots of one buffer, which the exchange sends as it is
            assert interleaved_blocks(*got[:3]).data_ptr() == got[0].data_ptr()
        for g, w in zip(got, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            # Only the order of the 64-term sum of squares differs: a last-bit difference in a few elements
            ulp = torch.finfo(dtype).eps * w.float().abs().clamp(min=1e-3)
            assert bool(((g.float() - w.float()).abs() <= ulp).all()), (device, split)
            assert (g == w).float().mean() >= 0.99, (device, split)
