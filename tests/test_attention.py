from __future__ import annotations

import pytest
import torch

from mochi_runtime.attention import LocalJointAttention, attend_with_lse, merge_partials


def reference_joint(qx, kx, vx, qy, ky, vy, mask):
    """Masked softmax attention over [visual, text] with padded text keys masked out."""
    q, k, v = (torch.cat(p, dim=2) for p in ((qx, qy), (kx, ky), (vx, vy)))
    n = qx.shape[2]
    keep = torch.cat([torch.ones(mask.shape[0], n, dtype=torch.bool), mask], dim=1)[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    o = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
    return o[:, :, :n], o[:, :, n:] * mask[:, None, :, None]


def test_local_joint_attention_matches_masked_reference():
    g = torch.Generator().manual_seed(0)
    qx, kx, vx = (torch.randn(3, 4, 37, 16, generator=g) for _ in range(3))
    qy, ky, vy = (torch.randn(3, 4, 12, 16, generator=g) for _ in range(3))
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :12] = True
    mask[2, [1, 4, 7]] = True  # not even a prefix
    ox, oy = LocalJointAttention("sdpa")(qx, kx, vx, qy, ky, vy, mask)
    rx, ry = reference_joint(qx, kx, vx, qy, ky, vy, mask)
    assert torch.allclose(ox, rx, atol=1e-5) and torch.allclose(oy, ry, atol=1e-5)


@pytest.mark.parametrize("kernel", ["sdpa", "math"])
def test_lse_merge_equals_full_attention(kernel):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 3, 20, 8, generator=g)
    k, v = torch.randn(2, 3, 50, 8, generator=g), torch.randn(2, 3, 50, 8, generator=g)
    full, full_lse = attend_with_lse(q, k, v, "math")
    out = lse = None
    for sl in (slice(0, 17), slice(17, 31), slice(31, 50)):
        o, l = attend_with_lse(q, k[:, :, sl], v[:, :, sl], kernel)
        out, lse = merge_partials(out, lse, o, l)
    assert torch.allclose(out.float(), full, atol=1e-5) and torch.allclose(lse.float(), full_lse, atol=1e-5)
