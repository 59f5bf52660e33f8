"""DiT step benchmark: full-size random bf16 weights, one CFG step (batch 2) at 848x480x49.
In docs/benchmarks.md: "One GPU" (1x H200) and "Several GPUs" (2x and 4x H200, 4x H100).

Ours (eager and torch.compile'd) against diffusers' MochiTransformer3DModel on the
very same weights, in the same process, with the output difference reported.
"""
from __future__ import annotations

import argparse
import gc

import torch

from mochi_runtime.ops.attention import LocalJointAttention
from mochi_runtime.loading.checkpoints import dit_key_map, to_diffusers
from mochi_runtime.models.dit import AsymmDiT
from .common import add_shape_args, peak_gib, print_table, rel_err, time_cuda, write_record
from .dit_parallel import run_layout
from .weights import build_dit, cfg_inputs


def diffusers_twin(dit: AsymmDiT):
    """diffusers' transformer sharing our weights (converted by our key map)."""
    from diffusers import MochiTransformer3DModel

    cfg = dit.cfg
    with torch.device("meta"):
        ref = MochiTransformer3DModel(
            num_layers=cfg.depth, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            pooled_projection_dim=cfg.hidden_size_y, text_embed_dim=cfg.t5_feat_dim,
            time_embed_dim=cfg.timestep_freq_dim,
        )
    ref.load_state_dict(to_diffusers(dit.state_dict(), dit_key_map(cfg)), strict=True, assign=True)
    return ref.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks dit")
    add_shape_args(ap, 49)
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-parts", default="pre_attention,post_attention",
                    help="with --layouts: which block halves to compile (bisecting numerics)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--layouts", default=None,
                    help="comma list of CxUxR group layouts (cfg x ulysses x ring) to time against 1 GPU, e.g. "
                         "1x2x1,2x1x1,1x4x1,2x2x1,1x2x2")
    ap.add_argument("--gpus", type=int, default=None, help="with --ulysses/--ring/--cfg-parallel: one layout")
    ap.add_argument("--ulysses", type=int, default=1)
    ap.add_argument("--ring", type=int, default=1)
    ap.add_argument("--cfg-parallel", action="store_true")
    ap.add_argument("--weights", default="replicated",
                    help="comma list of DiT weight modes to time per layout: replicated, sharded (FSDP2 over the "
                         "world), sharded-sp (FSDP2 within each CFG half); '@N' prefetches N blocks (sharded@2)")
    ap.add_argument("--engines", default="ours",
                    help="with --layouts: comma list of attention engines to time per layout: ours, xdit "
                         "(xfuser 0.7.0's USP, GPU only); every engine's output is compared with the first one's "
                         "on the same layout")
    ap.add_argument("--depth", type=int, default=None,
                    help="with --layouts: blocks to keep (default: the preset's 48); the bf16 error of each layout "
                         "against 1 GPU after that many blocks")
    ap.add_argument("--fp32-reference", action="store_true",
                    help="with --layouts: also run the 1-GPU step eager in fp32 on the same weights; every row "
                         "gets its eager bf16 output's relative error against it (rel_err_eager_vs_fp32), the 1-GPU "
                         "row included: how far bf16 rounding alone moves each layout")
    ap.add_argument("--profile", action="store_true",
                    help="with --layouts: rank 0's GPU kernel time per category for one step of each layout")
    ap.add_argument("--profile-steps", type=int, default=1,
                    help="with --profile: profile this many steps back to back (totals, not per step)")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="with --layouts: after one warm step, collect and gc.freeze() in every rank before timing "
                         "(each row reports every rank's collector passes during the timed steps either way)")
    ap.add_argument("--gpu-budget-gib", type=float, default=None,
                    help="cap each rank's allocator at this many GiB (torch.cuda.set_per_process_memory_fraction)")
    a = ap.parse_args(argv)
    if a.layouts or a.gpus:
        return main_parallel(a)

    on_gpu = torch.cuda.is_available()
    dev = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32  # CPU: smoke runs of the tiny preset only
    dit = build_dit(a.preset, dev, dtype)
    dit.joint_attention = LocalJointAttention(a.attention)
    x, sigma, y, mask = cfg_inputs(dit.cfg, a.frames, a.height, a.width, a.cond_tokens, dev, dtype)
    tokens = x.shape[2] * x.shape[3] * x.shape[4] // dit.cfg.patch_size**2
    rows, outputs = [], {}

    def run(name, fn):
        if on_gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            ms, all_ms = time_cuda(fn, a.warmup, a.iters)
            outputs[name] = fn().float()
        rows.append({"engine": name, "ms_per_cfg_step": round(ms, 1), "peak_gib": round(peak_gib(), 2),
                     "all_ms": [round(t, 1) for t in all_ms]})
        print(f"{name}: {ms:.1f} ms/step (peak {peak_gib():.2f} GiB)", flush=True)

    baseline = None
    if not a.no_diffusers:
        ref = diffusers_twin(dit)
        run("diffusers", lambda: ref(x, y, (1 - sigma) * 1000, mask, return_dict=False)[0])
        baseline = rows[-1]
        del ref
        gc.collect()
    run("ours-eager", lambda: dit(x, sigma, y, mask))
    if not a.no_compile:
        dit.compile_blocks()
        run("ours-compiled", lambda: dit(x, sigma, y, mask))
    for r in rows:
        if baseline:
            r["speedup_vs_diffusers"] = round(baseline["ms_per_cfg_step"] / r["ms_per_cfg_step"], 3)
        ref_out = outputs.get("diffusers")
        if ref_out is not None:
            r["rel_err_vs_diffusers"] = rel_err(outputs[r["engine"]], ref_out)
    print_table(rows, ["engine", "ms_per_cfg_step", "peak_gib", "speedup_vs_diffusers", "rel_err_vs_diffusers"])
    write_record(a.json, "dit", rows, baseline, {
        "shape": {"frames": a.frames, "height": a.height, "width": a.width, "visual_tokens": tokens,
                  "batch": 2, "cond_tokens": a.cond_tokens, "preset": a.preset},
        "attention": a.attention,
    })
    return 0


def main_parallel(a: argparse.Namespace) -> int:
    """Per-step latency of sharded layouts against one GPU, same weights and inputs, one invocation.

    Each layout is timed twice: `ms_per_cfg_step`, the median of single steps each followed by a sync, and
    `ms_per_cfg_step_chained`, `--iters` steps back to back (as the sampler runs them) divided by their number."""
    from mochi_runtime.parallel.topology import Layout
    from mochi_runtime.parallel.topology import ATTENTION_ENGINES

    if a.layouts:
        layouts = [Layout.parse(t) for t in a.layouts.split(",")]
    else:
        layouts = [Layout(2 if a.cfg_parallel else 1, a.ulysses, a.ring)]
        if layouts[0].world != a.gpus:
            raise SystemExit(f"--gpus {a.gpus} != world of {layouts[0].describe()}")
    opts = {"preset": a.preset, "frames": a.frames, "height": a.height, "width": a.width,
            "cond_tokens": a.cond_tokens, "attention": a.attention, "compile": not a.no_compile,
            "compile_parts": [p for p in a.compile_parts.split(",") if p],
            "warmup": a.warmup, "iters": a.iters, "weights": "replicated", "budget_gib": a.gpu_budget_gib,
            "profile": a.profile, "profile_steps": a.profile_steps, "depth": a.depth,
            "fp32_reference": a.fp32_reference, "gc_freeze": a.gc_freeze}
    modes = [m for m in a.weights.split(",") if m]
    engines = [e for e in a.engines.split(",") if e]
    unknown = [e for e in engines if e not in ATTENTION_ENGINES]  # refused before any GPU work
    if unknown:
        raise SystemExit(f"--engines: {', '.join(map(repr, unknown))} not among {', '.join(ATTENTION_ENGINES)}")
    base = run_layout(Layout(1, 1, 1), opts)
    print(f"1 GPU: {base['ms']:.1f} ms/step ({base['chained_ms']:.1f} back to back), steps "
          f"{[round(t, 1) for t in base['all_ms']]}, collector passes {base['gc']}"
          + (f"; kernels {base['profile']['by_category_ms']}, GPU idle {base['profile']['idle_ms']} ms"
             if base.get("profile") else ""), flush=True)
    rows = [{"layout": "1x1x1", "gpus": 1, "weights": "replicated", "ms_per_cfg_step": round(base["ms"], 1),
             "speedup": 1.0, "ms_per_cfg_step_chained": round(base["chained_ms"], 1), "speedup_chained": 1.0,
             "rel_err_vs_1gpu": 0.0, "rel_err_eager_vs_1gpu": 0.0,
             "peak_gib_per_gpu": [round(p, 2) for p in base["peak_gib"]],
             "weight_gib_per_gpu": [round(p, 2) for p in base["weight_gib"]],
             "all_ms": [round(t, 1) for t in base["all_ms"]], "gc_per_rank": base["gc"],
             "profile_rank0": base.get("profile")}]
    if base.get("v_fp32") is not None:
        rows[0]["rel_err_eager_vs_fp32"] = rel_err(base["v_eager"], base["v_fp32"])
        print(f"1 GPU bf16 vs fp32 (eager): {rows[0]['rel_err_eager_vs_fp32']:.2e}", flush=True)
    earlier = {("1x1x1", "replicated", "ours"): base}  # a layout named twice runs in fresh processes twice:
    # how far apart the two runs land is the run-to-run reproducibility of that layout
    for lay in layouts:
        for mode in modes:
            if mode.startswith("sharded-sp") and lay.cfg == 1:
                continue  # the same as sharded over the world
            first_v = None
            for engine in engines:
                name = lay.name()
                what = f"{lay.describe()} {mode}" + (f" [{engine}]" if len(engines) > 1 else "")
                try:
                    r = run_layout(lay, dict(opts, weights=mode, engine=engine))
                except RuntimeError as e:  # a crashed layout is recorded, the others still run
                    r = {"error": str(e)}
                if "error" in r:
                    rows.append({"layout": name, "gpus": lay.world, "weights": mode, "engine": engine,
                                 "error": r["error"]})
                    print(f"{what}: {r['error']}", flush=True)
                    continue
                err = rel_err(r["v"], base["v"])
                row = {"layout": name, "gpus": lay.world, "weights": mode, "engine": engine,
                       "ms_per_cfg_step": round(r["ms"], 1), "speedup": round(base["ms"] / r["ms"], 3),
                       "ms_per_cfg_step_chained": round(r["chained_ms"], 1),
                       "speedup_chained": round(base["chained_ms"] / r["chained_ms"], 3),
                       "rel_err_vs_1gpu": err, "rel_err_eager_vs_1gpu": rel_err(r["v_eager"], base["v_eager"]),
                       "peak_gib_per_gpu": [round(p, 2) for p in r["peak_gib"]],
                       "weight_gib_per_gpu": [round(p, 2) for p in r["weight_gib"]],
                       "all_ms": [round(t, 1) for t in r["all_ms"]], "gc_per_rank": r["gc"],
                       "profile_rank0": r.get("profile")}
                if base.get("v_fp32") is not None:
                    row["rel_err_eager_vs_fp32"] = rel_err(r["v_eager"], base["v_fp32"])
                first = earlier.setdefault((name, mode, engine), r)
                if first is not r:
                    row["rel_err_vs_earlier_run"] = rel_err(r["v"], first["v"])
                    row["rel_err_eager_vs_earlier_run"] = rel_err(r["v_eager"], first["v_eager"])
                if first_v is None:
                    first_v = r
                else:  # this engine against the first one named: same layout, weights and inputs
                    row["rel_err_vs_first_engine"] = rel_err(r["v"], first_v["v"])
                    row["rel_err_eager_vs_first_engine"] = rel_err(r["v_eager"], first_v["v_eager"])
                rows.append(row)
                if r.get("profile"):
                    p = r["profile"]
                    print(f"{what} rank 0 kernels: {p['by_category_ms']}, GPU idle {p['idle_ms']} ms "
                          f"(longest before: {p['idle_before'][:3]})", flush=True)
                print(f"{what}: steps {row['all_ms']} ms; collector passes per rank {r['gc']}", flush=True)
                print(f"{what}: {r['ms']:.1f} ms/step, {base['ms'] / r['ms']:.3f}x; back to back "
                      f"{r['chained_ms']:.1f} ms/step, {row['speedup_chained']:.3f}x; rel err {err:.2e} "
                      f"(eager {row['rel_err_eager_vs_1gpu']:.2e})"
                      + (f", vs {engines[0]} {row['rel_err_vs_first_engine']:.2e} (eager "
                         f"{row['rel_err_eager_vs_first_engine']:.2e})" if "rel_err_vs_first_engine" in row else "")
                      + (f", vs its earlier run {row['rel_err_vs_earlier_run']:.2e}"
                         if "rel_err_vs_earlier_run" in row else ""), flush=True)
    print_table(rows, ["layout", "gpus", "weights", "engine", "ms_per_cfg_step", "speedup",
                       "ms_per_cfg_step_chained", "speedup_chained", "rel_err_vs_1gpu",
                       "rel_err_eager_vs_1gpu", "rel_err_eager_vs_fp32", "rel_err_vs_first_engine",
                       "rel_err_vs_earlier_run", "peak_gib_per_gpu",
                       "weight_gib_per_gpu"])
    write_record(a.json, "dit-parallel", rows, rows[0], {
        "depth": a.depth,
        "shape": {"frames": a.frames, "height": a.height, "width": a.width, "preset": a.preset,
                  "cond_tokens": a.cond_tokens},
        "compile": not a.no_compile, "compile_parts": opts["compile_parts"], "engines": engines,
        "profile_steps": a.profile_steps if a.profile else None,
        "attention": a.attention,
        "gpu_budget_gib": a.gpu_budget_gib,
    })
    return 0
