"""Against a real tritonserver (nvidia-pytriton's 2.51 build) started here, on the embedded tiny model,
with mochi_dit running a 2-process gloo group (ulysses 2)."""
from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from client import MochiClient
from client.api import Cancelled, infer_inputs
from mochi_runtime.parallel.topology import free_port
from mochi_runtime.serving.tritonserver import ServerConfig, TritonServer
from mochi_runtime.video import probe_mp4
from triton_helpers import SMALL, assert_same_video, dit_workers, metric, small_request

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ports = [free_port() for _ in range(3)]
    srv = TritonServer(ServerConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                                    work_dir=tmp_path_factory.mktemp("triton")))
    srv.start()
    try:
        srv.wait_ready(600)
        yield srv
    finally:
        rc = srv.stop()
        print(f"tritonserver exited with {rc}")


@pytest.fixture()
def grpc(server):
    with MochiClient(server.grpc_url, "grpc") as c:
        yield c


def test_http_and_grpc_generate_mp4_deterministic_and_equal_to_in_process(server, official_dir):
    with MochiClient(server.http_url, "http") as http:
        a = http.generate("a red fox in snow", seed=5, **SMALL)
    with MochiClient(server.grpc_url, "grpc") as g:
        b = g.generate("a red fox in snow", seed=5, **SMALL)
        c = g.generate("a red fox in snow", seed=6, **SMALL)
    assert a.video.shape == (13, 48, 80, 3) and a.video.dtype == np.uint8
    frames, h, w, codec = probe_mp4(a.mp4)
    assert (frames, h, w) == (13, 48, 80) and codec == "h264"
    assert a.video.tobytes() == b.video.tobytes()  # same seed, two protocols: bytes-identical
    assert not np.array_equal(a.video, c.video)  # another seed differs

    # The in-process pipeline with the same 2-process layout gives the same frames.
    from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup
    from mochi_runtime.pipeline import MochiPipeline

    with WorkerGroup(GroupSpec(Layout(1, 2, 1))) as group:
        pipe = MochiPipeline.from_dir(None, device="cpu", denoiser=group)
        ref = pipe.generate(small_request("a red fox in snow", seed=5)).frames
    assert_same_video(ref, a.video)


def test_stream_reports_every_step_then_the_video(server, grpc):
    seen = []
    result = grpc.stream("waves on rocks", on_progress=lambda i, n, t, k: seen.append((i, n)), seed=3, **SMALL)
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert result.video.shape == (13, 48, 80, 3)
    plain = grpc.generate("waves on rocks", seed=3, **SMALL)
    assert plain.video.tobytes() == result.video.tobytes()


def test_cancel_stops_the_group_within_seconds_and_next_request_is_right(server, grpc):
    before_cancelled = metric(server, "mochi_generations_cancelled_total")
    steps_seen = []

    def cancel_after_two():
        return len(steps_seen) >= 2

    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        grpc.stream("a long one", on_progress=lambda i, n, t, k: steps_seen.append(i), should_cancel=cancel_after_two,
                    frames=13, height=48, width=80, steps=200, seed=9)
    deadline = time.monotonic() + 5
    while metric(server, "mochi_generations_cancelled_total") <= before_cancelled and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "mochi_generations_cancelled_total") == before_cancelled + 1, "DiT did not stop in 5 s"
    stopped_at = metric(server, "mochi_denoise_steps_total")
    time.sleep(1.0)
    assert metric(server, "mochi_denoise_steps_total") == stopped_at  # the group is idle, no rank left running
    assert time.monotonic() - t0 < 60
    again = grpc.generate("waves on rocks", seed=3, **SMALL)
    ref = grpc.stream("waves on rocks", seed=3, **SMALL)
    assert again.video.tobytes() == ref.video.tobytes()


BAD = [
    ("NUM_FRAMES", np.int32, 8, "num_frames"), ("NUM_FRAMES", np.int32, 1, "num_frames"),
    ("NUM_FRAMES", np.int32, 169, "num_frames"), ("HEIGHT", np.int32, 50, "height"), ("WIDTH", np.int32, 0, "width"),
    ("WIDTH", np.int32, -16, "width"), ("STEPS", np.int32, 0, "steps"), ("STEPS", np.int32, 100000, "steps"),
    ("GUIDANCE", np.float32, math.nan, "guidance"), ("GUIDANCE", np.float32, math.inf, "guidance"),
    ("GUIDANCE", np.float32, 0.25, "guidance"), ("SEED", np.int64, -1, "seed"),
    ("PROMPT", np.object_, b"", "prompt"), ("PROMPT", np.object_, b"x" * 5000, "prompt"),
    ("PROMPT", np.object_, b"\xff\xfe\xfd", "prompt"), ("PROMPT", np.object_, b"a\x00b", "prompt"),
    ("NEGATIVE_PROMPT", np.object_, b"y" * 5000, "negative_prompt"),
    ("CACHE", np.object_, b"teacache:-1", "cache"), ("CACHE", np.object_, b"sometimes", "cache"),
    ("CACHE", np.object_, b"interval:0", "cache"),
]
TYPES = {np.int32: "INT32", np.int64: "INT64", np.float32: "FP32", np.object_: "BYTES"}


def _infer(client, overrides: dict, extra: list | None = None, outputs: list[str] | None = None):
    values = {"PROMPT": (np.object_, b"a cat"), "NUM_FRAMES": (np.int32, 13), "HEIGHT": (np.int32, 48),
              "WIDTH": (np.int32, 80), "STEPS": (np.int32, 2)}
    values.update(overrides)
    inputs = infer_inputs(grpcclient, [(name, np.array([v], dtype=dt), TYPES[dt]) for name, (dt, v) in values.items()])
    asked = [grpcclient.InferRequestedOutput(name) for name in outputs] if outputs else None
    return client.infer("mochi", inputs + (extra or []), outputs=asked, client_timeout=300)


@pytest.mark.parametrize("name,dt,value,field", BAD, ids=[f"{b[0]}={b[2]!r:.12}" for b in BAD])
def test_bad_request_is_invalid_arg_naming_the_field(server, name, dt, value, field):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        _infer(client, {name: (dt, value)})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
    assert re.search(rf"\b{field}\b", e.value.message()), e.value.message()


def test_wrong_dtype_shape_and_unknown_input_are_rejected_and_server_stays_healthy(server, grpc):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    wrong_dtype = grpcclient.InferInput("STEPS", [1], "FP32")
    wrong_dtype.set_data_from_numpy(np.array([2.0], dtype=np.float32))
    wrong_shape = grpcclient.InferInput("SEED", [2], "INT64")
    wrong_shape.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    unknown = grpcclient.InferInput("FOO", [1], "INT32")
    unknown.set_data_from_numpy(np.array([1], dtype=np.int32))
    for extra, word in ((wrong_dtype, "STEPS"), (wrong_shape, "SEED"), (unknown, "FOO")):
        inputs = infer_inputs(grpcclient, [("PROMPT", np.array([b"a cat"], dtype=np.object_), "BYTES")])
        with pytest.raises(InferenceServerException) as e:
            client.infer("mochi", inputs + [extra], client_timeout=120)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and word in e.value.message(), e.value
    # HTTP too: 400 with the field named.
    with MochiClient(server.http_url, "http") as http:
        with pytest.raises(InferenceServerException) as e:
            http.generate("a cat", frames=10, height=48, width=80, steps=2)
        assert "num_frames" in e.value.message() and "400" in str(e.value.status())
    assert client.is_server_live() and client.is_server_ready()
    for model in ("mochi", "t5_encoder", "mochi_dit", "vae_decoder", "mochi_stream"):
        assert client.is_model_ready(model)
    ok = grpc.generate("a red fox in snow", seed=5, **SMALL)
    ok2 = grpc.generate("a red fox in snow", seed=5, **SMALL)
    assert ok.video.shape == (13, 48, 80, 3) and ok.video.tobytes() == ok2.video.tobytes()


def test_metrics_move_and_repeated_prompt_hits_t5_cache(server, grpc):
    steps0 = metric(server, "mochi_denoise_steps_total")
    dit0 = metric(server, "mochi_denoise_latency_seconds_count")
    waits0 = metric(server, "mochi_dit_queue_wait_seconds_count")
    hits0 = metric(server, "mochi_t5_cache_hits_total")
    prompt = f"a cached prompt {time.time()}"
    grpc.generate(prompt, seed=1, **SMALL)
    grpc.generate(prompt, seed=2, **SMALL)  # same prompt, other seed: T5 answered from the cache
    assert metric(server, "mochi_denoise_steps_total") == steps0 + 2 * SMALL["steps"]
    assert metric(server, "mochi_denoise_latency_seconds_count") == dit0 + 2
    assert metric(server, "mochi_t5_latency_seconds_count") >= 1
    assert metric(server, "mochi_vae_latency_seconds_count") >= 2
    assert metric(server, "mochi_t5_cache_hits_total") >= hits0 + 1
    assert metric(server, "mochi_active_generations") == 0
    assert metric(server, "mochi_dit_queue_wait_seconds_count") == waits0 + 2  # the autoscaling signal
    assert metric(server, "mochi_dit_queued_generations") == 0


def test_step_caching_per_request_on_both_models_with_counts_and_metrics(server, grpc):
    """interval:2 over 6 steps computes steps 1, 3, 5 and 6 and skips 2 and 4 (tests/unit/test_step_cache.py
    counts the block calls); both client-facing models take it and say so, and the DiT's metrics count it."""
    knobs = dict(SMALL, steps=6, seed=4)
    computed0 = metric(server, "mochi_denoise_steps_computed_total")
    skipped0 = metric(server, "mochi_denoise_steps_skipped_total")
    plain = grpc.generate("a kite over a beach", **knobs)
    assert (plain.steps_computed, plain.steps_skipped) == (6, 0)  # the models' default: off
    cached = grpc.generate("a kite over a beach", cache="interval:2", **knobs)
    assert (cached.steps_computed, cached.steps_skipped) == (4, 2)
    assert not np.array_equal(cached.video, plain.video)
    seen = []
    streamed = grpc.stream("a kite over a beach", cache="interval:2", **knobs,
                           on_progress=lambda i, n, t, k: seen.append((i, k)))
    assert (streamed.steps_computed, streamed.steps_skipped) == (4, 2)
    assert streamed.video.tobytes() == cached.video.tobytes()
    assert [i for i, _ in seen] == list(range(1, 7))
    skipped = [k for _, k in seen]
    assert skipped == sorted(skipped) and skipped[-1] == 2 and all(k <= i for i, k in seen)
    assert metric(server, "mochi_denoise_steps_computed_total") == computed0 + 6 + 4 + 4
    assert metric(server, "mochi_denoise_steps_skipped_total") == skipped0 + 2 + 2
    # a client that names its outputs gets those alone (a GPU instance's stub crashed on unasked ones)
    only = _infer(grpcclient.InferenceServerClient(server.grpc_url), {"CACHE": (np.object_, b"interval:2")},
                  outputs=["STEPS_SKIPPED"])
    assert [o.name for o in only.get_response().outputs] == ["STEPS_SKIPPED"] and only.as_numpy("STEPS_SKIPPED")[0] == 0
    with pytest.raises(InferenceServerException) as e:  # the stream refuses a bad mode by name too
        grpc.stream("a kite", cache="teacache", **knobs)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "cache" in e.value.message(), e.value


def test_stream_sends_previews_of_the_video_forming(server, grpc, tmp_path):
    """Every preview_every steps (not after the last: the video comes then) a step message carries the denoised
    estimate mapped to colours, [T, H/8, W/8, 3]; the client CLI saves them; 0 turns them off."""
    knobs = dict(SMALL, steps=6, seed=8)
    previews, steps = [], []
    result = grpc.stream("a lighthouse at night", preview_every=2, **knobs,
                         on_progress=lambda i, n, t, k: steps.append(i),
                         on_preview=lambda i, frames: previews.append((i, frames)))
    assert steps == list(range(1, 7))
    assert [i for i, _ in previews] == [2, 4]
    for _, frames in previews:
        assert frames.shape == (3, 6, 10, 3) and frames.dtype == np.uint8
    plain = grpc.stream("a lighthouse at night", preview_every=0, **knobs,
                        on_preview=lambda i, frames: previews.append((i, frames)))
    assert len(previews) == 2 and plain.video.tobytes() == result.video.tobytes()  # previews change nothing
    from client.__main__ import main

    out = tmp_path / "v.mp4"
    assert main(["generate", "--prompt", "a lighthouse at night", "--url", server.grpc_url, "--stream",
                 "--previews", str(tmp_path / "previews"), "--preview-every", "2", "--frames", "13", "--height", "48",
                 "--width", "80", "--steps", "6", "--out", str(out)]) == 0
    saved = sorted(p.name for p in (tmp_path / "previews").iterdir())
    assert saved == ["step_002.png", "step_004.png"] and out.stat().st_size > 0
    from PIL import Image

    assert Image.open(tmp_path / "previews" / "step_002.png").size == (3 * 10 * 4, 6 * 4)


def test_perf_analyzer_csv(server, tmp_path):
    from client.loadtest import run

    libs = _tmp_leftovers("mochi-pa-libs-*")
    rows = run(server.grpc_url, concurrency="1:2", requests=3, csv_path=tmp_path / "perf.csv")
    assert _tmp_leftovers("mochi-pa-libs-*") <= libs  # its library links are removed after the run
    rows.sort(key=lambda r: int(r["Concurrency"]))  # perf_analyzer orders its CSV by throughput
    assert [int(r["Concurrency"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["Inferences/Second"]) > 0
        assert int(r["p50 latency"]) > 0 and int(r["p99 latency"]) >= int(r["p50 latency"])


def test_python_load_driver_writes_the_same_csv_columns(server, tmp_path):
    from client.loadtest import main, parse_csv

    csv_path = tmp_path / "py.csv"
    assert main(["--url", server.grpc_url, "--driver", "python", "--concurrency", "1:2", "--requests", "2",
                 "--csv", str(csv_path)]) == 0
    rows = parse_csv(csv_path)
    assert [int(r["Concurrency"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["Inferences/Second"]) > 0
        assert int(r["p50 latency"]) > 0 and int(r["p99 latency"]) >= int(r["p50 latency"])


def _tmp_leftovers(pattern: str) -> set[str]:
    import glob
    import tempfile

    return set(glob.glob(str(Path(tempfile.gettempdir()) / pattern)))


def test_make_demo_writes_the_mp4(tmp_path):
    work_dirs = _tmp_leftovers("mochi-triton-*")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.is_file() and probe_mp4(path)[:3] == (19, 96, 160)
    assert _tmp_leftovers("mochi-triton-*") <= work_dirs  # the server's work dir went with it


def test_killed_dit_worker_fails_the_request_then_the_group_respawns(server, grpc):
    """Three times in one server lifetime: SIGKILL a DiT worker mid-generation; that request errors within 30 s,
    the group respawns by itself (restart metric +1), and the next requests give the same video as before."""
    import os
    import signal
    before = grpc.generate("a red fox in snow", seed=5, **SMALL)
    restarts0 = metric(server, "mochi_dit_group_restarts_total")
    for round_ in range(1, 4):
        workers = dit_workers(server)
        assert len(workers) == 2, workers
        errors: list = []

        def long_request():
            try:
                grpc.generate("doomed", frames=13, height=48, width=80, steps=200, seed=1)
            except InferenceServerException as e:
                errors.append(e)

        t = threading.Thread(target=long_request)
        t.start()
        t0 = time.monotonic()
        while metric(server, "mochi_active_generations") < 1 and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        time.sleep(0.5)
        os.kill(workers[round_ % 2], signal.SIGKILL)
        killed = time.monotonic()
        t.join(60)
        assert not t.is_alive() and errors, f"round {round_}: request did not fail"
        assert time.monotonic() - killed < 30, f"round {round_}: error came {time.monotonic() - killed:.1f} s late"
        assert "worker group is down" in errors[0].message()
        deadline = time.monotonic() + 60
        while metric(server, "mochi_dit_group_restarts_total") < restarts0 + round_ and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(server, "mochi_dit_group_restarts_total") == restarts0 + round_
        assert not any(Path(f"/proc/{w}").exists() for w in workers)  # the old group is gone, no orphans
        new_workers = dit_workers(server)
        assert len(new_workers) == 2 and not set(new_workers) & set(workers)
        a = grpc.generate("a red fox in snow", seed=5, **SMALL)
        assert a.video.tobytes() == before.video.tobytes(), f"round {round_}"  # the respawned group is right


def test_request_timeout_ends_a_waiting_request_with_a_clear_error(server, grpc):
    """A client timeout (Triton's per-request `timeout`) ends a request that waited too long in the DiT queue."""
    from triton_helpers import dit_inputs

    from mochi_runtime.models.config import get_preset

    client = grpcclient.InferenceServerClient(server.grpc_url)
    feat_dim = get_preset("tiny").dit.t5_feat_dim  # the server runs the embedded tiny default
    done = threading.Event()

    def long_request():
        try:
            grpc.generate("busy", frames=31, height=64, width=96, steps=60, seed=2)
        finally:
            done.set()

    t = threading.Thread(target=long_request)
    t.start()
    t0 = time.monotonic()
    while metric(server, "mochi_active_generations") < 1 and time.monotonic() - t0 < 30:
        time.sleep(0.1)
    t1 = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        client.infer("mochi_dit", dit_inputs(grpcclient, feat_dim), timeout=1_000_000)
    waited = time.monotonic() - t1
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "timeout" in e.value.message(), e.value
    assert waited < 30
    assert done.wait(120)  # the long request itself still completes
    assert client.is_server_live() and client.is_model_ready("mochi_dit")


def test_queue_overload_rejects_the_excess_and_loses_nothing(server):
    """mochi_dit queues at most 8 generations (max_queue) besides the running one: with a long generation
    running and 14 more at once, the excess is refused at once with UNAVAILABLE, and every accepted request
    gets its own seed's video. (The long one holds the group until the queue is full, then is cancelled: 14
    clients connecting on a loaded machine once arrived slower than a fixed 150-step generation ran.)"""
    knobs = dict(SMALL, steps=2)
    from concurrent.futures import ThreadPoolExecutor

    busy_done, release = threading.Event(), threading.Event()

    def busy():  # holds the group until the queue is full (or a minute passed), then is cancelled
        try:
            with MochiClient(server.grpc_url, "grpc") as c:
                c.stream("busy", seed=1, should_cancel=release.is_set, **dict(SMALL, frames=61, steps=200))
        except Cancelled:
            pass
        finally:
            busy_done.set()

    def release_when_full():
        deadline = time.monotonic() + 60
        while metric(server, "mochi_dit_queued_generations") < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the excess arrives and is refused meanwhile
        release.set()

    threading.Thread(target=busy, daemon=True).start()
    t0 = time.monotonic()
    while metric(server, "mochi_active_generations") < 1 and time.monotonic() - t0 < 30:
        time.sleep(0.05)

    def one(seed):
        with MochiClient(server.grpc_url, "grpc") as c:
            t0 = time.monotonic()
            try:
                return seed, c.generate("queue test", seed=seed, **knobs), None, time.monotonic() - t0
            except InferenceServerException as e:
                return seed, None, e, time.monotonic() - t0

    threading.Thread(target=release_when_full, daemon=True).start()
    with ThreadPoolExecutor(14) as pool:
        results = list(pool.map(one, range(100, 114)))
    accepted = [(s, r) for s, r, e, _ in results if r is not None]
    rejected = [(s, e, dt) for s, _, e, dt in results if e is not None]
    assert rejected and len(accepted) >= 8, (len(accepted), [str(e) for _, e, _ in rejected])
    for _, e, dt in rejected:
        assert e.status() == "StatusCode.UNAVAILABLE" and "queue is full" in e.message(), e
        assert dt < 5, dt  # refused at once, not after waiting
    with MochiClient(server.grpc_url, "grpc") as c:
        for seed, r in accepted:  # each response matches its own request's seed
            assert r.video.tobytes() == c.generate("queue test", seed=seed, **knobs).video.tobytes(), seed
    assert busy_done.wait(120)


def test_same_request_after_a_server_restart_is_bytes_identical(server, grpc, tmp_path):
    first = grpc.generate("a red fox in snow", seed=21, **SMALL)
    ports = [free_port() for _ in range(3)]
    with TritonServer(ServerConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                                   work_dir=tmp_path)) as other:
        with MochiClient(other.grpc_url, "grpc") as c:
            again = c.generate("a red fox in snow", seed=21, **SMALL)
    assert again.video.tobytes() == first.video.tobytes()
