"""What live previews cost the sampler: the same steps with a preview every N steps and with none.
In docs/benchmarks.md: the module table (not yet run on a GPU); docs/operations.md "Previews".

    python -m benchmarks preview --steps 16 --every 4 --repeats 2 --json out.json

Random full-size DiT and VAE built in place (compiled blocks on GPU); the preview colours are fitted from that
VAE as a worker fits them from a checkpoint's. Each repeat runs the loop without previews, then with them
(the denoised estimate mapped to colours and copied to the host, as rank 0 of a group sends it), so the
baseline is measured beside every measurement; the record holds every run.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mochi_runtime.models.latent_preview import LatentRGB
from mochi_runtime.models.text_encoder import CFGText
from mochi_runtime.sampler import CFGVelocity, euler_sample, initial_noise, linear_quadratic_schedule
from .common import print_table, write_record
from .vae import build_vae
from .weights import build_dit, cfg_inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks preview", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mochi-1-preview")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
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
    sent: list = []

    def run(steps: int, every: int) -> float:
        z = initial_noise(0, shape).to(dev)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            euler_sample(velocity, z, linear_quadratic_schedule(steps), None, None,
                         lambda i, x0: sent.append(colours.to_uint8(x0)), every)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    run(1, 0)  # compiles
    runs = []
    for r in range(a.repeats):
        for every in (0, a.every):
            s = run(a.steps, every)
            runs.append({"repeat": r, "preview_every": every, "seconds": round(s, 3),
                         "ms_per_step": round(1000 * s / a.steps, 1)})
            print(runs[-1], flush=True)
    off = statistics.median(x["seconds"] for x in runs if x["preview_every"] == 0)
    on = statistics.median(x["seconds"] for x in runs if x["preview_every"] == a.every)
    summary = [{"preview_every": 0, "median_s": round(off, 3), "vs_none": 1.0},
               {"preview_every": a.every, "median_s": round(on, 3), "vs_none": round(on / off, 4),
                "previews_per_run": (a.steps - 1) // a.every, "preview_shape": list(sent[-1].shape)}]
    print_table(summary, ["preview_every", "median_s", "vs_none", "previews_per_run", "preview_shape"])
    write_record(a.json, "preview", summary, baseline=summary[0],
                 extra={"runs": runs, "colour_fit_s": round(fit_s, 2),
                        "shape": {"frames": a.frames, "height": a.height, "width": a.width, "steps": a.steps}},
                 subcommand="preview")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
