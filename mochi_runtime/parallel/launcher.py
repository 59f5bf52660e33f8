"""Starts and supervises a DiT worker group from a parent process (CLI, Triton stub).

The parent never touches CUDA for the group: workers are spawned (never
forked), rendezvous on a free loopback port, set their own devices, and die
with the parent (PR_SET_PDEATHSIG). A dead worker is noticed within a poll
interval and turns into `WorkerGroupError`; the group is then torn down so no
process is left behind.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import threading
import time
from typing import Any, Callable

from .topology import free_port
from ..errors import WorkerGroupError
from .worker import Cancelled, DecodeTask, GroupSpec, Task, worker_main

log = logging.getLogger(__name__)

POLL_S = 0.2


class WorkerGroup:
    """A running group of DiT workers; implements the pipeline's `Denoiser` protocol."""

    def __init__(self, spec: GroupSpec, start_timeout: float = 900.0) -> None:
        spec.layout.validate()
        if spec.devices is not None and len(spec.devices) != spec.layout.world:
            raise ValueError(f"{len(spec.devices)} devices given for {spec.layout.describe()}")
        if spec.model_dir is None:  # resolve (and write, once) the embedded default before the workers start
            from ..loading.tiny import embedded_model_dir  # first use writes it; the stub stays light

            spec = dataclasses.replace(spec, model_dir=str(embedded_model_dir()))
        self.spec = spec
        self._lock = threading.Lock()
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._cancel = ctx.Value("b", 0)
        port = free_port()
        self.procs = [
            ctx.Process(
                target=worker_main, name=f"mochi-dit-worker-{r}", daemon=True,
                args=(r, self.spec, port, os.getpid(), child if r == 0 else None, self._cancel),
            )
            for r in range(spec.layout.world)
        ]
        for p in self.procs:
            p.start()
        child.close()
        self.closed = False
        try:
            kind, payload = self._wait(deadline=time.monotonic() + start_timeout)
            if kind != "ready":
                raise WorkerGroupError(f"worker group failed to start: {payload}")
        except BaseException:
            self.close(timeout=5)
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def alive(self) -> bool:
        return not self.closed and all(p.is_alive() for p in self.procs)

    def _wait(self, deadline: float | None = None):
        while True:
            if self._conn.poll(POLL_S):
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):  # rank 0 is gone: say which worker died, as the poll below would
                    self._broken(self._exits(wait_s=1.0) or "rank 0's control channel closed")
                if msg[0] == "fatal":  # the traceback goes to the log; the error names the exception only
                    log.error("a DiT worker failed:\n%s", msg[1])
                    self._broken(f"a worker failed: {msg[1].strip().splitlines()[-1]}")
                return msg
            dead = self._exits()
            if dead:
                self._broken(dead)
            if deadline is not None and time.monotonic() > deadline:
                self._broken("timed out waiting for the worker group")

    def _exits(self, wait_s: float = 0.0) -> str:
        """'mochi-dit-worker-N (pid P) exited with C' for each dead worker ('' while all run), waiting up to
        wait_s for a death to show."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = [p for p in self.procs if not p.is_alive()]
            if dead or time.monotonic() >= deadline:
                return ", ".join(f"{p.name} (pid {p.pid}) exited with {p.exitcode}" for p in dead)
            time.sleep(0.05)

    def _broken(self, why: str):
        self.close(timeout=5)
        raise WorkerGroupError(f"DiT worker group is down: {why}")

    def denoise(self, request, text, on_step: Callable[[int, int, int], None] | None = None,
                on_preview: Callable[[int, Any], None] | None = None):
        """Run one request on the group. on_step(step, total, skipped) may raise Cancelled to stop it;
        on_preview(step, frames) gets rank 0's preview, uint8 [T, h, w, 3], every request.preview_every steps."""
        if not self.alive():
            raise WorkerGroupError("DiT worker group is not running")
        with self._lock:
            self._cancel.value = 0
            self._conn.send(Task(request, text.to("cpu")))
            cancelled_by: BaseException | None = None
            while True:
                kind, payload = self._wait()
                if kind == "progress":
                    if on_step is not None and cancelled_by is None:
                        try:
                            on_step(*payload)
                        except BaseException as e:  # stop the group at the next step, then re-raise
                            cancelled_by = e
                            self._cancel.value = 1
                elif kind == "preview":
                    if on_preview is not None and cancelled_by is None:
                        try:
                            on_preview(*payload)
                        except Exception:  # a preview is a courtesy: its failure must not stop the group
                            log.exception("preview callback failed")
                elif kind == "result":
                    if cancelled_by is not None:
                        raise cancelled_by
                    return payload
                elif kind == "cancelled":
                    raise cancelled_by if cancelled_by is not None else Cancelled(payload)

    def decode(self, latents, plan=None):
        """Decode latents with the group's GPUs/processes, spatial tiles spread one per rank.

        Returns uint8 frames [1, F, H, W, 3]; equals `decode_tiled` with the same plan in one process.
        """
        from ..models.vae_tiling import grid_plan  # only a group that also decodes needs the VAE code

        if not self.alive():
            raise WorkerGroupError("DiT worker group is not running")
        plan = plan or grid_plan(tuple(latents.shape[-2:]), self.spec.layout.world)
        with self._lock:
            self._conn.send(DecodeTask(latents.to("cpu"), plan))
            kind, payload = self._wait()
            assert kind == "result", kind
            return payload

    def cancel(self) -> None:
        """Ask the running request (if any) to stop at the next step boundary."""
        self._cancel.value = 1

    def close(self, timeout: float = 30.0) -> None:
        """Stop the workers: a stop task first, then SIGTERM, then SIGKILL."""
        if self.closed:
            return
        self.closed = True
        try:
            if all(p.is_alive() for p in self.procs):
                self._conn.send(None)
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(2)
            if p.is_alive():
                p.kill()
                p.join(2)
        self._conn.close()

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
