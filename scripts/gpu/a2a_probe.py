"""The Ulysses exchange alone, by transport and NCCL setting (#3: NCCL is 24 of 277 ms of a 4-GPU step).

One DiT step at 848x480x49 makes 48 block exchanges; each sends the visual Q, K, V blocks (token-major,
[n, H/U, D] per destination and sample, as `AsymmetricAttention.project(visual_split=U)` writes them) and
brings the attention output back. This times 48 such exchanges on the real sizes of a layout's Ulysses
groups, for each transport:

    nccl     what the step did until 2026-11-28: one list all-to-all per (tensor, sample) (`swap_blocks` below)
    single   the same bytes as one all_to_all_single per direction (the launch-count floor of NCCL; the
             step now sends one per sample, from Q/K/V-interleaved blocks: `parallel.usp.interleaved_blocks`)
    ce       copy engines: the sources live in symmetric memory, each rank pulls its blocks with
             cudaMemcpyAsync between barriers (no SMs taken from compute)

and, for NCCL, per environment setting (each in fresh processes: NCCL reads them at init). Prints a table
and writes JSON (card, date, command, rows).

    python scripts/gpu/a2a_probe.py out.json
"""
from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mochi_runtime.bench.common import environment, record_header, rows_to_rank0, time_cuda
from mochi_runtime.parallel.topology import free_port, join_loopback_group

D = 128
STEP_BLOCKS = 48
# Layout -> (Ulysses groups of a 4-rank world, samples per rank, tokens per rank, heads per rank after the swap)
PATTERNS = {
    "2x2x1": ([[0, 1], [2, 3]], 1, 7155, 12),
    "1x4x1": ([[0, 1, 2, 3]], 2, 3578, 6),
}
ENVS = {
    "default": {},
    "min_p2p_channels_32": {"NCCL_MIN_P2P_NCHANNELS": "32"},
    "min_channels_32": {"NCCL_MIN_NCHANNELS": "32", "NCCL_MIN_P2P_NCHANNELS": "32"},
    "nvl_chunk_2m": {"NCCL_P2P_NVL_CHUNKSIZE": str(2 << 20)},
    "buffsize_16m": {"NCCL_BUFFSIZE": str(16 << 20)},
    # registered buffers: NCCL writes straight into the peer's tensor instead of through its staging buffers
    "register_buffers": {"TORCH_NCCL_USE_TENSOR_REGISTER_ALLOCATOR_HOOK": "1"},
    "p2p_read": {"NCCL_P2P_READ_ENABLE": "1"},
    "p2p_cuda_memcpy": {"NCCL_P2P_USE_CUDA_MEMCPY": "1"},
}
# 2026-11-27, 4x H200: no setting beat the defaults (docs/benchmarks.md); A2A_SKIP_ENVS=a,b skips settings.
SKIP = tuple(os.environ.get("A2A_SKIP_ENVS", "").split(",")) if os.environ.get("A2A_SKIP_ENVS") else ()


def swap_blocks(exchanges, group) -> None:
    """Per exchange, (blocks to send, blocks to receive into), both listed by peer index over `group`: one list
    all-to-all each, straight between the given views (the step's exchange until 2026-11-28)."""
    for sends, recvs in exchanges:
        dist.all_to_all(list(recvs), [t.contiguous() for t in sends], group=group)


def _copy_engine_exchange(src, out, bufs, back, group, U: int, me: int, b: int, n: int):
    """The exchange with copy engines: sources in symmetric memory, each rank pulls its blocks."""
    import warnings

    from torch.distributed import _symmetric_memory as symm_mem

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        symm_mem.enable_symm_mem_for_group(group.group_name)  # needed before torch 2.9, a no-op after
    sym_src = symm_mem.empty(*src.shape, device=src.device, dtype=src.dtype)
    sym_src.copy_(src)
    sym_out = symm_mem.empty(*out.shape, device=out.device, dtype=out.dtype)
    sym_out.copy_(out)
    h_src = symm_mem.rendezvous(sym_src, group)
    h_out = symm_mem.rendezvous(sym_out, group)
    peer_src = [h_src.get_buffer(r, tuple(sym_src.shape), src.dtype) for r in range(U)]
    peer_out = [h_out.get_buffer(r, tuple(sym_out.shape), out.dtype) for r in range(U)]

    def ce():
        h_src.barrier(channel=0)  # every rank's sources are written
        for u in range(U):  # source rank u holds sequence block u: it lands at rows u*n
            for t in range(3):
                for s in range(b):
                    bufs[t, s, u * n:(u + 1) * n].copy_(peer_src[u][t, s, me])
        h_src.barrier(channel=1)  # nobody still reads this rank's sources
        h_out.barrier(channel=0)
        for u in range(U):  # this rank's rows of each source's heads
            for s in range(b):
                back[s, u].copy_(peer_out[u][s, me * n:(me + 1) * n])
        h_out.barrier(channel=1)

    return ce


def _rank(rank: int, world: int, port: int, methods: list[str], q) -> None:
    join_loopback_group(rank, world, port, True, timedelta(minutes=5))
    dev = torch.device("cuda", rank)
    groups = {name: [dist.new_group(g) for g in spec[0]] for name, spec in PATTERNS.items()}
    rows = []
    for name, (rank_lists, b, n, hu) in PATTERNS.items():
        gi = next(i for i, g in enumerate(rank_lists) if rank in g)
        group, ranks = groups[name][gi], rank_lists[gi]
        U, me = len(ranks), ranks.index(rank)
        rows_len = U * n + 256
        src = torch.randn(3, b, U, n, hu, D, device=dev, dtype=torch.bfloat16)
        out = torch.randn(b, rows_len, hu, D, device=dev, dtype=torch.bfloat16)
        bufs = torch.empty(3, b, rows_len, hu, D, device=dev, dtype=torch.bfloat16)
        back = torch.empty(b, U, n, hu, D, device=dev, dtype=torch.bfloat16)
        peer_bytes = 4 * b * (U - 1) * n * hu * D * 2  # sent to peers per exchange (Q, K, V and the output)

        def nccl():
            swap_blocks([([src[t, s, u] for u in range(U)], [bufs[t, s, u * n:(u + 1) * n] for u in range(U)])
                         for t in range(3) for s in range(b)], group)
            swap_blocks([([out[s, u * n:(u + 1) * n] for u in range(U)], list(back[s])) for s in range(b)], group)

        flat_src = src.permute(2, 0, 1, 3, 4, 5).contiguous()  # [U, 3, b, n, hu, D]: per destination contiguous
        flat_recv = torch.empty_like(flat_src)
        flat_out = torch.empty(U, b, n, hu, D, device=dev, dtype=torch.bfloat16)
        flat_back = torch.empty_like(flat_out)

        def single():
            dist.all_to_all_single(flat_recv, flat_src, group=group)
            dist.all_to_all_single(flat_back, flat_out, group=group)

        fns = {"nccl": nccl, "single": single}
        if "ce" in methods:
            try:
                fns["ce"] = _copy_engine_exchange(src, out, bufs, back, group, U, me, b, n)
            except Exception as e:  # noqa: BLE001 - symmetric memory missing on this build: an error row
                rows.append({"layout": name, "rank": rank, "method": "ce", "error": f"{type(e).__name__}: {e}"})
        check = None
        for m in [m for m in methods if m in fns]:
            bufs.zero_()
            fn = fns[m]
            ms, _ = time_cuda(lambda: [fn() for _ in range(STEP_BLOCKS)], 1, 5)
            if m in ("nccl", "ce"):  # both land in bufs: they must agree
                fn()
                torch.cuda.synchronize()
                digest = bufs[:, :, :U * n].float().sum().item()
                check = digest if check is None else check
                ok = abs(digest - check) <= 1e-3 * max(1.0, abs(check))
            else:
                ok = None
            rows.append({"layout": name, "rank": rank, "method": m, "ms_per_step": round(ms, 2),
                         "peer_gb_per_s": round(peer_bytes * STEP_BLOCKS / ms / 1e6, 1), "agrees_with_nccl": ok})
    rows_to_rank0(rows, q)


def run(env: dict[str, str], methods: list[str], world: int = 4) -> list[dict]:
    with environment(env):  # NCCL reads its settings when the spawned ranks create their communicators
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        port = free_port()
        procs = [ctx.Process(target=_rank, args=(r, world, port, methods, q)) for r in range(world)]
        for p in procs:
            p.start()
        try:
            rows = q.get(timeout=150)
        except Exception as e:  # noqa: BLE001 - a setting NCCL refuses becomes an error row
            rows = [{"error": f"{type(e).__name__}: {e}"}]
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        return rows


def main() -> None:
    out = sys.argv[1]
    record = {**record_header("python scripts/gpu/a2a_probe.py " + " ".join(sys.argv[1:])),
              "patterns": {k: list(v[1:]) for k, v in PATTERNS.items()}, "envs": ENVS, "rows": []}
    for env_name, env in ENVS.items():
        if env_name in SKIP:
            continue
        methods = ["nccl", "single", "ce"] if env_name == "default" else ["nccl"]
        for r in run(env, methods):
            r["env"] = env_name
            record["rows"].append(r)
            if "error" in r:
                print(env_name, r["error"], flush=True)
        summary = {}
        for r in record["rows"]:
            if r.get("env") == env_name and "ms_per_step" in r:
                summary.setdefault((r["layout"], r["method"]), []).append(r["ms_per_step"])
        for (layout, m), v in summary.items():
            print(f"{env_name:22s} {layout} {m:7s} max over ranks {max(v):7.2f} ms/step  (ranks {v})", flush=True)
    with open(out, "w") as f:
        json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
