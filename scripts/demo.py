"""`make demo`: start the real tritonserver on the embedded default, send a prompt through the
client, write the mp4, stop the server, and print the mp4 path last."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mochi_runtime.parallel.topology import free_port  # noqa: E402
from mochi_runtime.serving.tritonserver import ServerConfig, TritonServer  # noqa: E402


def main() -> int:
    out = ROOT / "out" / "demo.mp4"
    ports = [free_port() for _ in range(3)]
    server = TritonServer(ServerConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2]))
    print(f"starting tritonserver ({server.binary}) on 127.0.0.1:{ports[0]}/{ports[1]}", file=sys.stderr)
    t0 = time.monotonic()
    server.start()
    try:
        server.wait_ready(600)
        print(f"server ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "client", "generate", "--url", server.grpc_url, "--stream",
             "--prompt", "a red fox running through fresh snow", "--frames", "19", "--height", "96",
             "--width", "160", "--steps", "8", "--seed", "42", "--out", str(out)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        if proc.returncode != 0:
            print(server.log_tail(), file=sys.stderr)
            return proc.returncode
    finally:
        server.stop()
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
