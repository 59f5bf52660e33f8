"""Does cuDNN's fp8 attention (mochi_runtime/fp8_attention.py) run, how close is it, and how fast? (#9)

At the 49-frame step's shape (24 heads, 14,374 = visual + valid text tokens, head dim 128, QK-normed inputs):
the fp8 output against bf16 cuDNN SDPA and against fp32 attention, next to the CPU-tested model of the graph
(emulated_fp8_attention, run here on the GPU); then TFLOP/s of bf16 SDPA, of the fp8 kernel alone (inputs already
e4m3) and of the whole call (scales, quantisation, kernel, widening). Prints and writes JSON.

    python scripts/gpu/fp8_attention_probe.py out.json
"""
from __future__ import annotations

import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mochi_runtime.bench.common import record_header, rel_err
from mochi_runtime.fp8_attention import CudnnFp8Attention, emulated_fp8_attention

H, D, S = 24, 128, 14374


def median_ms(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(start, end))[iters // 2]


def main() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    q, k, v = (torch.randn(1, H, S, D, generator=g, device=dev) for _ in range(3))
    q, k = (x / x.norm(dim=-1, keepdim=True) * math.sqrt(D) for x in (q, k))
    q, k, v = (x.to(torch.bfloat16) for x in (q, k, v))
    out = {**record_header("python " + " ".join(sys.argv)), "shape": [1, H, S, D]}
    fp8 = CudnnFp8Attention(dev)
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        ref_bf16 = F.scaled_dot_product_attention(q, k, v)
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())  # fp32 (math / efficient kernel)
    got = fp8(q, k, v)
    out["rel_err"] = {"fp8 vs fp32": rel_err(got, exact), "bf16 vs fp32": rel_err(ref_bf16, exact),
                      "fp8 vs bf16": rel_err(got, ref_bf16),
                      # the model materialises the scores: 4 heads are enough to compare
                      "model of the graph vs fp32 (4 heads)": rel_err(
                          emulated_fp8_attention(q[:, :4], k[:, :4], v[:, :4]), exact[:, :4])}
    flop = 4 * S * S * H * D
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        bf16_ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v))
    call_ms = median_ms(lambda: fp8(q, k, v))
    plan = fp8._plan(tuple(q.shape), tuple(k.shape))
    pack = fp8.variant_pack(plan, fp8.to_e4m3(q, k, v), torch.empty(q.shape, dtype=torch.float8_e4m3fn, device=dev))
    kernel_ms = median_ms(lambda: plan.graph.execute(pack, plan.workspace, handle=fp8.handle))
    out["tflops"] = {"bf16 cuDNN SDPA": round(flop / bf16_ms / 1e9, 1), "fp8 kernel": round(flop / kernel_ms / 1e9, 1),
                     "fp8 whole call": round(flop / call_ms / 1e9, 1)}
    out["ms"] = {"bf16": round(bf16_ms, 3), "fp8 kernel": round(kernel_ms, 3), "fp8 call": round(call_ms, 3)}
    print(json.dumps(out, indent=1), flush=True)
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
