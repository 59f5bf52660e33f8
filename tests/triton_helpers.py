"""Helpers for tests against a real tritonserver: starting one, its processes, its metrics, its shm."""
from __future__ import annotations

import glob
import os
import signal
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from client.api import infer_inputs
from mochi_runtime.parallel.topology import free_port
from mochi_runtime.serving.tritonserver import ServerConfig, TritonServer

# What the server tests generate: 13 frames at 48x80 in 3 steps, seconds on the embedded tiny model.
SMALL = dict(frames=13, height=48, width=80, steps=3, guidance=4.5)


def small_request(prompt: str, seed: int):
    """SMALL as the in-process runtime's request, for comparing a served video with a local run."""
    from mochi_runtime.validation import GenerationRequest

    return GenerationRequest(prompt, num_frames=SMALL["frames"], height=SMALL["height"], width=SMALL["width"],
                             steps=SMALL["steps"], guidance=SMALL["guidance"], seed=seed)


def assert_same_video(ref: np.ndarray, got: np.ndarray) -> None:
    """Frames of two runs whose fp32 latents agree to ~1e-5 (another layout, or the server against a local run):
    at most one rounding step, on a few pixels."""
    diff = np.abs(ref.astype(int) - got.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (diff.max(), (diff == 0).mean())


@contextmanager
def running_server(work_dir: Path, **config) -> Iterator[TritonServer]:
    """A tritonserver on free ports for the block. Like `make serve`, it is started again if it dies on its own
    (Triton 2.51's python backend aborts now and then while its stubs start: ServerConfig.max_restarts)."""
    ports = [free_port() for _ in range(3)]
    config.setdefault("max_restarts", 2)
    srv = TritonServer(ServerConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                                    work_dir=work_dir, **config))
    srv.start()
    try:
        srv.wait_ready(600)
        yield srv
    finally:
        srv.stop()


def _proc_table() -> list[tuple[int, int, bytes]]:
    """(pid, ppid, cmdline) of every live process."""
    out = []
    for pid in (p for p in Path("/proc").iterdir() if p.name.isdigit()):
        try:
            fields = (pid / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (pid / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if fields[0] != "Z":
            out.append((int(pid.name), int(fields[1]), cmd))
    return out


def descendants(root: int) -> list[tuple[int, int, bytes]]:
    """(pid, ppid, cmdline) of the live processes under `root` (not root itself): a server's own processes, never
    those of another server on the same machine."""
    table = _proc_table()
    children: dict[int, list[tuple[int, int, bytes]]] = {}
    for row in table:
        children.setdefault(row[1], []).append(row)
    out, todo = [], [root]
    while todo:
        for row in children.get(todo.pop(), []):
            out.append(row)
            todo.append(row[0])
    return out


def root_of(server: "TritonServer | int") -> int:
    return server if isinstance(server, int) else server.proc.pid


def stub_pids(server: "TritonServer | int", model: str = "mochi_dit") -> list[int]:
    """PIDs of a model's python-backend stub processes under `server` (a TritonServer, or the pid of the
    process that started tritonserver)."""
    return [pid for pid, _, cmd in descendants(root_of(server))
            if b"triton_python_backend_stub" in cmd and f"/{model}/".encode() in cmd]


def dit_workers(server: "TritonServer | int") -> list[int]:
    """PIDs of the mochi_dit stub's spawned DiT worker processes under `server`."""
    stubs = set(stub_pids(server))
    return [pid for pid, ppid, cmd in descendants(root_of(server))
            if ppid in stubs and b"multiprocessing" in cmd and b"resource_tracker" not in cmd]


def kill_tree(root: int) -> None:
    """SIGKILL `root` and every process under it, children first seen before the parent goes (a test's cleanup
    that kills only a parent can leave its children serving)."""
    pids = [pid for pid, _, _ in descendants(root)] + [root]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def metric(server: TritonServer, name: str, labels: str = "") -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
            found = True
    assert found, f"metric {name}{labels} not exported"
    return total


def shm_regions(server: TritonServer) -> list[str]:
    return glob.glob(f"/dev/shm/{server.cfg.shm_prefix}*")


def control_inputs(grpcclient, server: TritonServer, name: str, value: str, after_step: int | None = None) -> list:
    """One of mochi_dit's control inputs with the server's control key (what mochi and mochi_stream send)."""
    arrays = [(name, np.array([value.encode()], dtype=np.object_), "BYTES"),
              ("CONTROL_KEY", np.array([server.cfg.control_key.encode()], dtype=np.object_), "BYTES")]
    if after_step is not None:
        arrays.append(("AFTER_STEP", np.array([after_step], np.int32), "INT32"))
    return infer_inputs(grpcclient, arrays)


def dit_inputs(grpcclient, feat_dim: int, frames: int = 7, height: int = 32, width: int = 32, steps: int = 1,
               seed: int = 0) -> list:
    """Inputs for a direct mochi_dit call (zero text embeddings)."""
    arrays = [("TEXT_EMBEDS", np.zeros((2, 8, feat_dim), np.float32), "FP32"),
              ("TEXT_MASK", np.ones((2, 8), np.bool_), "BOOL"),
              ("NUM_FRAMES", np.array([frames], np.int32), "INT32"),
              ("HEIGHT", np.array([height], np.int32), "INT32"),
              ("WIDTH", np.array([width], np.int32), "INT32"),
              ("STEPS", np.array([steps], np.int32), "INT32"),
              ("SEED", np.array([seed], np.int64), "INT64")]
    return infer_inputs(grpcclient, arrays)


def wait_for(cond, timeout: float, poll: float = 0.2) -> bool:
    """Poll cond() until it is true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return bool(cond())
