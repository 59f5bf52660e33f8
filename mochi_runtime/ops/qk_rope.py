"""QK-norm, RoPE and the write of Q/K/V into attention's layout as one GPU pass (Triton).

Why: compiled by inductor, this part of each block is a reduction kernel that runs at about a third of the
card's memory bandwidth plus a separate copy into the layout attention reads (1 GPU: ~50 ms of pointwise
kernels in a ~990 ms step at 848x480x49; this pass does the same work in ~21 ms; docs/benchmarks.md). Here
one kernel reads the Q/K/V projection once and writes each of Q, K, V straight to its destination: the joint
[visual; text] buffers of one process, or the per-destination blocks of the Ulysses exchange (Q, K, V
interleaved per token, so each block goes out in one piece).

The arithmetic is the eager code's (`dit.RMSNorm` then `dit.apply_rope`): fp32 norm, rounding to the
activation dtype, fp32 rotation of interleaved (even, odd) pairs, rounding again. Only the order of the
128-term sum of squares may differ, so outputs agree with the eager code to the last bit of most elements.

GPU only (CUDA tensors, Triton importable); callers keep the eager code for everything else.
"""
from __future__ import annotations

import functools

import torch

BLOCK_TOKENS = 16  # tokens per program; fixed, so each row's reduction order never depends on the call


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def usable(qkv: torch.Tensor) -> bool:
    """Whether the fused pass can take this projection output [B, N, 3, H, D] (decided at trace time under
    torch.compile): CUDA on Ampere or newer (Triton's bf16), a 16-bit dtype, and a power-of-two head dim
    (Triton's block shapes; Mochi's is 128)."""
    d = qkv.shape[-1]
    return (qkv.is_cuda and qkv.dtype in (torch.bfloat16, torch.float16) and d >= 16 and d & (d - 1) == 0
            and torch.cuda.get_device_capability(qkv.device)[0] >= 8 and available())


@functools.cache
def _kernel():
    from .qk_rope_kernel import qk_norm_rope_kernel  # imports triton: GPU machines only

    return qk_norm_rope_kernel


def _launch(qkv, cos, sin, wq, wk, eps: float, outs, ulysses: int) -> None:
    """qkv [B, N, 3, H, D]; outs: Q, K, V destinations, each indexable [B, N, U, H/U, D] by strides."""
    b, n, three, h, d = qkv.shape
    assert three == 3 and d % 2 == 0 and h % ulysses == 0, f"bad Q/K/V projection {tuple(qkv.shape)}"
    assert qkv.stride(3) == d and qkv.stride(4) == 1, "heads must be contiguous in the projection output"
    assert cos.shape == sin.shape == (n, h, d // 2) and cos.stride() == sin.stride() and cos.stride(2) == 1
    assert cos.dtype == sin.dtype == torch.float32 and wq.shape == wk.shape == (d,)
    q_out = outs[0]
    strides = q_out.stride()
    assert all(o.stride() == strides for o in outs) and strides[4] == 1
    grid = (-(-n // BLOCK_TOKENS), h)
    _kernel()[grid](qkv, cos, sin, wq, wk, *outs, n, eps,
                    qkv.stride(0), qkv.stride(1), qkv.stride(2), cos.stride(0), cos.stride(1),
                    strides[0], strides[1], strides[2], strides[3],
                    BATCH=b, HU=h // ulysses, D=d, BLOCK_N=BLOCK_TOKENS)


def _joint_buffers(qkv: torch.Tensor, text_len: int) -> list[torch.Tensor]:
    """joint_qkv's outputs, allocated (the op and its fake share this, so their shapes cannot drift apart)."""
    b, n, _, h, d = qkv.shape
    return [qkv.new_empty(b, n + text_len, h, d) for _ in range(3)]


def _exchange_buffer(qkv: torch.Tensor, ulysses: int) -> torch.Tensor:
    """exchange_qkv's output, allocated (shared with its fake)."""
    b, n, _, h, d = qkv.shape
    return qkv.new_empty(b, ulysses, n, 3, h // ulysses, d)


@torch.library.custom_op("mochi::joint_qkv", mutates_args=())
def joint_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor,
              eps: float, q_y: torch.Tensor, k_y: torch.Tensor, v_y: torch.Tensor) -> list[torch.Tensor]:
    """Q, K, V as [B, N+L, H, D] buffers: visual rows normed and rotated from qkv [B, N, 3, H, D], then the
    text rows (q_y, k_y, v_y [B, L, H, D], already normed)."""
    n, h = qkv.shape[1], qkv.shape[3]
    outs = _joint_buffers(qkv, q_y.shape[1])
    _launch(qkv, cos, sin, wq, wk, eps, [o[:, :n].unflatten(2, (1, h)) for o in outs], 1)
    for out, text in zip(outs, (q_y, k_y, v_y)):
        out[:, n:] = text
    return outs


@joint_qkv.register_fake
def _(qkv, cos, sin, wq, wk, eps, q_y, k_y, v_y):
    return _joint_buffers(qkv, q_y.shape[1])


@torch.library.custom_op("mochi::exchange_qkv", mutates_args=())
def exchange_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor,
                 eps: float, ulysses: int) -> torch.Tensor:
    """Visual Q, K, V as one [B, U, N, 3, H/U, D] buffer: each (sample, destination rank) block contiguous,
    token-major with the token's Q, K and V rows side by side, as the Ulysses exchange sends it."""
    out = _exchange_buffer(qkv, ulysses)
    _launch(qkv, cos, sin, wq, wk, eps, [t.transpose(1, 2) for t in out.unbind(3)], ulysses)
    return out


@exchange_qkv.register_fake
def _(qkv, cos, sin, wq, wk, eps, ulysses):
    return _exchange_buffer(qkv, ulysses)
