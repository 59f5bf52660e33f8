"""One validator for every generation request (CLI, Python API and Triton adapters).

Errors name the field and the rule, e.g. `num_frames: must be 6k+1 (7, 13, 19, ...), got 8`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

SEED_MAX = 2**63 - 1


class RequestError(ValueError):
    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True)
class Limits:
    """Caps that protect memory and time; servers set them from config."""

    max_frames: int = 163
    max_pixels: int = 848 * 480
    max_steps: int = 200
    max_prompt_bytes: int = 4096
    min_guidance: float = 1.0
    max_guidance: float = 20.0


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = ""
    num_frames: int = 49
    height: int = 480
    width: int = 848
    steps: int = 64
    guidance: float = 4.5
    seed: int = 0
    cache: str = "off"  # step caching (CacheMode's text): off, teacache:<t>, fbcache:<t>, interval:<n>[:<w>]
    preview_every: int = 0  # a low-resolution preview of the denoised estimate every n steps (0: none)

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        return (1, 12, (self.num_frames - 1) // 6 + 1, self.height // 8, self.width // 8)

    def with_(self, **changes: Any) -> "GenerationRequest":
        return replace(self, **changes)


@dataclass(frozen=True)
class CacheMode:
    """Which denoising steps skip the DiT's block stack and reuse the last computed residual
    (models/step_cache.py does it; docs/operations.md says which to use).

    off: every step computed (the default). teacache:<t>: TeaCache with Mochi-1's published calibration, skip
    while the accumulated rescaled change of block 0's modulated input stays under t. fbcache:<t>: First Block
    Cache, run block 0 and skip the rest while its residual moved less than t (relative L1) since the last
    computed step. interval:<n>[:<w>]: compute the first w steps (default 1), then every n-th. Every mode
    computes the first and the last step; threshold 0 and interval 1 compute every step.
    """

    kind: str = "off"
    threshold: float = 0.0  # teacache, fbcache
    every: int = 1  # interval
    warmup: int = 1  # interval

    KINDS = ("off", "teacache", "fbcache", "interval")
    RULE = "must be off, teacache:<threshold>, fbcache:<threshold> or interval:<n>[:<warm-up steps>]"

    @classmethod
    def parse(cls, text: Any) -> "CacheMode":
        """RequestError("cache", ...) for anything but the forms above (thresholds finite and >= 0, n and w
        integers >= 1)."""
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        if not isinstance(text, str):
            raise RequestError("cache", f"{cls.RULE}, got {type(text).__name__}")
        if len(text) > 64:
            raise RequestError("cache", f"{cls.RULE}, got {len(text)} characters")
        kind, _, arg = text.strip().lower().partition(":")
        if kind == "off" and not arg:
            return cls()
        if kind in ("teacache", "fbcache"):
            try:
                t = float(arg)
            except ValueError:
                raise RequestError("cache", f"{cls.RULE}; the threshold must be a number, got {text!r}") from None
            if not math.isfinite(t) or t < 0:
                raise RequestError("cache", f"{kind} threshold must be finite and >= 0, got {text!r}")
            return cls(kind, threshold=t)
        if kind == "interval":
            n, _, w = arg.partition(":")
            try:
                every, warmup = int(n), int(w) if w else 1
            except ValueError:
                raise RequestError("cache", f"{cls.RULE}; n and w must be integers, got {text!r}") from None
            if every < 1 or warmup < 1:
                raise RequestError("cache", f"interval n and warm-up must be >= 1, got {text!r}")
            return cls(kind, every=every, warmup=warmup)
        raise RequestError("cache", f"{cls.RULE}, got {text!r}")

    def __str__(self) -> str:
        if self.kind in ("teacache", "fbcache"):
            return f"{self.kind}:{self.threshold!r}"
        if self.kind == "interval":
            return f"interval:{self.every}" + (f":{self.warmup}" if self.warmup != 1 else "")
        return "off"


def _as_text(field: str, value: Any, cap: int, allow_empty: bool) -> str:
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(field, "must be valid UTF-8 text") from None
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RequestError(field, "must not be empty")
    if "\x00" in value:
        raise RequestError(field, "must not contain NUL characters")
    size = len(value.encode("utf-8"))
    if size > cap:
        raise RequestError(field, f"must be at most {cap} bytes of UTF-8, got {size}")
    return value


def _as_int(field: str, value: Any) -> int:
    if isinstance(value, bool):
        raise RequestError(field, "must be an integer, got bool")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise RequestError(field, f"must be an integer, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        try:
            import numpy as np  # only when a numpy integer arrives: this module imports the standard library alone

            if isinstance(value, np.integer):
                return int(value)
        except ImportError:  # pragma: no cover
            pass
        raise RequestError(field, f"must be an integer, got {type(value).__name__}")
    return value


def validate_text(prompt: Any, negative_prompt: Any, limits: Limits = Limits()) -> tuple[str, str]:
    """The two prompts as str (bytes are decoded as UTF-8), or RequestError."""
    return (_as_text("prompt", prompt, limits.max_prompt_bytes, allow_empty=False),
            _as_text("negative_prompt", negative_prompt, limits.max_prompt_bytes, allow_empty=True))


def validate(request: GenerationRequest, limits: Limits = Limits(), check_text: bool = True) -> GenerationRequest:
    """Return a normalised request or raise RequestError naming the first bad field.

    check_text=False skips the prompts (the DiT stage receives embeddings, not text).
    """
    if check_text:
        prompt, negative = validate_text(request.prompt, request.negative_prompt, limits)
    else:
        prompt, negative = request.prompt, request.negative_prompt

    frames = _as_int("num_frames", request.num_frames)
    if frames < 7 or (frames - 1) % 6:
        raise RequestError("num_frames", f"must be 6k+1 and >= 7 (7, 13, 19, ...), got {frames}")
    if frames > limits.max_frames:
        raise RequestError("num_frames", f"must be at most {limits.max_frames} on this server, got {frames}")

    dims = {}
    for name in ("height", "width"):
        v = _as_int(name, getattr(request, name))
        if v <= 0 or v % 16:
            raise RequestError(name, f"must be a positive multiple of 16, got {v}")
        dims[name] = v
    pixels = dims["height"] * dims["width"]
    if pixels > limits.max_pixels:
        raise RequestError("height", f"height*width must be at most {limits.max_pixels} pixels, got {pixels}")

    steps = _as_int("steps", request.steps)
    if not 1 <= steps <= limits.max_steps:
        raise RequestError("steps", f"must be between 1 and {limits.max_steps}, got {steps}")

    g = request.guidance
    if isinstance(g, bool) or not isinstance(g, (int, float)) and not hasattr(g, "__float__"):
        raise RequestError("guidance", f"must be a number, got {type(g).__name__}")
    g = float(g)
    if not math.isfinite(g):
        raise RequestError("guidance", f"must be finite, got {g}")
    if not limits.min_guidance <= g <= limits.max_guidance:
        raise RequestError("guidance", f"must be between {limits.min_guidance} and {limits.max_guidance}, got {g}")

    seed = _as_int("seed", request.seed)
    if not 0 <= seed <= SEED_MAX:
        raise RequestError("seed", f"must be between 0 and 2**63-1, got {seed}")

    cache = str(CacheMode.parse(request.cache))
    preview_every = _as_int("preview_every", request.preview_every)
    if preview_every < 0:
        raise RequestError("preview_every", f"must be >= 0 (0: no previews), got {preview_every}")
    return GenerationRequest(prompt, negative, frames, dims["height"], dims["width"], steps, g, seed, cache,
                             preview_every)
