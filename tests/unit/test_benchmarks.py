"""The benchmark harnesses themselves: FLOP accounting, kernel categories, the load driver, and the
serving benchmark end to end on CPU (a real tritonserver against the in-process runtime)."""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from client.loadtest import closed_loop
from numerics import Error, check
from benchmarks.serving import Deployment, step_intervals
from benchmarks.step import categorise, step_flops
from mochi_runtime.models.config import get_preset
from mochi_runtime.models.dit import AsymmDiT


def test_step_flops_match_the_published_per_sample_counts():
    cfg = get_preset("mochi-1-preview").dit
    visual_only = step_flops(cfg, 14310, 0, batch=1)
    assert visual_only["linear"] / 1e12 == pytest.approx(155.6, abs=0.05)  # mochi-facts: visual linears, 49 f
    joint = step_flops(cfg, 14310, 256, batch=1)
    assert joint["attention"] / 1e12 == pytest.approx(125.1, abs=0.05)  # joint attention, 49 f
    long = step_flops(cfg, 44520, 256, batch=1)
    assert long["attention"] / 1e12 == pytest.approx(1182.6, abs=0.1)  # 163 f
    assert step_flops(cfg, 14310, 256)["linear"] == 2 * joint["linear"]  # a CFG step is batch 2


@pytest.mark.parametrize("name,category", [
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16", "attention"),
    ("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "matmul"),
    ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "pointwise (triton)"),
    ("void at::native::(anonymous namespace)::CatArrayBatchedCopy<int>", "copies"),
    ("ncclDevKernel_SendRecv", "communication"),
    ("qk_norm_rope_kernel", "pointwise (triton)"),  # mochi_runtime/ops/qk_rope.py's pass
    ("triton_tem_fused_addmm_mul_0", "matmul"),  # inductor's GEMM template with its epilogue (max_autotune)
])
def test_kernel_names_fall_into_their_categories(name, category):
    assert categorise(name) == category


def test_idle_gaps_sum_the_time_between_kernels_and_name_what_the_gpu_waited_for():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.step import idle_gaps

    def kernel(start, end, name, device=DeviceType.CUDA):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), name=name, device_type=device)

    events = [kernel(0, 100, "mm"), kernel(102, 150, "norm"),  # 2 us apart: below the threshold
              kernel(110, 120, "side"),  # inside "norm": overlapping kernels leave no gap
              kernel(400, 500, "attention"), kernel(520, 600, "mm"), kernel(700, 800, "attention"),
              kernel(150, 900, "host op", DeviceType.CPU)]  # not a kernel
    idle, top = idle_gaps(SimpleNamespace(events=lambda: events))
    assert idle == pytest.approx((250 + 20 + 100) / 1000)
    assert top[0] == {"ms": 0.25, "gaps": 1, "between": "norm -> attention"}
    assert {t["between"] for t in top} == {"norm -> attention", "attention -> mm", "mm -> attention"}


def test_closed_loop_keeps_concurrency_requests_in_flight_and_counts_errors():
    live, peak = [0], [0]
    lock = threading.Lock()

    def send(i):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        if i == 3:
            raise RuntimeError("boom")

    r = closed_loop(send, concurrency=3, requests=9)
    assert peak[0] == 3
    assert r["ok"] == 8 and len(r["errors"]) == 1 and "boom" in r["errors"][0]
    assert 0.04 <= r["p50_s"] <= r["p99_s"] < 1.0
    assert r["requests_per_hour"] > 0


def test_deployment_spec_and_step_intervals():
    d = Deployment.parse("0,1;2,3@2x1x1")
    assert d.gpu_sets == ((0, 1), (2, 3)) and d.env()["MOCHI_MOCHI_DIT_GPUS"] == "0,1;2,3"
    assert d.env()["MOCHI_MOCHI_DIT_CFG_PARALLEL"] == "true"
    assert Deployment.parse("cpu@1x2x1").env()["MOCHI_MOCHI_DIT_CPU_WORLD"] == "2"
    assert step_intervals([0.0, 5.0, 6.0, 7.5]) == [1.0, 1.5]  # the first step (start-up) is dropped


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_serving_benchmark_on_cpu_matches_the_in_process_runtime(tmp_path, official_dir, monkeypatch):
    """The GPU benchmark's own code path, run on the tiny checkpoint: a real server, the ensemble, the stream,
    mochi_dit's latents against WorkerGroup's, and the closed-loop load."""
    from benchmarks.serving import main

    out = tmp_path / "serving.json"
    monkeypatch.setattr(sys, "argv", ["serving"])
    assert main(["--model-dir", str(official_dir), "--deployments", "cpu@1x2x1", "--aux-device", "cpu",
                 "--frames", "13", "--height", "64", "--width", "96", "--steps", "4", "--throughput", "2",
                 "--load-steps", "2", "--requests-per-client", "1", "--history-check", "--compile", "false",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["compile"] == "false"  # given to mochi_dit and to the in-process group alike
    row = rec["results"][0]
    assert row["latents_equal"] and row["latents_max_abs_vs_in_process"] == 0.0
    assert row["in_process_repeat"]["equal"] and row["triton_repeat"]["equal"]
    assert row["in_process_after_load_warmup_vs_in_process"]["equal"]
    assert row["ensemble_frames"] == [13, 64, 96, 3] == row["stream_frames"]
    assert row["stream_progress_messages"] == 4
    assert row["triton_step_ms"] > 0 and row["in_process_step_ms"] > 0
    assert row["load"][0]["ok"] == 2 and not row["load"][0]["errors"]


def test_client_encodes_the_mp4_itself_when_the_server_sends_none(tmp_path):
    from client.api import GenerationResult
    from mochi_runtime.video import probe_mp4

    frames = np.random.default_rng(0).integers(0, 255, (7, 32, 48, 3), dtype=np.uint8)
    path = GenerationResult(frames, b"").save(str(tmp_path / "v.mp4"))
    n, h, w, _ = probe_mp4(path)
    assert (n, h, w) == (7, 32, 48)


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_load_benchmark_writes_a_checkpoint_the_serving_loaders_read(tmp_path, monkeypatch):
    """bench load writes every part of a model directory (dit, decoder, T5 encoder, tokenizer) and loads each
    back in a fresh process through the serving path's loaders (tiny sizes here; mochi-1-preview on a GPU)."""
    from benchmarks.load import main
    from mochi_runtime.loading.checkpoints import ModelDir

    out = tmp_path / "load.json"
    monkeypatch.setattr(sys, "argv", ["load"])
    assert main(["--dir", str(tmp_path / "ckpt"), "--preset", "tiny", "--device", "cpu", "--json", str(out)]) == 0
    rows = {r["part"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"dit", "vae", "t5"} and not any("error" in r for r in rows.values())
    tiny = get_preset("tiny")
    assert rows["dit"]["params"] == sum(p.numel() for p in AsymmDiT(tiny.dit).parameters())
    assert ModelDir.open(tmp_path / "ckpt").layout == "official"


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
@pytest.mark.numeric
def test_parallel_dit_benchmark_runs_shallow_models_for_error_growth(tmp_path, monkeypatch):
    """bench dit --layouts ... --depth N: the same harness as the GPU runs, on CPU processes with gloo (fp32:
    the sharded layout equals one process)."""
    from benchmarks.dit import main

    out = tmp_path / "dit.json"
    monkeypatch.setattr(sys, "argv", ["dit"])
    for k in [k for k in os.environ if k.startswith("NCCL_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("NCCL_DEBUG", "WARN")
    assert main(["--preset", "tiny", "--layouts", "1x2x1,1x2x1", "--engines", "ours,xdit", "--no-compile",
                 "--iters", "1", "--warmup", "0", "--frames", "13", "--height", "64", "--width", "96", "--depth", "2",
                 "--fp32-reference", "--gc-freeze", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["depth"] == 2 and [r["layout"] for r in rec["results"]] == ["1x1x1"] + ["1x2x1"] * 4
    assert rec["nccl_env"] == {"NCCL_DEBUG": "WARN"}  # the NCCL_* settings a record ran under
    assert [r.get("engine") for r in rec["results"][1:]] == ["ours", "xdit"] * 2
    assert rec["engines"] == ["ours", "xdit"]
    first, xdit, second, _ = rec["results"][1:]
    # The records give rel_l2 (bench.common.rel_err). A layout against one GPU: see tests/parallel/test_parallel.py's FORWARD.
    check(Error(first["rel_err_vs_1gpu"], 0.0), rel_l2=5e-6, label="layout vs 1 GPU")
    assert first["rel_err_eager_vs_1gpu"] == first["rel_err_vs_1gpu"]  # nothing compiled
    assert "rel_err_vs_earlier_run" not in first and "rel_err_vs_first_engine" not in first
    assert "xfuser" in xdit["error"]  # xDiT needs GPUs: an error row naming why, and the other rows still ran
    # --fp32-reference: on CPU the runs are fp32 already, so every eager output sits at the fp32 reference
    # --fp32-reference: on CPU the runs are fp32 already, so every eager output sits at the fp32 reference (two
    # fp32 models of the same weights, built separately: rounding only; largest over the margin matrix 1.0e-6)
    check(Error(rec["results"][0]["rel_err_eager_vs_fp32"], 0.0), rel_l2=2e-5, label="1 GPU vs fp32")
    check(Error(first["rel_err_eager_vs_fp32"], 0.0), rel_l2=2e-5, label="layout vs fp32")
    check(Error(second["rel_err_eager_vs_fp32"], 0.0), rel_l2=2e-5, label="layout vs fp32, second run")
    assert second["rel_err_vs_earlier_run"] == 0.0  # a layout named twice: fresh processes, same numbers on CPU
    base = rec["results"][0]
    # every rank's collector passes during the timed steps (after --gc-freeze's warm step and collection)
    assert len(base["gc_per_rank"]) == 1 and len(first["gc_per_rank"]) == 2
    assert all(set(r) <= {"gen0", "gen1", "gen2"} for r in first["gc_per_rank"])
    for row in (base, first, second):  # also timed back to back, as the sampler runs its steps
        assert row["ms_per_cfg_step_chained"] > 0
        ratio = base["ms_per_cfg_step_chained"] / row["ms_per_cfg_step_chained"]  # of the rounded times
        assert row["speedup_chained"] == pytest.approx(ratio, rel=1e-2)


@pytest.mark.parametrize("spec", ["ours:tm", "ours:c2", "xdit:tm", "theirs", "ours:"])
def test_parallel_dit_benchmark_refuses_an_unknown_engine_before_starting_anything(spec):
    from benchmarks.dit import main

    with pytest.raises(SystemExit, match="--engines: .* not among ours, xdit"):
        main(["--preset", "tiny", "--layouts", "1x2x1", "--engines", f"ours,{spec}"])


@pytest.mark.parametrize("name", ["step", "vae"])
def test_gpu_benchmarks_parse_the_arguments_their_scripts_pass(name, monkeypatch):
    """The GPU-only benchmarks get as far as asking for a GPU with the flags docs/benchmarks.md gives (an argparse
    slip would otherwise surface only on a lent machine)."""
    import importlib

    argv = {"step": ["--frames", "49", "--fp8", "--fp8-attention", "--tuned", "--profile", "--warmup", "1",
                     "--iters", "4", "--cond-tokens", "64", "--json", "x.json"],
            "vae": ["--frames", "163,49", "--gpus", "1", "--tiles", "6", "--warmup", "1", "--iters", "2",
                    "--height", "480", "--width", "848", "--no-diffusers"]}[name]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a GPU"):
        importlib.import_module(f"benchmarks.{name}").main(argv)


def test_environment_sets_settings_for_a_block_and_restores_them(monkeypatch):
    """How a benchmark tries NCCL settings in fresh processes: set for the block, then exactly as before."""
    from benchmarks.common import environment

    monkeypatch.setenv("NCCL_BUFFSIZE", "4194304")
    monkeypatch.delenv("NCCL_MIN_P2P_NCHANNELS", raising=False)
    with environment({"NCCL_BUFFSIZE": "16777216", "NCCL_MIN_P2P_NCHANNELS": "32"}):
        assert os.environ["NCCL_BUFFSIZE"] == "16777216" and os.environ["NCCL_MIN_P2P_NCHANNELS"] == "32"
    assert os.environ["NCCL_BUFFSIZE"] == "4194304" and "NCCL_MIN_P2P_NCHANNELS" not in os.environ
    with pytest.raises(RuntimeError), environment({"NCCL_MIN_P2P_NCHANNELS": "32"}):
        raise RuntimeError("a failing run")
    assert "NCCL_MIN_P2P_NCHANNELS" not in os.environ


def test_chained_timing_runs_every_call_back_to_back_and_divides():
    from benchmarks.common import time_cuda_chained

    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)

    ms, per_run = time_cuda_chained(step, calls=3, repeats=2)
    assert len(calls) == 6 and len(per_run) == 2
    assert 10 <= ms < 50  # per call, not per run of three


def test_rows_to_rank0_puts_every_ranks_rows_on_the_queue_and_ends_the_group(monkeypatch):
    import queue as stdqueue
    from datetime import timedelta

    import torch.distributed as dist

    from benchmarks.common import rows_to_rank0
    from mochi_runtime.parallel.topology import free_port, join_loopback_group

    port = free_port()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # the group sets both: restored after the test
    monkeypatch.setenv("MASTER_PORT", str(port))
    join_loopback_group(0, 1, port, gpu=False, timeout=timedelta(seconds=60))
    q: stdqueue.Queue = stdqueue.Queue()
    rows_to_rank0([{"rank": 0, "ms": 1.0}], q)
    assert q.get_nowait() == [{"rank": 0, "ms": 1.0}]
    assert not dist.is_initialized()


def test_collector_passes_are_recorded_with_their_generation():
    import gc

    from benchmarks.common import gc_pauses, gc_summary

    with gc_pauses() as pauses:
        gc.collect()
        gc.collect(0)
    assert [g for g, _ in pauses][-2:] == [2, 0] and all(ms >= 0 for _, ms in pauses)
    summary = gc_summary(pauses)
    assert summary["gen2"]["passes"] >= 1 and summary["gen0"]["max_ms"] <= summary["gen0"]["total_ms"]
    seen = len(pauses)
    gc.collect()
    assert len(pauses) == seen  # the callback is gone after the block


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_pipeline_budget_runs_use_the_generate_commands_planner(tmp_path, official_dir):
    """bench pipeline --budget-runs (on a GPU: full size under 24/48 GiB caps) runs `generate`'s own planner and
    pipeline in a fresh process per case: a case that fits generates every frame, one that cannot is refused by
    the planner with its reason (tiny model on CPU here)."""
    from benchmarks.pipeline import budget_runs

    ok, refused = budget_runs(str(official_dir), "fp32:2:13,fp32:0.01:13", 48, 80, 2)
    assert ok["fits"] and ok["frames_out"] == 13 and "fp32 DiT on one GPU" in ok["plan"], ok
    assert ok["estimate_gib"] > 0 and set(ok["stage_s"]) == {"text", "denoise", "decode"}
    assert not refused["fits"] and "memory budget" in refused["refused"], refused



DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_plots_are_drawn_from_the_records(tmp_path):
    """benchmarks/plots.py draws every figure docs/benchmarks.md shows, from the records alone."""
    from benchmarks.plots import FIGURES, main

    assert main(["--out", str(tmp_path)]) == 0
    shown = set(re.findall(r"\(img/([\w.]+\.png)\)", (DOCS / "benchmarks.md").read_text()))
    assert shown == set(FIGURES), (shown, set(FIGURES))
    for name in FIGURES:
        drawn = tmp_path / name
        assert drawn.stat().st_size > 10_000, name  # a figure with axes, bars and labels, not an empty canvas
        assert (DOCS / "img" / name).exists(), f"docs/img/{name}: run python -m benchmarks plots"


def test_the_records_are_exactly_those_the_docs_cite():
    """Every record a doc names exists in docs/bench/, and no record sits there that no doc names."""
    texts = "".join(p.read_text() for p in [*DOCS.glob("*.md"), DOCS.parent / "README.md"])
    cited = set(re.findall(r"\b([a-z0-9_]+\.json)\b", texts)) - {"out.json", "x.json"}
    stored = {p.name for p in (DOCS / "bench").glob("*.json")}
    assert cited - stored == set(), f"cited but missing: {sorted(cited - stored)}"
    assert stored - cited == set(), f"stored but cited by no doc: {sorted(stored - cited)}"


def test_cache_quality_tool_writes_its_record_and_plot(tmp_path, official_dir, monkeypatch):
    """`python -m benchmarks cache` on the tiny checkpoint, in one process and on a 2-process CPU group: the same
    seeds in every mode, the uncached video as each one's reference, steps counted, quality measured."""
    from benchmarks.cache import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# one per line\na red fox in snow\nwaves on rocks\n")
    monkeypatch.setattr(sys, "argv", ["cache"])
    records = {}
    for layout in ("1x1x1", "1x2x1"):
        out = tmp_path / f"cache_{layout}.json"
        assert main(["--model-dir", str(official_dir), "--prompts", str(prompts), "--seeds", "0,1",
                     "--modes", "interval:2,teacache:0,off", "--frames", "13", "--height", "48", "--width", "80",
                     "--steps", "6", "--layout", layout, "--threads", "1", "--json", str(out),
                     "--plot", str(tmp_path / f"cache_{layout}.png")]) == 0
        records[layout] = rec = json.loads(out.read_text())
        assert (tmp_path / f"cache_{layout}.png").stat().st_size > 10_000
        assert [r["mode"] for r in rec["results"]] == ["off", "interval:2", "teacache:0.0"]  # off first, once
        assert len(rec["videos"]) == 3 * 2 * 2 and rec["shape"]["steps"] == 6
        off, interval, tea0 = rec["results"]
        assert off["psnr_min"] == 100.0 and off["ssim_min"] == 1.0 and off["speedup"] == 1.0
        assert tea0["psnr_min"] == 100.0 and tea0["steps_computed"] == 6  # threshold 0: the uncached video
        assert interval["steps_computed"] == 4 and 5 < interval["psnr_mean"] < 100 and interval["ssim_mean"] < 1
    # a worker group gives the one-process videos' quality (same skips, same videos up to fp32 reordering)
    one, two = (records[k]["results"][1] for k in ("1x1x1", "1x2x1"))
    assert abs(one["psnr_mean"] - two["psnr_mean"]) < 0.1


def test_psnr_and_ssim_measure_what_they_name():
    from benchmarks.cache import IDENTICAL_PSNR, psnr, ssim

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(3, 32, 40, 3), dtype=np.uint8)
    assert psnr(video, video) == IDENTICAL_PSNR and ssim(video, video) == pytest.approx(1.0)
    off_by_one = np.clip(video.astype(int) + 1, 0, 255).astype(np.uint8)
    mse = np.mean((off_by_one.astype(float) - video) ** 2)
    assert psnr(off_by_one, video) == pytest.approx(10 * np.log10(255**2 / mse))
    noisy = np.clip(video + rng.normal(0, 40, video.shape), 0, 255).astype(np.uint8)
    assert ssim(noisy, video) < ssim(off_by_one, video) < 1.0
    assert psnr(noisy, video) < psnr(off_by_one, video)


def test_preview_cost_benchmark_runs_its_loop_with_and_without_previews(tmp_path, monkeypatch):
    from benchmarks.preview import main

    out = tmp_path / "preview.json"
    monkeypatch.setattr(sys, "argv", ["preview"])
    assert main(["--preset", "tiny", "--frames", "13", "--height", "48", "--width", "80", "--steps", "9",
                 "--every", "4", "--repeats", "1", "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    none, some = rec["results"]
    assert none["preview_every"] == 0 and some["preview_every"] == 4 and some["previews_per_run"] == 2
    assert none["previews_per_run"] == 0 and rec["source"] == "in_process"
    assert some["preview_shape"] == [3, 6, 10, 3] and len(rec["runs"]) == 2 and rec["baseline"] == none


def test_preview_and_cache_tools_through_a_real_tritonserver(tmp_path, official_dir, monkeypatch):
    """Both tools' --triton source on the tiny checkpoint: the previews arrive as mochi_stream streams them (steps
    4 and 8 of 9, none at PREVIEW_EVERY 0) before the video; the cache modes' step counts come back from `mochi`."""
    from benchmarks import cache, preview

    monkeypatch.setattr(sys, "argv", ["preview"])
    shape = ["--frames", "13", "--height", "48", "--width", "80"]
    out = tmp_path / "preview.json"
    assert preview.main(["--model-dir", str(official_dir), "--triton", *shape, "--steps", "9", "--every", "4",
                         "--repeats", "1", "--work-dir", str(tmp_path / "p"), "--json", str(out)]) == 0
    rec = json.loads(out.read_text())
    none, some = rec["results"]
    assert rec["source"] == "triton" and none["previews_per_run"] == 0 and some["previews_per_run"] == 2
    assert some["preview_shape"] == [3, 6, 10, 3]
    assert 0 < some["first_preview_s"] < some["latency_s"] and none["median_s"] > 0  # the DiT metric moved

    out = tmp_path / "cache.json"
    assert cache.main(["--model-dir", str(official_dir), "--triton", *shape, "--steps", "6",
                       "--modes", "off,interval:2", "--work-dir", str(tmp_path / "c"), "--json", str(out)]) == 0
    off, interval = json.loads(out.read_text())["results"]
    assert (off["steps_computed"], interval["steps_computed"]) == (6, 4)
    assert off["psnr_min"] == 100.0 and interval["psnr_mean"] < 100
    assert 0 < off["dit_s"] < off["latency_s"] and 0 < interval["dit_s"] < interval["latency_s"]
