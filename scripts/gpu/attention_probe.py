"""Why does the DiT's attention run below the cuDNN SDPA rate measured alone? (#9)

Times cuDNN SDPA at the step's shapes in the layouts the DiT hands it (a slice of one [B, H, N+L, D] buffer;
token-major views) against contiguous tensors, sustained and interleaved with the block's big matmuls.
Prints TFLOP/s per case and writes JSON.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mochi_runtime.bench.common import record_header

H, D, N = 24, 128, 14310



def rate(fn, seq: int, iters: int = 20, between=None) -> float:
    start = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for _ in range(3):
        fn()
    for i in range(iters):
        if between is not None:
            between()
        start[i].record()
        fn()
        end[i].record()
    torch.cuda.synchronize()
    ms = sorted(s.elapsed_time(e) for s, e in zip(start, end))[iters // 2]
    return round(4 * seq * seq * H * D / (ms / 1000) / 1e12, 1)


def main() -> None:
    out = {**record_header("python " + " ".join(sys.argv)), "cases": {}}
    dev, dt = "cuda", torch.bfloat16
    rnd = lambda *s: torch.randn(*s, device=dev, dtype=dt)  # noqa: E731
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for seq in (N, N + 64, N + 256):
            q, k, v = rnd(1, H, seq, D), rnd(1, H, seq, D), rnd(1, H, seq, D)
            out["cases"][f"contiguous S={seq}"] = rate(lambda: F.scaled_dot_product_attention(q, k, v), seq)
        seq = N + 64
        bufs = [rnd(2, H, N + 256, D) for _ in range(3)]
        q, k, v = (b[1:2, :, :seq] for b in bufs)
        out["cases"][f"slice of [2,H,N+256,D] S={seq}"] = rate(lambda: F.scaled_dot_product_attention(q, k, v), seq)
        tq, tk, tv = (rnd(1, seq, H, D).transpose(1, 2) for _ in range(3))
        out["cases"][f"token-major view S={seq}"] = rate(lambda: F.scaled_dot_product_attention(tq, tk, tv), seq)
        q, k, v = rnd(1, H, seq, D), rnd(1, H, seq, D), rnd(1, H, seq, D)
        out["cases"][f"sustained 200 S={seq}"] = rate(lambda: F.scaled_dot_product_attention(q, k, v), seq, iters=200)
        a, w = rnd(2 * N, 3072), rnd(3072, 2 * 8192)
        mm = lambda: [a @ w for _ in range(4)]  # noqa: E731
        out["cases"][f"between 4 MLP matmuls S={seq}"] = rate(
            lambda: F.scaled_dot_product_attention(q, k, v), seq, iters=40, between=mm)
        # the DiT's inputs are layer-normed (QK-norm): softmax sharper or flatter does not change a flash kernel's
        # work, but check values of the DiT's scale anyway
        qn = torch.nn.functional.normalize(q.float(), dim=-1).to(dt) * D ** 0.5
        kn = torch.nn.functional.normalize(k.float(), dim=-1).to(dt) * D ** 0.5
        out["cases"][f"rms-normed q,k S={seq}"] = rate(lambda: F.scaled_dot_product_attention(qn, kn, v), seq)
    for name, r in out["cases"].items():
        print(f"{name:40s} {r:8.1f} TFLOP/s")
    if len(sys.argv) > 1:
        open(sys.argv[1], "w").write(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
