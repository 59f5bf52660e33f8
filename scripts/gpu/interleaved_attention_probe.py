"""Does cuDNN SDPA read the Ulysses exchange's Q/K/V-interleaved rows as they are? (#3, 2026-11-28)

Since the exchange sends each (sample, destination) block as one message, a rank's received Q, K and V are
the three slots of one [rows, 3, H/U, D] buffer: row stride 3*H/U*D instead of H/U*D. This times cuDNN SDPA
at cfg 2 x ulysses 2's per-rank shape (12 heads, 14,310 visual + 256 text rows) on such views against the
dense token-major views the step passed before, checks the outputs are equal and that the output comes back
token-major (the step sends it without a copy only then). Prints one line per case and writes JSON.

    python scripts/gpu/interleaved_attention_probe.py out.json
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from mochi_runtime.bench.common import record_header, time_cuda

HU, D, ROWS = 12, 128, 14310 + 256


def main() -> None:
    record = {**record_header("python " + " ".join(sys.argv)), "heads": HU, "rows": ROWS, "cases": {}}
    g = torch.Generator(device="cuda").manual_seed(0)
    inter = torch.randn(ROWS, 3, HU, D, device="cuda", dtype=torch.bfloat16, generator=g)
    dense = [inter[:, t].contiguous() for t in range(3)]  # [rows, hu, D] each: the layout before
    cases = {"dense token-major": [t.transpose(0, 1)[None] for t in dense],
             "interleaved": [inter[:, t].transpose(0, 1)[None] for t in range(3)]}
    outs = {}
    for name, (q, k, v) in cases.items():
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ms, _ = time_cuda(lambda: F.scaled_dot_product_attention(q, k, v), 3, 20)
            o = F.scaled_dot_product_attention(q, k, v)
        outs[name] = o
        token_major = o[0].transpose(0, 1).is_contiguous()
        record["cases"][name] = {"q_stride": list(q.stride()), "ms": round(ms, 3),
                                 "tflops": round(4 * ROWS * ROWS * HU * D / ms / 1e9, 1),
                                 "output_token_major": token_major}
        print(f"{name:20s} q stride {tuple(q.stride())}  {ms:7.3f} ms  output token-major {token_major}", flush=True)
    record["bit_equal"] = bool(torch.equal(outs["dense token-major"], outs["interleaved"]))
    print("outputs bit-equal:", record["bit_equal"], flush=True)
    with open(sys.argv[1], "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
