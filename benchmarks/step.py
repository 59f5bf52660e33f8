"""One DiT CFG step against the card's floor, a kernel-time breakdown, and the fp8 mode.
In docs/benchmarks.md: "One GPU: the DiT step", against the floor and fp8 (1x H100).

    python -m benchmarks step --frames 49,163 --fp8 --profile --json out.json

The floor is measured in the same process: the bf16 (and fp8) dense matmul rate
on 8192^3 products and the SDPA rate at the step's own attention shape; the
step's FLOPs (linears of both streams + joint attention, batch 2) divided by
those rates is the time a perfect implementation would need. Ours runs
compiled (the GPU default), then with fp8 block linears (`--dtype fp8`), whose
output is compared with the bf16 one on the same weights and inputs.
The profile sorts every GPU kernel of one step into matmul / attention /
fused pointwise (norms, modulation, RoPE, gating) / copies / communication / other.
"""
from __future__ import annotations

import argparse
import gc
import time

import torch
import torch.nn.functional as F

from mochi_runtime.ops.attention import LocalJointAttention
from mochi_runtime.models.config import DiTConfig, get_preset
from .common import add_shape_args, peak_gib, print_table, rel_err, time_cuda, write_record
from .weights import build_dit, cfg_inputs

CATEGORIES = ("matmul", "attention", "pointwise (triton)", "copies", "communication", "other")


def step_flops(cfg: DiTConfig, visual: int, text: int, batch: int = 2) -> dict[str, float]:
    """Forward FLOPs of one CFG step: linears of both streams and the joint attention (2 per MAC)."""
    dx, dy, hx, hy = cfg.hidden_size_x, cfg.hidden_size_y, cfg.mlp_hidden_x, cfg.mlp_hidden_y
    per_block_x = dx * 3 * dx + dx * dx + dx * 2 * hx + hx * dx  # qkv, proj, SwiGLU in/out
    per_block_y = dy * 3 * dx + dx * dy + dy * 2 * hy + hy * dy
    linear = 2 * cfg.depth * (visual * per_block_x + text * per_block_y)
    s = visual + text
    attention = 4 * cfg.depth * s * s * cfg.hidden_size_x  # QK^T and PV over all heads
    return {"linear": batch * linear, "attention": batch * attention}


def matmul_tflops(dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    if dtype == torch.float8_e4m3fn:
        a8, b8 = a.to(dtype), b.to(dtype).t().contiguous().t()
        one = torch.ones((), device="cuda")
        fn = lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
    else:
        fn = lambda: a @ b  # noqa: E731
    ms, _ = time_cuda(fn, 3, iters)
    return 2 * n**3 / (ms / 1000) / 1e12


def sdpa_tflops(cfg: DiTConfig, seq: int, iters: int = 10) -> float:
    """cuDNN SDPA (the kernel our blocks use on Hopper) at [1, heads, seq, head_dim]."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, cfg.num_heads, seq, cfg.head_dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ms, _ = time_cuda(lambda: F.scaled_dot_product_attention(q, k, v), 3, iters)
    return 4 * seq * seq * cfg.hidden_size_x / (ms / 1000) / 1e12


def categorise(name: str) -> str:
    n = name.lower()
    if "nccl" in n:
        return "communication"
    if any(k in n for k in ("fmha", "sdpa", "flash", "attention", "attn")):
        return "attention"
    # triton_tem: inductor's GEMM templates (max_autotune), their epilogue fused in
    if n.startswith("triton_tem") or any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "cublas", "scaled_mm",
                                                            "splitk")):
        return "matmul"
    if n.startswith("triton") or n.startswith("qk_norm_rope"):  # inductor's kernels, and qk_rope's pass
        return "pointwise (triton)"
    if any(k in n for k in ("copy", "memcpy", "memset", "cat", "fill")):
        return "copies"
    return "other"


def idle_gaps(prof, min_us: float = 5.0, top: int = 8) -> tuple[float, list[dict]]:
    """Time the GPU ran no kernel between the step's first and last, and which kernels it waited to start
    (summed over gaps longer than min_us): where a step's wall time exceeds its kernel time."""
    from torch.autograd import DeviceType

    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if getattr(e, "device_type", None) == DeviceType.CUDA
                   and not getattr(e, "is_user_annotation", False) and not e.name.startswith("nccl:"))
    idle, waits, busy_until, before = 0.0, {}, None, ""
    for start, end, name in spans:
        if busy_until is not None and start - busy_until > min_us:
            gap = start - busy_until
            idle += gap
            key = f"{before[:50]} -> {name[:50]}"
            total, count = waits.get(key, (0.0, 0))
            waits[key] = (total + gap, count + 1)
        if busy_until is None or end > busy_until:
            busy_until, before = end, name
    ranked = sorted(waits.items(), key=lambda kv: -kv[1][0])[:top]
    return round(idle / 1000, 2), [{"ms": round(t / 1000, 2), "gaps": c, "between": k} for k, (t, c) in ranked]


def profile_step(fn) -> dict:
    """GPU kernel time of one call of fn, by category (ms), plus the top kernels, and the host operators that took
    the most CPU time: when the step's wall time exceeds its kernel time, the GPU waited on something, and the
    host side says whether it was the launching thread."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1000
    by_cat = {c: 0.0 for c in CATEGORIES}
    kernels, host = [], []
    for evt in prof.key_averages():
        if getattr(evt, "device_type", None) != DeviceType.CUDA:
            if evt.self_cpu_time_total > 0:
                host.append((evt.self_cpu_time_total / 1000, evt.count, evt.key[:90]))
            continue
        if getattr(evt, "is_user_annotation", False) or evt.key.startswith("nccl:"):
            continue  # a range over kernels listed on their own (NCCL's `nccl:all_to_all` spans its SendRecv
            # kernel): counting it too would count the communication twice (records before 2026-11-27 20:00 did)
        us = getattr(evt, "self_device_time_total", None)
        if us is None:
            us = evt.self_cuda_time_total
        if us <= 0:
            continue
        by_cat[categorise(evt.key)] += us / 1000
        kernels.append((us / 1000, evt.count, evt.key[:90]))
    kernels.sort(reverse=True)
    total = sum(by_cat.values())
    host.sort(reverse=True)
    idle_ms, idle_top = idle_gaps(prof)
    return {"kernel_ms": round(total, 1), "profiled_wall_ms": round(wall_ms, 1), "idle_ms": idle_ms,
            "idle_before": idle_top,
            "host_self_ms": round(sum(ms for ms, _, _ in host), 1),
            "top_host_ops": [{"ms": round(ms, 2), "calls": c, "name": n} for ms, c, n in host[:12]],
            "by_category_ms": {k: round(v, 1) for k, v in by_cat.items()},
            "by_category_share": {k: round(v / total, 3) if total else 0.0 for k, v in by_cat.items()},
            "top_kernels": [{"ms": round(ms, 2), "calls": c, "name": n} for ms, c, n in kernels[:12]]}


COMPILE_OPTIONS = {"bf16+tuned": {"coordinate_descent_tuning": True}, "bf16+autotune": {"max_autotune": True}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks step")
    add_shape_args(ap, "49")
    ap.add_argument("--fp8", action="store_true", help="also time the fp8 mode (block linears in e4m3)")
    ap.add_argument("--fp8-attention", action="store_true",
                    help="also time fp8 linears + fp8 attention (cuDNN, needs nvidia-cudnn-frontend)")
    ap.add_argument("--tuned", action="store_true",
                    help="also time bf16 with inductor's coordinate-descent tuning of the compiled pointwise and "
                         "reduction kernels (their launch configs benchmarked on the card; longer compile)")
    ap.add_argument("--autotune", action="store_true",
                    help="also time bf16 compiled with inductor's max_autotune: its Triton GEMM templates are "
                         "benchmarked against cuBLAS per shape, and where one wins the following pointwise work is "
                         "fused into its epilogue (much longer compile)")
    ap.add_argument("--unfused-qk-rope", action="store_true",
                    help="also time bf16 with QK-norm + RoPE compiled by inductor instead of the fused Triton pass")
    ap.add_argument("--profile", action="store_true", help="kernel-time breakdown of one step per mode")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("the step benchmark needs a GPU")
    from mochi_runtime.ops.fp8 import quantize_blocks_, weight_bytes

    dev = torch.device("cuda")
    frames_list = [int(f) for f in a.frames.split(",") if f]
    cfg = get_preset(a.preset).dit
    rates = {"bf16_matmul_tflops": round(matmul_tflops(torch.bfloat16), 1),
             "fp8_matmul_tflops": round(matmul_tflops(torch.float8_e4m3fn), 1)}
    print(rates, flush=True)
    modes = (["bf16"] + (["bf16+inductor-qk"] if a.unfused_qk_rope else []) + (["bf16+tuned"] if a.tuned else [])
             + (["bf16+autotune"] if a.autotune else [])
             + (["fp8"] if a.fp8 else [])
             + (["fp8+attention"] if a.fp8_attention else []))
    rows, outputs = [], {}
    for mode in modes:
        dit = build_dit(a.preset, dev, torch.bfloat16)
        if mode.startswith("fp8"):
            quantize_blocks_(dit)
        if mode == "fp8+attention":
            dit.joint_attention = LocalJointAttention("fp8")
        if mode == "bf16+inductor-qk":
            dit.use_fused_qk_rope(False)
        weights_gib = weight_bytes(dit) / 2**30
        dit.compile_blocks(options=COMPILE_OPTIONS.get(mode))
        for frames in frames_list:
            x, sigma, y, mask = cfg_inputs(cfg, frames, a.height, a.width, a.cond_tokens, dev, torch.bfloat16)
            visual = x.shape[2] * x.shape[3] * x.shape[4] // cfg.patch_size**2
            flops = step_flops(cfg, visual, cfg.t5_token_length)
            key = f"sdpa_tflops_{frames}f"
            if key not in rates:
                rates[key] = round(sdpa_tflops(cfg, visual + cfg.t5_token_length), 1)
            floor_ms = 1000 * (flops["linear"] / (rates["bf16_matmul_tflops"] * 1e12)
                               + flops["attention"] / (rates[key] * 1e12))
            fn = lambda: dit(x, sigma, y, mask)  # noqa: E731
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            with torch.inference_mode():
                ms, all_ms = time_cuda(fn, a.warmup, a.iters)
                out = fn().float()
                prof = profile_step(fn) if a.profile else None
            row = {"frames": frames, "mode": mode, "ms_per_cfg_step": round(ms, 1),
                   "bf16_floor_ms": round(floor_ms, 1), "x_floor": round(ms / floor_ms, 3),
                   "linear_tflop": round(flops["linear"] / 1e12, 1),
                   "attention_tflop": round(flops["attention"] / 1e12, 1),
                   "weights_gib": round(weights_gib, 2), "peak_gib": round(peak_gib(), 2),
                   "all_ms": [round(t, 1) for t in all_ms]}
            if mode == "bf16":
                outputs[frames] = out.cpu()
            else:
                base = next(r for r in rows if r["frames"] == frames and r["mode"] == "bf16")
                ref = outputs[frames]
                row["vs_bf16"] = round(ms / base["ms_per_cfg_step"], 3)
                row["rel_err_vs_bf16"] = rel_err(out.cpu(), ref)
            if prof:
                row["profile"] = prof
                print(f"{frames}f {mode} profile: {prof['by_category_ms']} (kernels {prof['kernel_ms']} ms, GPU idle "
                      f"{prof['idle_ms']} ms; longest waits before: {prof['idle_before'][:4]})", flush=True)
            rows.append(row)
            print(f"{frames}f {mode}: {ms:.1f} ms/step, floor {floor_ms:.1f} ms ({ms / floor_ms:.2f}x), "
                  f"peak {row['peak_gib']} GiB", flush=True)
            del x, y, out
        del dit  # each mode builds its own model
        gc.collect()
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    print_table(rows, ["frames", "mode", "ms_per_cfg_step", "bf16_floor_ms", "x_floor", "vs_bf16",
                       "rel_err_vs_bf16", "weights_gib", "peak_gib"])
    write_record(a.json, "dit-step", rows, [r for r in rows if r["mode"] == "bf16"], {
        "rates": rates, "shape": {"frames": a.frames, "height": a.height, "width": a.width, "batch": 2,
                                  "cond_tokens": a.cond_tokens, "preset": a.preset},
        "floor": "linear FLOPs / bf16 matmul rate + attention FLOPs / cuDNN SDPA rate, both measured in this run",
    }, subcommand="step")
    return 0
