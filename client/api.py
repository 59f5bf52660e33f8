"""A small Python API over tritonclient for the `mochi` ensemble and the `mochi_stream` model."""
from __future__ import annotations

import queue
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tritonclient.utils import InferenceServerException

# generate()/stream() keyword -> the Triton input it fills
KNOB_INPUTS = {"frames": "NUM_FRAMES", "height": "HEIGHT", "width": "WIDTH", "steps": "STEPS", "guidance": "GUIDANCE",
               "seed": "SEED", "cache": "CACHE", "preview_every": "PREVIEW_EVERY"}
KNOB_TYPES = {"NUM_FRAMES": "INT32", "HEIGHT": "INT32", "WIDTH": "INT32", "STEPS": "INT32", "GUIDANCE": "FP32",
              "SEED": "INT64", "CACHE": "BYTES", "PREVIEW_EVERY": "INT32"}
NP_TYPES = {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BYTES": np.object_}


# A stream's error carries its status at the end of the message (gRPC's stream responses have no status field).
_STREAM_STATUS = re.compile(r" \[(INVALID_ARG|UNAVAILABLE|CANCELLED|INTERNAL|NOT_FOUND|UNSUPPORTED)\]$")
_GRPC_STATUS = {"INVALID_ARG": "StatusCode.INVALID_ARGUMENT", "UNAVAILABLE": "StatusCode.UNAVAILABLE",
                "CANCELLED": "StatusCode.CANCELLED", "INTERNAL": "StatusCode.INTERNAL",
                "NOT_FOUND": "StatusCode.NOT_FOUND", "UNSUPPORTED": "StatusCode.UNIMPLEMENTED"}


def with_status(error):
    """A stream's error as an InferenceServerException whose status() is the server's, as generate() gives."""
    message = error.message() if hasattr(error, "message") else str(error)
    tagged = _STREAM_STATUS.search(message or "")
    if not tagged:
        return error
    return InferenceServerException(_STREAM_STATUS.sub("", message), status=_GRPC_STATUS[tagged.group(1)])


class Cancelled(Exception):
    """The generation was cancelled (Ctrl-C, should_cancel); the server stops it at its next step."""


def infer_inputs(mod, values: list[tuple[str, np.ndarray, str]]) -> list:
    """(name, array, Triton datatype) triples -> tritonclient InferInputs of `mod` (tritonclient.grpc or .http)."""
    inputs = []
    for name, arr, dtype in values:
        inp = mod.InferInput(name, list(arr.shape), dtype)
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    return inputs


@dataclass
class GenerationResult:
    video: np.ndarray  # uint8 [F, H, W, 3]
    mp4: bytes
    steps_computed: int | None = None  # denoising steps that ran the DiT's blocks
    steps_skipped: int | None = None  # steps the step cache skipped (the request's cache mode)

    @classmethod
    def from_response(cls, result) -> "GenerationResult":
        """From a tritonclient InferResult (gRPC or HTTP) holding VIDEO and MP4; the step counts when the server
        sends them."""

        def count(name: str) -> int | None:
            arr = result.as_numpy(name)  # None when the response has no such output
            return None if arr is None else int(arr[0])

        return cls(result.as_numpy("VIDEO"), bytes(result.as_numpy("MP4")[0]), count("STEPS_COMPUTED"),
                   count("STEPS_SKIPPED"))

    def save(self, path: str) -> str:
        """Write the server's mp4; when the server sent none (vae_decoder encode_mp4=false), encode VIDEO here."""
        if not self.mp4:
            from mochi_runtime.video import encode_mp4  # no MP4 from the server: PyAV only then

            encode_mp4(self.video, path)
            return path
        with open(path, "wb") as f:
            f.write(self.mp4)
        return path


class MochiClient:
    """generate() over HTTP or gRPC through the `mochi` ensemble; stream() over gRPC through `mochi_stream`."""

    def __init__(self, url: str | None = None, protocol: str = "grpc", timeout_s: float = 3600.0) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError("protocol must be 'grpc' or 'http'")
        self.protocol = protocol
        self.timeout_s = timeout_s
        if protocol == "http":
            import tritonclient.http as mod  # one protocol's stack per client

            self.url = url or "127.0.0.1:8000"
            # tritonclient.http's 60 s default would cut off multi-minute generations.
            self._client = mod.InferenceServerClient(self.url, network_timeout=timeout_s, connection_timeout=timeout_s)
        else:
            import tritonclient.grpc as mod  # as above

            self.url = url or "127.0.0.1:8001"
            self._client = mod.InferenceServerClient(self.url)
        self._mod = mod

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "MochiClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:
            return False

    def _inputs(self, prompt: str, negative_prompt: str | None, **knobs) -> list:
        values: list[tuple[str, np.ndarray, str]] = [
            ("PROMPT", np.array([prompt.encode("utf-8") if isinstance(prompt, str) else prompt], dtype=np.object_),
             "BYTES")]
        if negative_prompt is not None:
            values.append(("NEGATIVE_PROMPT", np.array([negative_prompt.encode("utf-8")], dtype=np.object_), "BYTES"))
        for key, value in knobs.items():
            if value is None:
                continue
            name = KNOB_INPUTS[key]
            if KNOB_TYPES[name] == "BYTES":
                value = value.encode("utf-8") if isinstance(value, str) else value
            values.append((name, np.array([value], dtype=NP_TYPES[KNOB_TYPES[name]]), KNOB_TYPES[name]))
        return infer_inputs(self._mod, values)

    @property
    def _server_timeout_us(self) -> int:
        """Triton's per-request timeout, from this client's deadline: the server stops the generation at a step
        boundary once it passes, whether or not the client is still there to hear it."""
        return int(self.timeout_s * 1e6)

    def generate(self, prompt: str, negative_prompt: str | None = None, *, frames: int | None = None,
                 height: int | None = None, width: int | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int | None = None, cache: str | None = None
                 ) -> GenerationResult:
        """One video through `mochi`. KeyboardInterrupt cancels it on the server (gRPC) and raises Cancelled;
        over HTTP the server stops it when the timeout passes. No seed: the server's default (0). cache: step
        caching ("off", "teacache:0.06", "fbcache:<t>", "interval:2"); None: the server's default."""
        inputs = self._inputs(prompt, negative_prompt, frames=frames, height=height, width=width, steps=steps,
                              guidance=guidance, seed=seed, cache=cache)
        if self.protocol == "http":
            result = self._client.infer("mochi", inputs, timeout=self._server_timeout_us)
        else:
            done: queue.Queue = queue.Queue()
            call = self._client.async_infer("mochi", inputs,
                                            callback=lambda result, error: done.put((result, error)),
                                            client_timeout=self.timeout_s, timeout=self._server_timeout_us)
            try:
                while True:
                    try:
                        result, error = done.get(timeout=0.5)
                        break
                    except queue.Empty:
                        continue
            except KeyboardInterrupt:
                call.cancel()
                raise Cancelled("generation cancelled") from None
            if error is not None:
                raise error
        return GenerationResult.from_response(result)

    def stream(self, prompt: str, negative_prompt: str | None = None, *,
               on_progress: Callable[[int, int, float, int], None] | None = None,
               on_preview: Callable[[int, np.ndarray], None] | None = None,
               should_cancel: Callable[[], bool] | None = None, frames: int | None = None,
               height: int | None = None, width: int | None = None, steps: int | None = None,
               guidance: float | None = None, seed: int | None = None, cache: str | None = None,
               preview_every: int | None = None) -> GenerationResult:
        """on_progress(step, total, elapsed_s, skipped) per denoising step (skipped: steps the step cache skipped
        so far); on_preview(step, frames) with each preview of the video forming, uint8 [T, H/8, W/8, 3] (every
        `preview_every` steps; None: the server's default, 4); KeyboardInterrupt or should_cancel() cancels on
        the server."""
        if self.protocol != "grpc":
            raise ValueError("streaming needs gRPC (HTTP does not serve decoupled models)")
        inputs = self._inputs(prompt, negative_prompt, frames=frames, height=height, width=width, steps=steps,
                              guidance=guidance, seed=seed, cache=cache, preview_every=preview_every)
        events: queue.Queue = queue.Queue()
        self._client.start_stream(callback=lambda result, error: events.put((result, error)),
                                  stream_timeout=self.timeout_s)
        cancelled = False
        try:
            self._client.async_stream_infer("mochi_stream", inputs, timeout=self._server_timeout_us)
            while True:
                try:
                    result, error = events.get(timeout=0.2)
                except queue.Empty:
                    if should_cancel is not None and should_cancel():
                        raise KeyboardInterrupt
                    continue
                if error is not None:
                    raise with_status(error)
                outputs = {o.name for o in result.get_response().outputs}
                if "STEP" in outputs and on_progress is not None:
                    on_progress(int(result.as_numpy("STEP")[0]), int(result.as_numpy("TOTAL_STEPS")[0]),
                                float(result.as_numpy("ELAPSED")[0]),
                                int(result.as_numpy("STEPS_SKIPPED")[0]) if "STEPS_SKIPPED" in outputs else 0)
                if "PREVIEW" in outputs and on_preview is not None:
                    on_preview(int(result.as_numpy("PREVIEW_STEP")[0]), result.as_numpy("PREVIEW"))
                if "MP4" in outputs:
                    return GenerationResult.from_response(result)
                if should_cancel is not None and should_cancel():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            cancelled = True
            self._client.stop_stream(cancel_requests=True)
            raise Cancelled("generation cancelled") from None
        finally:
            if not cancelled:
                self._client.stop_stream()
