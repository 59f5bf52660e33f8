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
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NGC_SERVER = Path("/opt/tritonserver")


class ServerError(RuntimeError):
    pass


@dataclass
class ServerConfig:
    model_repository: Path = REPO_ROOT / "model_repository"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_dir: str | None = None  # checkpoint directory for all models (None: embedded tiny default)
    work_dir: Path | None = None  # backend dir, logs; a temp dir when None
    cache_bytes: int = 64 * 2**20  # response cache (t5_encoder)
    log_verbose: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    shm_prefix: str = field(default_factory=lambda: f"mochi_{uuid.uuid4().hex[:8]}_")


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
        f"--backend-config=python,shm-region-prefix-name={cfg.shm_prefix}",
        f"--log-verbose={cfg.log_verbose}",
        "--disable-auto-complete-config",
    ]
    caches = root / "caches"
    if (caches / "local").is_dir() and cfg.cache_bytes > 0:
        cmd += [f"--cache-directory={caches}", f"--cache-config=local,size={cfg.cache_bytes}"]
    if not _has_gpu():
        cmd += ["--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--allow-gpu-metrics=false"]
    return cmd + cfg.extra_args


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
        cmd = server_command(self.binary, self.root, self.backends, self.cfg)
        env = server_env(self.root, self.cfg)
        out = None if foreground else open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout: float = 180.0) -> "TritonServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServerError(f"tritonserver exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.5)
        raise ServerError(f"tritonserver not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (every model's finalize runs), then SIGKILL the group; remove leaked shm regions."""
        rc = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                rc = self.proc.wait(10)
        elif self.proc is not None:
            rc = self.proc.returncode
        self.cleanup_shm()
        return rc

    def cleanup_shm(self) -> None:
        for p in glob.glob(f"/dev/shm/{self.cfg.shm_prefix}*"):
            try:
                os.unlink(p)
            except OSError:
                pass

    def __enter__(self) -> "TritonServer":
        return self.start().wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
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
    a = ap.parse_args(argv)
    cfg = ServerConfig(Path(a.model_repository), a.host, a.http_port, a.grpc_port, a.metrics_port, a.model_dir,
                       log_verbose=a.log_verbose)
    server = TritonServer(cfg)
    print(f"tritonserver: {server.binary}", flush=True)
    print(f"HTTP    http://{server.http_url}\ngRPC    {server.grpc_url}\nmetrics {server.metrics_url}", flush=True)
    server.start(foreground=True)
    try:
        return server.proc.wait()
    except KeyboardInterrupt:
        return server.stop() or 0
    finally:
        server.cleanup_shm()


if __name__ == "__main__":
    sys.exit(main())
