from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from mochi_runtime.video import probe_mp4


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_writes_playable_mp4_with_exact_frames(tmp_path):
    out = tmp_path / "fox.mp4"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "a red fox", "--frames", "19",
         "--height", "96", "--width", "160", "--steps", "4", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out.resolve())
    frames, h, w, codec = probe_mp4(out)
    assert (frames, h, w) == (19, 96, 160)
    assert codec == "h264"
    assert "denoise" in proc.stderr and "decode" in proc.stderr  # per-stage timings
    assert elapsed < 60, elapsed


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_rejects_bad_frames(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--frames", "20", "--out",
         str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "num_frames" in proc.stderr and "6k+1" in proc.stderr


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_parallel_group_with_parallel_vae(tmp_path):
    out = tmp_path / "par.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "a red fox", "--frames", "13",
         "--height", "64", "--width", "96", "--steps", "2", "--ulysses", "2", "--parallel-vae", "--out", str(out),
         "--quiet"], capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr
    assert probe_mp4(out)[:3] == (13, 64, 96)


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_parallel_vae_needs_a_group(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--parallel-vae", "--out",
         str(tmp_path / "x.mp4")], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "--parallel-vae" in proc.stderr


def test_offloaded_text_encoder_gives_the_same_embeddings(official_dir):
    from mochi_runtime.loading.checkpoints import ModelDir
    from mochi_runtime.loading.loaders import load_text_encoder

    md = ModelDir.open(official_dir)
    plain = load_text_encoder(md, "cpu")
    offloaded = load_text_encoder(md, "cpu", offload=True)
    a, b = plain.encode(["a red fox", ""]), offloaded.encode(["a red fox", ""])
    assert offloaded.offload and next(offloaded.model.parameters()).device.type == "cpu"
    assert bool((a.features == b.features).all()) and bool((a.mask == b.mask).all())


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_memory_budget_refuses_what_cannot_fit_and_plans_what_can(tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--frames", "163", "--height", "480",
         "--width", "848", "--gpu-memory-budget-gib", "0.05", "--out", str(tmp_path / "no.mp4")],
        capture_output=True, text=True, timeout=120,
    )
    assert refused.returncode == 2 and "memory budget" in refused.stderr and "num_frames" in refused.stderr
    assert not (tmp_path / "no.mp4").exists()
    out = tmp_path / "ok.mp4"
    ok = subprocess.run(
        [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--frames", "7", "--height", "64",
         "--width", "96", "--steps", "2", "--gpu-memory-budget-gib", "2", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert ok.returncode == 0, ok.stderr
    assert "memory plan for 2 GiB per GPU: fp32 DiT on one GPU, T5 resident, VAE in whole frames" in ok.stderr
    assert probe_mp4(out)[:3] == (7, 64, 96)


@pytest.mark.slow  # starts processes or a server (not in make test-fast)
def test_cli_xdit_engine_needs_a_gpu_group(tmp_path):
    """The xDiT side-by-side engine is a property of a GPU worker group: refused, with the rule, elsewhere."""
    base = [sys.executable, "-m", "mochi_runtime", "generate", "--prompt", "x", "--attention-engine", "xdit",
            "--out", str(tmp_path / "x.mp4")]
    alone = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 2 and "--attention-engine xdit" in alone.stderr and "--gpus" in alone.stderr
    on_cpu = subprocess.run(base + ["--ulysses", "2"], capture_output=True, text=True, timeout=120)
    assert on_cpu.returncode == 2 and "attention_engine=xdit runs on GPUs only" in on_cpu.stderr
