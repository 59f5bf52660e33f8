"""Runs the gateway's jobs through Triton's `mochi_stream`, a few at a time, and remembers what it saw.

Jobs wait in a bounded queue (their order is the store's); `workers` threads each take the next one and
stream it over gRPC, so progress, previews and cancellation come from the server step by step. A job
deleted while it runs is cancelled on the server (the DiT group stops at its next step). At start the
store is recovered: a job that was running when the gateway died is failed with a reason (its stream died
with the gateway), and queued jobs run again in their order.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from client.api import Cancelled, MochiClient
from . import media
from .store import Job, JobStore

log = logging.getLogger("mochi.gateway")

RESTARTED = {"code": "gateway_restarted",
             "message": "the gateway stopped while this video was being generated; create it again"}


class QueueFull(RuntimeError):
    """As many jobs are queued as the gateway takes: refused (HTTP 429 with Retry-After)."""


@dataclass
class Live:
    """What a running job has shown so far (in memory; the store keeps its progress)."""

    step: int = 0
    total: int = 0
    skipped: int = 0
    preview_step: int = 0
    preview_png: bytes | None = None
    started: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()


class Histogram:
    """A Prometheus histogram in memory (the gateway's own series; one writer at a time under its lock)."""

    def __init__(self, buckets: list[float]) -> None:
        self.buckets, self.counts, self.sum, self.count = buckets, [0] * len(buckets), 0.0, 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.sum += value
            self.count += 1
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        with self._lock:
            out = [f'{name}_bucket{{le="{b:g}"}} {c}' for b, c in zip(self.buckets, self.counts)]
            return out + [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum}",
                          f"{name}_count {self.count}"]


BUCKETS = [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800]


class Runner:
    def __init__(self, store: JobStore, triton_url: str, workers: int = 2, max_queue: int = 16,
                 retention_s: int = 86400, timeout_s: float = 3600.0, preview_every: int = 4) -> None:
        self.store, self.url = store, triton_url
        self.max_queue, self.retention_s, self.timeout_s = max_queue, retention_s, timeout_s
        self.preview_every = preview_every
        self.live: dict[str, Live] = {}
        self._queue: queue.Queue[str] = queue.Queue()
        self._submit_lock = threading.Lock()
        self._stop = threading.Event()
        self.first_preview = Histogram(BUCKETS)
        self.latency = Histogram(BUCKETS)
        self.rejected = {"queue_full": 0}
        self._threads = [threading.Thread(target=self._work, name=f"gateway-runner-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._sweep, name="gateway-retention", daemon=True))

    def start(self) -> "Runner":
        for job in self.store.with_status("in_progress"):
            log.warning("job %s was running when the gateway stopped: failed", job.id)
            self.store.update(job.id, status="failed", error=RESTARTED, completed_at=int(time.time()))
        for job in self.store.with_status("queued"):
            self.live[job.id] = Live()
            self._queue.put(job.id)
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for live in list(self.live.values()):
            live.cancel.set()

    # -- requests ----------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._submit_lock:
            if self.store.counts()["queued"] >= self.max_queue:
                self.rejected["queue_full"] += 1
                raise QueueFull(f"{self.max_queue} videos are queued; retry later")
            self.live[job.id] = Live()
            self.store.add(job)
        self._queue.put(job.id)

    def cancel(self, job_id: str) -> None:
        live = self.live.get(job_id)
        if live is not None:
            live.cancel.set()
            live.notify()

    # -- the work ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            job = self.store.get(job_id)
            live = self.live.get(job_id)
            if job is None or job.status != "queued" or live is None:  # deleted while it waited
                self.live.pop(job_id, None)
                continue
            self._wait_for_triton()
            try:
                self._run(job, live)
            except Exception as e:  # noqa: BLE001 - a job's failure is its own, the thread goes on
                log.exception("job %s failed", job.id)
                self._finish(job, live, error={"code": "internal_error", "message": str(e)[:500]})

    def _wait_for_triton(self) -> None:
        """Jobs stay queued while tritonserver is not ready (starting beside the gateway, or restarting)."""
        with MochiClient(self.url, "grpc", 5.0) as client:
            while not self._stop.is_set() and not client.ready():
                time.sleep(1.0)

    def _run(self, job: Job, live: Live) -> None:
        self.store.update(job.id, status="in_progress")
        r = job.request

        def progress(step: int, total: int, elapsed: float, skipped: int) -> None:
            live.step, live.total, live.skipped = step, total, skipped
            self.store.update(job.id, progress=min(99, int(100 * step / max(total, 1))))
            live.notify()

        def preview(step: int, frames: np.ndarray) -> None:
            if live.preview_png is None:
                self.first_preview.observe(time.monotonic() - live.started)
            live.preview_step, live.preview_png = step, media.preview_png(frames)
            live.notify()

        try:
            with MochiClient(self.url, "grpc", self.timeout_s) as client:
                result = client.stream(r["prompt"], r.get("negative_prompt") or None, on_progress=progress,
                                       on_preview=preview, should_cancel=live.cancel.is_set,
                                       frames=r["frames"], height=r["height"], width=r["width"], steps=r["steps"],
                                       guidance=r["guidance"], seed=r["seed"], cache=r.get("cache"),
                                       preview_every=self.preview_every)
        except Cancelled:
            self._finish(job, live, error={"code": "cancelled", "message": "the video was cancelled"})
            return
        except Exception as e:  # noqa: BLE001 - Triton's answer, kept on the job
            message = e.message() if hasattr(e, "message") else str(e)
            self._finish(job, live, error={"code": "generation_failed", "message": str(message)[:500]})
            return
        result.save(str(self.store.path(job.id, "video")))
        self.store.path(job.id, "thumbnail").write_bytes(media.thumbnail(result.video))
        self.store.path(job.id, "spritesheet").write_bytes(media.spritesheet(result.video))
        self._finish(job, live, skipped=result.steps_skipped)

    def _finish(self, job: Job, live: Live, error: dict | None = None, skipped: int | None = None) -> None:
        now = int(time.time())
        if self.store.get(job.id) is None:  # deleted while it ran: nothing to keep
            self.store.remove_files(job.id)
        elif error is not None:
            self.store.update(job.id, status="failed", error=error, completed_at=now)
        else:
            self.store.update(job.id, status="completed", progress=100, completed_at=now,
                              expires_at=now + self.retention_s, steps_skipped=skipped)
            self.latency.observe(time.monotonic() - live.started)
        live.notify()
        self.live.pop(job.id, None)

    def _sweep(self, every_s: float = 5.0) -> None:
        """Expired jobs lose their files and their row (`expires_at` = completed + retention)."""
        while not self._stop.wait(every_s):
            for job in list(self.store.expired(int(time.time()))):
                self.store.delete(job.id)

    def metrics(self) -> str:
        counts = self.store.counts()
        lines = ["# TYPE mochi_gateway_jobs gauge"]
        lines += [f'mochi_gateway_jobs{{status="{s}"}} {n}' for s, n in counts.items()]
        lines += ["# TYPE mochi_gateway_queue_depth gauge", f"mochi_gateway_queue_depth {counts['queued']}",
                  "# TYPE mochi_gateway_rejected_total counter",
                  *(f'mochi_gateway_rejected_total{{reason="{k}"}} {v}' for k, v in self.rejected.items()),
                  "# TYPE mochi_gateway_time_to_first_preview_seconds histogram",
                  *self.first_preview.lines("mochi_gateway_time_to_first_preview_seconds"),
                  "# TYPE mochi_gateway_job_latency_seconds histogram",
                  *self.latency.lines("mochi_gateway_job_latency_seconds")]
        return "\n".join(lines) + "\n"


