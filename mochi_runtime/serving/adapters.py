"""Helpers shared by the Triton python-backend adapters in model_repository/.

They take `pb_utils` (triton_python_backend_utils, only importable inside the
stub) as an argument, so this module imports anywhere.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import traceback
from typing import Any

import numpy as np

from ..validation import GenerationRequest, Limits, RequestError

log = logging.getLogger("mochi.triton")

# Knob inputs shared by mochi_dit, the ensemble and mochi_stream: name -> (request field, numpy cast).
KNOBS = {
    "NUM_FRAMES": ("num_frames", int),
    "HEIGHT": ("height", int),
    "WIDTH": ("width", int),
    "STEPS": ("steps", int),
    "GUIDANCE": ("guidance", float),
    "SEED": ("seed", int),
}


def param_env_name(model: str, key: str) -> str:
    """The environment variable that overrides one config parameter: MOCHI_<MODEL>_<KEY>, upper case."""
    return f"MOCHI_{model}_{key}".upper()


def model_params(args: dict, environ: dict[str, str] | None = None) -> dict[str, str]:
    """config.pbtxt `parameters` as {key: string_value}; MOCHI_<MODEL>_<KEY> in the environment overrides a key.

    One image serves every deployment shape: compose files and Kubernetes manifests set GPU sets, layouts and
    budgets through the environment instead of editing the model repository. Only keys the config declares
    can be overridden.
    """
    env = os.environ if environ is None else environ
    cfg = json.loads(args["model_config"])
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    model = cfg.get("name", "")
    for key in params:
        value = env.get(param_env_name(model, key))
        if value is not None:
            params[key] = value
    _log_runtime(model)
    return params


def _log_runtime(model: str) -> None:
    """One line per model instance in the server log: which interpreter and numpy the stub really runs
    (a stub that picks up numpy 2 corrupts string tensors; this line is the first thing to check)."""
    import sys

    import numpy

    print(f"[{model}] python {sys.version.split()[0]} ({sys.executable}), numpy {numpy.__version__} "
          f"from {os.path.dirname(numpy.__file__)}", file=sys.stderr, flush=True)


_ON_OFF = {"true": True, "on": True, "1": True, "yes": True, "false": False, "off": False, "0": False, "no": False}


def flag(params: dict[str, str], key: str, default: bool = False) -> bool:
    """A yes/no config parameter (true/false, on/off, yes/no, 1/0, any case); absent or empty takes the default.
    Anything else is refused: a typo must not silently turn a mode off."""
    value = switch(params, key)
    return default if value is None else value


def switch(params: dict[str, str], key: str) -> bool | None:
    """A config parameter that is on, off or left to the runtime ("auto" or empty -> None)."""
    value = (params.get(key) or "auto").strip().lower()
    if value == "auto":
        return None
    if value not in _ON_OFF:
        raise ValueError(f"parameter {key!r} must be true or false (or auto), got {params.get(key)!r}")
    return _ON_OFF[value]


def model_dir(params: dict[str, str]) -> str | None:
    """Checkpoint directory: config parameter, else $MOCHI_MODEL_DIR, else None (embedded default)."""
    return params.get("model_dir") or os.environ.get("MOCHI_MODEL_DIR") or None


def limits_from(params: dict[str, str]) -> Limits:
    d = Limits()
    return Limits(
        max_frames=int(params.get("max_frames") or d.max_frames),
        max_pixels=int(params.get("max_pixels") or d.max_pixels),
        max_steps=int(params.get("max_steps") or d.max_steps),
        max_prompt_bytes=int(params.get("max_prompt_bytes") or d.max_prompt_bytes),
    )


def defaults_from(params: dict[str, str]) -> GenerationRequest:
    d = GenerationRequest(prompt="")
    return GenerationRequest(
        prompt="", negative_prompt="",
        num_frames=int(params.get("default_num_frames") or d.num_frames),
        height=int(params.get("default_height") or d.height),
        width=int(params.get("default_width") or d.width),
        steps=int(params.get("default_steps") or d.steps),
        guidance=float(params.get("default_guidance") or d.guidance),
        seed=int(params.get("default_seed") or d.seed),
    )


def input_array(pb_utils, request, name: str) -> np.ndarray | None:
    t = pb_utils.get_input_tensor_by_name(request, name)
    return None if t is None else t.as_numpy()


def single(pb_utils, request, name: str) -> Any:
    """The one element of an optional [1]-shaped input, or None when absent."""
    arr = input_array(pb_utils, request, name)
    if arr is None:
        return None
    if arr.size != 1:
        raise RequestError(name.lower(), f"must hold exactly one value, got shape {list(arr.shape)}")
    return arr.reshape(-1)[0]


def knobs(pb_utils, request, defaults: GenerationRequest) -> dict[str, Any]:
    """Request fields from the optional knob tensors, with config defaults for absent ones."""
    out = {}
    for name, (fld, cast) in KNOBS.items():
        v = single(pb_utils, request, name)
        if v is None:
            out[fld] = getattr(defaults, fld)
        elif cast is float:
            out[fld] = float(v)
        else:
            if isinstance(v, (float, np.floating)):
                raise RequestError(fld, f"must be an integer, got {v!r}")
            out[fld] = int(v)
    return out


def text_inputs(pb_utils, request) -> tuple[Any, Any]:
    prompt = single(pb_utils, request, "PROMPT")
    if prompt is None:
        raise RequestError("prompt", "is required")
    negative = single(pb_utils, request, "NEGATIVE_PROMPT")
    return prompt, b"" if negative is None else negative


def error_response(pb_utils, exc: BaseException):
    """Per-request error: INVALID_ARG naming the field for bad input, CANCELLED, else INTERNAL."""
    from ..parallel.worker import Cancelled

    if isinstance(exc, RequestError):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG))
    if isinstance(exc, Cancelled):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError("request cancelled", pb_utils.TritonError.CANCELLED))
    if isinstance(exc, (QueueFull, RequestTimeout, ShuttingDown)):
        return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), pb_utils.TritonError.UNAVAILABLE))
    log.error("request failed: %s", "".join(traceback.format_exception(exc)))
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(exc).__name__}: {exc}"))


class QueueFull(RuntimeError):
    """The engine's queue is at its bound: refused at once, the client may retry."""


class RequestTimeout(RuntimeError):
    """The request's timeout passed while it waited or ran; the group stopped at a step boundary."""


class ShuttingDown(RuntimeError):
    """The model is being unloaded; queued requests are answered, not dropped."""


class SerialMetric:
    """A custom metric whose updates never overlap with another metric update in this stub process.

    Why: each update is a message from the stub to the server, and the adapters update metrics from several
    threads (mochi_dit's lane threads finish generations side by side). Triton 2.51's python backend then
    crashes the whole server (SIGSEGV in libtriton_python.so): two looping generations on two lanes brought it
    down within 1-5 s in 4 of 4 runs, and with this lock not once in 60 + 150 s, the second run with 118k
    progress polls beside them (2026-11-28; tests/test_lanes.py keeps the load). Serialised responses alone
    did not help; the metric updates are what collide."""

    _lock = threading.Lock()  # one per stub process: every adapter's metrics share it

    def __init__(self, metric: Any) -> None:
        self._metric = metric

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._metric, name)

        def locked(*args: Any, **kwargs: Any) -> Any:
            with SerialMetric._lock:
                return method(*args, **kwargs)

        return locked


def histogram(pb_utils, name: str, description: str, buckets: list[float], labels: dict | None = None):
    fam = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.HISTOGRAM)
    return fam, SerialMetric(fam.Metric(labels=labels or {}, buckets=buckets))


def counter(pb_utils, name: str, description: str, labels: dict | None = None):
    fam = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.COUNTER)
    return fam, SerialMetric(fam.Metric(labels=labels or {}))


def gauge(pb_utils, name: str, description: str, labels: dict | None = None):
    fam = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
    return fam, SerialMetric(fam.Metric(labels=labels or {}))


LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
