"""The serving engine outside Triton: a group that dies and cannot come back fails jobs, never hangs."""
from __future__ import annotations

import os
import shutil
import signal
import threading

import torch

from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroupError
from mochi_runtime.serving.dit_engine import DiTEngine, Job
from mochi_runtime.text_encoder import TextEmbedding
from mochi_runtime.validation import GenerationRequest

REQ = GenerationRequest("x", num_frames=7, height=32, width=32, steps=2)


def run(engine: DiTEngine, timeout: float = 120):
    done = threading.Event()
    box: dict = {}
    emb = TextEmbedding(torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
    engine.submit(Job(REQ, emb, emb, lambda z: (box.update(ok=z), done.set()),
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
        os.kill(engine.group.pids[1], signal.SIGKILL)
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
