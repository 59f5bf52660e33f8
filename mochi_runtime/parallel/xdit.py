"""Joint attention through xDiT (xfuser 0.7.0), for side-by-side runs against our own USP.

The seed project ran Mochi's attention through xfuser's `USP(..., joint_strategy="rear")`. This adapter
puts that call behind our `JointAttention` interface, so the same DiT, weights and process groups can run
either engine (`GroupSpec.attention_engine`, CLI `--attention-engine xdit`, `bench dit --engines ours,xdit`)
and the results and step times can be compared in one run.

What xfuser needs, and how it is given:
- Its own process-group registry and runtime state, which xfuser keeps in module globals. They are
  created once per worker process, over the already-initialised torch.distributed world, with the same
  degrees as our `Layout`; xfuser orders ranks as we do (sequence-parallel ranks contiguous, Ulysses
  inside Ring, CFG strided), which `_check_rank_order` verifies instead of assuming.
- Text as "joint" tensors: each rank appends its share of the valid text queries to its visual queries
  (split evenly over the sequence-parallel ranks, padded), and passes the valid text keys/values whole;
  xfuser slices them by head. Padded text tokens never reach it: each group of samples with the same
  valid text is one call, as in our engine (xfuser itself has no per-sample text masks).
- Visual padding (a token count that does not divide the sequence-parallel degree) is handed over as
  `valid_kv_len`, which xfuser's Ulysses path honours; its Ring path has no equivalent, so Ring layouts
  are refused at such shapes with a clear error.

xfuser refuses to import without an accelerator, so this engine runs on GPUs only and xfuser stays an
optional extra (`pip install .[xdit]`).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from ..ops.attention import TextGroups, put_rows
from .topology import ParallelGroups


class XDiTUnavailable(RuntimeError):
    pass


def _import_usp():
    if not torch.cuda.is_available():
        raise XDiTUnavailable("attention_engine=xdit needs a GPU: xfuser 0.7.0 does not import without one")
    try:
        from xfuser.model_executor.layers.usp import USP
    except ImportError as e:
        raise XDiTUnavailable(f"attention_engine=xdit needs xfuser 0.7.0 (pip install '.[xdit]'): {e}") from e
    return USP


def _set_up_xfuser(groups: ParallelGroups, backend_name: str):
    """xfuser's groups and runtime state for this process, matching `groups.layout` (once per process)."""
    # xfuser is optional and imports only with a GPU (see _usp): imported here, after that check
    from xfuser.config.args import xFuserArgs
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
    from xfuser.core.distributed import parallel_state as ps
    from xfuser.core.distributed import runtime_state as rs
    from xfuser.core.distributed.attention_backend import AttentionBackendType

    L = groups.layout
    backend = dist.get_backend()
    if not ps.model_parallel_is_initialized():
        # local_rank given: xfuser would otherwise read LOCAL_RANK (0 if unset) and move every rank to GPU 0
        local = torch.cuda.current_device() if backend == "nccl" else dist.get_rank()
        init_distributed_environment(world_size=L.world, rank=dist.get_rank(), local_rank=local, backend=backend)
        initialize_model_parallel(classifier_free_guidance_degree=L.cfg, sequence_parallel_degree=L.sp,
                                  ulysses_degree=L.ulysses, ring_degree=L.ring, backend=backend)
    if not rs.runtime_state_is_initialized():
        engine_config, _ = xFuserArgs(model="", ulysses_degree=L.ulysses, ring_degree=L.ring,
                                      use_cfg_parallel=L.cfg == 2, attention_backend=backend_name).create_config()

        class _State(rs.ExternalRuntimeState):  # the external state, with our degrees instead of all-ones
            def __init__(self, config) -> None:
                rs.RuntimeState.__init__(self, config)

        rs._RUNTIME = _State(engine_config)
    _check_rank_order(groups, ps)
    return AttentionBackendType[backend_name]


def _check_rank_order(groups: ParallelGroups, ps) -> None:
    mine = (groups.sp_rank, groups.ulysses_index, groups.ring_index)
    theirs = (ps.get_sequence_parallel_rank(), ps.get_ulysses_parallel_rank(), ps.get_ring_parallel_rank())
    if mine != theirs:
        raise XDiTUnavailable(f"xfuser orders ranks differently from this layout (sp, ulysses, ring ranks: ours "
                              f"{mine}, xfuser's {theirs}); the side-by-side would not compare like with like")


class XDiTJointAttention:
    """JointAttention (see mochi_runtime.ops.attention) computed by xfuser's USP."""

    def __init__(self, groups: ParallelGroups, kernel: str = "auto") -> None:
        self.groups = groups
        self._usp = _import_usp()
        # SDPA_FLASH: torch's flash kernel, which returns the LSE xfuser's Ring merge needs and needs no
        # flash-attn package (the backend the seed used). `kernel` is ours and does not apply here. (Plain SDPA
        # on gloo groups: CPU tensors, Ulysses only; reachable only where xfuser was made to import on a CPU.)
        self._backend = _set_up_xfuser(groups, "SDPA_FLASH" if dist.get_backend() == "nccl" else "SDPA")
        self.valid_tokens = 0  # visual tokens before padding, set per forward by SequenceParallelDiT.split
        self.text_groups = TextGroups()

    def __call__(self, q_x, k_x, v_x, q_y, k_y, v_y, y_mask):
        g = self.groups
        sp = g.layout.sp
        n_local = q_x.shape[2]
        padded = n_local * sp != self.valid_tokens
        if padded and g.layout.ring > 1:
            raise ValueError(f"attention_engine=xdit with ring {g.layout.ring}: {self.valid_tokens} visual tokens do "
                             f"not divide over {sp} sequence-parallel ranks and xfuser's ring path cannot drop "
                             f"padding; use attention_engine=ours or a size whose token count divides {sp}")
        kwargs = {"valid_kv_len": self.valid_tokens} if padded else None
        out_x = torch.empty_like(q_x)
        out_y = torch.zeros_like(q_y)
        for sel, idx, _ in self.text_groups(y_mask):
            length = idx.numel()
            share = math.ceil(length / sp)
            joint = {}  # stays empty without valid text (an empty negative prompt): USP over the visual tokens
            if share:
                text_q = torch.nn.functional.pad(q_y[sel][:, :, idx], (0, 0, 0, share * sp - length))
                joint = dict(joint_query=text_q[:, :, g.sp_rank * share:(g.sp_rank + 1) * share].contiguous(),
                             joint_key=k_y[sel][:, :, idx].contiguous(), joint_value=v_y[sel][:, :, idx].contiguous(),
                             joint_strategy="rear")
            out = self._usp(q_x[sel].contiguous(), k_x[sel].contiguous(), v_x[sel].contiguous(),
                            backend=self._backend, attention_kwargs=dict(kwargs) if kwargs else None, **joint)
            out_x[sel] = out[:, :, :n_local]
            if share:
                mine = out[:, :, n_local:].contiguous()
                parts = [torch.empty_like(mine) for _ in range(sp)]
                dist.all_gather(parts, mine, group=g.sp_group)
                put_rows(out_y, sel, idx, torch.cat(parts, dim=2)[:, :, :length])
        return out_x, out_y
