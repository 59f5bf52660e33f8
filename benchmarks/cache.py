"""Step caching: the time each mode saves and the quality it costs, on the same prompts and seeds.
In docs/benchmarks.md: "Step caching" (1x H100). docs/operations.md says which mode to use.

    python -m benchmarks cache --model-dir DIR --prompts prompts.txt --seeds 0,1 \\
        --modes off,teacache:0.06,teacache:0.09,interval:2 --json cache.json --plot cache.png

Every prompt and seed is generated once per mode, `off` first (it is the reference and always runs). Per
video the record holds the DiT's time, the steps computed and skipped, the peak GPU memory, and PSNR and SSIM
of the video against the uncached one of the same prompt and seed; per mode the mean time, the speed-up over
`off`, and the mean and worst PSNR/SSIM. The plot is quality against speed-up, one point per mode.

Where the videos come from (one of):
- `--model-dir DIR`: the runtime's own pipeline on a checkpoint (T5, DiT, VAE; `--layout CxUxR` runs the DiT
  on a worker group over that many GPUs, or CPU processes). With real weights this is an operator's curve for
  their own prompts; on random weights it shows the mechanism only.
- `--preset mochi-1-preview`: random full-size DiT and VAE built in place on the GPU and random text features
  (no checkpoint to write): the GPU speed measurement. Prompts are ignored.
- `--model-dir DIR --triton`: each video through a real tritonserver on the checkpoint (`mochi`, one GPU or
  CPU): the end-to-end latency per mode, and the DiT's share from its latency metric.
"""
from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mochi_runtime.models.step_cache import step_cache_for
from mochi_runtime.models.text_encoder import CFGText
from mochi_runtime.models.vae import frames_to_uint8
from mochi_runtime.models.vae_tiling import TilePlan, decode_tiled
from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup
from mochi_runtime.pipeline import MochiPipeline
from mochi_runtime.serving.adapters import param_env_name
from mochi_runtime.sampler import CFGVelocity, euler_sample, initial_noise, linear_quadratic_schedule
from mochi_runtime.validation import CacheMode, GenerationRequest, validate
from .common import print_table, write_record
from .vae import build_vae
from .weights import build_dit, cfg_inputs

IDENTICAL_PSNR = 100.0  # dB given to a video equal to its reference (PSNR is infinite there; the usual cap)


# -- quality ----------------------------------------------------------------------------------------------------
def psnr(video: np.ndarray, ref: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of uint8 video [F, H, W, 3] against ref (IDENTICAL_PSNR when equal)."""
    assert video.shape == ref.shape, (video.shape, ref.shape)
    mse = float(np.mean((video.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return IDENTICAL_PSNR if mse == 0 else min(IDENTICAL_PSNR, 10 * np.log10(255.0**2 / mse))


def _luma(video: np.ndarray) -> torch.Tensor:
    """[F, 1, H, W] float64 luma (BT.601) of a uint8 [F, H, W, 3] video."""
    v = torch.from_numpy(video).double()
    return (0.299 * v[..., 0] + 0.587 * v[..., 1] + 0.114 * v[..., 2])[:, None]


def ssim(video: np.ndarray, ref: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of the luma, frame by frame (Wang et al. 2004: an 11x11 Gaussian window of
    sigma 1.5, K1 0.01, K2 0.03, 8-bit range), averaged over frames. 1.0 for equal videos."""
    assert video.shape == ref.shape, (video.shape, ref.shape)
    x, y = _luma(video), _luma(ref)
    window = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)  # valid region only: no padding artefacts at the borders

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


# -- where the videos come from ---------------------------------------------------------------------------------
Generate = Callable[[GenerationRequest], dict]  # request -> {"frames", "dit_s", "steps_skipped", ...}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_reset() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


@contextmanager
def pipeline_source(a) -> Iterator[Generate]:
    """The runtime's pipeline on a checkpoint, with the DiT on a worker group when --layout asks for one."""
    layout = Layout.parse(a.layout)
    group = None
    if layout.world > 1:
        gpus = tuple(range(layout.world)) if torch.cuda.is_available() else None
        group = WorkerGroup(GroupSpec(layout, a.model_dir, gpus, threads=a.threads))
    try:
        pipe = MochiPipeline.from_dir(a.model_dir, device=a.device, denoiser=group)

        def generate(request: GenerationRequest) -> dict:
            _peak_reset()
            result = pipe.generate(request)
            return {"frames": result.frames, "dit_s": result.times["denoise"], "steps_skipped": result.steps_skipped,
                    "peak_gib": _peak_gib()}

        yield generate
    finally:
        if group is not None:
            group.close()


@contextmanager
def preset_source(a) -> Iterator[Generate]:
    """Random full-size weights built in place (GPU speed measurements; no checkpoint, no T5)."""
    dev = torch.device(a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    dit = build_dit(a.preset, dev, dtype)
    if dev.type == "cuda":
        dit.compile_blocks()
    vae = build_vae(a.preset, dev, dtype)

    def generate(request: GenerationRequest) -> dict:
        _, _, y, mask = cfg_inputs(dit.cfg, request.num_frames, request.height, request.width, 64, dev, dtype,
                                   seed=request.seed)
        text = CFGText.from_stacked(y.float(), mask)
        cache = step_cache_for(request)
        velocity = CFGVelocity(dit, text, request.guidance, cache)
        z = initial_noise(request.seed, request.latent_shape).to(dev)
        _peak_reset()
        _sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            latents = euler_sample(velocity, z, linear_quadratic_schedule(request.steps), None, cache)
        _sync()
        dit_s = time.perf_counter() - t0
        peak = _peak_gib()
        with torch.inference_mode():
            frames = frames_to_uint8(decode_tiled(vae, latents, TilePlan()), device="cpu")[0].numpy()
        return {"frames": frames, "dit_s": dit_s, "steps_skipped": cache.skipped if cache else 0, "peak_gib": peak}

    yield generate


def _metric(url: str, name: str) -> float:
    """A series' value summed over its labels, from the server's Prometheus text."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name)] in " {")


@contextmanager
def triton_server(model_dir: str, layout: str, frames: int, steps: int, *, mp4: bool, work_dir: str | None,
                  start_timeout: float) -> Iterator[tuple]:
    """A real tritonserver on the checkpoint, ready: (a gRPC MochiClient, its metrics URL). The DiT group on the
    first GPUs (T5 and the VAE beside rank 0), or CPU processes; limits raised to the shape asked for."""
    # tritonclient and the server's supervisor only here: GPU images run the in-process sources without them
    from client.api import MochiClient
    from mochi_runtime.parallel.topology import free_port
    from mochi_runtime.serving.tritonserver import ServerConfig, TritonServer
    from .serving import Deployment

    world = Layout.parse(layout).world
    where = ",".join(str(g) for g in range(world)) if torch.cuda.is_available() else "cpu"
    env = Deployment.parse(f"{where}@{layout}").env()
    aux = "cuda:0" if torch.cuda.is_available() else "cpu"
    env.update({"MOCHI_T5_ENCODER_DEVICE": aux, "MOCHI_VAE_DECODER_DEVICE": aux,
                "MOCHI_VAE_DECODER_ENCODE_MP4": "true" if mp4 else "false"})
    for model in ("mochi", "mochi_stream", "mochi_dit"):
        env[param_env_name(model, "max_frames")] = str(frames)
        env[param_env_name(model, "max_steps")] = str(max(200, steps))
    work = Path(work_dir or "/tmp/mochi-bench-triton")
    cfg = ServerConfig(model_dir=model_dir, http_port=free_port(), grpc_port=free_port(),
                       metrics_port=free_port(), work_dir=work / "server", extra_env=env)
    server = TritonServer(cfg).start()
    try:
        server.wait_ready(timeout=start_timeout)
        with MochiClient(server.grpc_url, "grpc", timeout_s=3600) as client:
            yield client, f"http://127.0.0.1:{cfg.metrics_port}/metrics"
    finally:
        server.stop()


def dit_seconds(metrics_url: str) -> float:
    """The server's DiT time so far (mochi_denoise_latency_seconds_sum over its labels)."""
    return _metric(metrics_url, "mochi_denoise_latency_seconds_sum")


@contextmanager
def triton_source(a) -> Iterator[Generate]:
    """Each video through `mochi` on a real tritonserver (triton_server)."""
    with triton_server(a.model_dir, a.layout, a.frames, a.steps, mp4=not a.no_mp4, work_dir=a.work_dir,
                       start_timeout=a.start_timeout) as (client, metrics):

        def generate(request: GenerationRequest) -> dict:
            dit0 = dit_seconds(metrics)
            t0 = time.perf_counter()
            res = client.generate(request.prompt, request.negative_prompt, frames=request.num_frames,
                                  height=request.height, width=request.width, steps=request.steps,
                                  guidance=request.guidance, seed=request.seed, cache=request.cache)
            wall = time.perf_counter() - t0
            return {"frames": res.video, "dit_s": dit_seconds(metrics) - dit0, "latency_s": wall,
                    "steps_skipped": res.steps_skipped, "peak_gib": None}

        yield generate


# -- the run ----------------------------------------------------------------------------------------------------
def summarize(videos: list[dict], modes: list[str]) -> list[dict]:
    """Per mode: mean DiT seconds, speed-up over off, steps computed, mean and worst PSNR / SSIM."""
    base = statistics.mean(v["dit_s"] for v in videos if v["mode"] == "off")
    out = []
    for mode in modes:
        mine = [v for v in videos if v["mode"] == mode]
        dit_s = statistics.mean(v["dit_s"] for v in mine)
        row = {"mode": mode, "videos": len(mine), "dit_s": round(dit_s, 3), "speedup": round(base / dit_s, 3),
               "steps_computed": round(statistics.mean(v["steps_computed"] for v in mine), 2),
               "psnr_mean": round(statistics.mean(v["psnr"] for v in mine), 2),
               "psnr_min": round(min(v["psnr"] for v in mine), 2),
               "ssim_mean": round(statistics.mean(v["ssim"] for v in mine), 4),
               "ssim_min": round(min(v["ssim"] for v in mine), 4)}
        if all("latency_s" in v for v in mine):
            row["latency_s"] = round(statistics.mean(v["latency_s"] for v in mine), 2)
        peaks = [v["peak_gib"] for v in mine if v.get("peak_gib") is not None]
        if peaks:
            row["peak_gib"] = max(peaks)
        out.append(row)
    return out


def save(a, videos: list[dict], modes: list[str], prompts: list[str], seeds: list[int]) -> dict:
    """The record of the videos so far (the modes that have some), written to --json."""
    done = [m for m in modes if any(v["mode"] == m for v in videos)]
    summary = summarize(videos, done)
    return write_record(a.json, "cache", summary, baseline=summary[0],
                        extra={"source": "triton" if a.triton else "preset" if a.preset else "pipeline",
                               "layout": a.layout, "prompts": prompts, "seeds": seeds,
                               "shape": {"frames": a.frames, "height": a.height, "width": a.width, "steps": a.steps,
                                         "guidance": a.guidance},
                               "videos": videos}, subcommand="cache")


def read_prompts(path: str | None) -> list[str]:
    if not path:
        return ["a red fox running through fresh snow at dawn, cinematic"]
    prompts = [line.strip() for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise SystemExit(f"{path}: no prompts (one per line)")
    return prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks cache", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="checkpoint directory (official or diffusers layout)")
    src.add_argument("--preset", help="random full-size weights built in place, e.g. mochi-1-preview")
    ap.add_argument("--triton", action="store_true", help="through a real tritonserver on --model-dir")
    ap.add_argument("--prompts", default=None, help="text file, one prompt per line (default: one built-in prompt)")
    ap.add_argument("--modes", default="off,teacache:0.06,teacache:0.09,interval:2")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--layout", default="1x1x1", help="CxUxR: the DiT on a worker group (--model-dir)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per worker (CPU groups)")
    ap.add_argument("--warmup-steps", type=int, default=1, help="an untimed generation first (compiles the DiT)")
    ap.add_argument("--no-mp4", action="store_true", help="--triton: the server sends VIDEO only (no PyAV there)")
    ap.add_argument("--start-timeout", type=float, default=900.0)
    ap.add_argument("--work-dir", default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="PNG of quality against speed-up")
    a = ap.parse_args(argv)
    if a.triton and not a.model_dir:
        ap.error("--triton needs --model-dir")
    modes = [str(CacheMode.parse(m)) for m in a.modes.split(",") if m.strip()]
    modes = ["off"] + [m for m in modes if m != "off"]
    seeds = [int(s) for s in a.seeds.split(",")]
    prompts = read_prompts(a.prompts)
    base = validate(GenerationRequest(prompts[0], num_frames=a.frames, height=a.height, width=a.width, steps=a.steps,
                                      guidance=a.guidance))
    source = triton_source if a.triton else preset_source if a.preset else pipeline_source
    videos: list[dict] = []
    with source(a) as generate:
        if a.warmup_steps:
            generate(base.with_(steps=a.warmup_steps))
        refs: dict[tuple[int, int], np.ndarray] = {}
        for mode in modes:
            for p, prompt in enumerate(prompts):
                for seed in seeds:
                    got = generate(base.with_(prompt=prompt, seed=seed, cache=mode))
                    frames = got.pop("frames")
                    refs.setdefault((p, seed), frames)  # off runs first
                    ref = refs[(p, seed)]
                    row = {"mode": mode, "prompt": p, "seed": seed, **got,
                           "steps_computed": a.steps - got["steps_skipped"],
                           "psnr": round(psnr(frames, ref), 3), "ssim": round(ssim(frames, ref), 5)}
                    row["dit_s"] = round(row["dit_s"], 3)
                    videos.append(row)
                    print(f"{mode:>16}  prompt {p} seed {seed}: DiT {row['dit_s']:.2f} s, "
                          f"{row['steps_computed']}/{a.steps} steps, PSNR {row['psnr']:.2f} dB, "
                          f"SSIM {row['ssim']:.4f}", flush=True)
                    record = save(a, videos, modes, prompts, seeds)  # after every video: a cut-off run keeps them
    summary = record["results"]
    print_table(summary, list(summary[0]))
    if a.plot:
        from .plots import draw_cache_quality  # matplotlib only when a plot is asked for

        draw_cache_quality(record, a.plot)
        print(a.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
