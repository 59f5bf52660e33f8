"""Full-size serving through a real tritonserver on GPUs, against the in-process runtime on the same machine.
In docs/benchmarks.md: "Serving through Triton" (2x and 4x H200).

    python -m benchmarks serving --model-dir /tmp/mochi-full \\
        --deployments "0,1,2,3@2x2x1" "0,1;2,3@2x1x1" --steps 6 --throughput 1,2,4 --json out.json

A deployment is `GPU sets@CxUxR`: one worker group (a "lane" of the one `mochi_dit` instance)
per `;`-separated GPU set, each running the layout (cfg x ulysses x ring), all fed by one queue;
`cpu@CxUxR` runs CPU processes (a smoke run of the tiny model). For each deployment this starts
the server (`mochi_runtime.serving.tritonserver`, the same entry point as `make serve`) on the
checkpoint directory with T5 and the VAE on `--aux-device`, then:
  1. warms every lane up at the benchmark's shape (compilation is not timed);
  2. sends t5_encoder the prompt and mochi_dit the embeddings with a seed -> LATENTS;
  3. runs one request through the `mochi` ensemble and one through `mochi_stream`,
     recording when each per-step progress message arrives (step latency inside Triton);
  4. drives the ensemble at each concurrency with the client's closed-loop load script;
then stops the server and runs the same layout in this process (`WorkerGroup`, the
runtime without Triton) on the same embeddings and seed: latents compared, step
latency compared.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .common import print_table, write_record

PROMPT = "a red fox running through fresh snow at dawn, cinematic"


@dataclasses.dataclass(frozen=True)
class Deployment:
    gpu_sets: tuple[tuple[int, ...], ...]
    layout: str  # CxUxR

    @classmethod
    def parse(cls, text: str) -> "Deployment":
        sets, _, layout = text.partition("@")
        if sets == "cpu":  # CPU processes with gloo: a smoke run of the tiny model
            return cls(((),), layout or "1x1x1")
        gpu_sets = tuple(tuple(int(g) for g in s.split(",")) for s in sets.split(";") if s.strip())
        return cls(gpu_sets, layout or "1x1x1")

    @property
    def name(self) -> str:
        where = "GPUs " + " | ".join(",".join(map(str, s)) for s in self.gpu_sets) if self.gpu_sets[0] else "CPU"
        return f"{len(self.gpu_sets)} x [{self.layout} on {where}]"

    def env(self) -> dict[str, str]:
        from mochi_runtime.parallel import Layout

        lay = Layout.parse(self.layout)
        return {"MOCHI_MOCHI_DIT_GPUS": ";".join(",".join(map(str, s)) for s in self.gpu_sets),
                "MOCHI_MOCHI_DIT_CPU_WORLD": str(lay.world), "MOCHI_MOCHI_DIT_CPU_GROUPS": str(len(self.gpu_sets)),
                "MOCHI_MOCHI_DIT_CFG_PARALLEL": "true" if lay.cfg == 2 else "false",
                "MOCHI_MOCHI_DIT_ULYSSES": str(lay.ulysses), "MOCHI_MOCHI_DIT_RING": str(lay.ring)}


def _knobs(a) -> dict:
    return {"frames": a.frames, "height": a.height, "width": a.width, "guidance": a.guidance}


def _t5(grpc_mod, client, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    from client.api import infer_inputs

    res = client.infer("t5_encoder", infer_inputs(grpc_mod, [
        ("PROMPT", np.array([prompt.encode()], dtype=np.object_), "BYTES"),
        ("NEGATIVE_PROMPT", np.array([b""], dtype=np.object_), "BYTES")]))
    return res.as_numpy("TEXT_EMBEDS"), res.as_numpy("TEXT_MASK")


def _dit(grpc_mod, client, embeds, mask, a, steps: int, seed: int) -> np.ndarray:
    from client.api import infer_inputs

    values = [("TEXT_EMBEDS", embeds.astype(np.float32), "FP32"), ("TEXT_MASK", mask.astype(np.bool_), "BOOL"),
              ("NUM_FRAMES", np.array([a.frames], np.int32), "INT32"),
              ("HEIGHT", np.array([a.height], np.int32), "INT32"), ("WIDTH", np.array([a.width], np.int32), "INT32"),
              ("STEPS", np.array([steps], np.int32), "INT32"), ("GUIDANCE", np.array([a.guidance], np.float32), "FP32"),
              ("SEED", np.array([seed], np.int64), "INT64")]
    return client.infer("mochi_dit", infer_inputs(grpc_mod, values), client_timeout=3600).as_numpy("LATENTS")


def _generate_once(url: str, **kwargs):
    from client.api import MochiClient

    with MochiClient(url) as c:
        return c.generate(PROMPT, **kwargs)


def step_intervals(stamps: list[float]) -> list[float]:
    """Seconds between consecutive step events, the first step dropped (it carries the request's start-up)."""
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def serve_and_measure(dep: Deployment, a, work: Path) -> dict:
    import tritonclient.grpc as grpc_mod

    from client.api import MochiClient
    from client.loadtest import closed_loop

    from mochi_runtime.parallel.topology import free_port
    from mochi_runtime.serving.tritonserver import ServerConfig, TritonServer

    env = dep.env()
    env.update({"MOCHI_T5_ENCODER_DEVICE": a.aux_device, "MOCHI_VAE_DECODER_DEVICE": a.aux_device,
                "MOCHI_VAE_DECODER_ENCODE_MP4": "true" if a.mp4 else "false",
                "MOCHI_MOCHI_DIT_MAX_QUEUE": "16", "MOCHI_MOCHI_STREAM_MAX_CONCURRENT": "8",
                "MOCHI_MOCHI_DIT_COMPILE": a.compile})
    cfg = ServerConfig(model_dir=a.model_dir,
                       http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                       work_dir=work / "server", extra_env=env, extra_args=list(a.server_arg))
    out: dict = {"deployment": dep.name, "lanes": len(dep.gpu_sets), "layout": dep.layout}
    t0 = time.perf_counter()
    server = TritonServer(cfg).start()
    try:
        server.wait_ready(timeout=a.start_timeout)
        out["server_ready_s"] = round(time.perf_counter() - t0, 1)
        print(f"{dep.name}: ready in {out['server_ready_s']} s", flush=True)
        url = server.grpc_url
        knobs = _knobs(a)
        client = grpc_mod.InferenceServerClient(url)
        # Triton's own T5 embeddings, used for the latents below; asked first so that a stub that cannot read
        # string inputs fails the run at once (with the server log), before minutes of warm-up
        embeds, mask = _t5(grpc_mod, client, PROMPT)
        # 1. warm-up at the benchmark's shape, one request per lane at once (compiles every group)
        tw = time.perf_counter()
        warm = closed_loop(lambda i: _generate_once(url, steps=1, seed=i, **knobs),
                           len(dep.gpu_sets), len(dep.gpu_sets))
        out["warmup_s"] = round(time.perf_counter() - tw, 1)
        if warm["errors"]:
            raise RuntimeError(f"warm-up failed: {warm['errors']}")
        # 2. latents of mochi_dit for a fixed seed, on those embeddings
        out["latents"] = _dit(grpc_mod, client, embeds, mask, a, a.steps, a.seed)
        out["triton_repeat"] = compare(_dit(grpc_mod, client, embeds, mask, a, a.steps, a.seed), out["latents"])
        out["embeds"], out["mask"] = embeds, mask
        client.close()
        # 3. one request through the ensemble, one through mochi_stream with per-step arrival times
        with MochiClient(url) as c:
            te = time.perf_counter()
            res = c.generate(PROMPT, steps=a.steps, seed=a.seed, **knobs)
            out["ensemble_s"] = round(time.perf_counter() - te, 2)
            out["ensemble_frames"] = list(res.video.shape)
            stamps: list[float] = []
            ts = time.perf_counter()
            res = c.stream(PROMPT, steps=a.steps, seed=a.seed, on_progress=lambda s, n, e, k: stamps.append(
                time.perf_counter()), **knobs)
            out["stream_s"] = round(time.perf_counter() - ts, 2)
            out["stream_frames"] = list(res.video.shape)
            out["stream_progress_messages"] = len(stamps)
            gaps = step_intervals(stamps)
            out["triton_step_ms"] = round(1000 * statistics.median(gaps), 1) if gaps else None
            out["triton_step_ms_all"] = [round(1000 * g, 1) for g in gaps]
        print(f"{dep.name}: ensemble {out['ensemble_s']} s {out['ensemble_frames']}, stream {out['stream_s']} s, "
              f"step {out['triton_step_ms']} ms", flush=True)
        # 4. throughput through the ensemble
        loads = []
        for conc in (int(c) for c in a.throughput.split(",") if c):
            r = closed_loop(lambda i: _generate_once(url, steps=a.load_steps, seed=1000 + i, **knobs),
                            conc, max(conc * a.requests_per_client, 2))
            loads.append(r)
            print(f"{dep.name}: concurrency {conc}: {r['requests_per_hour']} req/h, p50 {r['p50_s']} s, "
                  f"p99 {r['p99_s']} s, errors {len(r['errors'])}", flush=True)
        out["load"] = loads
    except Exception:
        print(server.log_tail(80), flush=True)
        raise
    finally:
        server.stop(timeout=120)
    return out


def in_process(dep: Deployment, a, embeds: np.ndarray, mask: np.ndarray, load_warmup: bool = False) -> dict:
    """The same layout on the first GPU set without Triton: latents and per-step latency.

    load_warmup: first run the generation mochi_dit runs when it loads (a different shape compiled first)."""
    from mochi_runtime.parallel import GroupSpec, Layout, WorkerGroup
    from mochi_runtime.serving.adapters import switch
    from mochi_runtime.serving.dit_engine import load_warmup as server_warmup
    from mochi_runtime.models.text_encoder import CFGText
    from mochi_runtime.validation import GenerationRequest

    feats, m = torch.from_numpy(embeds.copy()), torch.from_numpy(mask.astype(np.bool_))
    text = CFGText.from_stacked(feats, m)
    with WorkerGroup(GroupSpec(Layout.parse(dep.layout), a.model_dir, dep.gpu_sets[0] or None,
                               compile=switch({"compile": a.compile}, "compile"))) as group:  # as mochi_dit reads it
        if load_warmup:
            first, warm_text = server_warmup(feats.shape[-1])
            group.denoise(first, warm_text)
        warm = GenerationRequest("", num_frames=a.frames, height=a.height, width=a.width, steps=1,
                                 guidance=a.guidance, seed=a.seed)
        group.denoise(warm, text)
        stamps: list[float] = []
        req = dataclasses.replace(warm, steps=a.steps)
        latents = group.denoise(req, text, on_step=lambda s, n, k: stamps.append(time.perf_counter()))
        again = group.denoise(req, text)  # run-to-run spread of the same request on the same group
    gaps = step_intervals(stamps)
    return {"latents": latents.float().numpy(), "step_ms": round(1000 * statistics.median(gaps), 1),
            "step_ms_all": [round(1000 * g, 1) for g in gaps],
            "repeat": compare(again.float().numpy(), latents.float().numpy())}


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_abs": float(np.abs(a - b).max()),
            "rel_err": float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30)),
            "equal": bool(np.array_equal(a, b))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks serving")
    ap.add_argument("--model-dir", required=True, help="checkpoint directory (bench load --dir writes one)")
    ap.add_argument("--deployments", nargs="+", default=["0,1,2,3@2x2x1", "0,1;2,3@2x1x1"])
    ap.add_argument("--aux-device", default="cuda:0", help="where t5_encoder and vae_decoder run")
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=848)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--steps", type=int, default=6, help="steps of the latents / ensemble / stream requests")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--throughput", default="1,2,4", help="concurrency levels ('' to skip)")
    ap.add_argument("--load-steps", type=int, default=8, help="steps per request in the throughput runs")
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--mp4", action="store_true", help="have vae_decoder encode mp4 (needs PyAV on the server)")
    ap.add_argument("--start-timeout", type=float, default=900)
    ap.add_argument("--server-arg", action="append", default=[], help="extra tritonserver flag (repeatable)")
    ap.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                    help="mochi_dit's compile parameter, and the same for the in-process group (false: eager, "
                         "whose multi-GPU latents are reproducible across processes)")
    ap.add_argument("--history-check", action="store_true",
                    help="also run the in-process group after the warm-up mochi_dit runs at load, and compare")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for text in a.deployments:
        dep = Deployment.parse(text)
        work = Path(tempfile.mkdtemp(prefix="mochi-serving-bench-"))
        served = serve_and_measure(dep, a, work)
        embeds, mask = served.pop("embeds"), served.pop("mask")
        local = in_process(dep, a, embeds, mask)
        tri, ref = served.pop("latents"), local.pop("latents")
        if a.history_check:  # does compiling the server's load-time shape first change the latents?
            mirrored = in_process(dep, a, embeds, mask, load_warmup=True)
            served["in_process_after_load_warmup_vs_in_process"] = compare(mirrored["latents"], ref)
            served["latents_vs_in_process_after_load_warmup"] = compare(tri, mirrored["latents"])
        diff = compare(tri, ref)
        served["latents_max_abs_vs_in_process"] = diff["max_abs"]
        served["latents_rel_err_vs_in_process"] = diff["rel_err"]
        served["latents_equal"] = diff["equal"]
        served["in_process_repeat"] = local["repeat"]
        served["in_process_step_ms"] = local["step_ms"]
        served["in_process_step_ms_all"] = local["step_ms_all"]
        if served.get("triton_step_ms"):
            served["triton_vs_in_process"] = round(served["triton_step_ms"] / local["step_ms"], 4)
        rows.append(served)
        print(f"{dep.name}: latents vs in-process {diff}, in-process run twice {local['repeat']}, step in Triton "
              f"{served.get('triton_step_ms')} ms vs in-process {local['step_ms']} ms", flush=True)
        shutil.rmtree(work, ignore_errors=True)
        _record(a, rows)  # after every deployment: a run cut short by a time limit keeps what it measured
    table = []
    for r in rows:
        for load in r.get("load", []):
            table.append({"deployment": r["deployment"], "concurrency": load["concurrency"],
                          "req_per_hour": load["requests_per_hour"], "p50_s": load["p50_s"], "p99_s": load["p99_s"],
                          "errors": len(load["errors"])})
    print_table(rows, ["deployment", "server_ready_s", "ensemble_s", "stream_s", "triton_step_ms",
                       "in_process_step_ms", "triton_vs_in_process", "latents_max_abs_vs_in_process"])
    if table:
        print_table(table, ["deployment", "concurrency", "req_per_hour", "p50_s", "p99_s", "errors"])
    return 0


def _record(a, rows: list[dict]) -> None:
    write_record(a.json, "serving", rows, None, {
        "shape": {"frames": a.frames, "height": a.height, "width": a.width, "steps": a.steps,
                  "load_steps": a.load_steps, "guidance": a.guidance},
        "aux_device": a.aux_device, "model_dir": a.model_dir, "compile": a.compile,
        "baseline_note": "in_process_* fields: the same layout run by WorkerGroup in this process after the server "
                         "stopped, same machine, same call",
    }, subcommand="serving")
