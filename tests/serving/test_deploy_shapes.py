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


@pytest.mark.parametrize("trim", ["genmo", "end"])
def test_vae_decoder_trims_by_genmo_rule_unless_told_diffusers(tmp_path, trim):
    """vae_decoder in Triton decodes as the in-process decoder does under the same rule: Genmo's by default,
    diffusers' with MOCHI_VAE_DECODER_TRIM=end (and the two differ in the first frames)."""
    import numpy as np
    import torch
    import tritonclient.grpc as grpcclient

    from client.api import infer_inputs
    from mochi_runtime.loading.loaders import load_vae, open_model_dir
    from mochi_runtime.models.vae import frames_to_uint8

    z = torch.randn(1, 12, 3, 6, 10, generator=torch.Generator().manual_seed(4))
    vae = load_vae(open_model_dir(None), torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        want = {rule: frames_to_uint8(vae.decode(z, trim=rule))[0].numpy() for rule in ("genmo", "end")}
    assert np.abs(want["genmo"][:1].astype(int) - want["end"][:1].astype(int)).mean() > 5  # the rules differ
    env = {} if trim == "genmo" else {"MOCHI_VAE_DECODER_TRIM": "end"}
    with running_server(tmp_path, extra_env=env) as srv:
        out = grpcclient.InferenceServerClient(srv.grpc_url).infer(
            "vae_decoder", infer_inputs(grpcclient, [("LATENTS", z.numpy(), "FP32")])).as_numpy("VIDEO")
    assert_same_video(want[trim], out)


def test_a_layout_that_does_not_fit_the_group_is_refused_at_load_naming_the_variable(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(ServerError, match="failed to load"):
        with running_server(tmp_path, max_restarts=0,
                            extra_env={"MOCHI_MOCHI_DIT_CPU_WORLD": "4", "MOCHI_MOCHI_DIT_ULYSSES": "3"}):
            pass
    assert time.monotonic() - t0 < 120  # refused at once: no worker group was started
    log = (tmp_path / "tritonserver.log").read_text(errors="replace")
    assert "mochi_dit: ulysses degree 3 must divide" in log and "MOCHI_MOCHI_DIT_ULYSSES" in log
