from __future__ import annotations

import pytest
import torch

from mochi_runtime.ops.attention import LocalJointAttention, attend_with_lse, merge_partials

from numerics import assert_close

# One attention against another on the same inputs: softmax sums in another order (SDPA's blocked kernel vs the
# written-out matmuls, or partial softmaxes merged by log-sum-exp). Largest measured over the margin matrix
# (tests/numerics.py): 2.0e-7 rel_l2, 2.6e-7 max_rel.
ATTENTION = dict(rel_l2=3e-6, max_rel=1e-5)


def reference_joint(qx, kx, vx, qy, ky, vy, mask):
    """Masked softmax attention over [visual, text] with padded text keys masked out."""
    q, k, v = (torch.cat(p, dim=2) for p in ((qx, qy), (kx, ky), (vx, vy)))
    n = qx.shape[2]
    keep = torch.cat([torch.ones(mask.shape[0], n, dtype=torch.bool), mask], dim=1)[:, None, None, :]
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    o = torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v
    return o[:, :, :n], o[:, :, n:] * mask[:, None, :, None]


@pytest.mark.numeric
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
    assert_close(ox, rx, **ATTENTION, label="visual")
    assert_close(oy, ry, **ATTENTION, label="text")


@pytest.mark.numeric
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
    assert_close(out.float(), full, **ATTENTION, label="output")
    assert_close(lse.float(), full_lse, **ATTENTION, label="log-sum-exp")


def test_text_groups_are_computed_once_per_mask_and_selectors_are_views():
    from mochi_runtime.ops.attention import TextGroups

    groups = TextGroups()
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[0, :5] = True
    mask[1, :5] = True
    mask[2, :2] = True
    first = groups(mask)
    assert groups(mask) is first  # same mask object: no recomputation (no host sync per block)
    sel, idx, prefix = first[0]
    assert sel == slice(0, 2) and idx.tolist() == [0, 1, 2, 3, 4]  # samples 0 and 1 share their text
    assert prefix == 5 and first[1].sel == slice(2, 3) and first[1].prefix == 2
    x = torch.randn(3, 4, 6, 2)
    assert x[sel].data_ptr() == x.data_ptr()  # a slice selects without copying
    mask[2, :3] = True  # changed in place: the version counter tells
    assert groups(mask)[1][1].tolist() == [0, 1, 2]
    other = mask.clone()
    assert groups(other) is not first


def test_text_groups_of_non_contiguous_samples_use_an_index():
    from mochi_runtime.ops.attention import TextGroups, put_rows

    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[0, :2] = True
    mask[2, :2] = True
    mask[1, :3] = True
    (sel, idx, _), _ = TextGroups()(mask)
    assert torch.is_tensor(sel) and sel.tolist() == [0, 2]
    out = torch.zeros(3, 2, 4, 1)
    put_rows(out, sel, idx, torch.ones(2, 2, 2, 1))
    assert out[[0, 2]][:, :, :2].eq(1).all() and out[1].eq(0).all() and out[:, :, 2:].eq(0).all()


@pytest.mark.numeric
def test_joint_view_lets_attention_slice_instead_of_copy():
    """Q/K/V written as one visual+text buffer: the attention uses a view of it, and the result is the same
    as with separate tensors (which take the concatenating path)."""
    from mochi_runtime.ops.attention import joint_view

    g = torch.Generator().manual_seed(1)
    b, h, n, l, d = 2, 4, 24, 8, 16
    joint = [torch.randn(b, h, n + l, d, generator=g) for _ in range(3)]
    views = [(j[:, :, :n], j[:, :, n:]) for j in joint]
    assert joint_view(*views[0]).data_ptr() == joint[0].data_ptr()
    assert joint_view(views[0][0], views[0][1].clone()) is None
    mask = torch.zeros(b, l, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, :6] = True
    attn = LocalJointAttention("sdpa")
    ox, oy = attn(views[0][0], views[1][0], views[2][0], views[0][1], views[1][1], views[2][1], mask)
    sep = [t.clone() for pair in views for t in pair]
    rx, ry = LocalJointAttention("sdpa")(sep[0], sep[2], sep[4], sep[1], sep[3], sep[5], mask)
    assert_close(ox, rx, **ATTENTION, label="visual")
    assert_close(oy, ry, **ATTENTION, label="text")
    assert oy[0, :, 3:].eq(0).all() and oy[1, :, 6:].eq(0).all()
