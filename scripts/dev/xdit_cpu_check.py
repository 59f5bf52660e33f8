"""Development check of the xDiT engine on CPU (not CI: xfuser is an optional GPU extra).

The tiny DiT through SequenceParallelDiT with attention engine "xdit" (xfuser 0.7.0's USP) and "ours", against one
process, on gloo worker processes: Ulysses layouts, a token count the sequence-parallel degree does not divide,
batch 2 with 0 and 17 valid text tokens. Ring layouts need an LSE-returning kernel, which xfuser only has on GPU.

    pip install --target /tmp/xfsite --no-deps xfuser==0.7.0 yunchang==0.6.4 distvae==0.1.0 einops triton
    MOCHI_FAKE_CUDA_FOR_XFUSER=1 PYTHONPATH=scripts/dev/fake_cuda:/tmp/xfsite:$PWD \
        .venv/bin/python scripts/dev/xdit_cpu_check.py
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank: int, world: int, layout, port: int, model_dir: str, q) -> None:
    from mochi_runtime.checkpoints import ModelDir
    from mochi_runtime.parallel.topology import ParallelGroups, join_loopback_group
    from mochi_runtime.parallel.usp import SequenceParallelDiT
    from mochi_runtime.pipeline import load_dit

    torch.set_num_threads(1)
    join_loopback_group(rank, world, port, gpu=False, timeout=timedelta(minutes=5))
    groups = ParallelGroups(layout)
    md, cpu = ModelDir.open(model_dir), torch.device("cpu")
    one = load_dit(md, cpu, torch.float32, compile=False)
    xdit = SequenceParallelDiT(load_dit(md, cpu, torch.float32, compile=False), groups, "sdpa", "xdit")
    ours = SequenceParallelDiT(load_dit(md, cpu, torch.float32, compile=False), groups, "sdpa", "ours")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 12, 3, 10, 14, generator=g)  # 105 visual tokens: 2 and 4 do not divide them
    feats = torch.randn(2, 256, one.cfg.t5_feat_dim, generator=g)
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[1, :17] = True  # sample 0: no valid text (an empty negative prompt)
    sigma = torch.tensor([0.8, 0.8])
    with torch.inference_mode():
        ref, a, b = one(x, sigma, feats, mask), xdit(x, sigma, feats, mask), ours(x, sigma, feats, mask)
    q.put((rank, type(xdit.attention).__name__, float((a - ref).abs().max()), float((a - b).abs().max())))
    dist.destroy_process_group()


def main() -> None:
    from mochi_runtime.parallel.topology import Layout, free_port
    from mochi_runtime.tiny import embedded_model_dir

    for lay in (Layout(1, 2, 1), Layout(2, 2, 1), Layout(1, 4, 1)):
        q = mp.get_context("spawn").Queue()
        mp.start_processes(worker, args=(lay.world, lay, free_port(), str(embedded_model_dir()), q),
                           nprocs=lay.world, start_method="spawn")
        rows = sorted(q.get(timeout=120) for _ in range(lay.world))
        print(lay.describe(), "(rank, engine, max abs vs one process, vs ours):", rows, flush=True)


if __name__ == "__main__":
    main()
