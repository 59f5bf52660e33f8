"""How the projections write the Ulysses exchange layout (#3): kernels and time of the compiled pre_attention.

At cfg 2 x ulysses 2 (4 GPUs, 49 frames) rank 0 spends 7.9 ms a step in the QK-norm + RoPE kernel and 3.9 ms
in a separate copy that turns its output into the exchange layout (torch.stack + permute + contiguous). This
compiles one full-size block's pre_attention (random bf16 weights) at a rank's shape with each way of writing
the layout, checks they give the same values, and times 48 calls (one step's blocks) with the kernel list.

    python scripts/gpu/exchange_layout_probe.py out.json [tokens per rank] [samples] [ulysses degree]
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from mochi_runtime.bench.common import record_header, time_cuda
from mochi_runtime.bench.dit import build_dit
from mochi_runtime.dit import apply_rope, cond_linear, modulated_rmsnorm


def exchange_layout(attn, q_x, k_x, v_x, b: int, n: int, u: int, variant: str):
    h = attn.num_heads
    if variant == "stack_then_permute":  # as dit.py writes it (2026-11-28)
        visual = torch.stack([q_x, k_x, v_x]).view(3, b, n, u, h // u, -1)
        return visual.permute(0, 1, 3, 2, 4, 5).contiguous().unbind(0)
    blocks = [t.view(b, n, u, h // u, -1).transpose(1, 2) for t in (q_x, k_x, v_x)]
    if variant == "permute_then_stack":  # one buffer, each tensor written in place by its producer
        return torch.stack(blocks).unbind(0)
    if variant == "separate":  # one buffer per tensor
        return tuple(t.contiguous() for t in blocks)
    raise ValueError(variant)


def pre_attention(block, x, c, y, rope, u: int, variant: str):
    attn = block.attn
    c = F.silu(c)
    scale_msa_x, gate_msa_x, scale_mlp_x, gate_mlp_x = cond_linear(block.mod_x, c).chunk(4, dim=1)
    mod_y = cond_linear(block.mod_y, c)
    mods_y = mod_y.chunk(4, dim=1) if block.update_y else (mod_y,)
    x = modulated_rmsnorm(x, scale_msa_x, block.eps)
    y = modulated_rmsnorm(y, mods_y[0], block.eps)
    b, n, _ = x.shape
    q_x, k_x, v_x = attn.qkv_x(x).view(b, n, 3, attn.num_heads, -1).unbind(2)
    q_x = apply_rope(attn.q_norm_x(q_x), *rope)
    k_x = apply_rope(attn.k_norm_x(k_x), *rope)
    q_y, k_y, v_y = attn.qkv_y(y).view(b, y.shape[1], 3, attn.num_heads, -1).unbind(2)
    q_y, k_y = attn.q_norm_y(q_y), attn.k_norm_y(k_y)
    visual = exchange_layout(attn, q_x, k_x, v_x, b, n, u, variant)
    return (*visual, *(t.transpose(1, 2) for t in (q_y, k_y, v_y))), (gate_msa_x, scale_mlp_x, gate_mlp_x), mods_y[1:]


def kernels(fn) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    rows = [{"name": e.key[:100], "calls": e.count, "us": round(e.device_time_total, 1)}
            for e in prof.key_averages() if e.device_time_total > 0]
    return sorted(rows, key=lambda r: -r["us"])


def main() -> None:
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 7155
    b = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    u = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    gpu = torch.cuda.is_available()  # on CPU: the tiny preset, a smoke run of the script itself
    dev = torch.device("cuda" if gpu else "cpu")
    dit = build_dit("mochi-1-preview" if gpu else "tiny", dev, torch.bfloat16, depth=2)
    block, cfg = dit.blocks[0], dit.cfg  # a full block (it updates the text stream too)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(b, n, cfg.hidden_size_x, device=dev, dtype=torch.bfloat16, generator=g)
    y = torch.randn(b, 256, cfg.hidden_size_y, device=dev, dtype=torch.bfloat16, generator=g)
    c = torch.randn(b, cfg.hidden_size_x, device=dev, dtype=torch.bfloat16, generator=g)
    rope = tuple(t[:n].contiguous() for t in dit.rope(25, 30, 53, dev))
    record = {**record_header("python scripts/gpu/exchange_layout_probe.py " + " ".join(sys.argv[1:])),
              "shape": {"samples": b, "tokens": n, "ulysses": u}, "rows": []}
    first = None
    for variant in ("stack_then_permute", "permute_then_stack", "separate"):
        fn = torch.compile(lambda x, c, y, variant=variant: pre_attention(block, x, c, y, rope, u, variant),
                           dynamic=False)
        with torch.inference_mode():
            qkv = fn(x, c, y)[0]
            same = None if first is None else all(torch.equal(a, b_) for a, b_ in zip(qkv, first))
            first = first or [t.clone() for t in qkv]
            ms, all_ms = time_cuda(lambda: [fn(x, c, y) for _ in range(48)], 2, 5)
            ks = kernels(lambda: fn(x, c, y))
        row = {"variant": variant, "ms_per_48_calls": round(ms, 2), "all_ms": [round(t, 2) for t in all_ms],
               "equal_to_first": same, "kernels": ks}
        record["rows"].append(row)
        print(f"{variant:20s} {ms:7.2f} ms / 48 calls  equal={same}", flush=True)
        for k in ks[:8]:
            print(f"    {k['us']:9.1f} us {k['calls']:3d}  {k['name']}", flush=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
