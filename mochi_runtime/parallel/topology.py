"""Parallel layout (cfg x ulysses x ring) and the process groups that realise it.

Rank layout: rank = cfg_index * sp_size + ring_index * ulysses + ulysses_index, so
sequence-parallel ranks are contiguous, Ulysses groups are contiguous inside them,
Ring groups are strided by `ulysses`, and CFG pairs are strided by `sp_size`.
Groups are created once, by every rank in the same order, and owned by a
`ParallelGroups` object (no module-level process-group state).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import LayoutError


ATTENTION_ENGINES = ("ours", "xdit")  # the joint attention's implementation: see usp.SequenceParallelDiT


def engine_names() -> str:
    """The engines as error messages list them: 'ours' or 'xdit'."""
    return " or ".join(map(repr, ATTENTION_ENGINES))


@dataclass(frozen=True)
class Layout:
    cfg: int = 1
    ulysses: int = 1
    ring: int = 1

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def world(self) -> int:
        return self.cfg * self.sp

    @classmethod
    def parse(cls, text: str) -> "Layout":
        """"CxUxR" as benchmarks and scripts name layouts, e.g. "2x2x1" = cfg 2, ulysses 2, ring 1."""
        parts = text.lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise LayoutError(f"layout must be CFGxULYSSESxRING, e.g. 2x2x1, got {text!r}")
        return cls(*(int(p) for p in parts)).validate()

    def name(self) -> str:
        """The "CxUxR" form `parse` reads (records and file names)."""
        return f"{self.cfg}x{self.ulysses}x{self.ring}"

    def validate(self, num_heads: int | None = None, guidance: float | None = None) -> "Layout":
        for name in ("cfg", "ulysses", "ring"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name} degree must be >= 1, got {getattr(self, name)}")
        if self.cfg not in (1, 2):
            raise LayoutError(f"cfg degree must be 1 or 2 (two guidance branches), got {self.cfg}")
        if num_heads is not None and num_heads % self.ulysses:
            raise LayoutError(f"ulysses degree {self.ulysses} must divide the {num_heads} attention heads")
        if guidance is not None and self.cfg == 2 and guidance == 1.0:
            raise LayoutError("cfg-parallel needs guidance != 1 (with guidance 1 there is no second branch)")
        return self

    def coords(self, rank: int) -> tuple[int, int, int]:
        """(cfg_index, ring_index, ulysses_index) of a global rank."""
        cfg_idx, sp_rank = divmod(rank, self.sp)
        ring_idx, uly_idx = divmod(sp_rank, self.ulysses)
        return cfg_idx, ring_idx, uly_idx

    def describe(self) -> str:
        return f"cfg{self.cfg} x ulysses{self.ulysses} x ring{self.ring} (world {self.world})"

    @classmethod
    def for_world(cls, world: int, cfg: int | None = None, ulysses: int | None = None, ring: int | None = None,
                  num_heads: int | None = None) -> "Layout":
        """The layout of `world` ranks, any degree left as None filled in: ring 1; cfg 2 when the world is even
        (the two guidance branches side by side: the cheapest split), else 1; Ulysses takes the ranks left.
        LayoutError when the degrees given do not multiply to the world."""
        ring = ring or 1
        if cfg is None:
            cfg = 2 if world % 2 == 0 and world // 2 % ring == 0 else 1
        if ulysses is None:
            if world % (cfg * ring):
                raise LayoutError(f"{world} ranks do not split into cfg {cfg} x ring {ring}")
            ulysses = world // (cfg * ring)
        layout = cls(cfg, ulysses, ring).validate(num_heads=num_heads)
        if layout.world != world:
            raise LayoutError(f"{layout.describe()} needs {layout.world} ranks, {world} given")
        return layout


def _groups_of(all_ranks: list[list[int]], rank: int, backend: str | None, timeout: timedelta):
    mine = None
    for ranks in all_ranks:
        g = dist.new_group(ranks, backend=backend, timeout=timeout)
        if rank in ranks:
            mine = (g, ranks)
    assert mine is not None
    return mine


class ParallelGroups:
    """The process groups of one layout, for the calling rank.

    `control` is a gloo group over the whole world with a very long timeout: it
    carries task broadcasts and the per-step cancel flag, so idle workers wait
    on it without tripping NCCL watchdogs.
    """

    def __init__(self, layout: Layout, control_timeout: timedelta = timedelta(days=7)) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised")
        if dist.get_world_size() != layout.world:
            raise LayoutError(f"world size {dist.get_world_size()} != {layout.describe()}")
        self.layout = layout
        self.rank = dist.get_rank()
        self.cfg_index, self.ring_index, self.ulysses_index = layout.coords(self.rank)
        L = layout
        timeout = timedelta(minutes=30)
        self.sp_group, self.sp_ranks = _groups_of(
            [list(range(c * L.sp, (c + 1) * L.sp)) for c in range(L.cfg)], self.rank, None, timeout)
        self.ulysses_group, self.ulysses_ranks = _groups_of(
            [[c * L.sp + r * L.ulysses + u for u in range(L.ulysses)] for c in range(L.cfg) for r in range(L.ring)],
            self.rank, None, timeout)
        self.ring_group, self.ring_ranks = _groups_of(
            [[c * L.sp + r * L.ulysses + u for r in range(L.ring)] for c in range(L.cfg) for u in range(L.ulysses)],
            self.rank, None, timeout)
        self.cfg_group, self.cfg_ranks = _groups_of(
            [[c * L.sp + s for c in range(L.cfg)] for s in range(L.sp)], self.rank, None, timeout)
        self.control = dist.new_group(list(range(L.world)), backend="gloo", timeout=control_timeout)

    @property
    def sp_rank(self) -> int:
        return self.ring_index * self.layout.ulysses + self.ulysses_index


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on host (the OS picks it; nothing is hard-coded)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def join_loopback_group(rank: int, world: int, port: int, gpu: bool, timeout: timedelta) -> None:
    """init_process_group on 127.0.0.1:port: NCCL bound to cuda:rank on GPU, gloo on CPU."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if gpu:
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timeout,
                                device_id=torch.device("cuda", rank))
    else:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)


def device_for_rank(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")
