"""What live previews cost the sampler: the same steps with a preview every N steps and with none.
In docs/benchmarks.md: "Live previews"; docs/operations.md "Previews".

    python -m benchmarks preview --steps 16 --every 4 --repeats 2 --json out.json
    python -m benchmarks preview --model-dir DIR --triton --steps 16 --every 4 --json out.json

In process (default): random full-size DiT and VAE built in place (compiled blocks on GPU); the preview colours
are fitted from that VAE as a worker fits them from a checkpoint's. Each repeat runs the loop without previews,
then with them (the denoised estimate mapped to colours and copied to the host, as rank 0 of a group sends it),
so the baseline is measured beside every measurement; the record holds every run.

`--model-dir DIR --triton`: the same pairs as streams from `mochi_stream` on a real tritonserver on the
checkpoint (PREVIEW_EVERY 0, then N): the server's DiT time, the client's latency to the video, and when the
first preview reached the client. Everything a preview costs on the way is in: the fit (on the first request
that asks for previews; the untimed warm-up asks), the pipe from rank 0, the stub, gRPC.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from mochi_runtime.models.latent_preview import LatentRGB
from mochi_runtime.models.text_encoder import CFGText
from mochi_runtime.sampler import CFGVelocity, euler_sample, initial_noise, linear_quadratic_schedule
from .cache import dit_seconds, triton_server
from .common import print_table, write_record
from .vae import build_vae
from .weights import build_dit, cfg_inputs

PROMPT = "a red fox running through fresh snow at dawn, cinematic"
Run = Callable[[int, int], dict]  # (steps, preview_every) -> {"seconds", "previews", "preview_shape", ...}


def in_process(a) -> tuple[Run, dict]:
    """The sampler on random full-size weights in this process: (run, what the record adds)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    dit = build_dit(a.preset, dev, dtype)
    if dev.type == "cuda":
        dit.compile_blocks()
    t0 = time.perf_counter()
    colours = LatentRGB.fit(build_vae(a.preset, dev, dtype))
    fit_s = time.perf_counter() - t0
    _, _, y, mask = cfg_inputs(dit.cfg, a.frames, a.height, a.width, 64, dev, dtype)
    velocity = CFGVelocity(dit, CFGText.from_stacked(y.float(), mask), 4.5)
    shape = (1, dit.cfg.in_channels, (a.frames - 1) // 6 + 1, a.height // 8, a.width // 8)

    def run(steps: int, every: int) -> dict:
        sent: list = []
        z = initial_noise(0, shape).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            euler_sample(velocity, z, linear_quadratic_schedule(steps), None, None,
                         lambda i, x0: sent.append(colours.to_uint8(x0)), every)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start, "previews": len(sent),
                "preview_shape": list(sent[-1].shape) if sent else None}

    return run, {"source": "in_process", "colour_fit_s": round(fit_s, 2)}


def through_triton(a, client, metrics: str) -> Run:
    """Streams from mochi_stream: seconds is the server's DiT time, latency_s the client's to the video."""

    def run(steps: int, every: int) -> dict:
        seen: list = []
        dit0, t0 = dit_seconds(metrics), time.perf_counter()
        client.stream(PROMPT, frames=a.frames, height=a.height, width=a.width, steps=steps, seed=0,
                      preview_every=every,
                      on_preview=lambda step, frames: seen.append((time.perf_counter() - t0, list(frames.shape))))
        return {"seconds": dit_seconds(metrics) - dit0, "latency_s": time.perf_counter() - t0,
                "previews": len(seen), "preview_shape": seen[-1][1] if seen else None,
                "first_preview_s": seen[0][0] if seen else None}

    return run


def measure(run: Run, a) -> tuple[list[dict], list[dict]]:
    """An untimed warm-up with previews (it compiles, and fits the colours where a worker does), then `repeats`
    pairs: none, every N. Returns (every run, one summary row per cadence)."""
    run(a.every + 1, a.every)
    runs, shape = [], None
    for r in range(a.repeats):
        for every in (0, a.every):
            got = run(a.steps, every)
            shape = got["preview_shape"] or shape
            row = {"repeat": r, "preview_every": every, "seconds": round(got["seconds"], 3),
                   "ms_per_step": round(1000 * got["seconds"] / a.steps, 1), "previews": got["previews"]}
            row.update({k: round(got[k], 3) for k in ("latency_s", "first_preview_s") if got.get(k) is not None})
            runs.append(row)
            print(row, flush=True)
    summary = []
    for every in (0, a.every):
        mine = [x for x in runs if x["preview_every"] == every]
        row = {"preview_every": every, "median_s": round(statistics.median(x["seconds"] for x in mine), 3),
               "previews_per_run": mine[0]["previews"]}
        for key in ("latency_s", "first_preview_s"):
            if all(key in x for x in mine):
                row[key] = round(statistics.median(x[key] for x in mine), 3)
        summary.append(row)
    none = summary[0]
    for row in summary:
        row["vs_none"] = round(row["median_s"] / none["median_s"], 4)
        if "latency_s" in row:
            row["latency_vs_none"] = round(row["latency_s"] / none["latency_s"], 4)
    summary[1]["preview_shape"] = shape
    return runs, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks preview", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mochi-1-preview", help="in process: the random weights' sizes")
    ap.add_argument("--model-dir", help="with --triton: the checkpoint the server loads")
    ap.add_argument("--triton", action="store_true", help="streams from mochi_stream on a real tritonserver")
    ap.add_argument("--layout", default="1x1x1", help="--triton: CxUxR of the DiT group")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-mp4", action="store_true", help="--triton: the server sends VIDEO only (no PyAV there)")
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.triton != bool(a.model_dir):
        ap.error("--triton and --model-dir go together")
    shape = {"frames": a.frames, "height": a.height, "width": a.width, "steps": a.steps}
    if a.triton:
        with triton_server(a.model_dir, a.layout, a.frames, max(a.steps, a.every + 1), mp4=not a.no_mp4,
                           work_dir=a.work_dir, start_timeout=a.start_timeout) as (client, metrics):
            runs, summary = measure(through_triton(a, client, metrics), a)
        extra = {"source": "triton", "layout": a.layout}
    else:
        run, extra = in_process(a)
        runs, summary = measure(run, a)
    columns = ["preview_every", "median_s", "vs_none", "previews_per_run", "preview_shape"]
    if "latency_s" in summary[0]:
        columns[3:3] = ["latency_s", "latency_vs_none", "first_preview_s"]
    print_table(summary, columns)
    write_record(a.json, "preview", summary, baseline=summary[0], extra={**extra, "runs": runs, "shape": shape},
                 subcommand="preview")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
