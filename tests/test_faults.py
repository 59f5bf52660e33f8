"""Process faults against a real tritonserver (tiny default, 2-process gloo DiT group): a killed stub, a killed
server, SIGTERM in the middle of a generation. Each test owns its server."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from client import MochiClient
from mochi_runtime.serving.tritonserver import processes_in_group
from triton_helpers import SMALL, dit_workers, running_server, shm_regions, stub_pids


def _alive(pids) -> list[int]:
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def _wait(cond, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def test_killed_stub_leaves_no_orphans_and_the_model_comes_back(tmp_path):
    """SIGKILL of the mochi_dit stub: its DiT workers die with it (PR_SET_PDEATHSIG), and the server's supervisor
    unloads and reloads the model, so it comes back by itself (Triton alone would keep reporting it ready while
    failing every request with "Stub process is not healthy")."""
    with running_server(tmp_path) as srv, MochiClient(srv.grpc_url, "grpc") as c:
        before = c.generate("a red fox in snow", seed=5, **SMALL)
        stubs, workers = stub_pids(), dit_workers()
        assert len(stubs) == 1 and len(workers) == 2
        os.kill(stubs[0], signal.SIGKILL)
        assert _wait(lambda: not _alive(workers), 10), f"orphaned DiT workers: {_alive(workers)}"
        assert _wait(lambda: len(srv.stub_reloads) == 1 and len(stub_pids()) == 1 and len(dit_workers()) == 2
                     and c.ready(), 120), (f"mochi_dit did not come back: reloads {srv.stub_reloads}, stubs "
                                           f"{stub_pids()}, workers {dit_workers()}\n{srv.log_tail(30)}")
        assert srv.stub_reloads == [("mochi_dit", stubs[0])]
        after = c.generate("a red fox in snow", seed=5, **SMALL)
        assert after.video.tobytes() == before.video.tobytes()
        assert not set(dit_workers()) & set(workers)


def test_server_sigkill_leaves_no_process_and_no_shm(tmp_path):
    with running_server(tmp_path) as srv, MochiClient(srv.grpc_url, "grpc") as c:
        c.generate("a red fox in snow", seed=5, **SMALL)
        group = srv.group_pids()
        assert len(group) >= 6 and shm_regions(srv)  # server, 5 stubs, DiT workers; its shm regions
        os.kill(srv.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert _wait(lambda: not processes_in_group(srv.proc.pid) and not _alive(group), 10), \
            f"left behind: {processes_in_group(srv.proc.pid)}"
        assert _wait(lambda: not shm_regions(srv), 10 - (time.monotonic() - t0)), shm_regions(srv)


def test_sigterm_during_a_generation_ends_it_cleanly_and_exits_in_time(tmp_path):
    """SIGTERM to the serving entry point (`make serve`, a container's PID 1) while a generation runs: it drains
    mochi_dit (the running generation stops at a step boundary with a clear error, nothing queued is dropped),
    then tritonserver shuts down in order: every model's finalize runs, the workers are joined, no process or shm
    region is left, all well inside Triton's exit timeout."""
    import subprocess
    import sys

    from mochi_runtime.parallel.topology import free_port

    ports = [free_port() for _ in range(3)]
    shm_before = set(os.listdir("/dev/shm"))
    log = open(tmp_path / "serve.log", "wb")
    wrapper = subprocess.Popen([sys.executable, "-m", "mochi_runtime.serving.tritonserver", "--http-port",
                                str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"127.0.0.1:{ports[1]}"
        with MochiClient(url, "grpc") as c:
            assert _wait(c.ready, 600), (tmp_path / "serve.log").read_text()[-3000:]
        server_pid = next(p for p in tritonserver_children(wrapper.pid))
        group = processes_in_group(server_pid)
        outcome: dict = {}

        def long_request():
            with MochiClient(url, "grpc") as c:
                try:
                    outcome["video"] = c.generate("long", frames=13, height=48, width=80, steps=200, seed=3)
                except InferenceServerException as e:
                    outcome["error"] = e

        t = threading.Thread(target=long_request)
        t.start()
        assert _wait(lambda: len(dit_workers()) == 2 and _metric_at(ports[2], "mochi_active_generations") >= 1, 30)
        time.sleep(0.5)
        t0 = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        rc = wrapper.wait(60)
        exited = time.monotonic() - t0
        t.join(30)
        assert not t.is_alive() and outcome, "the request hung"
        if "error" in outcome:
            assert "shutting down" in outcome["error"].message(), outcome["error"]
        assert exited < 30, exited  # Triton's default exit timeout
        assert rc == 0, rc
        text = (tmp_path / "serve.log").read_bytes().decode(errors="replace")
        assert "Exit timeout expired" not in text and "Signal (11)" not in text, text[-3000:]
        assert _wait(lambda: not _alive(group), 10), f"left behind: {_alive(group)}"
        assert _wait(lambda: not (set(os.listdir("/dev/shm")) - shm_before), 10)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()


def tritonserver_children(parent: int) -> list[int]:
    """tritonserver processes started by `parent` (each is its own process-group leader)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"tritonserver" in cmd.split(b"\0")[0]:
            out.append(int(stat.parent.name))
    return out


def _metric_at(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))
