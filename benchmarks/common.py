"""Shared benchmark plumbing: CUDA-event timing, peak memory, the JSON record."""
from __future__ import annotations

import datetime as dt
import gc
import json
import os
import queue
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch


def add_shape_args(ap, frames: int | str, *, cond_tokens: bool = True, warmup: int = 2, iters: int = 5) -> None:
    """Model size, video shape and timing arguments of the GPU benchmarks. `frames` as a str: a comma list."""
    ap.add_argument("--preset", default="mochi-1-preview")
    if isinstance(frames, str):
        ap.add_argument("--frames", default=frames, help="comma list of frame counts")
    else:
        ap.add_argument("--frames", type=int, default=frames)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    if cond_tokens:
        ap.add_argument("--cond-tokens", type=int, default=64, help="valid tokens of the prompt")
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--iters", type=int, default=iters)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32: how every benchmark states a difference from its reference."""
    a, b = a.float(), b.float().to(a.device)
    return float((a - b).norm() / b.norm())


def time_cuda(fn: Callable[[], object], warmup: int, iters: int) -> tuple[float, list[float]]:
    """Median milliseconds of fn() over iters runs (after warmup), timed with CUDA events (host clock on CPU)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times), times
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), times


@contextmanager
def gc_pauses() -> Iterator[list[tuple[int, float]]]:
    """Python's garbage-collector passes inside the block as (generation, host ms), from gc.callbacks.

    Why: a pass stops the host; on a multi-GPU group a rank whose host falls behind its GPU makes every rank
    wait in the next collective. Whether a step's time shows the passes is what the records set beside them
    (on 4x H100 they did not, 2026-11-28: the hosts run far enough ahead)."""
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))

    gc.callbacks.append(note)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(note)


def gc_summary(pauses: list[tuple[int, float]]) -> dict:
    """Per generation: passes and their total and longest host ms."""
    out = {}
    for gen in sorted({g for g, _ in pauses}):
        ms = [t for g, t in pauses if g == gen]
        out[f"gen{gen}"] = {"passes": len(ms), "total_ms": round(sum(ms), 2), "max_ms": round(max(ms), 2)}
    return out


def time_cuda_chained(fn: Callable[[], object], calls: int, repeats: int) -> tuple[float, list[float]]:
    """Milliseconds per call when `calls` calls run back to back, median over `repeats` such runs.

    This is how a sampler runs its steps: nothing waits for the GPU between them, so the host launches a step
    while the GPU still runs the previous one. `time_cuda` synchronises after every call, so each of its
    timings also holds the host's time to launch the call's first kernels; here that is paid once per run."""
    assert calls >= 1 and repeats >= 1
    ms, times = time_cuda(lambda: [fn() for _ in range(calls)], 0, repeats)
    return ms / calls, [t / calls for t in times]


def peak_gib(device: torch.device | None = None) -> float:
    if not torch.cuda.is_available():
        return 0.0
    return torch.cuda.max_memory_allocated(device) / 2**30


def card() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with `env` set for the block (processes spawned inside inherit it), then as it was: how
    benchmarks try settings read at process or communicator start (NCCL_*, TORCHINDUCTOR_*)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def record_header(command: str) -> dict:
    """What every benchmark record starts with: where, when, how, on which torch, with which NCCL settings
    (they change collective timings without changing the command)."""
    return {"card": card(), "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command, "torch": torch.__version__,
            "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")}}


def write_record(path: str | None, kind: str, results: list[dict], baseline: dict | None, extra: dict,
                 subcommand: str = "dit") -> dict:
    record = {
        "benchmark": kind,
        **record_header(f"python -m benchmarks {subcommand} " + " ".join(sys.argv[1:])),
        "results": results,
        "baseline": baseline,
        **extra,
    }
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(record, indent=2))
    return record


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns, widths)))


def rows_to_rank0(rows: list, out_q) -> None:
    """Inside a rank of a probe: every rank's result rows go to rank 0, which puts them on out_q as one list
    (rank order); then the group is torn down."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, rows)
    if dist.get_rank() == 0:
        out_q.put([r for rs in gathered for r in rs])
    dist.barrier()
    dist.destroy_process_group()


def run_ranks(fn: Callable, nprocs: int, args: tuple, what: str):
    """Spawn fn(rank, *args, out_q) on nprocs processes and return the one result rank 0 puts on out_q.

    The result is read before joining (a child cannot exit while its queued result is unread), and join()
    is polled meanwhile so a crashed rank raises (RuntimeError, with the rank's error) instead of leaving us
    waiting.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    q = mp.get_context("spawn").Queue()
    procs = mp.start_processes(fn, args=(*args, q), nprocs=nprocs, start_method="spawn", join=False)
    try:
        while True:
            try:
                result = q.get(timeout=1.0)
                break
            except queue.Empty:
                if procs.join(timeout=0):
                    raise RuntimeError(f"{what}: ranks exited without a result")
        while not procs.join():
            pass
    except ProcessException as e:  # a rank raised: one exception type for callers that record and go on
        raise RuntimeError(f"{what}: {e}") from e
    return result
