"""The serving engine outside Triton: a group that dies and cannot come back fails jobs, never hangs."""
from __future__ import annotations

import os
import shutil
import signal
import threading

import torch

from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroupError
from mochi_runtime.serving.dit_engine import DiTEngine, Job
from mochi_runtime.models.text_encoder import CFGText, TextEmbedding
from mochi_runtime.validation import GenerationRequest

REQ = GenerationRequest("x", num_frames=7, height=32, width=32, steps=2)


def run(engine: DiTEngine, timeout: float = 120):
    done = threading.Event()
    box: dict = {}
    emb = TextEmbedding(torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
    engine.submit(Job(REQ, CFGText(emb, emb), lambda z, skipped: (box.update(ok=z), done.set()),
                      lambda e: (box.update(err=e), done.set())))
    assert done.wait(timeout), "job never answered"
    return box


def test_failed_restart_fails_jobs_then_recovers(official_dir, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(official_dir, model)
    restarts = []
    engine = DiTEngine(GroupSpec(Layout(1, 2, 1), model_dir=str(model)), on_restart=lambda: restarts.append(1))
    try:
        assert "ok" in run(engine)
        os.kill(engine.lanes[0].group.pids[1], signal.SIGKILL)
        hidden = tmp_path / "hidden"
        model.rename(hidden)  # the respawn cannot load weights now
        first = run(engine)
        assert isinstance(first.get("err"), WorkerGroupError)
        second = run(engine)  # the engine thread is still alive and answers
        assert "could not be restarted" in str(second.get("err"))
        hidden.rename(model)
        assert "ok" in run(engine)  # weights back: the next job respawns the group and runs
        assert restarts == [1]
    finally:
        engine.close(10)


def _job(req: GenerationRequest, box: dict, done: threading.Event, **kw) -> Job:
    emb = TextEmbedding(torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
    return Job(req, CFGText(emb, emb), lambda z, skipped: (box.update(ok=z), done.set()), lambda e: (box.update(err=e), done.set()),
               **kw)


def test_timeouts_end_waiting_and_running_requests_and_close_answers_the_queue(official_dir):
    from mochi_runtime.serving.adapters import RequestTimeout, ShuttingDown

    engine = DiTEngine(GroupSpec(Layout(1, 2, 1), model_dir=str(official_dir)), max_queue=8)
    long = GenerationRequest("x", num_frames=13, height=48, width=80, steps=200)
    try:
        # A running request past its timeout stops at a step boundary.
        box, done = {}, threading.Event()
        engine.submit(_job(long, box, done, timeout_s=1.0))
        assert done.wait(60)
        assert isinstance(box.get("err"), RequestTimeout) and "after step" in str(box["err"])
        # One waiting behind a long request times out in the queue.
        import time

        first, first_done = {}, threading.Event()
        engine.submit(_job(long, first, first_done, generation_id="long-1"))
        waiting, waiting_done = {}, threading.Event()
        engine.submit(_job(REQ, waiting, waiting_done, timeout_s=0.5))
        time.sleep(1.5)
        assert engine.cancel("long-1")
        assert first_done.wait(30) and waiting_done.wait(30)
        assert isinstance(waiting.get("err"), RequestTimeout) and "in the DiT queue" in str(waiting["err"])
        # Closing answers the running request and every queued one; nothing is left hanging.
        running, running_done = {}, threading.Event()
        engine.submit(_job(long, running, running_done))
        queued = [({}, threading.Event()) for _ in range(3)]
        for b, d in queued:
            engine.submit(_job(REQ, b, d))
        time.sleep(1.0)
        engine.close(30)
        assert running_done.wait(5) and all(d.wait(5) for _, d in queued)
        assert running.get("err") is not None  # stopped at a step boundary, not left hanging
        assert all(isinstance(b.get("err"), ShuttingDown) for b, _ in queued)
        assert not engine.lanes[0].group.alive()
    finally:
        engine.close(10)
