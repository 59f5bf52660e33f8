"""The per-GPU memory model against measured peaks, and budget refusals (in process and through Triton)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mochi_runtime.models.config import get_preset
from mochi_runtime.memory import DiTMemoryModel, choose_weights
from mochi_runtime.parallel.topology import Layout
from mochi_runtime.validation import GenerationRequest, RequestError

ROOT = Path(__file__).resolve().parents[2]
FULL = get_preset("mochi-1-preview").dit
GIB = 2**30


def _req(frames: int) -> GenerationRequest:
    return GenerationRequest("", num_frames=frames, height=480, width=848)


def _measured():
    """(layout, weights, frames, peak GiB per GPU) from the recorded multi-GPU benchmark runs."""
    out = []
    for name in ("dit_sharded_h200x4.json", "dit_ring_h200x4.json", "dit_parallel_49f_4xh200.json",
                 "dit_parallel_163f_4xh200.json", "dit_parallel_49f_nocopy_h200x4.json", "dit_xdit_49f_h200x4.json"):
        record = json.loads((ROOT / "docs" / "bench" / name).read_text())
        for row in record["results"]:
            if "peak_gib_per_gpu" in row:
                out.append((row["layout"], row.get("weights", "replicated"), record["shape"]["frames"],
                            max(row["peak_gib_per_gpu"])))
    return out


@pytest.mark.parametrize("layout,weights,frames,peak", _measured())
def test_estimate_covers_every_measured_peak(layout, weights, frames, peak):
    lay = Layout.parse(layout)
    shard = lay.world if weights == "sharded" else lay.sp
    mode = "replicated" if weights == "replicated" else "sharded"
    model = DiTMemoryModel(FULL, lay.cfg, lay.ulysses, lay.ring, mode, shard)
    est = model.total_bytes(_req(frames)) / GIB
    assert peak <= est <= peak + 2.0, (est, peak)  # safe, and not so loose that it refuses what fits


def test_sharded_weights_fit_a_24gb_card_on_four_gpus():
    model = DiTMemoryModel(FULL, 2, 2, 1, "sharded", 4)
    assert model.weight_bytes() <= 6e9
    # A 24 GB card that also holds T5-XXL's 9.5 GB leaves ~14 GB to the DiT: only shards fit.
    assert choose_weights(model, _req(49), 14 * 10**9) == "sharded"
    assert choose_weights(model, _req(163), 80 * GIB) == "replicated"


def test_a_request_over_budget_is_refused_naming_the_limit():
    model = DiTMemoryModel(FULL, 2, 2, 1, "sharded", 4)
    model.check(_req(49), 24 * GIB)
    with pytest.raises(RequestError) as e:
        model.check(_req(163), 8 * GIB)
    assert e.value.field == "num_frames" and "memory_budget_bytes" in str(e.value)


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_triton_refuses_a_request_that_cannot_fit_and_serves_one_that_can(tmp_path):
    """mochi_dit with a per-GPU budget (CPU group, fp32 tiny weights): INVALID_ARG up front, server healthy."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from triton_helpers import dit_inputs, running_server

    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "model_repository" / "mochi_dit", repo / "mochi_dit")
    cfg = repo / "mochi_dit" / "config.pbtxt"
    text = cfg.read_text()
    assert '"memory_budget_bytes" value: { string_value: "0" }' in text
    cfg.write_text(text.replace('"memory_budget_bytes" value: { string_value: "0" }',
                                '"memory_budget_bytes" value: { string_value: "268435456" }'))
    with running_server(tmp_path / "work", model_repository=repo) as srv:
        client = grpcclient.InferenceServerClient(srv.grpc_url)
        dim = get_preset("tiny").dit.t5_feat_dim

        def call(frames: int, height: int, width: int):
            return client.infer("mochi_dit", dit_inputs(grpcclient, dim, frames, height, width),
                                outputs=[grpcclient.InferRequestedOutput("LATENTS")])

        with pytest.raises(InferenceServerException) as e:
            call(163, 480, 848)
        assert "INVALID_ARG" in str(e.value.status()) and "memory_budget_bytes" in e.value.message()
        out = call(7, 32, 32).as_numpy("LATENTS")
        assert out.shape == (1, 12, 2, 4, 4) and np.isfinite(out).all()
        assert client.is_server_live() and client.is_model_ready("mochi_dit")


def test_pipeline_plan_prefers_speed_and_falls_back_to_shards_then_offload():
    import torch

    from mochi_runtime.memory import plan_pipeline
    from mochi_runtime.models.vae import VAEDecoder

    with torch.device("meta"):
        vae = VAEDecoder(get_preset("mochi-1-preview").vae).to(torch.bfloat16)
    t5 = int(4.76e9)  # T5-XXL encoder parameters
    four = DiTMemoryModel(FULL, 2, 2, 1, "replicated", 4)
    roomy = plan_pipeline(80 * GIB, four, _req(163), t5, vae)
    assert (roomy.weights, roomy.offload_t5, roomy.vae_plan.tile_h) == ("replicated", False, 0)
    tight = plan_pipeline(24 * GIB, four, _req(49), t5, vae)  # the 4 x 24 GB target
    assert tight.weights == "sharded" and tight.peak_bytes <= 24 * GIB
    tighter = plan_pipeline(18 * GIB, four, _req(163), t5, vae)
    assert tighter.weights == "sharded" and tighter.offload_t5 and tighter.peak_bytes <= 16 * GIB
    # T5 loaded for encoding is the first GPU's largest phase at full size: 9 GiB cannot hold it.
    with pytest.raises(RequestError, match="memory budget"):
        plan_pipeline(9 * GIB, four, _req(49), t5, vae)


def test_one_24gb_gpu_needs_the_fp8_dit_and_the_planner_says_so_in_words_of_one_gpu():
    import torch

    from mochi_runtime.memory import plan_pipeline
    from mochi_runtime.models.vae import VAEDecoder

    with torch.device("meta"):
        vae = VAEDecoder(get_preset("mochi-1-preview").vae)
    t5 = int(4.76e9)
    one = DiTMemoryModel(FULL)  # bf16 on one GPU: the DiT alone is 18.7 GiB, T5 9 GiB more while encoding
    with pytest.raises(RequestError) as e:
        plan_pipeline(24 * GIB, one, _req(49), t5, vae)
    msg = str(e.value)
    assert "bf16 DiT on one GPU" in msg and "sharded" not in msg  # nothing to shard on one GPU
    assert "the fp8 DiT fits" in msg and "use dtype fp8" in msg
    picked = plan_pipeline(24 * GIB, one, _req(49), t5, vae, allow_fp8=True)
    assert picked.dit.fp8 and picked.peak_bytes <= 24 * GIB and "fp8 DiT on one GPU" in picked.describe()
    fp8 = plan_pipeline(24 * GIB, DiTMemoryModel(FULL, fp8=True), _req(49), t5, vae)
    assert fp8 == picked
    # the dtype's weights count: fp32 needs twice bf16's, and fp8 about half
    fp32 = DiTMemoryModel(FULL, dtype_bytes=4)
    assert fp32.weight_bytes() == 2 * one.weight_bytes() and fp8.dit.weight_bytes() < 0.51 * one.weight_bytes()
    with pytest.raises(RequestError, match="fp32 DiT on one GPU"):
        plan_pipeline(48 * GIB, fp32, _req(49), t5, vae)
    assert plan_pipeline(48 * GIB, one, _req(163), t5, vae).dit.dtype_name == "bf16"
    with pytest.raises(RequestError, match="even the fp8 DiT needs"):
        plan_pipeline(16 * GIB, one, _req(49), t5, vae)


def test_fp8_weight_estimate_matches_the_measured_fp8_dit():
    """bench step measured the fp8 DiT's resident weights at 9.44 GiB (docs/bench/step_49f_h200.json): the
    model counts one byte per block-linear weight and the rest in bf16."""
    rec = json.loads((Path(__file__).resolve().parents[2] / "docs/bench/step_49f_h200.json").read_text())
    measured = next(r["weights_gib"] for r in rec["results"] if r["mode"] == "fp8")
    bf16 = DiTMemoryModel(get_preset("mochi-1-preview").dit)
    fp8 = DiTMemoryModel(get_preset("mochi-1-preview").dit, fp8=True)
    assert fp8.weight_bytes() / 2**30 == pytest.approx(measured, abs=0.05)
    assert fp8.weight_bytes() < 0.51 * bf16.weight_bytes()
