"""fp32 comparison bounds that hold on any x86 CPU, and a log of what each bound sees.

Every bound compares errors *relative to the size of the reference*, never raw absolute values:
- `rel_l2`  = ||got - ref||_2 / ||ref||_2   (the typical error),
- `max_rel` = max|got - ref| / max|ref|     (the worst element, scaled by the largest).

Reductions in fp32 round differently with the thread count, the BLAS kernel and the CPU's vector width
(PyTorch's ATEN_CPU_CAPABILITY dispatch), so two correct programs agree only to a few units of fp32 rounding
(eps = 1.2e-7) times the depth of the computation. Each bound is set >= 10x above the largest error measured over
OMP_NUM_THREADS 1, 2, 4 and ATEN_CPU_CAPABILITY default, avx2 (`python tests/numeric_margins.py` reruns that
matrix and prints the table), and stays orders of magnitude below what a real defect does (a dropped ring chunk,
a wrong mask, a wrong trim rule: relative errors of 1e-2 and more).

With MOCHI_NUMERICS_LOG=path set, every check appends one JSON line (the bound's name, what it measured, its
limits) to that file.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Error:
    rel_l2: float  # ||got - ref|| / ||ref||
    max_rel: float  # max|got - ref| / max|ref|

    def __str__(self) -> str:
        return f"rel_l2 {self.rel_l2:.3g}, max_rel {self.max_rel:.3g}"


def error(got: torch.Tensor, ref: torch.Tensor) -> Error:
    """Relative errors of `got` against `ref` (compared in float64; shapes must match)."""
    assert got.shape == ref.shape, (tuple(got.shape), tuple(ref.shape))
    a, b = got.detach().double(), ref.detach().double()
    diff = a - b
    return Error(float(diff.norm() / b.norm().clamp_min(1e-300)),
                 float(diff.abs().max() / b.abs().max().clamp_min(1e-300)))


def worst(errors) -> Error:
    """The largest of each measure over several comparisons (e.g. one per rank)."""
    errors = list(errors)
    return Error(max(e.rel_l2 for e in errors), max(e.max_rel for e in errors))


def check(err: Error, *, rel_l2: float, max_rel: float = math.inf, label: str = "") -> Error:
    """Assert `err` is within both bounds; log it when MOCHI_NUMERICS_LOG is set. (max_rel left out: a
    measure only known as rel_l2, e.g. the benchmarks' records.)"""
    name = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0] + (f"::{label}" if label else "")
    path = os.environ.get("MOCHI_NUMERICS_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"bound": name, **asdict(err), "rel_l2_bound": rel_l2,
                                "max_rel_bound": None if math.isinf(max_rel) else max_rel})
                    + "\n")
    assert err.rel_l2 <= rel_l2 and err.max_rel <= max_rel, \
        f"{name}: {err} over the bounds (rel_l2 {rel_l2:g}, max_rel {max_rel:g})"
    return err


def threads() -> int:
    """CPU threads for a test's computations: OMP_NUM_THREADS when set (the margin matrix sets it), else 1."""
    return int(os.environ.get("OMP_NUM_THREADS", "1"))


def assert_close(got: torch.Tensor, ref: torch.Tensor, *, rel_l2: float, max_rel: float, label: str = "") -> Error:
    return check(error(got, ref), rel_l2=rel_l2, max_rel=max_rel, label=label)
