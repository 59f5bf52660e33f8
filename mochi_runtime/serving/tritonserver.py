"""Find, configure and run a real tritonserver for `model_repository/`.

Two servers are supported: the NGC container's `/opt/tritonserver/bin/tritonserver`
and the 2.51 server bundled in the `nvidia-pytriton` wheel (CPU/dev machines).
For the bundled one we assemble a python-backend directory holding the stub that
matches the running interpreter (a mismatched stub hangs the server in loading),
put its libraries and the base interpreter's libpython on LD_LIBRARY_PATH, and
the venv's bin first on PATH (the stub runs `python3` from PATH).

`python -m mochi_runtime.serving.tritonserver` runs the server in the foreground
on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002 unless told otherwise).
"""
from __future__ import annotations

import argparse
import faulthandler
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .adapters import CONTROL_KEY_ENV
from .reaper import processes_in_group, remove_shm, signal_group

REPO_ROOT = Path(__file__).resolve().parents[2]
NGC_SERVER = Path("/opt/tritonserver")


class ServerError(RuntimeError):
    pass


log = logging.getLogger("mochi.tritonserver")

READY_PATH = "/v2/health/ready"  # what health checks (compose, Kubernetes, our own waits) ask


@dataclass
class ServerConfig:
    model_repository: Path = REPO_ROOT / "model_repository"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_dir: str | None = None  # checkpoint directory for all models (None: embedded tiny default)
    work_dir: Path | None = None  # backend dir, logs; a temp dir when None
    log_verbose: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    shm_prefix: str = field(default_factory=lambda: f"mochi_{uuid.uuid4().hex[:8]}_")
    # The operator's key for Triton's model-repository, trace and logging APIs (sent as the `mochi-admin-key`
    # header): $MOCHI_ADMIN_KEY, else one drawn per run that only the supervisor knows (the APIs stay shut).
    admin_key: str = field(default_factory=lambda: os.environ.get("MOCHI_ADMIN_KEY") or secrets.token_hex(16))
    # The key of the server's own control inputs (mochi_dit's DRAIN, HEALTH, CANCEL, PROGRESS_OF), handed to the
    # stubs through tritonserver's environment and never to clients (serving/adapters.control_key).
    control_key: str = field(default_factory=lambda: secrets.token_hex(16))
    # Start tritonserver again when it dies on its own (not stopped by us): Triton 2.51's python backend can
    # abort the whole server (boost::interprocess::lock_exception, SIGABRT) when a stub dies holding its shared
    # health mutex, and, rarely, while stubs start (a known Triton 2.51 fault). At most this many
    # restarts in RESTART_WINDOW_S; then the supervisor gives up and exits with the server's status.
    max_restarts: int = 0


ADMIN_HEADER = "mochi-admin-key"
SILENT_HEALTH_POLLS = 3  # mochi_dit READY but silent this many polls in a row (~15 s): reload it
HEALTH_POLL_S = 5.0  # how often the supervisor asks mochi_dit whether a worker group can generate
RETRY_LOAD_S = 10.0  # a model whose load failed is tried again after this
RESTART_WINDOW_S = 600.0
STALE_EXIT_S = 5.0
ORCHESTRATORS = {"mochi", "mochi_stream"}  # the models that call others over BLS
RESTRICTED_APIS = "model-repository,trace,logging"  # what changes the server's state; inference stays open


def _pytriton_root() -> Path | None:
    try:
        import pytriton  # type: ignore
    except ImportError:
        return None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_server() -> tuple[Path, Path]:
    """(tritonserver binary, install root with backends/ and caches/)."""
    env = os.environ.get("MOCHI_TRITONSERVER")
    if env:
        binary = Path(env)
        return binary, binary.parent.parent
    if (NGC_SERVER / "bin" / "tritonserver").is_file():
        return NGC_SERVER / "bin" / "tritonserver", NGC_SERVER
    root = _pytriton_root()
    if root is None:
        raise ServerError("no tritonserver found: install nvidia-pytriton (CPU/dev) or run in the NGC Triton image")
    return root / "bin" / "tritonserver", root


def prepare_backends(root: Path, work_dir: Path) -> Path:
    """A backend directory whose python backend uses the stub of the running Python."""
    if root == NGC_SERVER:
        return root / "backends"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        have = sorted(p.name for p in (root / "python_backend_stubs").iterdir() if p.is_dir())
        raise ServerError(f"no python backend stub for Python {version} in {root} (have {have})")
    target = work_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = target / src.name
        if not dst.exists():
            shutil.copy2(src, dst)
    return work_dir / "backends"


def server_env(root: Path, cfg: ServerConfig) -> dict[str, str]:
    env = dict(os.environ)
    libs = []
    pytriton_libs = root.parent.parent / "nvidia_pytriton.libs"
    if pytriton_libs.is_dir():
        libs.append(str(pytriton_libs))
    libs.append(str(Path(sys.base_prefix) / "lib"))
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if cfg.model_dir:
        env["MOCHI_MODEL_DIR"] = str(cfg.model_dir)
    env.update(cfg.extra_env)
    env[CONTROL_KEY_ENV] = cfg.control_key
    return env


def server_command(binary: Path, root: Path, backends: Path, cfg: ServerConfig) -> list[str]:
    cmd = [
        str(binary),
        f"--model-repository={cfg.model_repository}",
        f"--backend-directory={backends}",
        f"--http-address={cfg.host}", f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.host}", f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.host}", f"--metrics-port={cfg.metrics_port}",
        "--allow-metrics=true",
        f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={cfg.admin_key}",
        f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={cfg.admin_key}",
        f"--backend-config=python,shm-region-prefix-name={cfg.shm_prefix}",
        f"--log-verbose={cfg.log_verbose}",
        "--disable-auto-complete-config",
        # Explicit control (every model loaded at start) lets the supervisor reload a model whose stub died.
        "--model-control-mode=explicit", "--load-model=*",
    ]
    if not _has_gpu():
        cmd += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    return cmd + cfg.extra_args


def check_stub_numpy(version: str | None = None) -> None:
    """Refuse to start when the python stubs would run numpy 2.

    The stubs run the `python3` of this interpreter's environment (server_env puts its bin first on PATH).
    The 2.51 stub's C++ side is built against numpy 1's ABI: under numpy 2 it hands string tensors over
    corrupted (a stub dies with "unpack_from requires a buffer of at least ... bytes") and outputs come back
    with wrong sizes. Seen on GPU machines whose image has numpy 2 (docs/benchmarks.md).
    """
    if version is None:
        import numpy  # the numpy of this interpreter, which the stubs inherit

        version = numpy.__version__
    if int(version.split(".")[0]) >= 2:
        raise ServerError(f"numpy {version} in {sys.prefix}: the Triton 2.51 python stub needs numpy < 2 "
                          f"(pip install 'numpy<2' into the environment that serves, or serve from one that has it)")


def _has_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*"))


class TritonServer:
    """A tritonserver child process (its own process group), started and stopped by us."""

    def __init__(self, cfg: ServerConfig) -> None:
        self.cfg = cfg
        self.binary, self.root = find_server()
        self._tmp = None
        if cfg.work_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="mochi-triton-")
            cfg.work_dir = Path(self._tmp)
        self.backends = prepare_backends(self.root, cfg.work_dir)
        self.proc: subprocess.Popen | None = None
        self.log_path = cfg.work_dir / "tritonserver.log"

    @property
    def http_url(self) -> str:
        return f"{self.cfg.host}:{self.cfg.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.cfg.host}:{self.cfg.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.metrics_port}/metrics"

    def start(self, foreground: bool = False) -> "TritonServer":
        check_stub_numpy()
        self._foreground = foreground
        self._stopping = threading.Event()
        self._ended = threading.Event()  # set when the server is down for good (stopped, or no restart left)
        self.stub_reloads: list[tuple[str, int]] = []
        self.restarts: list[tuple[float, int]] = []  # (when, the exit status that caused it)
        self._known_lock = threading.Lock()
        self._launch()
        self._watcher = threading.Thread(target=self._watch, name="tritonserver-watch", daemon=True)
        self._watcher.start()
        self._supervisor = threading.Thread(target=self._supervise_stubs, name="tritonserver-stubs", daemon=True)
        self._supervisor.start()
        return self

    def _launch(self) -> None:
        if getattr(self, "restarts", None):  # a restart gets shm regions of its own: nothing of the dead run's
            self.cfg.shm_prefix = f"mochi_{uuid.uuid4().hex[:8]}_"
        cmd = server_command(self.binary, self.root, self.backends, self.cfg)
        out = None if self._foreground else open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=server_env(self.root, self.cfg), stdout=out,
                                     stderr=subprocess.STDOUT if out else None, start_new_session=True)
        self._reaper = self._start_reaper()
        with self._known_lock:
            self._known: dict[str, set[int]] = {}  # model -> stub pids seen alive (see _supervise_stubs)
            self._down: dict[str, float] = {}  # model -> when a (re)load of it last failed

    def _start_reaper(self) -> subprocess.Popen:
        """The process that takes the server down if this one dies without stopping it (serving/reaper.py)."""
        assert self.proc is not None
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2])] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        return subprocess.Popen([sys.executable, "-m", "mochi_runtime.serving.reaper", str(self.proc.pid),
                                 self.cfg.shm_prefix, self._tmp or ""], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env=env, start_new_session=True)

    def _release_reaper(self) -> None:
        """We stopped the server ourselves: the reaper exits without touching anything."""
        reaper = getattr(self, "_reaper", None)
        if reaper is None or reaper.stdin is None or reaper.stdin.closed:
            return
        try:
            reaper.stdin.write(b"x")
            reaper.stdin.close()
            reaper.wait(5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass

    def stub_pids(self) -> dict[str, set[int]]:
        """Python-backend stub processes of this server, by model name."""
        out: dict[str, set[int]] = {}
        for pid in self.group_pids():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if not args or not args[0].endswith(b"triton_python_backend_stub"):
                continue
            model = next((Path(a.decode()).parent.parent.name for a in args if a.endswith(b"model.py")), None)
            if model:
                out.setdefault(model, set()).add(pid)
        return out

    def _supervise_stubs(self, poll_s: float = 1.0) -> None:
        """Keep every model able to serve.

        - A model whose stub died (SIGKILL, OOM killer) is unloaded and loaded again: Triton's python backend
          would keep the instance marked ready while failing every request with "Stub process is not healthy".
          A stub that an operator's unload ended is told apart by the model's state in the repository index
          (no longer READY) and left unloaded.
        - mochi_dit is asked for its health (HEALTH, keyed): when none of its worker groups can generate (a
          respawn failed: weights gone, GPU lost), it is unloaded and loaded again until a load works; while
          it is down the model, and with it /v2/health/ready, reports not ready. When it is READY but does not
          answer SILENT_HEALTH_POLLS polls in a row, it is reloaded too: under heavy CPU load the pid watch above
          missed a killed stub now and then (a thread dump showed the supervisor polling on; why the dead pid was
          not seen is not known), and the health poll does not depend on pids.
        """
        last_health, silent = 0.0, 0
        while not self._stopping.wait(poll_s):
            if self._ended.is_set():
                return
            if self.proc is None or self.proc.poll() is not None:  # down; _watch may be starting it again
                continue
            with self._known_lock:
                watching = bool(self._known)
            if not watching and not self.ready():  # nothing to watch until the server has come up
                continue
            current = self._note_stubs()
            with self._known_lock:
                known = {m: set(p) for m, p in self._known.items()}
            states = None
            for model, pids in known.items():
                dead = pids - current.get(model, set())
                if not dead or self._stopping.is_set():
                    continue
                states = states if states is not None else self.model_states()
                if states.get(model) != "READY":  # an operator's unload ended the stub, not a crash
                    log.warning("model %s: unloaded (state %s); not reloading it", model, states.get(model))
                    with self._known_lock:
                        self._known.pop(model, None)
                    continue
                log.warning("model %s: stub process %s died; reloading the model", model, sorted(dead))
                self._reload(model)
                self.stub_reloads.extend((model, p) for p in sorted(dead))
            now = time.monotonic()
            if "mochi_dit" in known and "mochi_dit" not in self._down and now - last_health > HEALTH_POLL_S:
                last_health = now
                health = self.dit_health()
                # No answer while the model is READY: its stub is gone, whatever the pid watch saw (see the
                # docstring); LOADING or unloaded models are left alone.
                silent = silent + 1 if health is None and self.model_states().get("mochi_dit") == "READY" else 0
                if (health == 0 or silent >= SILENT_HEALTH_POLLS) and not self._stopping.is_set():
                    why = ("no worker group can generate" if health == 0 else
                           f"no answer to {silent} health polls in a row")
                    log.warning("model mochi_dit: %s; reloading the model", why)
                    self._reload("mochi_dit")
                    if silent:
                        self.stub_reloads.extend(("mochi_dit", p) for p in sorted(known["mochi_dit"]))
                    silent = 0
            for model, since in list(self._down.items()):  # loads that failed: again every RETRY_LOAD_S
                if now - since > RETRY_LOAD_S and not self._stopping.is_set():
                    self._reload(model, unload=False)

    def _reload(self, model: str, unload: bool = True) -> bool:
        """Unload and load `model`; a load that fails leaves it not ready (so is the server, with strict
        readiness) and is tried again every RETRY_LOAD_S."""
        t0 = time.monotonic()
        ok = (not unload or self._repository_call(model, "unload")) and self._repository_call(model, "load")
        log.warning("model %s: %s %s after %.1f s", model, "reload" if unload else "load", "done" if ok else "FAILED",
                    time.monotonic() - t0)
        if ok:
            self._down.pop(model, None)
        else:
            self._down[model] = time.monotonic()
        with self._known_lock:
            self._known[model] = self.stub_pids().get(model, set())
        return ok

    def _note_stubs(self) -> dict[str, set[int]]:
        """Add the live stubs to those the supervisor watches; returns the live ones. Called by the supervisor's
        polls and by wait_ready, so a stub that dies right after the server is ready is not missed."""
        current = self.stub_pids()
        with self._known_lock:
            for model, pids in current.items():
                self._known.setdefault(model, set()).update(pids)
        return current

    def _post(self, path: str, body: dict, timeout: float, admin: bool = False) -> dict:
        headers = {"Content-Type": "application/json", **({ADMIN_HEADER: self.cfg.admin_key} if admin else {})}
        req = urllib.request.Request(f"http://{self.http_url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers=headers)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode() or "null"
        return json.loads(text)

    def _control(self, name: str, value: str = "1") -> list[int]:
        """One of mochi_dit's control inputs, with the server's control key; its STEP output."""
        body = {"inputs": [{"name": name, "shape": [1], "datatype": "BYTES", "data": [value]},
                           {"name": "CONTROL_KEY", "shape": [1], "datatype": "BYTES", "data": [self.cfg.control_key]}],
                "outputs": [{"name": "STEP"}]}
        out = self._post("/v2/models/mochi_dit/infer", body, timeout=10)
        return next(o["data"] for o in out["outputs"] if o["name"] == "STEP")

    def dit_health(self) -> int | None:
        """mochi_dit's worker groups that can generate, None when it does not answer (loading, or not loaded)."""
        try:
            return int(self._control("HEALTH")[0])
        except Exception:
            return None

    def drain(self, model: str = "mochi_dit") -> bool:
        """Ask the DiT model to stop its work before SIGTERM: Triton waits for in-flight requests only up to its
        exit timeout and then exits without unloading models; a drained model ends them at a step boundary so
        shutdown is clean (every model's finalize runs, workers joined)."""
        try:
            self._control("DRAIN")
            return True
        except Exception as e:
            log.info("drain of %s skipped: %s", model, e)
            return False

    def model_states(self) -> dict[str, str]:
        """Model name -> its state in Triton's repository index (READY, UNAVAILABLE, LOADING, UNLOADING)."""
        try:
            return {m["name"]: m.get("state", "") for m in self._post("/v2/repository/index", {}, 10, admin=True)}
        except Exception as e:
            log.error("repository index failed: %s", e)
            return {}

    def _repository_call(self, model: str, action: str) -> bool:
        try:
            self._post(f"/v2/repository/models/{model}/{action}", {}, timeout=900, admin=True)
            return True
        except Exception as e:
            log.error("model %s: %s failed: %s", model, action, e)
            return False

    def _watch(self) -> None:
        """However the server ends (stop, crash, kill -9), take its stubs and workers and shm regions with it;
        start it again when it died on its own and restarts are allowed (ServerConfig.max_restarts)."""
        while True:
            assert self.proc is not None
            rc = self.proc.wait()
            self.kill_group()
            self.cleanup_shm()
            self._release_reaper()
            now = time.monotonic()
            recent = [t for t, _ in self.restarts if now - t < RESTART_WINDOW_S]
            if self._stopping.is_set() or len(recent) >= self.cfg.max_restarts:
                self._ended.set()
                return
            log.error("tritonserver exited with %s on its own; starting it again (%d of %d in %.0f s)", rc,
                      len(recent) + 1, self.cfg.max_restarts, RESTART_WINDOW_S)
            self.restarts.append((now, rc))
            time.sleep(1.0)
            if self._stopping.is_set():
                self._ended.set()
                return
            self._launch()

    def wait(self) -> int:
        """Until the server is down for good; its last exit status."""
        self._ended.wait()
        assert self.proc is not None
        return self.proc.returncode

    def group_pids(self) -> list[int]:
        """Live processes of the server's process group (the server, its stubs, their DiT workers)."""
        if self.proc is None:
            return []
        return processes_in_group(self.proc.pid)

    def kill_group(self) -> None:
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGKILL)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{READY_PATH}", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout: float = 180.0) -> "TritonServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ended.is_set():
                raise ServerError(f"tritonserver exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.ready():
                self._note_stubs()  # before the caller can send work: a stub that dies later is recognised
                return self
            time.sleep(0.5)
        raise ServerError(f"tritonserver not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM to the server (it drains in-flight requests, every model's finalize runs), then SIGKILL
        whatever is left of its process group; remove leaked shm regions."""
        rc = None
        if self.proc is not None:
            self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.drain()
            self.proc.send_signal(signal.SIGTERM)
            rc = self._wait_for_exit(timeout)
        elif self.proc is not None:
            rc = self.proc.returncode
        self.kill_group()
        self.cleanup_shm()
        self._release_reaper()
        if self._tmp is not None:  # a work dir we made (its log goes with it; pass work_dir to keep one)
            shutil.rmtree(self._tmp, ignore_errors=True)
        return rc

    def _wait_for_exit(self, timeout: float) -> int:
        """tritonserver's exit after SIGTERM. Every model's stub finalizes and exits; tritonserver then exits too.

        Not after a stub died with requests in it: Triton 2.51 never answers those, keeps the dead instance
        alive, and the orchestrators that sent them (`mochi`, `mochi_stream`) cannot finish either; tritonserver
        then waits out --exit-timeout-secs and exits 1 without unloading. So once a stub has died in this run,
        when only orchestrator stubs are left and none has exited for STALE_EXIT_S, they are the ones held by
        the dead one's requests: the group is stopped and the stop counts as clean (every other model has
        finalized; the orchestrators hold no state)."""
        assert self.proc is not None
        deadline, last_change, stubs = time.monotonic() + timeout, time.monotonic(), None
        while time.monotonic() < deadline:
            try:
                return self.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
            now_stubs = self.stub_pids()
            if now_stubs != stubs:
                stubs, last_change = now_stubs, time.monotonic()
            elif (self.stub_reloads and set(stubs) <= ORCHESTRATORS
                  and time.monotonic() - last_change > STALE_EXIT_S):
                log.warning("tritonserver still waits for requests that a stub which died earlier never answered "
                            "(models held: %s); every other model has finalized: stopping it", sorted(stubs))
                self.kill_group()
                self.proc.wait(10)
                return 0
        self.kill_group()
        return self.proc.wait(10)

    def cleanup_shm(self) -> None:
        remove_shm(self.cfg.shm_prefix)

    def __enter__(self) -> "TritonServer":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m mochi_runtime.serving.tritonserver", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-repository", default=str(REPO_ROOT / "model_repository"))
    ap.add_argument("--model-dir", default=os.environ.get("MOCHI_MODEL_DIR"),
                    help="checkpoint directory (official or diffusers layout); default: embedded tiny model")
    ap.add_argument("--host", default=os.environ.get("MOCHI_HOST", "127.0.0.1"),
                    help="bind address (default loopback; use 0.0.0.0 deliberately)")
    ap.add_argument("--http-port", type=int, default=int(os.environ.get("MOCHI_HTTP_PORT", 8000)))
    ap.add_argument("--grpc-port", type=int, default=int(os.environ.get("MOCHI_GRPC_PORT", 8001)))
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("MOCHI_METRICS_PORT", 8002)))
    ap.add_argument("--log-verbose", type=int, default=0)
    ap.add_argument("--max-restarts", type=int, default=int(os.environ.get("MOCHI_MAX_RESTARTS", 5)),
                    help="start tritonserver again when it dies on its own, at most this many times in 10 minutes "
                         "(0: exit with its status, for a container runtime to restart)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack to stderr, the server runs on
    cfg = ServerConfig(Path(a.model_repository), a.host, a.http_port, a.grpc_port, a.metrics_port, a.model_dir,
                       log_verbose=a.log_verbose, max_restarts=a.max_restarts)
    server = TritonServer(cfg)
    print(f"tritonserver: {server.binary}", flush=True)
    print(f"HTTP    http://{server.http_url}\ngRPC    {server.grpc_url}\nmetrics {server.metrics_url}", flush=True)
    server.start(foreground=True)
    # A container runtime stops us with SIGTERM: drain the DiT, then let tritonserver shut down in order.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return server.wait()
    except KeyboardInterrupt:
        return server.stop() or 0
    finally:
        server.stop()  # whatever is left of the server's group, its shm, the reaper, the work dir


if __name__ == "__main__":
    sys.exit(main())
