"""`python -m gateway [--host 127.0.0.1] [--port 8080] [--triton 127.0.0.1:8001] [--data-dir DIR] ...`"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from .app import Settings, create_app

API_KEY_ENV = "MOCHI_GATEWAY_API_KEY"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1", help="loopback by default; 0.0.0.0 exposes it (set an API key)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--triton", default="127.0.0.1:8001", help="tritonserver's gRPC address")
    ap.add_argument("--data-dir", default=os.path.expanduser("~/.cache/mochi-runtime/gateway"),
                    help="the job table (SQLite) and the videos")
    ap.add_argument("--api-key", default=None, help=f"bearer key every endpoint asks for (else ${API_KEY_ENV})")
    ap.add_argument("--workers", type=int, default=2, help="jobs streamed to Triton at once")
    ap.add_argument("--max-queue", type=int, default=16, help="queued jobs; more get 429")
    ap.add_argument("--retention-s", type=int, default=86400, help="how long finished videos are kept")
    ap.add_argument("--preview-every", type=int, default=4)
    ap.add_argument("--default-frames", type=int, default=49)
    ap.add_argument("--default-size", default="848x480")
    ap.add_argument("--default-steps", type=int, default=64)
    a = ap.parse_args(argv)
    key = a.api_key if a.api_key is not None else os.environ.get(API_KEY_ENV, "")
    if a.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"warning: listening on {a.host} without an API key ({API_KEY_ENV} / --api-key)", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="[gateway] %(levelname)s %(message)s")
    app = create_app(Settings(a.data_dir, a.triton, key, a.workers, a.max_queue, a.retention_s, a.preview_every,
                              a.default_frames, a.default_size, a.default_steps))
    print(f"gateway: http://{a.host}:{a.port}/ (OpenAI videos API under /v1), Triton at {a.triton}, data in "
          f"{a.data_dir}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
