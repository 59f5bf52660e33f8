"""The serving surface as a hostile client and an operator meet it, against a real tritonserver: no client can
switch generation off or reach the admin APIs, internal models check their inputs like public ones, every
error has a status code and no traceback, work stops when its client leaves, the embedding cache holds
successes only, equal requests give equal bytes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client import MochiClient
from client.api import infer_inputs
from mochi_runtime.models.config import get_preset
from triton_helpers import SMALL, control_inputs, dit_inputs, dit_workers, metric, running_server, wait_for

ROOT = Path(__file__).resolve().parents[2]
FEAT = get_preset("tiny").dit.t5_feat_dim
LONG = dict(frames=31, height=64, width=96, steps=200)  # 30 s or more on the tiny model: long enough to leave


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("hardening")) as srv:
        yield srv


def post(server, path: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://{server.http_url}{path}", data=json.dumps(body or {}).encode(),
                                 method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _bytes_input(name: str, value: str) -> dict:
    return {"name": name, "shape": [1], "datatype": "BYTES", "data": [value]}


def test_no_client_can_drain_or_drive_the_control_inputs(server):
    """DRAIN (and CANCEL, PROGRESS_OF, HEALTH) are the server's own: without its per-run key they are refused by
    name, the model keeps generating, and health stays true because nothing changed."""
    before = MochiClient(server.grpc_url).generate("a red fox in snow", seed=5, **SMALL)
    for name in ("DRAIN", "CANCEL", "PROGRESS_OF", "HEALTH"):
        for extra in ([], [_bytes_input("CONTROL_KEY", "guess")]):
            code, body = post(server, "/v2/models/mochi_dit/infer", {"inputs": [_bytes_input(name, "x")] + extra})
            assert code == 400 and f"{name.lower()}: is one of the server's own control inputs" in body["error"], body
    after = MochiClient(server.grpc_url).generate("a red fox in snow", seed=5, **SMALL)
    assert after.video.tobytes() == before.video.tobytes()
    assert server.ready()
    # the server's own key works (what the supervisor's drain and the orchestrators send)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    healthy, groups = g.infer("mochi_dit", control_inputs(grpcclient, server, "HEALTH", "1")).as_numpy("STEP")
    assert healthy == groups == 1


def test_admin_apis_need_the_operators_key(server):
    """Model control, trace and logging are restricted (Triton's restricted APIs) to the `mochi-admin-key`
    header, on HTTP and gRPC; inference, health, metadata and statistics stay open."""
    for path in ("/v2/repository/index", "/v2/repository/models/mochi_dit/unload", "/v2/logging", "/v2/trace/setting"):
        code, body = post(server, path)
        assert code == 403 and "mochi-admin-key" in body["error"], (path, code, body)
    code, index = post(server, "/v2/repository/index", headers={"mochi-admin-key": server.cfg.admin_key})
    assert code == 200 and {m["name"] for m in index} >= {"mochi", "mochi_dit", "t5_encoder", "vae_decoder"}
    g = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match="mochi-admin-key"):
        g.unload_model("mochi_dit")
    assert g.is_model_ready("mochi_dit") and g.get_inference_statistics("mochi_dit")


@pytest.mark.parametrize("length,rule", [(0, "must hold 1 to 256 tokens"), (257, "must hold 1 to 256 tokens")])
def test_dit_refuses_text_of_a_length_t5_never_gives(server, length, rule):
    """TEXT_EMBEDS of length 0 used to crash the worker group, 16384 to take 9 s a step: refused up front, by name,
    and the group is the same processes afterwards."""
    workers = dit_workers(server)
    g = grpcclient.InferenceServerClient(server.grpc_url)
    inputs = infer_inputs(grpcclient, [
        ("TEXT_EMBEDS", np.zeros((2, length, FEAT), np.float32), "FP32"),
        ("TEXT_MASK", np.ones((2, length), np.bool_), "BOOL"),
        ("NUM_FRAMES", np.array([7], np.int32), "INT32")])
    with pytest.raises(InferenceServerException) as e:
        g.infer("mochi_dit", inputs, client_timeout=60)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and f"text_embeds: {rule}" in e.value.message()
    assert dit_workers(server) == workers
    out = g.infer("mochi_dit", dit_inputs(grpcclient, FEAT)).as_numpy("LATENTS")
    assert np.isfinite(out).all()


def test_a_bad_prompt_gets_the_same_error_every_time_and_the_cache_holds_successes_only(server):
    """Triton's response cache once stored the encoder's error answer as an empty success: the second identical
    bad request then failed elsewhere, with another message. Our cache keeps successes only."""
    misses0, hits0 = metric(server, "mochi_t5_cache_misses_total"), metric(server, "mochi_t5_cache_hits_total")
    errors = []
    for path in ("/v2/models/mochi/infer", "/v2/models/mochi/infer", "/v2/models/t5_encoder/infer",
                 "/v2/models/t5_encoder/infer"):
        code, body = post(server, path, {"inputs": [_bytes_input("PROMPT", "")]})
        errors.append((code, body["error"].replace(" [INVALID_ARG]", "")))
    assert errors == [(400, "prompt: must not be empty")] * 4, errors
    assert metric(server, "mochi_t5_cache_misses_total") == misses0 and metric(
        server, "mochi_t5_cache_hits_total") == hits0
    fails = metric(server, "mochi_request_failures_total", 'code="INVALID_ARG",model="t5_encoder"')
    assert fails >= 2  # counted as failures (Triton's nv_inference_request_failure counts them as successes)
    prompt = f"cached {time.time()}"
    for _ in range(2):
        code, _ = post(server, "/v2/models/t5_encoder/infer", {"inputs": [_bytes_input("PROMPT", prompt)]})
        assert code == 200
    assert metric(server, "mochi_t5_cache_misses_total") == misses0 + 1
    assert metric(server, "mochi_t5_cache_hits_total") == hits0 + 1


def test_every_error_names_its_field_with_a_status_code_on_both_protocols_and_streams(server):
    code, body = post(server, "/v2/models/mochi/infer", {"inputs": [{"name": "NUM_FRAMES", "shape": [1],
                                                                       "datatype": "INT32", "data": [13]}]})
    assert code == 400 and body["error"] == "prompt: is required", body  # was "unexpected deadlock ..."
    g = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        g.infer("mochi", infer_inputs(grpcclient, [("NUM_FRAMES", np.array([13], np.int32), "INT32")]))
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and e.value.message() == "prompt: is required"
    with MochiClient(server.grpc_url) as c, pytest.raises(InferenceServerException) as e:
        c.stream("x", frames=8)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "num_frames: must be 6k+1" in e.value.message()
    with MochiClient(server.grpc_url) as c, pytest.raises(InferenceServerException) as e:
        c.stream("x" * 300, **SMALL)  # T5 reads 256 tokens: the rest would be cut without a word
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "prompt: is 30" in e.value.message() and "over the 256 that T5 reads" in e.value.message()
    assert "Traceback" not in e.value.message() and "RuntimeError" not in e.value.message()


def _long_inputs(mod, prompt: str) -> list:
    return infer_inputs(mod, [("PROMPT", np.array([prompt.encode()], dtype=np.object_), "BYTES"),
                              ("NUM_FRAMES", np.array([LONG["frames"]], np.int32), "INT32"),
                              ("HEIGHT", np.array([LONG["height"]], np.int32), "INT32"),
                              ("WIDTH", np.array([LONG["width"]], np.int32), "INT32"),
                              ("STEPS", np.array([LONG["steps"]], np.int32), "INT32")])


def _group_stops(server, cancelled0: float | None = None) -> None:
    if cancelled0 is not None:
        assert wait_for(lambda: metric(server, "mochi_generations_cancelled_total") > cancelled0, 30)
    assert wait_for(lambda: metric(server, "mochi_active_generations") == 0, 30)
    steps = metric(server, "mochi_denoise_steps_total")
    time.sleep(2)
    assert metric(server, "mochi_denoise_steps_total") == steps  # no step ran after


def test_a_client_that_leaves_stops_its_generation(server):
    """A gRPC deadline cancels a unary request in Triton (a plain tritonclient, no server-side timeout): the
    `mochi` orchestrator sees it at its next poll and stops the DiT group at its next step. With the old
    ensemble, every step and the decode ran on."""
    cancelled0 = metric(server, "mochi_generations_cancelled_total")
    g = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        g.infer("mochi", _long_inputs(grpcclient, "a client that gives up"), client_timeout=4)
    assert e.value.status() == "StatusCode.DEADLINE_EXCEEDED", e.value
    _group_stops(server, cancelled0)


def test_the_clients_deadline_reaches_the_server_over_http_too(server):
    """HTTP carries no cancellation: MochiClient sets Triton's per-request timeout from its own deadline, and the
    server ends the generation at a step boundary (UNAVAILABLE, "request timeout") whether or not the client
    is still there to hear it."""
    h = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    with pytest.raises(InferenceServerException) as e:
        h.infer("mochi", _long_inputs(httpclient, "an http client with a deadline"), timeout=3_000_000)
    assert "request timeout of 3 s" in e.value.message(), e.value
    _group_stops(server)
    with MochiClient(server.http_url, "http", timeout_s=2) as c, pytest.raises(Exception):
        c.generate("the client library sets it", seed=2, **LONG)  # its connection gives up at 2 s ...
    _group_stops(server)  # ... and the server stops too


def test_ctrl_c_on_the_cli_cancels_on_the_server_without_a_traceback(server, tmp_path):
    cancelled0 = metric(server, "mochi_generations_cancelled_total")
    proc = subprocess.Popen([sys.executable, "-m", "client", "generate", "--url", server.grpc_url, "--prompt",
                             "interrupted", "--frames", "13", "--height", "48", "--width", "80", "--steps", "200",
                             "--out", str(tmp_path / "x.mp4")], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: metric(server, "mochi_active_generations") >= 1, 60)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "cancelled" in err and "Traceback" not in err, err
    assert wait_for(lambda: metric(server, "mochi_generations_cancelled_total") > cancelled0, 30)
    assert not (tmp_path / "x.mp4").exists()


def test_equal_requests_give_equal_mp4_bytes_and_metrics_name_their_model(server):
    a = MochiClient(server.grpc_url).generate("a lighthouse at dusk", seed=9, **SMALL)
    b = MochiClient(server.http_url, "http").generate("a lighthouse at dusk", seed=9, **SMALL)
    assert a.mp4 == b.mp4 and len(a.mp4) > 1000
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for series in ("mochi_denoise_steps_total", "mochi_active_generations", "mochi_t5_latency_seconds_count",
                   "mochi_vae_latency_seconds_count"):
        assert any(line.startswith(series + "{") and 'model="' in line for line in text.splitlines()), series

