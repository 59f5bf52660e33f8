"""Stage timers as context managers (synchronising CUDA so GPU time is counted)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimes(dict):
    """stage name -> seconds (accumulated); on a GPU also `peak_gib`: stage name -> the most memory allocated on
    the device during the stage (GiB)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak_gib: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device) / 2**30
                self.peak_gib[name] = max(self.peak_gib.get(name, 0.0), round(peak, 2))
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0

    def summary(self) -> str:
        times = "  ".join(f"{k} {v:.2f}s" for k, v in self.items())
        peaks = "  ".join(f"{k} {v:.2f}" for k, v in self.peak_gib.items())
        return times + (f"  (peak GiB: {peaks})" if peaks else "")
