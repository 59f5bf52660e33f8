"""Stage timers as context managers (synchronising CUDA so GPU time is counted)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch


class StageTimes(dict):
    """stage name -> seconds (accumulated)."""

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        sync = device is not None and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(device)
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0

    def summary(self) -> str:
        return "  ".join(f"{k} {v:.2f}s" for k, v in self.items())
