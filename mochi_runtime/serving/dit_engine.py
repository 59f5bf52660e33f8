"""The DiT serving engine: worker groups driven from their own threads, with one bounded queue.

The Triton `mochi_dit` adapter hands each request to `submit` and returns at
once (the response is sent when the job ends). Each worker group (a "lane": one
GPU set, e.g. "0,1" of "0,1;2,3") has a thread that takes the next queued job
as soon as its group is free, so the queue is work-conserving across lanes and
one engine knows every generation: progress long-polls (by generation id),
cancellation at step boundaries and draining reach whichever lane runs it. A
lane whose worker dies respawns its own group.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..parallel import Cancelled, GroupSpec, WorkerGroup, WorkerGroupError
from ..models.text_encoder import CFGText, TextEmbedding
from ..validation import GenerationRequest
from .adapters import QueueFull, RequestTimeout, ShuttingDown

log = logging.getLogger("mochi.dit_engine")

UNKNOWN_STEP = -2  # progress of a generation this engine does not know (-1: finished)


@dataclass(frozen=True)
class Progress:
    """Where a generation is: `step` of `total` steps done (-1 finished, UNKNOWN_STEP not known here), seconds
    since it started running, steps the step cache skipped so far, and its latest preview (uint8 [T, h, w, 3],
    made after `preview_step` steps; None before the first)."""

    step: int
    total: int = 0
    elapsed: float = 0.0
    skipped: int = 0
    preview_step: int = 0
    preview: Any = None


@dataclass
class Job:
    request: GenerationRequest
    text: CFGText
    on_done: Callable[[object, int], None]  # (latents, steps skipped by the step cache)
    on_error: Callable[[BaseException], None]
    is_cancelled: Callable[[], bool] = lambda: False
    generation_id: str | None = None
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    timeout_s: float | None = None  # from submission; past it the request ends with RequestTimeout

    def cancelled(self) -> bool:
        return self.cancel_flag.is_set() or self.is_cancelled()

    def timed_out(self) -> bool:
        return self.timeout_s is not None and time.monotonic() - self.submitted > self.timeout_s


class Lane:
    """One worker group and what the engine knows about it."""

    def __init__(self, index: int, spec: GroupSpec) -> None:
        self.index, self.spec = index, spec
        self.group = WorkerGroup(spec)
        self.restart_error: BaseException | None = None
        self.thread: threading.Thread | None = None


def load_warmup(feat_dim: int) -> tuple[GenerationRequest, CFGText]:
    """The generation mochi_dit runs on every lane when it loads: one step at the smallest size, so no user
    request pays for start-up. Shared with the serving benchmark, which replays it in-process to compare like
    with like."""
    z = TextEmbedding(torch.zeros(1, 4, feat_dim), torch.ones(1, 4, dtype=torch.bool))
    return GenerationRequest("warm-up", num_frames=7, height=32, width=32, steps=1), CFGText(z, z)


class DiTEngine:
    def __init__(self, spec: GroupSpec | Sequence[GroupSpec], max_queue: int = 8,
                 on_restart: Callable[[], None] | None = None,
                 on_step: Callable[[bool], None] | None = None,
                 on_queue: Callable[[int, float | None], None] | None = None) -> None:
        """spec: one group, or one per lane (each its own GPU set).

        on_step(skipped) after every denoising step of every job: whether the step cache skipped its blocks.

        on_queue(depth, waited_s) after every enqueue (waited_s None) and dequeue (how long the job waited):
        the queue-time signal an autoscaler needs."""
        specs = [spec] if isinstance(spec, GroupSpec) else list(spec)
        if not specs:
            raise ValueError("the DiT engine needs at least one worker group")
        self.on_restart = on_restart
        self.on_step = on_step
        self.on_queue = on_queue
        self.lanes: list[Lane] = []
        try:
            for i, s in enumerate(specs):
                self.lanes.append(Lane(i, s))
        except BaseException:
            for lane in self.lanes:
                lane.group.close(timeout=5)
            raise
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._depth_lock = threading.Lock()  # see _report_depth
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        # generation id -> Progress; step -1 once finished. Waiters long-poll on it.
        self._progress: dict[str, Progress] = {}
        self._waiters: list[tuple[str, int, float, Callable[[Progress], None]]] = []
        self._reaper = threading.Thread(target=self._reap, name="mochi-dit-progress", daemon=True)
        self._closing = threading.Event()
        self._reaper.start()
        for lane in self.lanes:
            lane.thread = threading.Thread(target=self._run, args=(lane,), name=f"mochi-dit-lane-{lane.index}",
                                           daemon=True)
            lane.thread.start()

    def warm_up(self, request: GenerationRequest, text: CFGText, timeout: float = 600.0) -> None:
        """Run `request` once on every lane at the same time (compiles and allocates on each group), before any
        job is submitted; raises the first failure."""
        errors: list[BaseException] = []

        def run(lane: Lane) -> None:
            try:
                lane.group.denoise(request, text)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(lane,), name=f"mochi-dit-warmup-{lane.index}")
                   for lane in self.lanes]
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            raise TimeoutError(f"DiT warm-up did not finish in {timeout:g} s")
        if errors:
            raise errors[0]

    # -- requests --------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if self._closing.is_set():
            raise ShuttingDown("the DiT model is shutting down")
        if job.generation_id:
            with self._lock:
                self._jobs[job.generation_id] = job
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._forget(job)
            raise QueueFull(f"DiT queue is full ({self._queue.maxsize} waiting); retry later") from None
        self._report_depth(None)

    def _report_depth(self, waited_s: float | None) -> None:
        """on_queue with the depth read under one lock: a put and a get racing could otherwise report in the
        opposite order and leave the gauge at 1 over an empty queue."""
        if self.on_queue is not None:
            with self._depth_lock:
                self.on_queue(self._queue.qsize(), waited_s)

    def cancel(self, generation_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(generation_id)
        if job is None:
            return False
        job.cancel_flag.set()
        return True

    def wait_progress(self, generation_id: str, after_step: int, reply: Callable[[Progress], None],
                      timeout: float = 2.0) -> None:
        """Call reply(progress) once the generation is past `after_step` or finished, or with its current state
        after `timeout` seconds: step 0 while it waits in the queue, UNKNOWN_STEP when this engine has no such
        generation (not submitted yet, or lost with a stub that died: its orchestrator tells which)."""
        with self._lock:
            state = self._progress.get(generation_id)
            if state is not None and (state.step > after_step or state.step < 0):
                ready = state
            else:
                self._waiters.append((generation_id, after_step, time.monotonic() + timeout, reply))
                return
        reply(ready)

    def _publish(self, generation_id: str | None, progress: Progress) -> None:
        if not generation_id:
            return
        with self._lock:
            self._progress[generation_id] = progress
            step = progress.step
            due = [w for w in self._waiters if w[0] == generation_id and (step > w[1] or step < 0)]
            self._waiters = [w for w in self._waiters if w not in due]
        for w in due:
            w[3](progress)

    def _reap(self) -> None:
        while not self._closing.wait(0.1):
            now = time.monotonic()
            with self._lock:
                due = [w for w in self._waiters if w[2] <= now]
                self._waiters = [w for w in self._waiters if w not in due]
                states = [self._progress.get(w[0], Progress(0) if w[0] in self._jobs else Progress(UNKNOWN_STEP))
                          for w in due]
            for w, st in zip(due, states):
                w[3](st)

    def _forget(self, job: Job) -> None:
        if job.generation_id:
            with self._lock:
                self._jobs.pop(job.generation_id, None)
                last = self._progress.get(job.generation_id, Progress(0))
            self._publish(job.generation_id, Progress(-1, job.request.steps, time.monotonic() - job.submitted,
                                                      last.skipped))
            with self._lock:  # finished ids are answered from here for a short while, then dropped
                if len(self._progress) > 1024:
                    for k in list(self._progress)[:512]:
                        self._progress.pop(k, None)

    # -- engine thread ---------------------------------------------------------------------
    def _run(self, lane: Lane) -> None:
        while True:
            job = self._queue.get()
            if job is not None:
                self._report_depth(time.monotonic() - job.submitted)
            if job is None or self._closing.is_set():
                if job is not None:
                    self._refuse(job)
                return
            try:
                self._execute(job, lane)
            except BaseException as e:  # the lane thread must outlive any one job
                log.exception("DiT engine: job failed outside the group")
                try:
                    job.on_error(e)
                except Exception:
                    pass
            finally:
                self._forget(job)

    def _execute(self, job: Job, lane: Lane) -> None:
        if job.cancelled():
            job.on_error(Cancelled("cancelled while queued"))
            return
        if job.timed_out():
            job.on_error(RequestTimeout(f"waited {time.monotonic() - job.submitted:.1f} s in the DiT queue, past the "
                                        f"request's timeout of {job.timeout_s:g} s"))
            return
        t0 = time.monotonic()
        skipped = [0]
        preview: list[Any] = [0, None]  # (step, frames) of the latest preview

        def on_step(i: int, total: int, n_skipped: int) -> None:
            if self.on_step is not None:
                self.on_step(n_skipped > skipped[0])
            skipped[0] = n_skipped
            self._publish(job.generation_id, Progress(i, total, time.monotonic() - t0, n_skipped, *preview))
            if job.cancelled():
                raise Cancelled(f"cancelled after step {i} of {total}")
            if job.timed_out():
                raise RequestTimeout(f"request timeout of {job.timeout_s:g} s reached after step {i} of {total}")

        def on_preview(i: int, frames) -> None:  # published with the step it was made at (on_step follows)
            preview[:] = [i, frames]

        if not lane.group.alive():
            self._restart(lane)
            if not lane.group.alive():
                job.on_error(WorkerGroupError(f"DiT worker group {lane.index} is down and could not be restarted: "
                                              f"{lane.restart_error}"))
                return
        try:
            latents = lane.group.denoise(job.request, job.text, on_step, on_preview)
        except WorkerGroupError as e:
            log.error("DiT worker group %d failed: %s", lane.index, e)
            job.on_error(e)
            self._restart(lane)
            return
        except BaseException as e:  # Cancelled, or a callback error
            if isinstance(e, Cancelled) and self._closing.is_set():
                e = ShuttingDown(f"the server is shutting down; generation stopped ({e})")
            job.on_error(e)
            return
        job.on_done(latents, skipped[0])

    def _restart(self, lane: Lane) -> None:
        try:
            lane.group.close(timeout=5)
        except Exception:
            pass
        log.warning("respawning DiT worker group %d", lane.index)
        try:
            lane.group = WorkerGroup(lane.spec)
        except Exception as e:  # stays down; the next job tries again and fails with this reason
            log.error("DiT worker group %d restart failed: %s", lane.index, e)
            lane.restart_error = e
            return
        lane.restart_error = None
        if self.on_restart is not None:
            self.on_restart()

    def _refuse(self, job: Job) -> None:
        try:
            job.on_error(ShuttingDown("the DiT model is shutting down; request not run"))
        finally:
            self._forget(job)

    def healthy_lanes(self) -> int:
        """Groups that can take a generation: running, or respawned after their last failure. A group whose
        respawn failed counts as down until a later respawn works; a drained engine has none."""
        if self._closing.is_set():
            return 0
        return sum(1 for lane in self.lanes if lane.restart_error is None)

    def drain(self) -> int:
        """Stop taking work: queued requests get ShuttingDown, the running one stops at its next step boundary
        (and gets ShuttingDown too). Returns how many queued requests were answered."""
        self._closing.set()
        answered = 0
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._refuse(job)
                answered += 1
        for lane in self.lanes:
            lane.group.cancel()
        return answered

    def close(self, timeout: float = 30.0) -> None:
        """drain(), then let the thread exit and join the workers (all bounded by timeout)."""
        self.drain()
        for _ in self.lanes:  # one stop marker per lane thread
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:  # a submit raced the drain; the thread sees _closing after its current job
                pass
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
        for lane in self.lanes:
            lane.group.close(max(1.0, deadline - time.monotonic()))
