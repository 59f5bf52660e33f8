"""One denoising step as a replayed CUDA graph.

A DiT step launches about 1,500 kernels (and, sharded, ~200 NCCL calls). Launched one by one they leave
gaps of a few microseconds each on the GPU: ~12 ms of a 995 ms one-GPU step and ~7 ms of a 277 ms 4-GPU one
(`bench dit --profile`, 2026-11-27). Replaying a captured graph issues the same kernels back to back.

A graph replays fixed addresses, so what changes between steps (the latents and sigma) is copied into
static input tensors before each replay, and the result is read from the graph's own output tensor. The
captured call must not synchronise with the host or read host values that change (the DiT step does
neither once warm: its text grouping is cached per mask, and sigma reaches it as a device tensor).
NCCL collectives on the current stream are captured with the kernels, so a sharded step replays as one
graph per rank, every rank replaying in the same order as it captured.
"""
from __future__ import annotations

from typing import Callable

import torch

from .sampler import Velocity


class CUDAGraphCall:
    """fn() captured at its first call and replayed after; fn reads only tensors that stay in place.

    The first call runs fn() eagerly on a side stream (warming compiled kernels, cuDNN plans and NCCL
    communicators, as capture requires) and returns that result; it then captures fn() without running
    it. Later calls replay and return the graph's output tensor, which the next replay overwrites.
    """

    def __init__(self, fn: Callable[[], torch.Tensor]) -> None:
        self.fn = fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            assert self.out is not None
            return self.out
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = self.fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the NCCL watchdog and the serving threads keep making CUDA calls during capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self.out = self.fn()
        self.graph = graph
        return first


class GraphedVelocity:
    """A Velocity whose calls replay one CUDA graph per latent shape (captured at the first call).

    `velocity` must accept sigma as a device tensor of shape [1] (CFGVelocity and ParallelCFGVelocity do).
    Returns a fresh tensor per call, like the velocity it wraps. A new shape re-captures (and frees the old
    graph); in a parallel group every rank sees the same shapes, so every rank re-captures at the same step.
    """

    def __init__(self, velocity: Velocity) -> None:
        self.velocity = velocity
        self._key: tuple | None = None
        self._call: CUDAGraphCall | None = None
        self._z = self._sigma = torch.empty(0)

    def __call__(self, z: torch.Tensor, sigma: float) -> torch.Tensor:
        assert z.is_cuda, "CUDA graphs need the latents on a GPU"
        key = (tuple(z.shape), z.dtype, z.device)
        if key != self._key:
            self._call = None  # drop the old graph (and its memory pool) before capturing the next
            self._z = z.clone()
            self._sigma = torch.full((1,), sigma, dtype=torch.float32, device=z.device)
            self._call = CUDAGraphCall(lambda: self.velocity(self._z, self._sigma))
            self._key = key
        else:
            self._z.copy_(z)
            self._sigma.fill_(sigma)
        assert self._call is not None
        return self._call().clone()
