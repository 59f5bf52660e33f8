"""Helpers shared by the Triton python-backend adapters in model_repository/.

They take `pb_utils` (triton_python_backend_utils, only importable inside the
stub) as an argument, so this module imports anywhere.
"""
from __future__ import annotations

import faulthandler
import gc
import json
import logging
import os
import re
import sys
import threading
import traceback
from typing import Any

import numpy as np

from ..errors import Cancelled, WorkerGroupError
from ..validation import CacheMode, GenerationRequest, Limits, RequestError, validate

log = logging.getLogger("mochi.triton")

# Knob inputs shared by mochi_dit, the ensemble and mochi_stream: name -> (request field, numpy cast).
KNOBS = {
    "NUM_FRAMES": ("num_frames", int),
    "HEIGHT": ("height", int),
    "WIDTH": ("width", int),
    "STEPS": ("steps", int),
    "GUIDANCE": ("guidance", float),
    "SEED": ("seed", int),
    "CACHE": ("cache", str),  # step caching mode (validation.CacheMode)
    "PREVIEW_EVERY": ("preview_every", int),  # a preview every n steps (mochi_stream, mochi_dit)
}


def param_env_name(model: str, key: str) -> str:
    """The environment variable that overrides one config parameter: MOCHI_<MODEL>_<KEY>, upper case."""
    return f"MOCHI_{model}_{key}".upper()


class Params(dict):
    """A model's config parameters ({key: string}) with one typed reader for every adapter: `p.int("max_queue",
    8)`, `p.float`, `p.text`, `p.flag`, `p.switch`. Empty means the default; a value that does not parse fails
    the model's load with an error naming the key and the environment variable that would set it."""

    def __init__(self, values: dict[str, str], model: str = "") -> None:
        super().__init__(values)
        self.model = model

    def _bad(self, key: str, rule: str) -> ValueError:
        return ValueError(f"parameter {key!r} of {self.model or 'this model'} ({param_env_name(self.model, key)}) "
                          f"{rule}, got {self.get(key)!r}")

    def text(self, key: str, default: str = "") -> str:
        return (self.get(key) or "").strip() or default

    def _number(self, key: str, default, cast, rule: str):
        value = self.text(key)
        try:
            return default if not value else cast(value)
        except ValueError:
            raise self._bad(key, rule) from None

    def int(self, key: str, default: int) -> int:
        return self._number(key, default, int, "must be an integer")

    def float(self, key: str, default: float) -> float:
        return self._number(key, default, float, "must be a number")

    def switch(self, key: str) -> bool | None:
        """On, off, or left to the runtime ("auto" or empty -> None)."""
        value = self.text(key, "auto").lower()
        if value == "auto":
            return None
        if value not in _ON_OFF:
            raise self._bad(key, "must be true or false (or auto)")
        return _ON_OFF[value]

    def flag(self, key: str, default: bool = False) -> bool:
        """A yes/no parameter (true/false, on/off, yes/no, 1/0, any case); absent or empty takes the default.
        Anything else is refused: a typo must not silently turn a mode off."""
        value = self.switch(key)
        return default if value is None else value


def model_params(args: dict, environ: dict[str, str] | None = None) -> Params:
    """config.pbtxt `parameters`; MOCHI_<MODEL>_<KEY> in the environment overrides a key.

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
    return Params(params, model)


def _log_runtime(model: str) -> None:
    """One line per model instance in the server log: which interpreter and numpy the stub really runs
    (a stub that picks up numpy 2 corrupts string tensors; this line is the first thing to check). A stub that
    crashes (SIGSEGV in the backend's C++ side) leaves every thread's Python stack in the log too."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    print(f"[{model}] python {sys.version.split()[0]} ({sys.executable}), numpy {np.__version__} "
          f"from {os.path.dirname(np.__file__)}", file=sys.stderr, flush=True)


_ON_OFF = {"true": True, "on": True, "1": True, "yes": True, "false": False, "off": False, "0": False, "no": False}


def flag(params: dict[str, str], key: str, default: bool = False) -> bool:
    return Params(params).flag(key, default)


def switch(params: dict[str, str], key: str) -> bool | None:
    return Params(params).switch(key)


def model_dir(params: dict[str, str]) -> str | None:
    """Checkpoint directory: config parameter, else $MOCHI_MODEL_DIR, else None (embedded default)."""
    return params.get("model_dir") or os.environ.get("MOCHI_MODEL_DIR") or None


def limits_from(params: dict[str, str]) -> Limits:
    p, d = Params(params, getattr(params, "model", "")), Limits()
    return Limits(max_frames=p.int("max_frames", d.max_frames), max_pixels=p.int("max_pixels", d.max_pixels),
                  max_steps=p.int("max_steps", d.max_steps),
                  max_prompt_bytes=p.int("max_prompt_bytes", d.max_prompt_bytes))


def defaults_from(params: dict[str, str]) -> GenerationRequest:
    p, d = Params(params, getattr(params, "model", "")), GenerationRequest(prompt="")
    return GenerationRequest(
        prompt="", negative_prompt="", num_frames=p.int("default_num_frames", d.num_frames),
        height=p.int("default_height", d.height), width=p.int("default_width", d.width),
        steps=p.int("default_steps", d.steps), guidance=p.float("default_guidance", d.guidance),
        seed=p.int("default_seed", d.seed), cache=default_cache(p),
        preview_every=p.int("default_preview_every", d.preview_every))


def default_cache(p: Params) -> str:
    """The model's step caching for requests without CACHE; a value CacheMode refuses fails the load."""
    try:
        return str(CacheMode.parse(p.text("default_cache", "off")))
    except RequestError as e:
        raise p._bad("default_cache", e.rule) from None


def response(pb_utils, request, tensors: list):
    """An InferenceResponse holding only the outputs the request asked for (all of them when it named none).

    Why: Triton 2.51's python stub of a GPU instance (mochi_dit, KIND_MODEL on a GPU) crashed with SIGSEGV on
    a response carrying two outputs its request had not asked for (the supervisor's HEALTH poll asks for STEP
    alone), 2 of 2 runs on one H100; the same stub on CPU drops them. One unasked output had been tolerated."""
    try:
        wanted = set(request.requested_output_names())
    except AttributeError:  # a request object without the method (older stubs): send everything
        wanted = set()
    return pb_utils.InferenceResponse([t for t in tensors if not wanted or t.name() in wanted])


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
        elif cast is str:
            out[fld] = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
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


def generation_request(pb_utils, request, defaults: GenerationRequest, limits: Limits) -> GenerationRequest:
    """A client-facing request's inputs as a validated GenerationRequest (RequestError naming the field)."""
    prompt, negative = text_inputs(pb_utils, request)
    return validate(GenerationRequest(prompt, negative, **knobs(pb_utils, request, defaults)), limits)


# Triton 2.51's python backend hands a BLS caller every error with status INTERNAL, whatever its code: the models
# that orchestrator.py calls over BLS end their error messages with the status (" [UNAVAILABLE]"), which
# raise_if_error reads back and strips, so the client-facing model answers with the right code.
STATUS_TAG = re.compile(r" \[(INVALID_ARG|UNAVAILABLE|CANCELLED|INTERNAL|NOT_FOUND|UNSUPPORTED)\]$")
_STATUS_NAMES = ("INVALID_ARG", "UNAVAILABLE", "CANCELLED", "INTERNAL", "NOT_FOUND", "UNSUPPORTED")


def error_response(pb_utils, exc: BaseException, tag_status: bool = False):
    """Per-request error with a status code a client can act on: INVALID_ARG naming the field for bad input,
    CANCELLED, UNAVAILABLE for what a retry may get past (queue full, timeout, shutdown, a DiT group or model
    that died), the composing model's own code for its errors, else INTERNAL. The message is one line: a
    traceback goes to the server's log, never to the client. tag_status: end the message with the status (the
    models orchestrator.py calls over BLS, see STATUS_TAG)."""
    E = pb_utils.TritonError
    if isinstance(exc, RequestError):
        code, msg = E.INVALID_ARG, str(exc)
    elif isinstance(exc, Cancelled):
        code, msg = E.CANCELLED, f"request cancelled: {exc}" if str(exc) else "request cancelled"
    elif isinstance(exc, UpstreamError):
        code, msg = exc.code, str(exc)
    elif isinstance(exc, (QueueFull, RequestTimeout, ShuttingDown, Unavailable, WorkerGroupError)):
        code, msg = E.UNAVAILABLE, str(exc)
    else:
        log.error("request failed: %s", "".join(traceback.format_exception(exc)))
        code, msg = E.INTERNAL, f"internal error ({type(exc).__name__}): {short(exc)}"
    msg = one_line(msg)
    failures = _FAILURES.get(code)
    if failures is not None:
        failures.increment(1)
    if tag_status:
        msg += next((f" [{n}]" for n in _STATUS_NAMES if getattr(E, n) == code), "")
    return pb_utils.InferenceResponse(error=E(msg, code))


# status code -> this stub's failure counter (one model per stub process; see count_failures)
_FAILURES: dict[Any, Any] = {}


def count_failures(pb_utils, model: str) -> None:
    """Count this model's error answers in mochi_request_failures_total{model, code}. Triton 2.51 counts a
    python model's error responses as successes (nv_inference_request_failure stays 0), so this is the series
    to alert on."""
    E = pb_utils.TritonError
    fam = _family(pb_utils, "mochi_request_failures_total", "Requests answered with an error",
                  pb_utils.MetricFamily.COUNTER)
    for name in _STATUS_NAMES:
        _FAILURES[getattr(E, name)] = SerialMetric(fam.Metric(labels={"model": model, "code": name}))


def one_line(text: str, limit: int = 600) -> str:
    """A message as a client should see it: the first line (a traceback's text never leaves the server)."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.startswith("Traceback"):
        first = lines[-1]
    return first[:limit]


def short(exc: BaseException) -> str:
    return one_line(str(exc)) or type(exc).__name__


def raise_if_error(pb_utils, response, model: str) -> None:
    """A BLS response's error as an exception that keeps the composing model's status code."""
    if response.has_error():
        err = response.error()
        message = one_line(err.message())
        tagged = STATUS_TAG.search(message)
        # Our models tag every error; an untagged one is Triton's own about the model's state (its stub is not
        # healthy, it is not loaded or not ready): a retry may find it back.
        code = getattr(pb_utils.TritonError, tagged.group(1)) if tagged else pb_utils.TritonError.UNAVAILABLE
        raise UpstreamError(code, f"{model}: {STATUS_TAG.sub('', message)}")


def control_key() -> str:
    """The key that the server's own control inputs (mochi_dit's DRAIN, CANCEL, PROGRESS_OF, HEALTH) must carry.

    The supervisor (serving/tritonserver.py) draws a random one per run and hands it to tritonserver's
    environment, so every stub has it and no client does. Empty when tritonserver runs without the supervisor:
    DRAIN is then refused to everyone, and generations are cancelled and watched by their unguessable ids."""
    return os.environ.get(CONTROL_KEY_ENV, "")


CONTROL_KEY_ENV = "MOCHI_CONTROL_KEY"


class QueueFull(RuntimeError):
    """The engine's queue is at its bound: refused at once, the client may retry."""


class RequestTimeout(RuntimeError):
    """The request's timeout passed while it waited or ran; the group stopped at a step boundary."""


class ShuttingDown(RuntimeError):
    """The model is being unloaded; queued requests are answered, not dropped."""


class Unavailable(RuntimeError):
    """Something the request needed went away (a composing model died); a retry may succeed."""


class UpstreamError(RuntimeError):
    """A composing model's error, with its Triton status code (raise_if_error)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class SerialMetric:
    """A custom metric whose updates never overlap with another metric update in this stub process.

    Why: each update is a message from the stub to the server, and the adapters update metrics from several
    threads (mochi_dit's lane threads finish generations side by side). Triton 2.51's python backend then
    crashes the whole server (SIGSEGV in libtriton_python.so): two looping generations on two lanes brought it
    down within 1-5 s in 4 of 4 runs, and with this lock not once in 60 + 150 s, the second run with 118k
    progress polls beside them (tests/serving/test_lanes.py keeps the load). Serialised responses alone
    did not help; the metric updates are what collide. After release_triton_objects an update does nothing."""

    _lock = threading.Lock()  # one per stub process: every adapter's metrics share it

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        _METRICS.append(self)

    def __getattr__(self, name: str) -> Any:
        def locked(*args: Any, **kwargs: Any) -> Any:
            with SerialMetric._lock:
                if self._metric is not None:
                    return getattr(self._metric, name)(*args, **kwargs)
                return None

        return locked


# Every custom metric and family of this stub process: held here from creation until release_triton_objects.
_METRICS: list[SerialMetric] = []
_FAMILIES: list[Any] = []


def _family(pb_utils, name: str, description: str, kind: Any) -> Any:
    fam = pb_utils.MetricFamily(name=name, description=description, kind=kind)
    _FAMILIES.append(fam)
    return fam


def release_triton_objects() -> None:
    """Drop what this stub holds of Triton's: its custom metrics and their families, and garbage cycles that
    still reach a request or response (a finished generation's exception and its frames). The last call of
    every model's `finalize`; a metric update after it does nothing.

    Why: a Triton 2.51 stub that still holds such objects when its interpreter shuts down dies with SIGSEGV in
    that teardown (after finalize; every model, on CPU and GPU: "Fatal Python error: Segmentation fault" per
    stub in the log of each clean shutdown). Dropped while the stub still talks to the server, they go quietly."""
    with SerialMetric._lock:
        for metric in _METRICS:
            metric._metric = None
        _METRICS.clear()
        _FAILURES.clear()
        _FAMILIES.clear()
    gc.collect()


def histogram(pb_utils, name: str, description: str, buckets: list[float], labels: dict | None = None):
    fam = _family(pb_utils, name, description, pb_utils.MetricFamily.HISTOGRAM)
    return SerialMetric(fam.Metric(labels=labels or {}, buckets=buckets))


def counter(pb_utils, name: str, description: str, labels: dict | None = None):
    fam = _family(pb_utils, name, description, pb_utils.MetricFamily.COUNTER)
    return SerialMetric(fam.Metric(labels=labels or {}))


def gauge(pb_utils, name: str, description: str, labels: dict | None = None):
    fam = _family(pb_utils, name, description, pb_utils.MetricFamily.GAUGE)
    return SerialMetric(fam.Metric(labels=labels or {}))


LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
