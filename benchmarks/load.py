"""Checkpoint loading benchmark: a full-size random DiT written in Genmo's official layout,
In docs/benchmarks.md: "Memory", loading a full-size checkpoint (2x H200).
loaded back through the same loader as real weights, in a fresh process, with load time,
peak host RSS and peak GPU memory.

    python -m benchmarks load --dir /tmp/mochi-full [--device cuda|cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .common import print_table, write_record
from .weights import build_t5


def write_checkpoint(folder: Path, preset: str = "mochi-1-preview") -> dict[str, float]:
    """A random-weight mochi-1-preview directory in Genmo's official layout, as the serving path reads it:
    dit.safetensors (10.0B, bf16), decoder.safetensors (VAE decoder), text_encoder/ (T5-XXL encoder, HF
    safetensors, bf16) and tokenizer/. Weights are drawn on the GPU and saved from host memory.

    No T5 vocabulary ships offline, so tokenizer/ is the embedded default's character-level T5 tokenizer:
    the ids differ from the real spiece model's, the shapes and the code path do not.
    """
    from safetensors.torch import save_file

    from mochi_runtime.models.config import get_preset
    from mochi_runtime.loading.tiny import build_tokenizer
    from .weights import build_dit
    from .vae import build_vae

    folder.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seconds: dict[str, float] = {}

    def timed_write(name: str, write: Callable[[Path], None]) -> None:
        """write(folder / name), timed; a part already on disk is kept (a rerun only loads)."""
        target = folder / name
        if target.exists():
            return
        t0 = time.perf_counter()
        write(target)
        seconds[name] = round(time.perf_counter() - t0, 1)

    def weights(make_module: Callable[[], torch.nn.Module]) -> Callable[[Path], None]:
        def write(target: Path) -> None:
            state = make_module().state_dict()
            save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(target))

        return write

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    timed_write("dit.safetensors", weights(lambda: build_dit(preset, dev, dtype)))
    timed_write("decoder.safetensors", weights(lambda: build_vae(preset, dev, dtype)))
    if preset != "mochi-1-preview":  # Genmo's directories carry no config: ours says which sizes these are
        from mochi_runtime.loading.checkpoints import MOCHI_CONFIG_FILE

        p = get_preset(preset)
        (folder / MOCHI_CONFIG_FILE).write_text(json.dumps({"dit": p.dit.to_dict(), "vae": p.vae.to_dict()}, indent=2))

    def write_t5(target: Path) -> None:  # HF layout: the encoder in text_encoder/, its tokenizer beside it
        t5 = build_t5(preset, dev, dtype).to("cpu")
        t5.save_pretrained(str(target), safe_serialization=True, is_main_process=True)
        build_tokenizer().save_pretrained(str(folder / "tokenizer"))

    timed_write("text_encoder", write_t5)
    return seconds


def vm_hwm_gib() -> float:
    """Peak resident set of this process since exec (VmHWM; ru_maxrss would include the forking parent's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def load_once(folder: str, device: str, part: str = "dit") -> dict:
    """Runs in a fresh process: load one model through the serving path's loader, then report time and peaks."""
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.loading.loaders import load_dit, load_text_encoder, load_vae

    rss0 = vm_hwm_gib()
    md = ModelDir.open(folder)
    t0 = time.perf_counter()
    if part == "dit":
        model = load_dit(md, torch.device(device), torch.bfloat16, compile=False)
    elif part == "vae":
        model = load_vae(md, torch.device(device), torch.bfloat16)
    elif part == "t5":
        model = load_text_encoder(md, torch.device(device), torch.bfloat16 if device.startswith("cuda") else None).model
    else:
        raise ValueError(f"part must be dit, vae or t5, got {part!r}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    else:  # make every weight resident (safetensors may hand back lazily mapped storage)
        with torch.no_grad():
            for p in model.parameters():
                p.sum()
    secs = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {
        "part": part, "device": device, "load_s": round(secs, 1), "params": params,
        "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
        "peak_host_rss_gib": round(vm_hwm_gib(), 2),
        "host_rss_before_gib": round(rss0, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks load")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--preset", default="mochi-1-preview", help="sizes of the written checkpoint (tiny: a smoke run)")
    ap.add_argument("--device", action="append", default=None, help="cuda and/or cpu (default: both for the DiT)")
    ap.add_argument("--parts", default="dit,vae,t5", help="comma list of dit, vae, t5 to load back")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-part", default="dit", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(load_once(a.dir, a.child, a.child_part)))
        return 0
    written = write_checkpoint(Path(a.dir), a.preset)
    print(f"written: {written}", flush=True)
    files = {p.name: round(p.stat().st_size / 2**30, 2) for p in Path(a.dir).rglob("*.safetensors")}
    rows = []
    devices = a.device or (["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"])
    for part in a.parts.split(","):
        for device in devices if part == "dit" else devices[:1]:
            out = subprocess.run([sys.executable, "-m", "benchmarks", "load", "--dir", a.dir,
                                  "--child", device, "--child-part", part],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                print(f"loading {part} on {device} failed:\n{out.stderr[-3000:]}", flush=True)
                rows.append({"part": part, "device": device, "error": out.stderr.strip().splitlines()[-1][:300]})
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(row, flush=True)
    print_table(rows, ["part", "device", "load_s", "weights_gib", "peak_host_rss_gib", "peak_gpu_gib"])
    write_record(a.json, "load", rows, None, {"write_s": written, "files_gib": files}, subcommand="load")
    return 0
