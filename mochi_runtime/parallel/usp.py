"""Unified Sequence Parallelism for the DiT: Ulysses all-to-all x Ring attention x CFG-parallel.

The visual tokens are split evenly over the sequence-parallel (sp) ranks after
padding to a multiple of the sp degree; padding never reaches attention (padded
keys are cut off before each kernel call) and is dropped before the output.
Text tokens are replicated on every rank with per-sample masks.

Inside one attention:
1. Ulysses: all-to-all turns [B, H, n_local, D] (sequence shard, all heads) into
   [B, H/U, U*n_local, D] (a contiguous block of the sequence, a slice of heads);
   the text Q/K/V are sliced to the same heads. Q, K and V travel in one
   all-to-all; optionally split by heads into chunks posted at once, so later
   chunks' transfers overlap attention on earlier ones.
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

from ..attention import LocalJointAttention, TextGroups, attend, attend_with_lse, merge_partials, put_rows
from ..dit import AsymmDiT
from ..sampler import cfg_combine
from ..text_encoder import TextEmbedding
from .topology import ParallelGroups


class Pending:
    """An all-to-all in flight. `wait()` returns its output; on GPU it makes the compute stream wait for NCCL's
    (no host block), so compute posted before `wait()` overlaps the transfer."""

    def __init__(self, recv: torch.Tensor, work) -> None:
        self.recv, self.work = recv, work

    def wait(self) -> torch.Tensor:
        if self.work is not None:
            self.work.wait()
            self.work = None
        return self.recv


def post_seq_to_heads(xs: list[torch.Tensor], group, degree: int, chunks: int = 1, chunk: int = 0) -> Pending:
    """Start the Ulysses forward all-to-all of one head chunk of Q, K and V together (one launch, larger messages).

    xs: [B, H, n, D] sequence shards. Each destination rank owns H/U heads; chunk c of `chunks` moves, to every
    rank, the c-th run of H/U/chunks of them. Output [U (source), len(xs), B, H/U/chunks, n, D].
    """
    b, h, n, d = xs[0].shape
    hc = h // degree // chunks
    send = torch.stack([x.view(b, degree, chunks, hc, n, d)[:, :, chunk].transpose(0, 1) for x in xs], dim=1)
    recv = torch.empty_like(send)
    return Pending(recv, dist.all_to_all_single(recv, send, group=group, async_op=True))


def land_heads(recv: torch.Tensor, i: int, text: torch.Tensor, text_at: int) -> torch.Tensor:
    """Tensor i of a `post_seq_to_heads` output as [B, h, U*n rows (or more), D] with its text rows from row
    `text_at`, so "visual rows up to text_at, then the valid text" is a slice: no concatenation. text_at = U*n
    keeps every visual row (padding included: queries); text_at = the valid token count drops the padding (keys
    and values). Rows past text_at + L belong to no slice taken from it."""
    degree, _, b, h, n, d = recv.shape
    buf = recv.new_empty(b, h, max(degree * n, text_at + text.shape[2]), d)
    buf[:, :, :degree * n].view(b, h, degree, n, d).copy_(recv[:, i].permute(1, 2, 0, 3, 4))
    buf[:, :, text_at:text_at + text.shape[2]].copy_(text)
    return buf


def seq_to_heads(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, H, n, D] sequence shard -> [B, H/U, U*n, D] head shard (Ulysses forward all-to-all)."""
    if degree == 1:
        return x
    b, h, n, d = x.shape
    recv = post_seq_to_heads([x], group, degree).wait()[:, 0]  # [U, B, H/U, n, D]
    return recv.permute(1, 2, 0, 3, 4).reshape(b, h // degree, degree * n, d)


def post_heads_to_seq(x: torch.Tensor, group, degree: int) -> Pending:
    """Start the Ulysses backward all-to-all: [B, h, U*n, D] (a run of heads, whole sequence) -> per source rank
    [U, B, h, n, D] of this rank's sequence block."""
    b, h, s, d = x.shape
    send = x.reshape(b, h, degree, s // degree, d).permute(2, 0, 1, 3, 4).contiguous()
    recv = torch.empty_like(send)
    return Pending(recv, dist.all_to_all_single(recv, send, group=group, async_op=True))


def land_seq(out: torch.Tensor, recv: torch.Tensor, chunks: int = 1, chunk: int = 0) -> None:
    """Write a `post_heads_to_seq` output for head chunk `chunk` into out [B, H, n, D] (the heads each source rank
    owns are H/U consecutive ones; the chunk is the c-th run of H/U/chunks of those)."""
    b, h, n, d = out.shape
    degree, _, hc = recv.shape[:3]
    out.view(b, degree, chunks, hc, n, d)[:, :, chunk].copy_(recv.permute(1, 0, 2, 3, 4))


def heads_to_seq(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, H/U, U*n, D] head shard -> [B, H, n, D] sequence shard (Ulysses backward all-to-all)."""
    if degree == 1:
        return x
    b, h, s, d = x.shape
    out = x.new_empty(b, degree * h, s // degree, d)
    land_seq(out, post_heads_to_seq(x, group, degree).wait())
    return out


def swap_blocks(exchanges, group) -> None:
    """Per exchange, (blocks to send, blocks to receive into), both listed by peer index over `group`: one list
    all-to-all each, straight between the given views (no packing; this rank's own block included)."""
    for sends, recvs in exchanges:
        dist.all_to_all(list(recvs), [t.contiguous() for t in sends], group=group)


def gather_heads(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """All-gather head slices [B, H/U, L, D] -> [B, H, L, D]."""
    if degree == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(degree)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class USPJointAttention:
    """JointAttention over a sequence-parallel group (see module docstring)."""

    def __init__(self, groups: ParallelGroups, kernel: str = "auto", ulysses_chunks: int = 1,
                 token_major: bool = False) -> None:
        """ulysses_chunks: split each Ulysses exchange by heads into this many pieces, posted at once, so the
        transfer of piece i+1 (and the way back of piece i) overlaps attention on piece i (ring 1 only).
        token_major: the projections write visual Q/K/V per (sample, destination) block, token-major, and the
        exchange is a list all-to-all into buffers attention reads as they are: no packing or reassembly copies
        of Q/K/V, one of the output (ring 1, Ulysses > 1; see _ulysses_token_major)."""
        if ulysses_chunks < 1:
            raise ValueError(f"ulysses_chunks must be >= 1, got {ulysses_chunks}")
        if token_major and ulysses_chunks != 1:
            raise ValueError("token_major exchanges whole blocks: use ulysses_chunks 1")
        if (ulysses_chunks != 1 or token_major) and groups.layout.ring > 1:
            raise ValueError(f"ulysses_chunks and token_major change the Ulysses exchange of ring 1 layouts; ring "
                             f"{groups.layout.ring} takes the general path (got ulysses_chunks {ulysses_chunks}, "
                             f"token_major {token_major})")
        self.ulysses_chunks = ulysses_chunks
        # Read by AsymmetricJointBlock: the layout the projections write the visual Q/K/V in.
        U = groups.layout.ulysses
        self.visual_split = U if token_major and U > 1 else None
        if kernel == "fp8" and groups.layout.ring > 1:
            raise ValueError("attention kernel 'fp8' returns no log-sum-exp, which ring layouts merge by: use ring 1 "
                             "(ulysses / cfg-parallel) or a bf16 kernel")
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
                ops = [dist.P2POp(dist.isend, cur, nxt, g.ring_group), dist.P2POp(dist.irecv, incoming, prv, g.ring_group)]
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
        if q_x.dim() == 5:  # [B, U, n, H/U, D] blocks from the projections (visual_split)
            if g.layout.ring == 1 and prefixes:
                return self._ulysses_token_major(q_x, k_x, v_x, q_y, k_y, v_y, groups)
            q_x, k_x, v_x = (t.permute(0, 1, 3, 2, 4).reshape(t.shape[0], -1, t.shape[2], t.shape[4])
                             for t in (q_x, k_x, v_x))  # a mask with holes: back to head-major, general path
        if g.layout.ring == 1 and prefixes:
            return self._ulysses_joint(q_x, k_x, v_x, q_y, k_y, v_y, groups)
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

    def _ulysses_joint(self, q_x, k_x, v_x, q_y, k_y, v_y, groups):
        """Ulysses without ring, text masks that are prefixes (T5's right padding): the all-to-all writes each of
        Q, K, V next to its text rows, so attention inputs are slices, and a single text group's output goes
        back through the all-to-all as a view. Queries keep the padded visual rows (as the general path does);
        keys and values stop at the valid ones."""
        g = self.groups
        U, C = g.layout.ulysses, self.ulysses_chunks
        b, n_local = q_x.shape[0], q_x.shape[2]
        block_len = U * n_local  # visual rows per head after the all-to-all, padding included
        valid = min(block_len, self.valid_tokens)
        hc = q_y.shape[1] // C  # heads per chunk (q_y holds this rank's H/U heads)
        # Every chunk's Q/K/V exchange is posted up front; each chunk's output goes back as soon as it exists.
        ahead = [post_seq_to_heads([q_x, k_x, v_x], g.ulysses_group, U, C, c) for c in range(C)]
        back = []
        out_y = torch.zeros_like(q_y)
        # One text group covering the whole batch: its output goes on as a view, no copy into out_x.
        whole = len(groups) == 1 and isinstance(groups[0].sel, slice) and groups[0].sel == slice(0, b)
        for c in range(C):
            heads = slice(c * hc, (c + 1) * hc)
            recv = ahead[c].wait()
            q, k, v = (land_heads(recv, i, t[:, heads], at)
                       for i, (t, at) in enumerate(((q_y, block_len), (k_y, valid), (v_y, valid))))
            out_x = None if whole else q.new_empty(b, hc, block_len, q.shape[3])
            for sel, idx, prefix in groups:
                o = attend(q[sel][:, :, :block_len + prefix], k[sel][:, :, :valid + prefix],
                           v[sel][:, :, :valid + prefix], self.kernel)
                if out_x is None:
                    out_x = o[:, :, :block_len]
                else:
                    out_x[sel] = o[:, :, :block_len]
                put_rows(out_y[:, heads], sel, idx, o[:, :, block_len:])
            back.append(post_heads_to_seq(out_x, g.ulysses_group, U))
        out = q_x.new_empty(b, q_x.shape[1], n_local, q_x.shape[3])
        for c, pending in enumerate(back):
            land_seq(out, pending.wait(), C, c)
        return out, gather_heads(out_y, g.ulysses_group, U)

    def _ulysses_token_major(self, q_x, k_x, v_x, q_y, k_y, v_y, groups):
        """Ulysses with prefix text masks, visual Q/K/V as [B, U, n, H/U, D] (each block a destination's).

        Per sample, each rank receives its heads of the whole sequence into one token-major buffer per tensor,
        [rows, H/U, D], block u at rows u*n: NCCL writes it there (one list all-to-all per tensor and sample, this
        rank's own block included), the text rows follow the visual ones (queries after every visual row, keys and
        values after the valid ones, overwriting padding), and attention reads [1, H/U, rows, D] views of them.
        The output goes back the same way, token-major per destination, and lands in one [B, n, H, D] buffer
        that the output projection reads without a transpose copy."""
        g = self.groups
        U = g.layout.ulysses
        b, _, n, hu, d = q_x.shape
        block_len = U * n
        valid = min(block_len, self.valid_tokens)
        text_len = q_y.shape[2]
        bufs = [[q_x.new_empty(block_len + text_len, hu, d) for _ in range(b)] for _ in range(3)]
        swap_blocks([([x[s, u] for u in range(U)], [bufs[t][s][u * n:(u + 1) * n] for u in range(U)])
                     for t, x in enumerate((q_x, k_x, v_x)) for s in range(b)], g.ulysses_group)
        out_y = torch.zeros_like(q_y)
        outs = [None] * b  # per sample: [1, hu, rows, D] attention output
        for sel, idx, prefix in groups:
            for s in (range(b)[sel] if isinstance(sel, slice) else sel):
                q, k, v = bufs[0][s], bufs[1][s], bufs[2][s]
                q[block_len:block_len + prefix] = q_y[s, :, :prefix].transpose(0, 1)
                k[valid:valid + prefix] = k_y[s, :, :prefix].transpose(0, 1)
                v[valid:valid + prefix] = v_y[s, :, :prefix].transpose(0, 1)
                o = attend(q[:block_len + prefix].transpose(0, 1)[None], k[:valid + prefix].transpose(0, 1)[None],
                           v[:valid + prefix].transpose(0, 1)[None], self.kernel)
                outs[s] = o
                put_rows(out_y, slice(s, s + 1), idx, o[:, :, block_len:])  # a slice: a list index would
                # go to the GPU through a host-synchronising copy (twice a block, 2026-11-27)
        back = q_x.new_empty(b, U, n, hu, d)  # from each source rank: its heads of this rank's rows
        # outs[s][0].transpose(0, 1): [rows, hu, D], a view (token-major, so sent without a copy, when the kernel
        # writes its output in the layout of its query)
        swap_blocks([([outs[s][0].transpose(0, 1)[u * n:(u + 1) * n] for u in range(U)], list(back[s]))
                     for s in range(b)], g.ulysses_group)
        token_major = back.permute(0, 2, 1, 3, 4).reshape(b, n, U * hu, d)  # the one reassembly copy
        return token_major.transpose(1, 2), gather_heads(out_y, g.ulysses_group, U)


class SequenceParallelDiT:
    """Runs one AsymmDiT forward with its visual tokens sharded over the sp group.

    Same call signature and result as `AsymmDiT.__call__` on every rank of the group.
    """

    def __init__(self, dit: AsymmDiT, groups: ParallelGroups, kernel: str = "auto", engine: str = "ours",
                 ulysses_chunks: int = 1, token_major: bool = False) -> None:
        """engine: "ours" (USPJointAttention) or "xdit" (xfuser's USP behind the same interface, GPU only).
        ulysses_chunks: see USPJointAttention; must divide the heads each Ulysses rank holds."""
        self.dit, self.groups = dit, groups
        heads_per_rank = dit.cfg.num_heads // groups.layout.ulysses
        if heads_per_rank % ulysses_chunks:
            raise ValueError(f"ulysses_chunks {ulysses_chunks} must divide the {heads_per_rank} heads per Ulysses rank")
        if engine == "xdit":
            from .xdit import XDiTJointAttention

            if ulysses_chunks != 1 or token_major:
                raise ValueError("ulysses_chunks and token_major apply to our engine only")
            self.attention: USPJointAttention | XDiTJointAttention = XDiTJointAttention(groups, kernel)
        elif engine == "ours":
            self.attention = USPJointAttention(groups, kernel, ulysses_chunks, token_major)
        else:
            raise ValueError(f"attention engine must be 'ours' or 'xdit', got {engine!r}")
        dit.joint_attention = self.attention

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, y_feat: torch.Tensor, y_mask: torch.Tensor):
        return self.dit(x, sigma, y_feat, y_mask, sharding=self)

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

    def __init__(self, model: SequenceParallelDiT, cond: TextEmbedding, uncond: TextEmbedding, guidance: float):
        self.model, self.guidance = model, guidance
        g = model.groups
        # With guidance 1 there is no second branch: both CFG halves run the conditional one.
        self.cfg_parallel = g.layout.cfg == 2 and guidance != 1.0
        if self.cfg_parallel:
            branch = uncond if g.cfg_index == 0 else cond
            self.feats, self.mask = branch.features, branch.mask
        elif guidance != 1.0 and g.layout.cfg == 1:
            self.feats = torch.cat([uncond.features, cond.features])
            self.mask = torch.cat([uncond.mask, cond.mask])
        else:
            self.feats, self.mask = cond.features, cond.mask

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        b = self.feats.shape[0]
        s = torch.full((b,), sigma, dtype=torch.float32, device=z.device)
        v = self.model(z.expand(b, *z.shape[1:]), s, self.feats, self.mask).float()
        if self.cfg_parallel:
            both = torch.empty((2 * v.shape[0], *v.shape[1:]), dtype=v.dtype, device=v.device)
            dist.all_gather_into_tensor(both, v.contiguous(), group=self.model.groups.cfg_group)
            v_uncond, v_cond = both.chunk(2)
            return cfg_combine(v_uncond, v_cond, self.guidance)
        if b == 2:
            v_uncond, v_cond = v.chunk(2)
            return cfg_combine(v_uncond, v_cond, self.guidance)
        return v
