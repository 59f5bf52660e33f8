"""Load test the `mochi` ensemble and write a perf_analyzer-style CSV.

    python -m client.loadtest --url 127.0.0.1:8001 --concurrency 1:4 --requests 8 --csv out.csv [--driver python]

The default driver is perf_analyzer (count windows). `--driver python` runs the same closed loop from
Python threads through the client API (for machines without the perf_analyzer binary); it writes the
same CSV columns (Concurrency, Inferences/Second, p50/p99 latency in us).

perf_analyzer ships in the tritonclient 2.51 wheel; on machines without CUDA it
needs libb64 and libcudart, which the nvidia-pytriton wheel carries under hashed
names: we link them under their plain names in a temp dir on LD_LIBRARY_PATH.
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

DEFAULT_INPUTS = Path(__file__).resolve().parent / "inputs" / "prompts.json"


def find_perf_analyzer() -> str:
    found = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not os.path.isfile(found):
        raise FileNotFoundError("perf_analyzer not found: pip install tritonclient==2.51.0 (it carries the binary)")
    return found


def library_dir() -> str | None:
    """A folder with libb64.so.0d / libcudart.so.12 links taken from nvidia-pytriton, if installed."""
    try:
        import pytriton  # type: ignore
    except ImportError:
        return None
    libs = Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs"
    out = Path(tempfile.mkdtemp(prefix="mochi-pa-libs-"))
    for pattern, name in (("libb64-*.so.0d", "libb64.so.0d"), ("libcudart-*.so.12*", "libcudart.so.12")):
        hits = glob.glob(str(libs / pattern))
        if hits:
            os.symlink(hits[0], out / name)
    return str(out)


def run(url: str, model: str = "mochi", protocol: str = "grpc", concurrency: str = "1:2", requests: int = 4,
        inputs: str | Path = DEFAULT_INPUTS, csv_path: str | Path = "perf.csv", streaming: bool = False,
        timeout_s: float = 1800) -> list[dict[str, str]]:
    """Run perf_analyzer and return the parsed CSV rows (one per concurrency level)."""
    cmd = [find_perf_analyzer(), "-m", model, "-u", url, "-i", protocol, "--input-data", str(inputs),
           "--concurrency-range", concurrency, "--measurement-mode", "count_windows",
           "--measurement-request-count", str(requests), "--max-trials", "3", "--stability-percentage", "999",
           "-f", str(csv_path)]
    if streaming:
        cmd.append("--streaming")
    env = dict(os.environ)
    libdir = library_dir()
    if libdir:
        env["LD_LIBRARY_PATH"] = libdir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    finally:
        if libdir:
            shutil.rmtree(libdir, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return parse_csv(csv_path)


def closed_loop(send: Callable[[int], object], concurrency: int, requests: int) -> dict:
    """`concurrency` threads each send one request at a time (send(i) blocks until its answer) until `requests`
    are done; requests/hour and latency percentiles, the way perf_analyzer's concurrency mode counts them.

    The driver for machines where the perf_analyzer binary is not installed or cannot travel.
    """
    lock = threading.Lock()
    issued = iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(issued, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                send(i)
            except Exception as e:  # recorded, the run goes on
                with lock:
                    errors.append(f"{type(e).__name__}: {e}"[:300])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, name=f"load-{k}") for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))], 2) if lat else float("nan")

    return {"concurrency": concurrency, "requests": requests, "ok": len(lat), "errors": errors,
            "wall_s": round(wall, 1), "requests_per_hour": round(len(lat) / wall * 3600, 1),
            "p50_s": pct(0.50), "p99_s": pct(0.99)}


def concurrency_levels(spec: str) -> list[int]:
    """perf_analyzer's "start:end[:step]" (or one number) as a list."""
    parts = [int(p) for p in spec.split(":")]
    start, end, step = parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else 1
    if start < 1 or end < start or step < 1:
        raise ValueError(f"concurrency must be start:end[:step] with 1 <= start <= end, got {spec!r}")
    return list(range(start, end + 1, step))


def run_python(url: str, protocol: str = "grpc", concurrency: str = "1:2", requests: int = 4,
               inputs: str | Path = DEFAULT_INPUTS, csv_path: str | Path = "perf.csv") -> list[dict[str, str]]:
    """The closed loop through MochiClient.generate over the inputs file's requests, cycled."""
    from .api import KNOB_INPUTS, MochiClient  # the python driver only; perf_analyzer needs none of it

    data = json.loads(Path(inputs).read_text())["data"]
    names = {name: key for key, name in KNOB_INPUTS.items()}

    def send(i: int) -> None:
        entry = data[i % len(data)]
        knobs = {names[k]: v[0] for k, v in entry.items() if k in names}
        with MochiClient(url, protocol) as c:
            c.generate(entry["PROMPT"][0], (entry.get("NEGATIVE_PROMPT") or [None])[0], **knobs)

    rows = []
    for level in concurrency_levels(concurrency):
        r = closed_loop(send, level, max(requests, level))
        if r["errors"]:
            raise RuntimeError(f"{len(r['errors'])} requests failed at concurrency {level}: {r['errors'][0]}")
        rows.append({"Concurrency": str(level), "Inferences/Second": f"{r['requests_per_hour'] / 3600:.6f}",
                     "p50 latency": str(int(r["p50_s"] * 1e6)), "p99 latency": str(int(r["p99_s"] * 1e6))})
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def parse_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of perf_analyzer's CSV, by concurrency (the file itself is ordered by throughput)."""
    with open(path, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: int(r.get("Concurrency") or 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client.loadtest")
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--model", default="mochi")
    ap.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    ap.add_argument("--concurrency", default="1:2", help="perf_analyzer range start:end[:step]")
    ap.add_argument("--requests", type=int, default=4, help="requests per count window")
    ap.add_argument("--inputs", default=str(DEFAULT_INPUTS))
    ap.add_argument("--csv", default="perf.csv")
    ap.add_argument("--driver", default="perf_analyzer", choices=["perf_analyzer", "python"])
    a = ap.parse_args(argv)
    if a.driver == "python":
        if a.model != "mochi":
            ap.error("--driver python drives the mochi ensemble")
        rows = run_python(a.url, a.protocol, a.concurrency, a.requests, a.inputs, a.csv)
    else:
        rows = run(a.url, a.model, a.protocol, a.concurrency, a.requests, a.inputs, a.csv)
    for r in rows:
        print(f"concurrency {r['Concurrency']}: {float(r['Inferences/Second']) * 3600:.0f} requests/hour, "
              f"p50 {int(r['p50 latency']) / 1e6:.2f} s, p99 {int(r['p99 latency']) / 1e6:.2f} s")
    print(os.path.abspath(a.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
