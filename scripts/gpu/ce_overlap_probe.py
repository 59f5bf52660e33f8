"""Can the Ulysses K/V exchange hide behind the Q projection? NCCL against copy engines (#3).

On 2x H100 (2026-11-28, scripts/gpu/kv_first_2gpu.sh) posting the K/V all-to-alls before computing Q did
overlap ~8 ms a step, but NCCL's kernels then ran 5 ms longer beside the matmuls (both want every SM). Copy
engines take no SMs. This times one step's 48 forward exchanges of cfg 2 x ulysses 2 (one Ulysses pair: 1
sample, 7,155 tokens, 12 heads of 128 per rank after the swap) with the projection matmuls they follow:

    serial_nccl   Q/K/V projection (one matmul), then one list all-to-all per tensor (as the step does now)
    overlap_nccl  K/V matmul, K/V all-to-alls posted, Q matmul beside them, Q all-to-all, wait
    serial_ce     one matmul, then each rank pushes its blocks into the peers' symmetric receive buffers with
                  copies on a side stream, then a barrier
    overlap_ce    K/V matmul, K/V pushes on the side stream beside the Q matmul, Q push, barrier

plus the matmuls alone. The received blocks of every method are compared with NCCL's. Prints a table, writes
JSON (card, date, command, rows).

    python scripts/gpu/ce_overlap_probe.py out.json
"""
from __future__ import annotations

import json
import sys
import warnings
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mochi_runtime.bench.common import record_header, rows_to_rank0, time_cuda
from mochi_runtime.parallel.topology import free_port, join_loopback_group

D, DX, BLOCKS = 128, 3072, 48
N, HU = 7155, 12  # tokens per rank, heads per rank after the swap (cfg 2 x ulysses 2 at 848x480x49)


def _rank(rank: int, world: int, port: int, q) -> None:
    from torch.distributed import _symmetric_memory as symm_mem

    join_loopback_group(rank, world, port, True, timedelta(minutes=5))
    dev = torch.device("cuda", rank)
    group, U, me = dist.group.WORLD, world, rank
    g = torch.Generator(device=dev).manual_seed(rank)
    x = torch.randn(N, DX, device=dev, dtype=torch.bfloat16, generator=g)
    w_qkv = torch.randn(3 * DX, DX, device=dev, dtype=torch.bfloat16, generator=g) / DX ** 0.5
    w_q, w_kv = w_qkv[:DX], w_qkv[DX:]
    src = torch.randn(3, U, N, HU, D, device=dev, dtype=torch.bfloat16, generator=g)  # [Q/K/V, destination, ...]
    recv = torch.empty(3, U * N, HU, D, device=dev, dtype=torch.bfloat16)  # NCCL's landing buffer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        symm_mem.enable_symm_mem_for_group(group.group_name)  # needed before torch 2.9, a no-op after
    sym = symm_mem.empty(3, U * N, HU, D, device=dev, dtype=torch.bfloat16)  # peers push their blocks here
    handle = symm_mem.rendezvous(sym, group)
    peers = [handle.get_buffer(p, tuple(sym.shape), sym.dtype) for p in range(U)]
    side = torch.cuda.Stream(dev)

    def a2a(t: int):
        return dist.all_to_all([recv[t, u * N:(u + 1) * N] for u in range(U)], [src[t, u] for u in range(U)],
                               group=group, async_op=True)

    def push(tensors) -> None:  # on the side stream: this rank's block u of each tensor into rank u's buffer
        for t in tensors:
            for u in range(U):
                peers[u][t, me * N:(me + 1) * N].copy_(src[t, u])

    def serial_nccl():
        for _ in range(BLOCKS):
            x @ w_qkv.t()
            for w in [a2a(t) for t in range(3)]:
                w.wait()

    def overlap_nccl():
        for _ in range(BLOCKS):
            x @ w_kv.t()
            works = [a2a(1), a2a(2)]
            x @ w_q.t()
            works.append(a2a(0))
            for w in works:
                w.wait()

    def ce(overlap: bool):
        main = torch.cuda.current_stream()
        for _ in range(BLOCKS):
            x @ (w_kv if overlap else w_qkv).t()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                push((1, 2) if overlap else (0, 1, 2))
            if overlap:
                x @ w_q.t()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    push((0,))
            with torch.cuda.stream(side):
                handle.barrier(channel=0)  # every peer's pushes into this rank have landed
            main.wait_stream(side)

    def matmuls():
        for _ in range(BLOCKS):
            x @ w_qkv.t()

    methods = {"matmuls_only": matmuls, "serial_nccl": serial_nccl, "overlap_nccl": overlap_nccl,
               "serial_ce": lambda: ce(False), "overlap_ce": lambda: ce(True)}
    rows, reference = [], None
    for name, fn in methods.items():
        recv.zero_()
        sym.zero_()
        dist.barrier()
        ms, all_ms = time_cuda(fn, 1, 5)
        torch.cuda.synchronize()
        got = sym if name.endswith("_ce") else recv
        digest = None if name == "matmuls_only" else float(got.float().sum())
        if name == "serial_nccl":
            reference = got.clone()
        same = None
        if reference is not None and name not in ("matmuls_only", "serial_nccl"):
            same = bool(torch.equal(got, reference))
        rows.append({"method": name, "rank": rank, "ms_per_step": round(ms, 2),
                     "all_ms": [round(t, 2) for t in all_ms], "equal_to_serial_nccl": same, "digest": digest})
    rows_to_rank0(rows, q)


def main() -> None:
    out = sys.argv[1]
    world = 2
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, q)) for r in range(world)]
    for p in procs:
        p.start()
    rows = q.get(timeout=240)
    for p in procs:
        p.join(timeout=30)
    record = {**record_header("python scripts/gpu/ce_overlap_probe.py " + " ".join(sys.argv[1:])),
              "shape": {"tokens_per_rank": N, "heads_after_swap": HU, "head_dim": D, "blocks": BLOCKS}, "rows": rows}
    by = {}
    for r in rows:
        by.setdefault(r["method"], []).append(r)
    for name, rs in by.items():
        print(f"{name:14s} slowest rank {max(r['ms_per_step'] for r in rs):7.2f} ms / 48 blocks  "
              f"equal to serial_nccl: {[r['equal_to_serial_nccl'] for r in rs]}", flush=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
