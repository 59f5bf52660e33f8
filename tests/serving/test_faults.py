"""Process faults against a real tritonserver (tiny default, 2-process gloo DiT group): a killed stub, a killed
server, SIGTERM in the middle of a generation. Each test owns its server."""
from __future__ import annotations

import glob
import faulthandler
import os
import signal
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from tritonclient.utils import InferenceServerException

from client import MochiClient
from mochi_runtime.serving.tritonserver import processes_in_group
from triton_helpers import (SMALL, descendants, dit_workers, kill_tree, running_server, shm_regions, stub_pids,
                            wait_for)


def _alive(pids) -> list[int]:
    """The pids that still run (a zombie waiting for a parent that is gone has stopped running)."""
    out = []
    for p in pids:
        try:
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                out.append(p)
        except (OSError, IndexError):
            pass
    return out


def test_killed_stub_leaves_no_orphans_and_the_model_comes_back(tmp_path):
    """SIGKILL of the mochi_dit stub: its DiT workers die with it (PR_SET_PDEATHSIG), and the server's supervisor
    unloads and reloads the model, so it comes back by itself (Triton alone would keep reporting it ready while
    failing every request with "Stub process is not healthy")."""
    with running_server(tmp_path) as srv, MochiClient(srv.grpc_url, "grpc") as c:
        before = c.generate("a red fox in snow", seed=5, **SMALL)
        stubs, workers = stub_pids(srv), dit_workers(srv)
        assert len(stubs) == 1 and len(workers) == 2
        os.kill(stubs[0], signal.SIGKILL)
        assert wait_for(lambda: not _alive(workers), 10), f"orphaned DiT workers: {_alive(workers)}"
        assert wait_for(lambda: len(srv.stub_reloads) == 1 and len(stub_pids(srv)) == 1 and len(dit_workers(srv)) == 2
                     and c.ready(), 120), (f"mochi_dit did not come back: reloads {srv.stub_reloads}, stubs "
                                           f"{stub_pids(srv)}, workers {dit_workers(srv)}\n{srv.log_tail(30)}")
        assert srv.stub_reloads == [("mochi_dit", stubs[0])]
        after = c.generate("a red fox in snow", seed=5, **SMALL)
        assert after.video.tobytes() == before.video.tobytes()
        assert not set(dit_workers(srv)) & set(workers)


def test_a_server_that_dies_on_its_own_is_started_again_and_still_supervised(tmp_path):
    """tritonserver killed (as Triton 2.51's python backend aborting with boost's lock_exception kills it): the
    supervisor clears what is left and starts it again on the same ports, and it goes on watching the new
    server's stubs (a stub that dies after the restart is reloaded; before, the stub watch ended with the first
    server)."""
    with running_server(tmp_path, max_restarts=1) as srv, MochiClient(srv.grpc_url, "grpc") as c:
        before = c.generate("a red fox in snow", seed=5, **SMALL)
        first = srv.proc.pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: srv.proc.pid != first and c.ready(), 180), srv.log_tail(30)
        assert [rc for _, rc in srv.restarts] == [-signal.SIGKILL]
        assert c.generate("a red fox in snow", seed=5, **SMALL).video.tobytes() == before.video.tobytes()
        stubs = stub_pids(srv)
        assert len(stubs) == 1
        os.kill(stubs[0], signal.SIGKILL)
        back = wait_for(lambda: len(srv.stub_reloads) == 1 and len(stub_pids(srv)) == 1 and stub_pids(srv) != stubs
                        and c.ready(), 120)
        if not back:  # where the supervisor's threads are
            faulthandler.dump_traceback(all_threads=True)
        assert back, f"reloads {srv.stub_reloads}\n{srv.log_tail(30)}"


def test_server_sigkill_leaves_no_process_and_no_shm(tmp_path):
    with running_server(tmp_path, max_restarts=0) as srv, MochiClient(srv.grpc_url, "grpc") as c:
        c.generate("a red fox in snow", seed=5, **SMALL)
        group = srv.group_pids()
        assert len(group) >= 6 and shm_regions(srv)  # server, 5 stubs, DiT workers; its shm regions
        os.kill(srv.proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_for(lambda: not processes_in_group(srv.proc.pid) and not _alive(group), 10), \
            f"left behind: {processes_in_group(srv.proc.pid)}"
        assert wait_for(lambda: not shm_regions(srv), 10 - (time.monotonic() - t0)), shm_regions(srv)


def test_sigterm_during_a_generation_ends_it_cleanly_and_exits_in_time(tmp_path):
    """SIGTERM to the serving entry point (`make serve`, a container's PID 1) while a generation runs: it drains
    mochi_dit (the running generation stops at a step boundary with a clear error, nothing queued is dropped),
    then tritonserver shuts down in order: every model's finalize runs and its stub exits without a crash, the
    workers are joined, no process or shm region is left, all well inside Triton's exit timeout."""
    shm_before = set(os.listdir("/dev/shm"))
    wrapper, ports = _serve(tmp_path)
    try:
        url = f"127.0.0.1:{ports[1]}"
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
        assert wait_for(lambda: len(dit_workers(wrapper.pid)) == 2
                     and _metric_at(ports[2], "mochi_active_generations") >= 1, 30)
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
        # every stub leaves quietly (one that crashes on its way out prints this, faulthandler is on in each)
        assert text.count("successfully unloaded") == 5 and "Fatal Python error" not in text, text[-3000:]
        assert wait_for(lambda: not _alive(group), 10), f"left behind: {_alive(group)}"
        assert wait_for(lambda: not (set(os.listdir("/dev/shm")) - shm_before), 10)
    finally:
        kill_tree(wrapper.pid)


def _serve(tmp_path: Path):
    """The serving entry point (`make serve`, the container's PID 1) on free ports, ready; (process, ports)."""
    import subprocess
    import sys

    from mochi_runtime.parallel.topology import free_port

    ports = [free_port() for _ in range(3)]
    log = open(tmp_path / "serve.log", "wb")
    wrapper = subprocess.Popen([sys.executable, "-m", "mochi_runtime.serving.tritonserver", "--http-port",
                                str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        with MochiClient(f"127.0.0.1:{ports[1]}", "grpc") as c:
            assert wait_for(c.ready, 600), (tmp_path / "serve.log").read_text()[-3000:]
    except BaseException:
        kill_tree(wrapper.pid)
        raise
    return wrapper, ports


def test_supervisor_sigkill_takes_the_server_its_shm_and_its_work_dir_down(tmp_path):
    """SIGKILL of the serving entry point (OOM killer, kill -9, a bare-host service manager): tritonserver runs in
    its own process group (setsid), so only the reaper the entry point started beside it (serving/reaper.py) can
    stop it. Within 10 s nothing of the run is left: no server, stub or DiT worker, no shm region of its prefix, no work dir."""
    wrapper, ports = _serve(tmp_path)
    try:
        server_pid = next(p for p in tritonserver_children(wrapper.pid))
        args = Path(f"/proc/{server_pid}/cmdline").read_bytes().decode().split("\0")
        prefix = next(a.split("shm-region-prefix-name=")[1] for a in args if "shm-region-prefix-name=" in a)
        work_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("--backend-directory="))).parent
        with MochiClient(f"127.0.0.1:{ports[1]}", "grpc") as c:
            c.generate("a red fox in snow", seed=5, **SMALL)  # every model has run: stubs, workers, shm in use
        procs = [pid for pid, _, _ in descendants(wrapper.pid)]
        assert len(procs) >= 8, procs  # server, 5 stubs, 2 DiT workers (and the reaper)
        assert glob.glob(f"/dev/shm/{prefix}*") and work_dir.is_dir()
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait(5)
        t0 = time.monotonic()
        assert wait_for(lambda: not _alive(procs), 10), f"left behind: {_alive(procs)}"
        assert wait_for(lambda: not glob.glob(f"/dev/shm/{prefix}*") and not work_dir.exists(),
                     10 - (time.monotonic() - t0)), (glob.glob(f"/dev/shm/{prefix}*"), work_dir.exists())
    finally:
        kill_tree(wrapper.pid)


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


def test_a_dit_stub_death_mid_generation_is_answered_and_the_next_sigterm_is_clean(tmp_path):
    """SIGKILL of mochi_dit's stub while a unary generation (`mochi`) and a stream (`mochi_stream`) are in it:
    Triton never answers the DiT requests of a dead stub, but the orchestrators' progress polls fail or lose the
    generation, so both clients get UNAVAILABLE within 30 s saying what happened (before: they waited for their
    own deadlines, an hour by default). The supervisor reloads the model, the gauges read true again, and the
    next SIGTERM exits 0 in seconds though Triton still counts the dead stub's request."""
    wrapper, ports = _serve(tmp_path)
    url = f"127.0.0.1:{ports[1]}"
    out: dict = {}

    def run(kind: str) -> None:
        t0 = time.monotonic()
        with MochiClient(url, "grpc") as c:
            try:
                getattr(c, kind)(f"doomed {kind}", frames=13, height=48, width=80, steps=200, seed=3)
                out[kind] = "no error"
            except InferenceServerException as e:
                out[kind] = (e.status(), e.message(), time.monotonic() - t0)

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in ("generate", "stream")]
        for t in threads:
            t.start()
        assert wait_for(lambda: _metric_at(ports[2], "mochi_active_generations") >= 1
                     and _metric_at(ports[2], "mochi_dit_queued_generations") >= 1, 60)
        stub = stub_pids(wrapper.pid)
        assert len(stub) == 1
        os.kill(stub[0], signal.SIGKILL)
        killed = time.monotonic()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), f"unanswered: {out}"
        assert time.monotonic() - killed < 30, out
        for kind in ("generate", "stream"):
            status, message, _ = out[kind]
            assert status == "StatusCode.UNAVAILABLE", out
            assert "mochi_dit" in message or "Socket closed" in message, out  # Socket closed: Triton aborted
        with MochiClient(url, "grpc") as c:  # the supervisor brings mochi_dit back (or the whole server)
            back = wait_for(lambda: len(stub_pids(wrapper.pid)) == 1 and stub_pids(wrapper.pid) != stub and c.ready(),
                            120)
            if not back:  # where the supervisor is: its threads' stacks into the log
                wrapper.send_signal(signal.SIGUSR1)
                time.sleep(2)
            assert back, (wrapper.poll(), (tmp_path / "serve.log").read_text(errors="replace")[-6000:])
            assert wait_for(lambda: _generates(c), 60)
        assert _metric_at(ports[2], "mochi_active_generations") == 0
        assert _metric_at(ports[2], "mochi_dit_queued_generations") == 0
        t0 = time.monotonic()
        wrapper.send_signal(signal.SIGTERM)
        rc = wrapper.wait(60)
        assert rc == 0 and time.monotonic() - t0 < 20, (rc, time.monotonic() - t0)
        text = (tmp_path / "serve.log").read_text(errors="replace")
        assert "Exit timeout expired" not in text, text[-3000:]
    finally:
        kill_tree(wrapper.pid)


def _generates(c: MochiClient) -> bool:
    try:
        return c.generate("after", **SMALL).video.shape == (13, 48, 80, 3)
    except InferenceServerException:
        return False


def test_an_operators_unload_is_not_undone_and_a_dit_that_cannot_generate_is_not_ready(tmp_path, official_dir):
    """The supervisor tells an operator's unload (the model's state is no longer READY) from a crash and leaves it
    unloaded. A DiT whose worker group cannot come back (weights gone) makes the model, and /v2/health/ready, not
    ready until a load works again."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(official_dir, model)
    with running_server(tmp_path / "work", model_dir=str(model)) as srv, MochiClient(srv.grpc_url) as c:
        admin = {"mochi-admin-key": srv.cfg.admin_key}
        req = urllib.request.Request(f"http://{srv.http_url}/v2/repository/models/vae_decoder/unload", data=b"{}",
                                     method="POST", headers=admin)
        assert urllib.request.urlopen(req, timeout=60).status == 200
        time.sleep(5)  # the supervisor polls every second: it must leave it unloaded
        assert srv.stub_reloads == [] and not stub_pids(srv, "vae_decoder")
        assert srv.model_states()["vae_decoder"] != "READY"
        req = urllib.request.Request(f"http://{srv.http_url}/v2/repository/models/vae_decoder/load", data=b"{}",
                                     method="POST", headers=admin)
        assert urllib.request.urlopen(req, timeout=120).status == 200
        assert _generates(c)

        hidden = tmp_path / "hidden"
        model.rename(hidden)  # a respawn cannot load the weights now
        os.kill(dit_workers(srv)[0], signal.SIGKILL)
        with pytest.raises(InferenceServerException):
            c.generate("fails", **SMALL)  # the group is down and cannot come back
        assert wait_for(lambda: not c.ready(), 60), "the server still says ready"
        hidden.rename(model)
        assert wait_for(lambda: c.ready() and srv.model_states().get("mochi_dit") == "READY", 120)
        assert wait_for(lambda: _generates(c), 60)
