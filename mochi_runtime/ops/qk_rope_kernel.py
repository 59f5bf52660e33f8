"""The Triton kernel of `qk_rope` (imported only where Triton is: the GPU images)."""
import triton
import triton.language as tl


@triton.jit
def norm_rope(src, w, c, s, dst, live, eps, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """RMS-norm BLOCK_N rows of one head (fp32, weight, rounded to dst's dtype), rotate (even, odd) pairs."""
    cols = tl.arange(0, D)
    x = tl.load(src, mask=live, other=0.0).to(tl.float32)
    r = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)
    y = (x * r[:, None] * tl.load(w + cols).to(tl.float32)[None, :]).to(dst.dtype.element_ty).to(tl.float32)
    even, odd = tl.split(tl.reshape(y, (BLOCK_N, D // 2, 2)))
    out = tl.reshape(tl.join(even * c - odd * s, even * s + odd * c), (BLOCK_N, D))
    tl.store(dst, out.to(dst.dtype.element_ty), mask=live)


@triton.jit
def qk_norm_rope_kernel(qkv, cos, sin, wq, wk, q_out, k_out, v_out, n_tokens, eps,
                        s_ib, s_in, s_it, s_cn, s_ch, s_ob, s_on, s_ou, s_oj,
                        BATCH: tl.constexpr, HU: tl.constexpr, D: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: BLOCK_N tokens of one head, Q, K and V, every sample (the rotation is read once).
    Destination of (sample b, token n, head h = u * HU + j, channel d): b*s_ob + n*s_on + u*s_ou + j*s_oj + d."""
    head = tl.program_id(1)
    u, j = head // HU, head % HU
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    live = rows[:, None] < n_tokens
    rows = rows.to(tl.int64)
    half = tl.arange(0, D // 2)
    cols = tl.arange(0, D)
    rot = rows[:, None] * s_cn + head * s_ch + half[None, :]
    c = tl.load(cos + rot, mask=live, other=0.0)
    s = tl.load(sin + rot, mask=live, other=0.0)
    dst = rows[:, None] * s_on + u * s_ou + j * s_oj + cols[None, :]
    for b in tl.static_range(BATCH):
        src = qkv + b * s_ib + rows[:, None] * s_in + head * D + cols[None, :]
        tl.store(v_out + b * s_ob + dst, tl.load(src + 2 * s_it, mask=live), mask=live)
        norm_rope(src, wq, c, s, q_out + b * s_ob + dst, live, eps, BLOCK_N, D)
        norm_rope(src + s_it, wk, c, s, k_out + b * s_ob + dst, live, eps, BLOCK_N, D)
