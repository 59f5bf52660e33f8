"""Unified Sequence Parallelism for the DiT: Ulysses all-to-all x Ring attention x CFG-parallel.

The visual tokens are split evenly over the sequence-parallel (sp) ranks after
padding to a multiple of the sp degree; padding never reaches attention (padded
keys are cut off before each kernel call) and is dropped before the output.
Text tokens are replicated on every rank with per-sample masks.

Inside one attention:
1. Ulysses: all-to-all turns the sequence shard (all heads) into a slice of heads
   over the whole sequence; the text Q/K/V are sliced to the same heads. Ring 1
   layouts exchange token-major blocks that the projections write per destination
   (a token's Q, K and V side by side: one message per block) and attention reads
   in place (no packing copies); ring layouts exchange
   head-major [B, H, n_local, D] -> [B, H/U, U*n_local, D].
2. Ring: the K/V block travels around the ring group; each rank attends its
   queries (its visual block plus the valid text tokens) to every block and
   merges the partial results by log-sum-exp. Text K/V are joined once, at the
   first step. The next block's transfer is posted before the current block's
   compute so they overlap on GPU.
3. All-to-all back to sequence shards; the text output's head slices are
   all-gathered over the Ulysses group.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..ops.attention import (LocalJointAttention, TextGroups, attend, attend_with_lse, check_ring_kernel,
                             merge_partials, put_rows)
from ..models.dit import AsymmDiT
from ..models.step_cache import StepCache, step_cache_for
from ..sampler import guide
from ..models.text_encoder import CFGText
from .topology import ParallelGroups, engine_names


def seq_to_heads(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, H, n, D] sequence shard -> [B, H/U, U*n, D] head shard (Ulysses forward all-to-all)."""
    if degree == 1:
        return x
    b, h, n, d = x.shape
    # Splitting the head dim is a view in any layout (the projections hand over token-major views): one copy.
    send = x.unflatten(1, (degree, h // degree)).transpose(0, 1).contiguous()  # [U (destination), B, H/U, n, D]
    recv = torch.empty_like(send)  # [U (source), B, H/U, n, D]: source u holds sequence block u
    dist.all_to_all_single(recv, send, group=group)
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // degree, degree * n, d)


def heads_to_seq(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, H/U, U*n, D] head shard -> [B, H, n, D] sequence shard (Ulysses backward all-to-all)."""
    if degree == 1:
        return x
    b, h, s, d = x.shape
    send = x.reshape(b, h, degree, s // degree, d).permute(2, 0, 1, 3, 4).contiguous()  # [U (destination), ...]
    recv = torch.empty_like(send)  # [U (source: its heads), B, H/U, n, D]
    dist.all_to_all_single(recv, send, group=group)
    return recv.transpose(0, 1).reshape(b, degree * h, s // degree, d)


def interleaved_blocks(q_x: torch.Tensor, k_x: torch.Tensor, v_x: torch.Tensor) -> torch.Tensor:
    """[B, U, n, 3, H/U, D] over the visual q_x, k_x, v_x [B, U, n, H/U, D]: a view when they are the three
    slots of one contiguous buffer of that shape (the projections write them so), else a packed copy.

    Why one buffer: each (sample, destination) block [n, 3, H/U, D] is then one message, so a sample's Q, K and
    V go out in one all-to-all instead of three (timed alone: 16.7 against 19.3 ms a step at cfg 2 x ulysses 2
    on 4x H200; in the step the fastest of 5 steps is 1.4-1.8 ms shorter, less than the steps' own scatter:
    docs/benchmarks.md), and the receiver's rows of each tensor keep one stride."""
    b, u, n, hu, d = q_x.shape
    shape = (b, u, n, 3, hu, d)
    strides = (u * n * 3 * hu * d, n * 3 * hu * d, 3 * hu * d, hu * d, d, 1)
    slot = strides[:3] + strides[4:]
    base = q_x.storage_offset()
    if (all(t.shape == q_x.shape and t.dtype == q_x.dtype and t.device == q_x.device and t.stride() == slot
            and t.untyped_storage().data_ptr() == q_x.untyped_storage().data_ptr() for t in (k_x, v_x))
            and q_x.stride() == slot and k_x.storage_offset() == base + hu * d
            and v_x.storage_offset() == base + 2 * hu * d):
        return q_x.as_strided(shape, strides, base)
    return torch.stack([q_x, k_x, v_x], dim=3)


def gather_heads(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """All-gather head slices [B, H/U, L, D] -> [B, H, L, D]."""
    if degree == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(degree)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class USPJointAttention:
    """JointAttention over a sequence-parallel group (see module docstring)."""

    def __init__(self, groups: ParallelGroups, kernel: str = "auto") -> None:
        # Read by AsymmetricJointBlock: the layout the projections write the visual Q/K/V in. Ring 1 layouts with
        # Ulysses exchange token-major blocks (_ulysses_token_major; 5% faster a step than head-major exchanges
        # with packing copies at 49 frames on 4x H200, 2026-11-27); ring layouts take the general path.
        U = groups.layout.ulysses
        self.visual_split = U if U > 1 and groups.layout.ring == 1 else None
        check_ring_kernel(kernel, groups.layout.ring)
        self.groups = groups
        self.kernel = kernel
        # No sequence parallelism (one GPU, or CFG-parallel alone): the single-process attention, which takes
        # [visual; valid text] as a slice of the projections' buffers instead of concatenating copies.
        self.local = LocalJointAttention(kernel) if groups.layout.sp == 1 else None
        # CPU ring blocks (ring > 1) use the exact fp64 kernel, so the merged result differs
        # from one fp32 kernel call only by that call's own rounding.
        self.ring_kernel = kernel if torch.cuda.is_available() else "math"
        self.valid_tokens = 0  # visual tokens before padding, set per forward
        self.text_groups = TextGroups()

    def _ring(self, q: torch.Tensor, kv, text_kv, block_len: int):
        """Attend q to every ring block of kv (K and V: [2, b, h, S, D] stacked when ring > 1) plus text_kv."""
        g = self.groups
        R = g.layout.ring
        me = g.ring_index
        nxt, prv = g.ring_ranks[(me + 1) % R], g.ring_ranks[(me - 1) % R]
        if R == 1:  # plain attention over the whole (gathered) sequence: no LSE needed
            valid = min(block_len, self.valid_tokens)
            k = torch.cat([kv[0][:, :, :valid], text_kv[0]], dim=2)
            v = torch.cat([kv[1][:, :, :valid], text_kv[1]], dim=2)
            return attend(q, k, v, self.kernel)
        out = lse = None
        cur = kv
        for step in range(R):
            reqs, incoming = [], None
            if step < R - 1:
                incoming = torch.empty_like(cur)
                ops = [dist.P2POp(dist.isend, cur, nxt, g.ring_group),
                       dist.P2POp(dist.irecv, incoming, prv, g.ring_group)]
                reqs = dist.batch_isend_irecv(ops)
            block = (me - step) % R
            valid = max(0, min(block_len, self.valid_tokens - block * block_len))
            k, v = cur[0][:, :, :valid], cur[1][:, :, :valid]
            if step == 0:
                k, v = torch.cat([k, text_kv[0]], dim=2), torch.cat([v, text_kv[1]], dim=2)
            if k.shape[2] > 0:
                o, l = attend_with_lse(q, k, v, self.ring_kernel)
                out, lse = merge_partials(out, lse, o, l)
            for r in reqs:
                r.wait()
            if incoming is not None:
                cur = incoming
        assert out is not None, "no keys at all"
        return out

    def __call__(self, q_x, k_x, v_x, q_y, k_y, v_y, y_mask):
        if self.local is not None:
            return self.local(q_x, k_x, v_x, q_y, k_y, v_y, y_mask)
        g = self.groups
        U = g.layout.ulysses
        h = q_y.shape[1] // U
        heads = slice(g.ulysses_index * h, (g.ulysses_index + 1) * h)
        q_y, k_y, v_y = (t[:, heads] for t in (q_y, k_y, v_y))
        groups = self.text_groups(y_mask)
        prefixes = all(tg.prefix is not None for tg in groups)
        if q_x.dim() == 5:  # [B, U, n, H/U, D] blocks from the projections (visual_split: ring 1)
            if prefixes:
                return self._ulysses_token_major(q_x, k_x, v_x, q_y, k_y, v_y, groups)
            q_x, k_x, v_x = (t.permute(0, 1, 3, 2, 4).reshape(t.shape[0], -1, t.shape[2], t.shape[4])
                             for t in (q_x, k_x, v_x))  # a mask with holes: back to head-major, general path
        q_x, k_x, v_x = (seq_to_heads(t, g.ulysses_group, U) for t in (q_x, k_x, v_x))
        block_len = q_x.shape[2]
        out_x = torch.empty_like(q_x)
        out_y = torch.zeros_like(q_y)
        for sel, idx, _ in groups:
            q = torch.cat([q_x[sel], q_y[sel][:, :, idx]], dim=2)
            # Stacked only when it travels round the ring (one P2P message); the text K/V never travels.
            kv = torch.stack([k_x[sel], v_x[sel]]) if g.layout.ring > 1 else (k_x[sel], v_x[sel])
            text_kv = (k_y[sel][:, :, idx], v_y[sel][:, :, idx])
            o = self._ring(q, kv, text_kv, block_len).to(q.dtype)
            out_x[sel] = o[:, :, :block_len]
            put_rows(out_y, sel, idx, o[:, :, block_len:])
        return heads_to_seq(out_x, g.ulysses_group, U), gather_heads(out_y, g.ulysses_group, U)

    def _ulysses_token_major(self, q_x, k_x, v_x, q_y, k_y, v_y, groups):
        """Ulysses with prefix text masks, visual Q/K/V as [B, U, n, H/U, D] (each block a destination's).

        Per sample, one all-to-all brings this rank's heads of the whole sequence into one token-major buffer
        [rows, 3, H/U, D] (block u at rows u*n, Q, K and V side by side: interleaved_blocks); the text rows
        follow the visual ones (queries after every visual row, keys and values after the valid ones,
        overwriting padding), and attention reads [1, H/U, rows, D] views of each of Q, K, V. The output goes
        back the same way, one all-to-all per sample, and lands in one [B, n, H, D] buffer that the output
        projection reads without a transpose copy."""
        g = self.groups
        U = g.layout.ulysses
        b, _, n, hu, d = q_x.shape
        block_len = U * n
        valid = min(block_len, self.valid_tokens)
        text_len = q_y.shape[2]
        blocks = interleaved_blocks(q_x, k_x, v_x)  # [B, U (destination), n, 3, hu, D]
        rows = q_x.new_empty(b, block_len + text_len, 3, hu, d)  # per sample: the U sources' rows, then text
        for s in range(b):
            dist.all_to_all_single(rows[s, :block_len], blocks[s].flatten(0, 1), group=g.ulysses_group)
        out_y = torch.zeros_like(q_y)
        outs = [None] * b  # per sample: [1, hu, rows, D] attention output
        for sel, idx, prefix in groups:
            for s in (range(b)[sel] if isinstance(sel, slice) else sel):
                q, k, v = rows[s].unbind(1)  # [rows, hu, D] each
                q[block_len:block_len + prefix] = q_y[s, :, :prefix].transpose(0, 1)
                k[valid:valid + prefix] = k_y[s, :, :prefix].transpose(0, 1)
                v[valid:valid + prefix] = v_y[s, :, :prefix].transpose(0, 1)
                o = attend(q[:block_len + prefix].transpose(0, 1)[None], k[:valid + prefix].transpose(0, 1)[None],
                           v[:valid + prefix].transpose(0, 1)[None], self.kernel)
                outs[s] = o
                put_rows(out_y, slice(s, s + 1), idx, o[:, :, block_len:])  # a slice: a list index would
                # go to the GPU through a host-synchronising copy (twice a block, 2026-11-27)
        back = q_x.new_empty(b, U, n, hu, d)  # from each source rank: its heads of this rank's rows
        for s in range(b):
            # [rows, hu, D]: a view, contiguous when the kernel writes its output in its query's layout order
            # (token-major), so it is sent without a copy
            sent = outs[s][0].transpose(0, 1)[:block_len].contiguous()
            dist.all_to_all_single(back[s].flatten(0, 1), sent, group=g.ulysses_group)
        token_major = back.permute(0, 2, 1, 3, 4).reshape(b, n, U * hu, d)  # the one reassembly copy
        return token_major.transpose(1, 2), gather_heads(out_y, g.ulysses_group, U)


class SequenceParallelDiT:
    """Runs one AsymmDiT forward with its visual tokens sharded over the sp group.

    Same call signature and result as `AsymmDiT.__call__` on every rank of the group.
    """

    def __init__(self, dit: AsymmDiT, groups: ParallelGroups, kernel: str = "auto", engine: str = "ours") -> None:
        """engine: "ours" (USPJointAttention) or "xdit" (xfuser's USP behind the same interface, GPU only)."""
        self.dit, self.groups = dit, groups
        if engine == "xdit":
            from .xdit import XDiTJointAttention  # xfuser is optional ('.[xdit]')

            self.attention: USPJointAttention | XDiTJointAttention = XDiTJointAttention(groups, kernel)
        elif engine == "ours":
            self.attention = USPJointAttention(groups, kernel)
        else:
            raise ValueError(f"attention engine must be {engine_names()}, got {engine!r}")
        dit.joint_attention = self.attention

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y_feat: torch.Tensor, y_mask: torch.Tensor,
                 cache: StepCache | None = None):
        return self.dit(x, sigma, y_feat, y_mask, sharding=self, cache=cache)

    def step_cache(self, request) -> StepCache | None:
        """A generation's StepCache whose measures are summed over the whole group (None for mode off)."""
        return step_cache_for(request, self.reduce_sum)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over every rank of the group, in place: over the sp group (the tokens), then over the CFG pair
        (the branches). Every rank ends with the same values."""
        g = self.groups
        if g.layout.sp > 1:
            dist.all_reduce(t, group=g.sp_group)
        if g.layout.cfg > 1:
            dist.all_reduce(t, group=g.cfg_group)
        return t

    def split(self, tokens: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
        """This rank's contiguous share of the visual tokens and their RoPE, zero-padded to equal shares."""
        g = self.groups
        sp = g.layout.sp
        n = tokens.shape[1]
        self._n, self._n_local = n, math.ceil(n / sp)
        pad = self._n_local * sp - n
        start = g.sp_rank * self._n_local
        local = F.pad(tokens, (0, 0, 0, pad))[:, start:start + self._n_local]
        local_rope = tuple(F.pad(t, (0, 0, 0, 0, 0, pad))[start:start + self._n_local] for t in rope)
        self.attention.valid_tokens = n
        self.valid_rows = max(0, min(self._n_local, n - start))
        return local, local_rope

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """All ranks' shares back into the full sequence, padding dropped."""
        g = self.groups
        sp, n, n_local = g.layout.sp, self._n, self._n_local
        if sp == 1:
            return local
        b, _, d = local.shape
        full = torch.empty((sp * b, n_local, d), dtype=local.dtype, device=local.device)
        dist.all_gather_into_tensor(full, local.contiguous(), group=g.sp_group)
        return full.view(sp, b, n_local, d).permute(1, 0, 2, 3).reshape(b, sp * n_local, d)[:, :n]


class ParallelCFGVelocity:
    """Guided velocity on a parallel group: with cfg degree 2 each half runs one branch.

    The two branch velocities are combined after one all-gather over the CFG pair.
    """

    def __init__(self, model: SequenceParallelDiT, text: CFGText, guidance: float, cache: StepCache | None = None):
        self.model, self.guidance, self.cache = model, guidance, cache
        g = model.groups
        # With guidance 1 there is no second branch: both CFG halves run the conditional one.
        self.cfg_parallel = g.layout.cfg == 2 and guidance != 1.0
        if self.cfg_parallel:
            emb = text.branch(g.cfg_index)  # the pair's ranks hold the branches in stacked order
        elif guidance != 1.0 and g.layout.cfg == 1:
            emb = text.stacked()
        else:
            emb = text.cond
        self.feats, self.mask = emb.features, emb.mask

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        b = self.feats.shape[0]
        s = torch.full((b,), sigma, dtype=torch.float32, device=z.device)
        v = self.model(z.expand(b, *z.shape[1:]), s, self.feats, self.mask, self.cache).float()
        if self.cfg_parallel:
            both = torch.empty((2 * v.shape[0], *v.shape[1:]), dtype=v.dtype, device=v.device)
            dist.all_gather_into_tensor(both, v.contiguous(), group=self.model.groups.cfg_group)  # by cfg_index
            return guide(both, self.guidance)
        return guide(v, self.guidance) if b == 2 else v
