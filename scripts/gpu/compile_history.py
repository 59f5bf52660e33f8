"""Does a compiled DiT's output at one shape depend on which shapes it compiled before?

mochi_dit warms up at 7 frames 32x32 when it loads; the in-process runtime compiles straight at the request's
shape. This runs one forward at the request's shape from a cold compile, then resets dynamo, compiles a small
shape first and runs the request's shape again (same weights, inputs), and reports whether the two agree.
Run on CPU (tiny config) or GPU (`--preset mochi-1-preview`, random bf16 weights).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from mochi_runtime.bench.common import record_header, rel_err
from mochi_runtime.bench.dit import build_dit


def forward(dit, frames: int, height: int, width: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dev, dt = dit.pos_frequencies.device, dit.pos_frequencies.dtype
    x = torch.randn(2, 12, (frames - 1) // 6 + 1, height // 8, width // 8, generator=g).to(dev, dt)
    y = torch.randn(2, 256, dit.cfg.t5_feat_dim, generator=g).to(dev, dt)
    mask = torch.zeros(2, 256, dtype=torch.bool, device=dev)
    mask[1, :64] = True
    with torch.inference_mode():
        return dit(x, torch.full((2,), 0.7, device=dev), y, mask).float().cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--shape", default="49x480x848")
    ap.add_argument("--small", default="7x32x32")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = torch.bfloat16
    dit = build_dit(a.preset, dev, dt, seed=1)
    dit.compile_blocks()
    shape, small = (tuple(int(v) for v in s.split("x")) for s in (a.shape, a.small))
    cold = forward(dit, *shape)
    again = forward(dit, *shape)
    torch._dynamo.reset()
    forward(dit, *small)
    after_small = forward(dit, *shape)
    out = {**record_header("python " + " ".join(sys.argv)), "device": str(dev), "preset": a.preset,
           "shape": a.shape, "small_first": a.small,
           "repeat_equal": bool(torch.equal(cold, again)), "after_small_equal": bool(torch.equal(cold, after_small)),
           "after_small_rel": rel_err(after_small, cold), "after_small_max_abs": float((after_small - cold).abs().max())}
    print(json.dumps(out))
    if a.json:
        open(a.json, "w").write(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
