"""Attention kernels and the joint visual+text attention of Mochi's blocks.

Every attention in the DiT goes through `attend` (output only) or
`attend_with_lse` (output and log-sum-exp, which ring attention needs to merge
partial results). The kernel is picked once per call from a `kernel` name, so
the model never branches on hardware itself.

Joint attention is a pluggable object (`JointAttention`): the block computes
Q/K/V and hands them over; the single-process version lives here, the
sequence-parallel one in `mochi_runtime.parallel.usp`.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = ("auto", "sdpa", "cudnn", "flash", "efficient", "math", "flash_attn", "fp8")

try:  # optional dependency
    import flash_attn  # type: ignore  # noqa: F401

    HAVE_FLASH_ATTN = True
except Exception:  # pragma: no cover - depends on environment
    HAVE_FLASH_ATTN = False


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """Turn `auto` into a concrete kernel for this device."""
    if kernel not in KERNELS:
        raise ValueError(f"attention kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "fp8" and device.type != "cuda":
        raise ValueError("attention kernel 'fp8' runs on GPUs only (cuDNN's fp8 flash attention)")
    if kernel != "auto":
        return kernel
    if device.type != "cuda":
        return "sdpa"  # exact fp32 flash kernel for CPU: O(S) memory
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 9:
        return "cudnn"  # fastest SDPA backend measured on Hopper
    return "flash_attn" if HAVE_FLASH_ATTN else "flash"


def _sdpa_backend(kernel: str):
    return {
        "cudnn": [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    }[kernel]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "auto") -> torch.Tensor:
    """Unmasked attention on [B, H, S, D] tensors."""
    kernel = resolve_kernel(kernel, q.device)
    if kernel == "fp8":
        from .fp8_attention import fp8_attention_on  # needs cuDNN's frontend, an optional package ('.[fp8]')

        return fp8_attention_on(q.device.index if q.device.index is not None else torch.cuda.current_device())(q, k, v)
    if kernel == "flash_attn":
        from flash_attn import flash_attn_func  # type: ignore  # optional: only with kernel flash_attn

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if kernel in ("cudnn", "flash", "efficient") and q.is_cuda:
        with sdpa_kernel(_sdpa_backend(kernel)):
            return F.scaled_dot_product_attention(q, k, v)
    if kernel == "math" or not q.is_cuda:
        # On CPU the same flash kernel as the ring path, so sharded and local results agree.
        return attend_with_lse(q, k, v, kernel)[0]
    return F.scaled_dot_product_attention(q, k, v)


KERNELS_WITHOUT_LSE = ("fp8",)  # forward-only kernels (cuDNN's fp8 attention returns no log-sum-exp)


def check_ring_kernel(kernel: str, ring: int) -> None:
    """Ring attention merges partial results by their log-sum-exp, so ring > 1 needs a kernel that returns it."""
    if ring > 1 and kernel in KERNELS_WITHOUT_LSE:
        raise ValueError(f"attention {kernel!r} returns no log-sum-exp, which ring layouts merge by: use ring 1 "
                         "(ulysses / cfg-parallel) or a bf16 kernel (auto, cudnn, flash, efficient)")


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention returning (out [B,H,S,D], lse [B,H,S] in fp32)."""
    kernel = resolve_kernel(kernel, q.device)
    check_ring_kernel(kernel, ring=2)  # this call exists for the ring's merge
    scale = 1.0 / math.sqrt(q.shape[-1])
    if q.is_cuda and kernel == "flash_attn":
        from flash_attn import flash_attn_func  # type: ignore  # optional: only with kernel flash_attn

        out, lse, _ = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), return_attn_probs=True
        )
        return out.transpose(1, 2), lse.float()
    if q.is_cuda and kernel in ("cudnn", "sdpa"):
        out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, False, False, scale=scale
        )[:2]
        return out, lse.float().reshape(q.shape[:3])
    if q.is_cuda and kernel == "flash":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False, scale=scale)[:2]
        return out, lse.float()
    if q.is_cuda and kernel == "efficient":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, None, True, 0.0, False, scale=scale
        )[:2]
        return out, lse.float()[..., : q.shape[2]]
    if not q.is_cuda and kernel == "sdpa":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, scale=scale)
        return out, lse.float()
    # Exact math kernel: fp64 on CPU (ring blocks there then agree with one fp32 kernel call
    # to within that call's own rounding), fp32 on GPU; O(S^2) memory per call.
    acc = torch.float32 if q.is_cuda else torch.float64
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse.unsqueeze(-1))
    out = torch.matmul(probs, v.to(acc)).to(q.dtype)
    return out, lse.float()


def merge_partials(
    out: torch.Tensor | None, lse: torch.Tensor | None, block_out: torch.Tensor, block_lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial softmax-attention results over disjoint key sets.

    `out` is kept in fp32 while accumulating (fp64 on CPU, where it is cheap and
    keeps ring results within rounding of a single kernel call); lse is [B,H,S].
    """
    acc = torch.float32 if block_out.is_cuda else torch.float64
    block_out, block_lse = block_out.to(acc), block_lse.to(acc)
    if out is None or lse is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    out = out * torch.exp(lse - new_lse).unsqueeze(-1) + block_out * torch.exp(block_lse - new_lse).unsqueeze(-1)
    return out, new_lse


def valid_text_index(y_mask: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the valid text tokens of each sample (mask [B, L] bool)."""
    return [torch.nonzero(m, as_tuple=False).flatten() for m in y_mask]


def group_by_text(y_mask: torch.Tensor) -> list[tuple[list[int], torch.Tensor]]:
    """Group samples whose valid text positions are identical, so each group is one kernel call."""
    groups: dict[tuple[int, ...], list[int]] = {}
    indices = valid_text_index(y_mask)
    for b, idx in enumerate(indices):
        groups.setdefault(tuple(idx.tolist()), []).append(b)
    return [(members, indices[members[0]]) for members in groups.values()]


Selector = slice | torch.Tensor


def _selector(members: list[int], device) -> Selector:
    """A contiguous run of samples as a slice (indexing with it is a view, not a copy), else an index tensor."""
    if members == list(range(members[0], members[-1] + 1)):
        return slice(members[0], members[-1] + 1)
    return torch.tensor(members, device=device)


class TextGroup(NamedTuple):
    sel: "Selector"  # the samples (slice when contiguous)
    idx: torch.Tensor  # their valid text positions
    prefix: int | None  # len(idx) when the valid positions are 0..len-1 (T5's right padding), else None


class TextGroups:
    """`group_by_text` for one mask, computed once and reused by every block of a forward.

    Grouping reads the mask on the host (a device sync); per block that would stall the launch queue 48
    times a step. The cache holds the mask object itself, so identity cannot be mistaken for a new mask
    allocated at the same address, and checks its version counter for in-place changes (inference tensors
    have none: there identity decides, which holds for the sampler, whose masks live for one request).
    """

    def __init__(self) -> None:
        self._mask: torch.Tensor | None = None
        self._version = -1
        self._groups: list[TextGroup] = []

    def __call__(self, y_mask: torch.Tensor) -> list[TextGroup]:
        version = _version_of(y_mask)
        if self._mask is not y_mask or self._version != version:
            self._groups = []
            for members, idx in group_by_text(y_mask):
                positions = idx.tolist()
                prefix = len(positions) if positions == list(range(len(positions))) else None
                self._groups.append(TextGroup(_selector(members, y_mask.device), idx, prefix))
            self._mask, self._version = y_mask, version
        return self._groups


def _version_of(t: torch.Tensor) -> int:
    """The in-place version counter; inference tensors have none (-2: identity alone decides)."""
    try:
        return t._version
    except RuntimeError:
        return -2


def joint_view(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """[B, H, N+L, D] over x [B, H, N, D] and y [B, H, L, D] when y directly follows x in one buffer (the DiT's
    projections write them that way), else None. Slicing it to N + valid text is attention input with no copy."""
    if (x.dtype != y.dtype or x.device != y.device or x.stride() != y.stride() or x.shape[:2] != y.shape[:2]
            or x.shape[3] != y.shape[3] or x.untyped_storage().data_ptr() != y.untyped_storage().data_ptr()
            or y.storage_offset() != x.storage_offset() + x.shape[2] * x.stride(2)):
        return None
    b, h, n, d = x.shape
    return x.as_strided((b, h, n + y.shape[2], d), x.stride(), x.storage_offset())


def put_rows(out: torch.Tensor, sel: Selector, idx: torch.Tensor, values: torch.Tensor) -> None:
    """out[sel][:, :, idx] = values, written into `out` (through a view when sel is a slice)."""
    if isinstance(sel, slice):
        out[sel][:, :, idx] = values
    else:
        rows = out[sel]
        rows[:, :, idx] = values
        out[sel] = rows


class JointAttention(Protocol):
    """Attention over [visual tokens, valid text tokens] for each sample.

    Inputs are indexed [B, H, S, D] (the DiT hands over views of token-major [B, S, H, D] memory; any
    strides are accepted): q_x/k_x/v_x [B, H, N, D], q_y/k_y/v_y [B, H, L, D], y_mask [B, L] bool.
    Returns (out_x [B, H, N, D], out_y [B, H, L, D]); rows of out_y at padded text positions are zero.
    """

    def __call__(self, q_x, k_x, v_x, q_y, k_y, v_y, y_mask) -> tuple[torch.Tensor, torch.Tensor]: ...


class LocalJointAttention:
    """Single-process joint attention: padded text tokens are dropped, not masked."""

    def __init__(self, kernel: str = "auto") -> None:
        self.kernel = kernel
        self.text_groups = TextGroups()

    def __call__(self, q_x, k_x, v_x, q_y, k_y, v_y, y_mask):
        batch, heads, n, dim = q_x.shape
        # Token-major like the projections' buffers: the output projection then reads it without a transpose copy.
        out_x = q_x.new_empty(batch, n, heads, dim).transpose(1, 2)
        out_y = torch.zeros_like(q_y)
        joint = [joint_view(a, b) for a, b in ((q_x, q_y), (k_x, k_y), (v_x, v_y))]
        for sel, idx, prefix in self.text_groups(y_mask):
            if prefix is not None and all(j is not None for j in joint):
                q, k, v = (j[sel][:, :, :n + prefix] for j in joint)  # views: visual + valid text, no copy
            else:
                q = torch.cat([q_x[sel], q_y[sel][:, :, idx]], dim=2)
                k = torch.cat([k_x[sel], k_y[sel][:, :, idx]], dim=2)
                v = torch.cat([v_x[sel], v_y[sel][:, :, idx]], dim=2)
            o = attend(q, k, v, self.kernel)
            out_x[sel] = o[:, :, :n]
            put_rows(out_y, sel, idx, o[:, :, n:])
        return out_x, out_y
