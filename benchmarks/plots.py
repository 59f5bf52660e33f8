"""The plots in docs/benchmarks.md, drawn from the JSON records in docs/bench/ (no number is typed here).

    python -m benchmarks plots [--records docs/bench] [--out docs/img]

Each figure names the records it reads; a record's card and date go into the figure's title.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # files only: no display on CI or the GPU machines
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

REPO = Path(__file__).resolve().parent.parent


def load(records: Path, name: str) -> dict:
    return json.loads((records / name).read_text())


def rows(record: dict) -> list[dict]:
    return record.get("results") or record.get("rows") or []


def stamp(record: dict) -> str:
    return f"{record['card']}, {record['date'][:10]}"


def peak_per_gpu(row: dict) -> float:
    """A row's peak: one number for one GPU, a list (one per GPU) for a spread run; the largest counts."""
    peak = row.get("peak_gib", 0)
    return max(peak) if isinstance(peak, list) else peak


def dit_scaling(records: Path, ax_pair) -> None:
    """Per-step time and speed-up over one GPU, by layout (cfg x ulysses x ring), 49 and 163 frames."""
    ms_ax, up_ax = ax_pair
    series = [("49 frames", ["dit_qk_rope_49f_h200x2.json", "dit_qk_rope_49f_h200x4.json"]),
              ("163 frames", ["dit_defaults_163f_h200x4.json"])]
    layouts_shown = ["1x1x1", "2x1x1", "1x2x1", "2x2x1", "1x4x1"]  # the layouts both records hold, by GPU count
    width, offset = 0.38, -0.19
    for label, files in series:
        seen: dict[str, dict] = {}
        for name in files:
            for r in rows(load(records, name)):
                seen.setdefault(r["layout"], r)
        layouts = [lay for lay in layouts_shown if lay in seen]
        xs = [layouts_shown.index(lay) + offset for lay in layouts]
        ms_ax.bar(xs, [seen[lay]["ms_per_cfg_step"] for lay in layouts], width, label=label)
        up_ax.bar(xs, [seen[lay]["speedup"] for lay in layouts], width, label=label)
        for x, lay in zip(xs, layouts):
            up_ax.annotate(f"{seen[lay]['speedup']:.2f}x", (x, seen[lay]["speedup"]), ha="center", va="bottom",
                           fontsize=7)
        offset += width
    ticks = [f"{lay}\n({math.prod(map(int, lay.split('x')))} GPU)" for lay in layouts_shown]
    for ax in (ms_ax, up_ax):
        ax.set_xticks(range(len(layouts_shown)), ticks, fontsize=8)
    ms_ax.set_ylabel("ms per CFG step")
    ms_ax.set_yscale("log")
    up_ax.set_ylabel("speed-up over 1 GPU")
    up_ax.legend(fontsize=8)
    stamps = sorted({stamp(load(records, name)) for _, files in series for name in files})
    ms_ax.set_title("DiT step by layout (cfg x ulysses x ring), 848x480\n" + "; ".join(stamps), fontsize=8)


def dit_memory(records: Path, ax) -> None:
    """Peak GPU memory per GPU and step time by weights mode (replicated, FSDP2-sharded), 49 frames."""
    rec = load(records, "dit_sharded_h200x4.json")
    rs = rows(rec)
    labels = [f"{r['layout']}\n{r['weights']}" for r in rs]
    peaks = [max(r["peak_gib_per_gpu"]) for r in rs]
    weights = [max(r["weight_gib_per_gpu"]) for r in rs]
    xs = range(len(rs))
    ax.bar(xs, peaks, 0.6, label="peak per GPU")
    ax.bar(xs, weights, 0.6, label="of which weights", alpha=0.8)
    for x, r, p in zip(xs, rs, peaks):
        ax.annotate(f"{r['ms_per_cfg_step']:.0f} ms", (x, p), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylabel("GiB per GPU")
    ax.legend(fontsize=8)
    ax.set_title(f"DiT memory by weights mode (label: ms per step), 49 frames\n{stamp(rec)}", fontsize=9)


def vae(records: Path, ax_pair) -> None:
    """VAE decode time and peak memory by frames: ours (exact, tiled, over GPUs) and diffusers' modes."""
    time_ax, mem_ax = ax_pair
    one = load(records, "vae_1gpu_piecewise_h200.json")
    spread = load(records, "vae_h200x4.json")
    table: dict[str, dict[int, dict]] = {}
    for r in rows(one):
        table.setdefault(r["engine"], {})[r["frames"]] = r
    for r in rows(spread):
        if r["gpus"] > 1:
            table.setdefault(f"ours over {r['gpus']} GPUs (tiles)", {})[r["frames"]] = r
    frames = sorted({f for per in table.values() for f in per})
    width = 0.8 / len(table)
    for i, (engine, per) in enumerate(table.items()):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(frames))]
        time_ax.bar(xs, [per[f]["seconds"] if f in per else 0 for f in frames], width, label=engine)
        mem_ax.bar(xs, [peak_per_gpu(per[f]) if f in per else 0 for f in frames], width, label=engine)
    for ax in (time_ax, mem_ax):
        ax.set_xticks(range(len(frames)), [f"{f} frames" for f in frames])
    time_ax.set_ylabel("seconds")
    mem_ax.set_ylabel("peak GiB per GPU")
    mem_ax.legend(fontsize=7)
    time_ax.set_title(f"VAE decode, 848x480\n{stamp(one)}; spread: {stamp(spread)}", fontsize=9)


def throughput(records: Path, ax) -> None:
    """Videos per hour through Triton by client concurrency: one 4-GPU group against two 2-GPU lanes."""
    rec = load(records, "serving_2x2_vs_1x4_h200x4.json")
    for r in rows(rec):
        load_rows = r["load"]
        ax.plot([x["concurrency"] for x in load_rows], [x["requests_per_hour"] for x in load_rows], marker="o",
                label=r["deployment"])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel(f"requests per hour ({rec['shape'].get('steps', '?')} steps each)")
    ax.legend(fontsize=8)
    ax.set_title(f"Serving throughput by deployment, 49 frames\n{stamp(rec)}", fontsize=9)


def cache_quality(record: dict, ax_pair) -> None:
    """Step caching: PSNR and SSIM of each mode's videos against the uncached ones, by DiT speed-up."""
    psnr_ax, ssim_ax = ax_pair
    summary = rows(record)
    for ax, key, label in ((psnr_ax, "psnr_mean", "PSNR vs uncached (dB, mean)"),
                           (ssim_ax, "ssim_mean", "SSIM vs uncached (mean)")):
        cached = [r for r in summary if r["mode"] != "off"]  # off is the reference: identical, speed-up 1
        for i, r in enumerate(cached):
            ax.scatter(r["speedup"], r[key])
            ax.annotate(f"{r['mode']} ({r['steps_computed']:g}/{record['shape']['steps']} steps)",
                        (r["speedup"], r[key]), textcoords="offset points", xytext=(5, 8 - 14 * (i % 2)),
                        fontsize=7)
        ax.set_xlabel("DiT speed-up over cache off (same prompts and seeds)")
        ax.set_ylabel(label)
        ax.margins(0.25)
    sh = record["shape"]
    source = {"preset": "random full-size weights", "triton": "through Triton"}.get(record["source"], record["source"])
    psnr_ax.set_title(f"Step caching, {sh['width']}x{sh['height']}x{sh['frames']}, {source}\n"
                      f"{stamp(record)}", fontsize=9)


def draw_cache_quality(record: dict, path: str | Path) -> None:
    """cache_quality as a PNG of its own (what `python -m benchmarks cache --plot` writes)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.6))
    cache_quality(record, axes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CACHE_RECORDS = ("cache_1gpu_49f_h100_a.json", "cache_1gpu_49f_h100_b.json")  # two runs, each with its own off


def step_cache(records: Path, ax_pair) -> None:
    """The step caching records of docs/benchmarks.md in one figure: every mode against its own run's off."""
    runs = [load(records, name) for name in CACHE_RECORDS]
    merged = dict(runs[0], results=[r for run in runs for r in rows(run)])
    cache_quality(merged, ax_pair)


FIGURES: dict[str, tuple[Callable, tuple[int, int]]] = {
    "dit_scaling.png": (dit_scaling, (1, 2)),
    "dit_memory.png": (dit_memory, (1, 1)),
    "vae.png": (vae, (1, 2)),
    "serving_throughput.png": (throughput, (1, 1)),
    "step_cache.png": (step_cache, (1, 2)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks plots")
    ap.add_argument("--records", type=Path, default=REPO / "docs" / "bench")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for name, (draw, (nrows, ncols)) in FIGURES.items():
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.6 * nrows), squeeze=True)
        draw(a.records, axes)
        fig.tight_layout()
        fig.savefig(a.out / name, dpi=110)
        plt.close(fig)
        print(a.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
