"""Prompt -> T5 embedding cache of the t5_encoder model: least recently used, bounded in bytes, successes only."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

import numpy as np


class EmbeddingCache:
    """Maps a key (prompt, negative prompt) to the arrays T5 produced for it. `max_bytes` 0 disables it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[np.ndarray, ...]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[np.ndarray, ...] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: tuple[np.ndarray, ...]) -> None:
        size = sum(a.nbytes for a in value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= sum(a.nbytes for a in old)
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= sum(a.nbytes for a in dropped)

    def __len__(self) -> int:
        return len(self._items)
