"""The worker side of a DiT group: one process per device, one loop over tasks.

Rank 0 receives each task from the launcher (a pipe) and broadcasts it to the
other ranks over the gloo control group; every rank runs the sampler; after
each step rank 0 broadcasts the cancel flag so all ranks stop at the same step
and none is left inside a collective. The same `serve_tasks` / `run_task` code
runs under torchrun (see `mochi_runtime.parallel.torchrun`).

The launcher imports this module for `GroupSpec` and `Task` inside the Triton stub, which never builds a model;
what only a worker needs (the DiT, the sampler, the VAE) is imported where the worker uses it.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from ..ops.attention import check_ring_kernel
from ..errors import Cancelled
from .bootstrap import joined
from .topology import ATTENTION_ENGINES, ParallelGroups, device_for_rank, engine_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupSpec:
    """What a worker group runs: layout, weights, devices and numerics."""

    layout: Any  # topology.Layout
    model_dir: str | None = None
    devices: tuple[int, ...] | None = None  # GPU ids; None = CPU processes with gloo
    dtype: str = "auto"
    attention: str = "auto"
    compile: bool | None = None
    threads: int | None = None  # CPU threads per worker (default: cores / world)
    weights: str = "replicated"  # or "sharded": FSDP2 over `shard_over` (see parallel.sharded)
    shard_over: str = "world"  # "world" or "sp" (each CFG half holds its own sharded copy)
    attention_engine: str = "ours"  # or "xdit": the joint attention through xfuser 0.7.0 (GPU only; see .xdit)

    def __post_init__(self) -> None:
        if self.weights not in ("replicated", "sharded"):
            raise ValueError(f"weights must be 'replicated' or 'sharded', got {self.weights!r}")
        if self.shard_over not in ("world", "sp"):
            raise ValueError(f"shard_over must be 'world' or 'sp', got {self.shard_over!r}")
        if self.dtype == "fp8" and self.weights == "sharded":
            raise ValueError("dtype fp8 with sharded weights is not supported: use weights=replicated")
        if self.attention_engine not in ATTENTION_ENGINES:
            raise ValueError(f"attention_engine must be {engine_names()}, got {self.attention_engine!r}")
        if self.attention == "fp8" and not self.devices:
            raise ValueError("attention fp8 runs on GPUs only (cuDNN's fp8 flash attention): give the group GPU "
                             "devices or use attention=auto")
        check_ring_kernel(self.attention, self.layout.ring)  # refused at load, before any worker starts
        if self.attention_engine == "xdit" and not self.devices:
            raise ValueError("attention_engine=xdit runs on GPUs only (xfuser does not import without one): "
                             "give the group GPU devices or use attention_engine=ours")


@dataclass(frozen=True)
class Task:
    request: Any  # validation.GenerationRequest
    text: Any  # models.text_encoder.CFGText, on CPU


@dataclass(frozen=True)
class DecodeTask:
    """Decode one video's latents with its spatial tiles spread over the group (`vae_decode`)."""

    latents: Any  # normalised latents [1, C, T, h, w] on CPU
    plan: Any  # vae_tiling.TilePlan


class LazyVAE:
    """Each rank's VAE decoder, loaded on the first decode task (groups that never decode never pay for it), and
    the preview colour map fitted from it on the first request that asks for previews (rank 0 only)."""

    def __init__(self, spec: GroupSpec, device) -> None:
        self.spec, self.device, self.vae = spec, device, None
        self.colours = None

    def get(self):
        if self.vae is None:
            from ..loading.loaders import load_vae, open_model_dir, resolve_dtype  # worker only (module docstring)

            self.vae = load_vae(open_model_dir(self.spec.model_dir), self.device,
                                resolve_dtype(self.spec.dtype, self.device))
        return self.vae

    def preview_colours(self):
        """latent_preview.LatentRGB of this checkpoint. Fitted in fp32 on the host from a VAE read for it and
        dropped after (the decoder on the GPU stays unloaded unless the group decodes)."""
        if self.colours is None:
            import torch  # worker only (module docstring)

            from ..loading.loaders import load_vae, open_model_dir  # worker only (module docstring)
            from ..models.latent_preview import LatentRGB  # worker only (module docstring)

            vae = self.vae or load_vae(open_model_dir(self.spec.model_dir), torch.device("cpu"), torch.float32)
            self.colours = LatentRGB.fit(vae)
        return self.colours


def run_decode(vae, task: DecodeTask, device, rank: int):
    """This rank's share of the decode; rank 0 returns uint8 frames [1, F, H, W, 3] on CPU, others None."""
    from ..models.vae import frames_to_uint8  # worker only (module docstring)
    from .vae_decode import decode_distributed  # worker only (module docstring)

    video = decode_distributed(vae, task.latents.to(device), task.plan)
    return frames_to_uint8(video, device="cpu") if rank == 0 else None


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies (Linux), and check we were not orphaned already."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - non-Linux
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def build_model(spec: GroupSpec, groups: ParallelGroups, local_rank: int):
    """Load this rank's DiT copy straight onto its device and wrap it for sequence parallelism."""
    import torch  # worker only (module docstring)

    from ..loading.loaders import load_dit, open_model_dir, prepare_dit, resolve_dtype  # worker only (module docstring)
    from .usp import SequenceParallelDiT  # worker only (module docstring)

    device = device_for_rank(local_rank) if spec.devices else torch.device("cpu")
    md = open_model_dir(spec.model_dir)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.weights == "sharded":
        import torch.distributed as dist  # worker only (module docstring)

        from .sharded import load_sharded_dit  # worker only (module docstring)

        over = dist.group.WORLD if spec.shard_over == "world" else groups.sp_group
        dit = prepare_dit(load_sharded_dit(md, over, device, dtype), device, spec.attention, spec.compile)
    else:
        dit = load_dit(md, device, dtype, spec.attention, spec.compile, fp8=spec.dtype == "fp8")
    spec.layout.validate(num_heads=dit.cfg.num_heads)
    return SequenceParallelDiT(dit, groups, spec.attention, spec.attention_engine), device


def run_task(model, task: Task, device, should_stop: Callable[[int, int], bool],
             on_step: Callable[[int, int, int], None] | None = None,
             on_preview: Callable[[int, Any], None] | None = None):
    """Run one request's sampler on this rank; returns fp32 latents on CPU (identical on all ranks).

    on_step(step, total, skipped) after every step (sampler.StepCallback); on_preview(step, x0) every
    request.preview_every steps (sampler.PreviewCallback)."""
    import torch  # worker only (module docstring)
    import torch.distributed as dist  # worker only (module docstring)

    from ..sampler import euler_sample, initial_noise, linear_quadratic_schedule  # worker only (module docstring)
    from .usp import ParallelCFGVelocity  # worker only (module docstring)

    req = task.request
    cache = model.step_cache(req)
    velocity = ParallelCFGVelocity(model, task.text.to(device), req.guidance, cache)
    flag = torch.zeros(1, dtype=torch.int32)

    def step_hook(i: int, total: int, skipped: int) -> None:
        flag[0] = 1 if should_stop(i, total) else 0
        dist.broadcast(flag, src=0, group=model.groups.control)
        if on_step is not None:
            on_step(i, total, skipped)
        if int(flag[0]):
            raise Cancelled(f"cancelled after step {i} of {total}")

    z = initial_noise(req.seed, req.latent_shape).to(device)
    with torch.inference_mode():
        return euler_sample(velocity, z, linear_quadratic_schedule(req.steps), step_hook, cache, on_preview,
                            req.preview_every).cpu()


def broadcast_task(task: Any, groups) -> Any:
    import torch.distributed as dist  # worker only (module docstring)

    box = [task]
    dist.broadcast_object_list(box, src=0, group=groups.control)
    return box[0]


def worker_main(rank: int, spec: GroupSpec, port: int, parent_pid: int, conn, cancel_flag) -> None:
    """Entry point of a spawned worker (rank `rank` of `spec.layout.world`)."""
    die_with_parent(parent_pid)
    if spec.devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in spec.devices)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(spec.layout.world), LOCAL_RANK=str(rank))
    logging.basicConfig(level=logging.WARNING, format=f"[mochi worker {rank}] %(levelname)s %(message)s")
    import torch  # worker only (module docstring)
    import torch.distributed as dist  # worker only (module docstring)


    torch.set_num_threads(spec.threads or max(1, (os.cpu_count() or 1) // spec.layout.world))
    try:
        with joined(spec.layout, bool(spec.devices), rank, port) as groups:
            model, device = build_model(spec, groups, rank)
            dist.barrier(group=groups.control)
            if rank == 0:
                conn.send(("ready", None))
            serve_tasks(model, device, rank, conn, cancel_flag, LazyVAE(spec, device))
    except Exception:
        msg = traceback.format_exc()
        log.error("worker %d failed:\n%s", rank, msg)
        if rank == 0 and conn is not None:
            try:
                conn.send(("fatal", msg))
            except Exception:
                pass
        sys.stderr.flush()
        os._exit(1)


def serve_tasks(model, device, rank: int, conn, cancel_flag, vae: LazyVAE) -> None:
    """Task loop: rank 0 reads from the launcher and broadcasts; everybody runs; rank 0 answers."""
    while True:
        task = conn.recv() if rank == 0 else None
        task = broadcast_task(task, model.groups)
        if task is None:
            return
        if isinstance(task, DecodeTask):
            frames = run_decode(vae.get(), task, device, rank)
            if rank == 0:
                conn.send(("result", frames))
            continue

        def should_stop(i: int, total: int) -> bool:
            return rank == 0 and bool(cancel_flag.value)

        def progress(i: int, total: int, skipped: int) -> None:
            if rank == 0:
                conn.send(("progress", (i, total, skipped)))

        def preview(i: int, x0) -> None:  # every rank holds the same x0: rank 0 alone sends it
            if rank == 0:
                conn.send(("preview", (i, vae.preview_colours().to_uint8(x0))))

        try:
            latents = run_task(model, task, device, should_stop, progress, preview)
        except Cancelled as e:
            if rank == 0:
                conn.send(("cancelled", str(e)))
            continue
        if rank == 0:
            conn.send(("result", latents))
