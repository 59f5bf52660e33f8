"""mochi_dit spanning 8 ranks in a real tritonserver (#8's Triton generation, on CPU processes with gloo):
cfg 2 x ulysses 4 over 8 worker processes gives the video one process gives."""
from __future__ import annotations

import pytest

from client import MochiClient
from triton_helpers import SMALL, assert_same_video, dit_workers, running_server, small_request


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"MOCHI_MOCHI_DIT_CPU_WORLD": "8", "MOCHI_MOCHI_DIT_ULYSSES": "4", "MOCHI_MOCHI_DIT_CFG_PARALLEL": "true"}
    with running_server(tmp_path_factory.mktemp("eight"), extra_env=env) as srv:
        yield srv


def test_a_generation_across_eight_ranks_equals_one_process(server):
    assert len(dit_workers(server)) == 8
    with MochiClient(server.grpc_url, "grpc") as c:
        got = c.generate("a lighthouse at dusk", seed=3, **SMALL)
    assert got.video.shape == (13, 48, 80, 3)

    from mochi_runtime.pipeline import MochiPipeline

    ref = MochiPipeline.from_dir(None, device="cpu").generate(small_request("a lighthouse at dusk", seed=3)).frames
    assert_same_video(ref, got.video)  # fp32 latents within ~1e-5 of one process (test_parallel)
