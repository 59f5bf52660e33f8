"""Run the numeric tests (`pytest -m numeric`) across CPU thread counts and PyTorch's CPU kernel levels, and print
each bound's worst measured error and its margin (bound / worst).

    .venv/bin/python tests/numeric_margins.py [--threads 1,2,4] [--capabilities default,avx2] [--json out.json]

Each configuration is a fresh pytest process with OMP_NUM_THREADS and ATEN_CPU_CAPABILITY set (PyTorch picks
its vectorised kernels by the latter: `default` is the scalar build, `avx2` and `avx512` the wider ones) and
MOCHI_NUMERICS_LOG pointing at a log that tests/numerics.py appends every comparison to. A bound is named by its
test and label, parametrisations folded together.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_config(threads: int, capability: str, log: Path, extra: list[str]) -> int:
    # Inductor's own cache per configuration: its precompiled C++ headers are built for one kernel level
    # and break the compile under another ("'at::vec' has not been declared").
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), ATEN_CPU_CAPABILITY=capability,
               MOCHI_NUMERICS_LOG=str(log), TORCHINDUCTOR_CACHE_DIR=str(log.with_suffix(".inductor")))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "numeric", "-p", "no:randomly", *extra]
    print(f"== OMP_NUM_THREADS={threads} ATEN_CPU_CAPABILITY={capability}: {' '.join(cmd[1:])}", flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2,4")
    ap.add_argument("--capabilities", default="default,avx2")
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. a test file)")
    a = ap.parse_args(argv)
    worst: dict[str, dict] = {}
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (int(t) for t in a.threads.split(",")):
            for cap in a.capabilities.split(","):
                log = Path(tmp) / f"{threads}-{cap}.jsonl"
                if run_config(threads, cap, log, a.pytest_args) != 0:
                    failed.append(f"{threads}/{cap}")
                for line in log.read_text().splitlines() if log.exists() else []:
                    r = json.loads(line)
                    name = re.sub(r"\[[^\]]*\]", "", r["bound"])
                    w = worst.setdefault(name, {"bound": name, "rel_l2_bound": r["rel_l2_bound"],
                                                "max_rel_bound": r["max_rel_bound"], "rel_l2": 0.0, "max_rel": 0.0,
                                                "runs": 0})
                    w["runs"] += 1
                    for key in ("rel_l2", "max_rel"):
                        if r[key] > w[key]:
                            w[key], w[f"{key}_at"] = r[key], f"{threads}/{cap}"
    rows = sorted(worst.values(), key=lambda w: w["bound"])
    print(f"\n{'bound':<100} {'worst rel_l2':>12} {'bound':>8} {'margin':>7} {'worst max_rel':>13} {'bound':>8} "
          f"{'margin':>7}")
    for w in rows:
        w["rel_l2_margin"] = w["rel_l2_bound"] / w["rel_l2"] if w["rel_l2"] else float("inf")
        mr = w["max_rel_bound"]
        w["max_rel_margin"] = (mr / w["max_rel"] if w["max_rel"] else float("inf")) if mr is not None else None
        print(f"{w['bound'][-100:]:<100} {w['rel_l2']:>12.3g} {w['rel_l2_bound']:>8.0e} {w['rel_l2_margin']:>7.1f} "
              + (f"{w['max_rel']:>13.3g} {mr:>8.0e} {w['max_rel_margin']:>7.1f}" if mr is not None else
                 f"{'-':>13} {'-':>8} {'-':>7}"))
    low = [w["bound"] for w in rows if w["rel_l2_margin"] < 3 or (w["max_rel_margin"] or 99) < 3]
    print(f"\nconfigurations: {a.threads} threads x {a.capabilities}; failed runs: {failed or 'none'}; "
          f"bounds under 3x margin: {low or 'none'}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 1 if failed or low else 0


if __name__ == "__main__":
    sys.exit(main())
