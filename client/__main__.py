"""python -m client generate --prompt ... --out video.mp4 [--url] [--protocol grpc|http] [--stream] [...]"""
from __future__ import annotations

import argparse
import os
import sys

from .api import Cancelled, MochiClient


def save_preview(frames, path: str) -> str:
    """A preview [T, h, w, 3] as one PNG: its frames side by side, each scaled up 4x (a preview is 1/8 of
    the video's size)."""
    from PIL import Image  # only for --previews (Pillow comes with matplotlib in requirements.txt)

    strip = frames.transpose(1, 0, 2, 3).reshape(frames.shape[1], -1, 3)  # [h, T*w, 3]
    img = Image.fromarray(strip).resize((strip.shape[1] * 4, strip.shape[0] * 4), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m client")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="text -> mp4 through the Triton deployment")
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt", default=None)
    g.add_argument("--out", default="video.mp4")
    g.add_argument("--url", default=None, help="host:port (default 127.0.0.1:8001 gRPC / :8000 HTTP)")
    g.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    g.add_argument("--stream", action="store_true", help="progress bar via mochi_stream (gRPC); Ctrl-C cancels")
    g.add_argument("--frames", type=int, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--guidance", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--cache", default=None,
                   help="step caching: off, teacache:<threshold>, fbcache:<threshold>, interval:<n> (default: the "
                        "server's)")
    g.add_argument("--previews", default=None, metavar="DIR",
                   help="with --stream: save each preview of the video forming as DIR/step_NNN.png")
    g.add_argument("--preview-every", type=int, default=None, help="with --stream: a preview every n steps")
    g.add_argument("--timeout", type=float, default=3600.0)
    a = ap.parse_args(argv)
    if (a.previews or a.preview_every is not None) and not a.stream:
        ap.error("--previews and --preview-every need --stream (previews come in the stream's messages)")
    knobs = dict(frames=a.frames, height=a.height, width=a.width, steps=a.steps, guidance=a.guidance, seed=a.seed,
                 cache=a.cache)
    with MochiClient(a.url, a.protocol, a.timeout) as client:
        try:
            if a.stream:
                from tqdm import tqdm  # only for --stream's progress bar

                bar = tqdm(desc="denoise", unit="step")

                def progress(i: int, total: int, elapsed: float, skipped: int) -> None:
                    bar.total = total
                    bar.n = i
                    bar.set_postfix(elapsed=f"{elapsed:.1f}s", **({"skipped": skipped} if skipped else {}))
                    bar.refresh()

                def preview(step: int, frames) -> None:
                    save_preview(frames, os.path.join(a.previews, f"step_{step:03d}.png"))

                try:
                    result = client.stream(a.prompt, a.negative_prompt, on_progress=progress,
                                           on_preview=preview if a.previews else None,
                                           preview_every=a.preview_every, **knobs)
                finally:
                    bar.close()
            else:
                result = client.generate(a.prompt, a.negative_prompt, **knobs)
        except (Cancelled, KeyboardInterrupt):
            print("cancelled", file=sys.stderr)
            return 130
        except Exception as e:  # server-side errors carry the field and rule
            print(f"error: {e}", file=sys.stderr)
            return 1
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    result.save(a.out)
    f, h, w, _ = result.video.shape
    counted = "" if result.steps_skipped is None else \
        f", {result.steps_computed} steps computed, {result.steps_skipped} skipped"
    print(f"{f} frames {w}x{h}{counted}", file=sys.stderr)
    print(os.path.abspath(a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
