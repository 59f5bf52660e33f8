"""Checkpoint loading benchmark: a full-size random DiT written in Genmo's official layout,
loaded back through the same loader as real weights, in a fresh process, with load time,
peak host RSS and peak GPU memory.

    python -m mochi_runtime.bench load --dir /tmp/mochi-full [--device cuda|cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from .common import print_table, write_record


def write_checkpoint(folder: Path) -> float:
    """dit.safetensors of the mochi-1-preview preset, random bf16 (built on the GPU, saved from host)."""
    from safetensors.torch import save_file

    from .dit import build_dit

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "dit.safetensors"
    if target.is_file():
        return 0.0
    t0 = time.perf_counter()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dit = build_dit("mochi-1-preview", dev, torch.bfloat16)
    state = {k: v.detach().to("cpu").contiguous() for k, v in dit.state_dict().items()}
    del dit
    save_file(state, str(target))
    return time.perf_counter() - t0


def vm_hwm_gib() -> float:
    """Peak resident set of this process since exec (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def load_once(folder: str, device: str) -> dict:
    """Runs in a fresh process: load, then report time and peaks."""
    from ..checkpoints import ModelDir
    from ..pipeline import load_dit

    rss0 = vm_hwm_gib()
    t0 = time.perf_counter()
    dit = load_dit(ModelDir.open(folder), torch.device(device), torch.bfloat16, compile=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    else:  # make every weight resident (safetensors may hand back lazily mapped storage)
        with torch.no_grad():
            for p in dit.parameters():
                p.sum()
    secs = time.perf_counter() - t0
    params = sum(p.numel() for p in dit.parameters())
    return {
        "device": device, "load_s": round(secs, 1), "params": params,
        "weights_gib": round(params * 2 / 2**30, 2),
        "peak_host_rss_gib": round(vm_hwm_gib(), 2),
        "host_rss_before_gib": round(rss0, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mochi_runtime.bench load")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", action="append", default=None, help="cuda and/or cpu (default: both)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(load_once(a.dir, a.child)))
        return 0
    write_s = write_checkpoint(Path(a.dir))
    size = (Path(a.dir) / "dit.safetensors").stat().st_size / 2**30
    rows = []
    for device in a.device or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]):
        out = subprocess.run([sys.executable, "-m", "mochi_runtime.bench", "load", "--dir", a.dir, "--child", device],
                             capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["file_gib"] = round(size, 2)
        rows.append(row)
        print(row, flush=True)
    print_table(rows, ["device", "load_s", "weights_gib", "file_gib", "peak_host_rss_gib", "peak_gpu_gib"])
    write_record(a.json, "load", rows, None, {"write_s": round(write_s, 1)}, subcommand="load")
    return 0
