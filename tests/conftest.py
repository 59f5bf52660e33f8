"""Shared fixtures: tiny checkpoints in both layouts, written once per test run."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


TIERS = ("unit", "parallel", "serving")  # tests/<tier>/: the folder is the marker


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(tier)


@pytest.fixture(scope="session", autouse=True)
def _embedded_dir(tmp_path_factory) -> None:
    # Keep tests away from the user's cache; every test process shares one embedded copy.
    if "MOCHI_EMBEDDED_DIR" not in os.environ:
        os.environ["MOCHI_EMBEDDED_DIR"] = str(tmp_path_factory.mktemp("embedded") / "tiny")
    if "OMP_NUM_THREADS" not in os.environ:  # the margin matrix (tests/numeric_margins.py) sets it
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory) -> Path:
    from mochi_runtime.loading.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("official"), "official")


@pytest.fixture(scope="session")
def diffusers_dir(tmp_path_factory) -> Path:
    from mochi_runtime.loading.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("diffusers"), "diffusers")


def text_batch(dim: int, lengths: list[int], length: int = 256, seed: int = 0):
    """Random T5-like features and right-padded masks with the given valid lengths."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(len(lengths), length, dim, generator=g)
    mask = torch.zeros(len(lengths), length, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    return feats, mask

