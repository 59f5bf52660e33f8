"""Multi-node / torchrun entry: the same worker code, rendezvous from the standard env variables.

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-endpoint HOST:PORT \\
        -m mochi_runtime.parallel.torchrun --prompt "..." --ulysses 8 --cfg-parallel --out video.mp4

Rank 0 encodes the prompt (T5), broadcasts the task, every rank runs the sampler,
and rank 0 decodes the VAE once and writes the mp4. Without GPUs, gloo on CPU.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

from ..cli import add_generation_args, request_from_args
from ..validation import Limits, validate
from .bootstrap import joined
from .topology import Layout
from .worker import GroupSpec, Task, broadcast_task, build_model, run_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mochi_runtime.parallel.torchrun")
    add_generation_args(ap)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--ulysses", type=int, default=1)
    ap.add_argument("--ring", type=int, default=1)
    ap.add_argument("--cfg-parallel", action="store_true")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--out", default="video.mp4")
    a = ap.parse_args(argv)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            ap.error(f"{var} is not set: start this module with torchrun")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    layout = Layout(2 if a.cfg_parallel else 1, a.ulysses, a.ring)
    request = validate(request_from_args(a), Limits(max_frames=10_000, max_pixels=4096 * 4096, max_steps=1000))
    layout.validate(guidance=request.guidance)
    gpu = torch.cuda.is_available()
    if gpu:
        torch.cuda.set_device(local_rank)
    spec = GroupSpec(layout, a.model_dir, tuple(range(torch.cuda.device_count())) if gpu else None, a.dtype,
                     a.attention)
    with joined(layout, gpu) as groups:  # rank, world and rendezvous from torchrun
        return _generate(a, spec, groups, request, rank, local_rank)


def _generate(a, spec: GroupSpec, groups, request, rank: int, local_rank: int) -> int:
    model, device = build_model(spec, groups, local_rank)
    pipe = None
    task = None
    if rank == 0:
        from ..pipeline import MochiPipeline  # rank 0 only: T5 and the VAE

        pipe = MochiPipeline.from_dir(a.model_dir, device=device, dtype=a.dtype, denoiser=_NoDenoiser())
        task = Task(request, pipe.encode_text(request).to("cpu"))
    task = broadcast_task(task, model.groups)
    latents = run_task(model, task, device, should_stop=lambda i, n: False)
    if rank == 0:
        from ..video import encode_mp4  # PyAV: rank 0 only

        frames = pipe.decode(latents)
        encode_mp4(frames, a.out)
        print(os.path.abspath(a.out))
    dist.barrier(group=groups.control)
    return 0


class _NoDenoiser:
    def denoise(self, *args, **kwargs):  # pragma: no cover - never called: the ranks denoise together
        raise RuntimeError("denoising runs on the torchrun ranks")


if __name__ == "__main__":
    sys.exit(main())
