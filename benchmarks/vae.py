"""VAE decode benchmark: full-size random bf16 decoder at 848x480, 49 and 163 frames.
In docs/benchmarks.md: "VAE decode" (1x H200; spread over 2 and 4 GPUs on 4x H200).

Ours on one GPU (exact streamed decode, and spatially tiled to bound memory) and spread over N GPUs (one spatial tile
per GPU, checked against the one-GPU tiled decode with the same plan), against
diffusers' AutoencoderKLMochi on the same weights in the same invocation, with
`enable_tiling()` alone and with framewise decoding added.
"""
from __future__ import annotations

import argparse
import gc
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from mochi_runtime.loading.checkpoints import to_diffusers, vae_key_map
from mochi_runtime.models.config import get_preset
from mochi_runtime.parallel.bootstrap import joined
from mochi_runtime.parallel.topology import Layout, free_port
from mochi_runtime.loading.tiny import init_random_
from mochi_runtime.models.vae import VAEDecoder
from mochi_runtime.models.vae_tiling import TilePlan, decode_tiled, estimate_bytes, grid_plan
from .common import add_shape_args, peak_gib, print_table, run_ranks, write_record


def build_vae(preset: str, device, dtype, seed: int = 0) -> VAEDecoder:
    with torch.device("meta"):
        vae = VAEDecoder(get_preset(preset).vae)
    return init_random_(vae.to_empty(device=device).to(dtype), seed).eval().requires_grad_(False)


def diffusers_twin(vae: VAEDecoder):
    """diffusers' decoder on our weights (its encoder dropped: decoding never uses it)."""
    from diffusers import AutoencoderKLMochi

    cfg = vae.cfg
    with torch.device("meta"):
        ref = AutoencoderKLMochi(decoder_block_out_channels=cfg.block_out_channels,
                                 layers_per_block=cfg.layers_per_block, latents_mean=cfg.latents_mean,
                                 latents_std=cfg.latents_std)
    ref.encoder = None
    result = ref.load_state_dict(to_diffusers(vae.state_dict(), vae_key_map(cfg)), strict=False, assign=True)
    assert not result.unexpected_keys and all(k.startswith("encoder.") for k in result.missing_keys)
    return ref.eval().requires_grad_(False)


def latents(cfg, frames: int, height: int, width: int, device) -> torch.Tensor:
    t = (frames - 1) // cfg.temporal_factor + 1
    g = torch.Generator(device).manual_seed(frames)
    return torch.randn(1, cfg.latent_channels, t, height // 8, width // 8, generator=g, device=device)


def timed(fn, warmup: int, iters: int, device=None) -> tuple[float, float, object]:
    """(median seconds, peak GiB, last output); synchronised wall clock around each whole decode."""
    out = None
    for _ in range(warmup):
        out = fn()
        del out
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        out = None
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], peak_gib(device), out


def _rank_main(rank: int, world: int, port: int, opts: dict, out_q) -> None:
    from mochi_runtime.parallel.vae_decode import decode_distributed

    with joined(Layout(1, world, 1), True, rank, port, timedelta(minutes=20)):  # the VAE uses the world group
        dev = torch.device("cuda", rank)
        vae = build_vae(opts["preset"], dev, torch.bfloat16)
        z = latents(vae.cfg, opts["frames"], opts["height"], opts["width"], dev)
        plan = grid_plan(tuple(z.shape[-2:]), world)

        def run():
            dist.barrier()
            return decode_distributed(vae, z, plan)

        with torch.inference_mode():
            s, peak, out = timed(run, opts["warmup"], opts["iters"], dev)
        peaks = [None] * world
        dist.all_gather_object(peaks, peak)
        if rank == 0:
            with torch.inference_mode():
                ref = decode_tiled(vae, z, plan)  # the same plan in one process
            err = float((out - ref).abs().max())
            tiles = f"{plan.tile_h or z.shape[-2]}x{plan.tile_w or z.shape[-1]}"
            out_q.put({"s": s, "peak_gib": peaks, "max_abs_vs_1gpu_tiled": err, "tiles": tiles})
        dist.barrier()


def run_spread(world: int, opts: dict) -> dict:
    return run_ranks(_rank_main, world, (world, free_port(), opts), f"spread decode over {world} GPUs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks vae")
    add_shape_args(ap, "49,163", cond_tokens=False, warmup=1, iters=3)
    ap.add_argument("--gpus", default="2,4", help="comma list of GPU counts to spread one decode over")
    ap.add_argument("--piece-elements", type=int, default=TilePlan.piece_elements)
    ap.add_argument("--tiles", default="4,8", help="comma list of spatial tile counts to time on one GPU")
    ap.add_argument("--trim", default="genmo", choices=["genmo", "end"],
                    help="where the warm-up frames are dropped; 'end' is diffusers' rule (compare with it)")
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("the VAE benchmark needs a GPU")
    dev = torch.device("cuda", 0)
    vae = build_vae(a.preset, dev, torch.bfloat16)
    ref = None if a.no_diffusers else diffusers_twin(vae)
    mean = torch.tensor(vae.cfg.latents_mean, device=dev).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.cfg.latents_std, device=dev).view(1, -1, 1, 1, 1)
    rows: list[dict] = []
    spreads = [int(g) for g in a.gpus.split(",") if g and int(g) > 1 and int(g) <= torch.cuda.device_count()]
    for frames in (int(f) for f in a.frames.split(",")):
        z = latents(vae.cfg, frames, a.height, a.width, dev)
        group: list[dict] = []

        def add(engine: str, gpus: int, s: float, peak, **extra) -> None:
            group.append({"frames": frames, "engine": engine, "gpus": gpus, "seconds": round(s, 3),
                          "peak_gib": peak, **extra})
            print(f"{frames}f {engine} x{gpus}: {s:.3f} s, peak {peak} GiB", flush=True)

        plan = TilePlan(piece_elements=a.piece_elements, trim=a.trim)
        with torch.inference_mode():
            s, peak, out = timed(lambda: decode_tiled(vae, z, plan), a.warmup, a.iters, dev)
        add("ours streamed (exact)", 1, s, round(peak, 2), frames_out=out.shape[2])
        one, exact = s, out.cpu()
        group[-1]["estimate_gib"] = round(estimate_bytes(vae, z.shape, plan) / 2**30, 2)
        del out
        for n in (int(t) for t in a.tiles.split(",") if t):
            tplan = grid_plan(tuple(z.shape[-2:]), n, piece_elements=a.piece_elements, trim=a.trim)
            with torch.inference_mode():
                s, peak, out = timed(lambda: decode_tiled(vae, z, tplan), a.warmup, a.iters, dev)
            add(f"ours tiled ({n} tiles)", 1, s, round(peak, 2), frames_out=out.shape[2],
                estimate_gib=round(estimate_bytes(vae, z.shape, tplan) / 2**30, 2),
                max_abs_vs_ours_exact=float((out.cpu().float() - exact.float()).abs().max()))
            del out
        if ref is not None:
            zd = (z * std + mean).to(torch.bfloat16)
            ref.enable_tiling()
            # Framewise via the attribute, not `_enable_framewise_decoding()`: that also switches the convs to
            # constant padding, which breaks the decoder in diffusers 0.42.1 (spatial sizes stop matching).
            for name, framewise in (("diffusers tiled", False), ("diffusers tiled+framewise", True)):
                ref.use_framewise_decoding = framewise
                with torch.inference_mode():
                    s, peak, out = timed(lambda: ref.decode(zd).sample, a.warmup, a.iters, dev)
                err = float((out.cpu().float() - exact.float()).abs().max())
                add(name, 1, s, round(peak, 2), frames_out=out.shape[2], max_abs_vs_ours_exact=err)
                del out
        del exact
        gc.collect()
        torch.cuda.empty_cache()
        opts = {"preset": a.preset, "frames": frames, "height": a.height, "width": a.width, "warmup": a.warmup,
                "iters": a.iters}
        for n in spreads:
            r = run_spread(n, opts)
            add("ours spread (tiles)", n, r["s"], [round(p, 2) for p in r["peak_gib"]], tiles=r["tiles"],
                max_abs_vs_1gpu_tiled=r["max_abs_vs_1gpu_tiled"])
        fastest = min((g["seconds"] for g in group if g["engine"].startswith("diffusers")), default=None)
        for g in group:
            if fastest:
                g["speedup_vs_fastest_diffusers"] = round(fastest / g["seconds"], 3)
            g["speedup_vs_ours_1gpu"] = round(one / g["seconds"], 3)
        rows += group
        del z
    print_table(rows, ["frames", "engine", "gpus", "seconds", "peak_gib", "estimate_gib",
                       "speedup_vs_fastest_diffusers", "speedup_vs_ours_1gpu", "max_abs_vs_ours_exact"])
    baseline = [r for r in rows if r["engine"].startswith("diffusers")] or None
    write_record(a.json, "vae", rows, baseline, {
        "shape": {"frames": a.frames, "height": a.height, "width": a.width, "preset": a.preset},
        "piece_elements": a.piece_elements, "trim": a.trim, "diffusers_encoder": "dropped (decode never uses it)",
    }, subcommand="vae")
    return 0
