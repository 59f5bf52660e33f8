"""The deployment shapes of the README, started from the variables it documents: mochi_dit's group of 1, 2, 4
and 8 ranks (on CPU, MOCHI_MOCHI_DIT_CPU_WORLD stands in for the GPU count of MOCHI_MOCHI_DIT_GPUS; the layout
follows the group's size unless set), each generating the video one process gives; a layout that cannot fit
the group refuses to load at once, naming the variable to set."""
from __future__ import annotations

import time

import pytest

from client import MochiClient
from mochi_runtime.serving.tritonserver import ServerError
from triton_helpers import SMALL, assert_same_video, dit_workers, running_server, small_request

# (ranks, the layout the README says that many GPUs get)
SHAPES = [(1, "cfg1 x ulysses1 x ring1"), (2, "cfg2 x ulysses1 x ring1"), (4, "cfg2 x ulysses2 x ring1"),
          (8, "cfg2 x ulysses4 x ring1")]


@pytest.fixture(scope="module")
def reference():
    from mochi_runtime.pipeline import MochiPipeline

    return MochiPipeline.from_dir(None, device="cpu").generate(small_request("a lighthouse at dusk", seed=3)).frames


@pytest.mark.parametrize("ranks,layout", SHAPES, ids=[f"{n} ranks" for n, _ in SHAPES])
def test_each_documented_shape_starts_from_its_variables_and_generates(tmp_path, reference, ranks, layout):
    with running_server(tmp_path, extra_env={"MOCHI_MOCHI_DIT_CPU_WORLD": str(ranks)}) as srv:
        assert len(dit_workers(srv)) == ranks
        assert layout in srv.log_tail(400)  # what mochi_dit says it built
        with MochiClient(srv.grpc_url, "grpc") as c:
            got = c.generate("a lighthouse at dusk", seed=3, **SMALL)
    assert got.video.shape == (13, 48, 80, 3)
    assert_same_video(reference, got.video)  # fp32 latents within rounding of one process (test_parallel)


def test_a_layout_that_does_not_fit_the_group_is_refused_at_load_naming_the_variable(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ServerError) as e:
        with running_server(tmp_path, max_restarts=0,
                            extra_env={"MOCHI_MOCHI_DIT_CPU_WORLD": "4", "MOCHI_MOCHI_DIT_ULYSSES": "3"}):
            pass
    assert "MOCHI_MOCHI_DIT_ULYSSES" in str(e.value) and "needs" in str(e.value)
    assert time.monotonic() - t0 < 120  # refused before the other models' long loads are waited for
