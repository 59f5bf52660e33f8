"""fp8 attention (`--attention fp8`): refusals where it cannot run, and the scaling scheme's error on a model of
the cuDNN graph. The kernel itself runs on Hopper GPUs only (`python -m benchmarks step --fp8-attention` on an H100)."""
from __future__ import annotations

import math

import pytest
import torch

from mochi_runtime.ops.attention import attend, resolve_kernel
from mochi_runtime.loading.checkpoints import ModelDir
from mochi_runtime.ops.fp8_attention import E4M3_MAX, CudnnFp8Attention, emulated_fp8_attention, quantize, tensor_scale
from mochi_runtime.parallel import GroupSpec, Layout
from mochi_runtime.loading.loaders import load_dit


def _exact(q, k, v):
    p = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (p @ v.double()).float()


def test_scaling_keeps_attention_within_a_few_percent():
    g = torch.Generator().manual_seed(0)
    b, h, s, d = 1, 4, 300, 128
    q, k, v = (torch.randn(b, h, s, d, generator=g) for _ in range(3))
    q, k = (x / x.norm(dim=-1, keepdim=True) * math.sqrt(d) for x in (q, k))  # QK-normed, as in the DiT
    out = emulated_fp8_attention(q, k, v)
    ref = _exact(q, k, v)
    err = float((out - ref).norm() / ref.norm())
    # e4m3 keeps 3 mantissa bits: ~6e-2 here (diffuse attention over random values; bf16 SDPA: ~4e-3), and bounded
    assert 1e-2 < err < 1e-1, err


def test_output_scale_cannot_overflow():
    """O is a convex combination of V's rows, so |O| <= max|V| and O's scale (V's) never clips."""
    v = torch.zeros(1, 1, 8, 16)
    v[..., 3, :] = 1000.0  # one huge row that every query attends to almost only
    q = torch.zeros(1, 1, 8, 16)
    k = torch.zeros(1, 1, 8, 16)
    k[..., 3, :] = 10.0
    q[..., :] = 10.0
    out = emulated_fp8_attention(q, k, v)
    assert torch.isfinite(out).all() and out.abs().max() <= 1000.0 * (1 + 1 / 16)
    assert float((out - _exact(q, k, v)).abs().max()) < 1000.0 / 16  # within e4m3's relative step at 1000


def test_quantize_maps_the_largest_magnitude_to_e4m3_max():
    x = torch.tensor([[-3.0, 0.5], [1.5, 2.0]]).reshape(1, 1, 2, 2)
    s = tensor_scale(x)
    x8 = quantize(x, s)
    assert x8.dtype == torch.float8_e4m3fn and float(x8.float().abs().max()) == E4M3_MAX
    assert torch.allclose(x8.float() * s, x, rtol=1 / 16)


def test_fp8_attention_is_refused_where_it_cannot_run(official_dir):
    with pytest.raises(ValueError, match="GPUs only"):
        resolve_kernel("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="GPUs only"):
        attend(*(torch.zeros(1, 1, 4, 8) for _ in range(3)), kernel="fp8")
    with pytest.raises(ValueError, match="GPUs only"):
        CudnnFp8Attention(torch.device("cpu"))
    with pytest.raises(ValueError, match="GPUs only"):  # at load, not in the middle of a request
        load_dit(ModelDir.open(official_dir), torch.device("cpu"), torch.float32, "fp8")
    with pytest.raises(ValueError, match="attention fp8 runs on GPUs only"):
        GroupSpec(Layout(1, 2, 1), attention="fp8")
    with pytest.raises(ValueError, match="no log-sum-exp"):
        GroupSpec(Layout(1, 1, 2), devices=(0, 1), attention="fp8")
