"""How a rank joins its group: the one sequence every rank runs (DiT workers, torchrun, benchmarks, tests).

    with joined(layout, gpu, rank, port) as groups:   # process group on 127.0.0.1:port, then the layout's groups
        model = SequenceParallelDiT(dit, groups)
    # the process group is left on the way out, whatever happened inside
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch.distributed as dist

from .topology import Layout, ParallelGroups, join_loopback_group


@contextmanager
def joined(layout: Layout, gpu: bool, rank: int | None = None, port: int | None = None,
           timeout: timedelta = timedelta(minutes=30)) -> Iterator[ParallelGroups]:
    """Join the process group (NCCL on cuda:rank, else gloo) and build the layout's sub-groups (Ulysses, ring,
    the CFG pair, gloo control).

    Args:
        rank, port: this rank of `layout.world`, meeting the others on 127.0.0.1:port; both None: rank, world
            and rendezvous come from torchrun's environment.
    """
    if port is None:
        dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout)
    else:
        assert rank is not None, "a loopback group needs this process's rank"
        join_loopback_group(rank, layout.world, port, gpu, timeout)
    try:
        yield ParallelGroups(layout)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
