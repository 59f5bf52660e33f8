"""One generation through the composing models, over BLS: t5_encoder -> mochi_dit -> vae_decoder.

Both client-facing models run it: `mochi` (one response) and `mochi_stream` (a
response per step, then the video). Driving the steps from a python model, not
a Triton ensemble, is what lets the client-facing request see everything that
happens to its generation:

- its own cancellation (a gRPC deadline, a client that disconnects, a stream's
  cancel: `is_cancelled()`) is passed on to mochi_dit, which stops the group at
  the next step; an ensemble never passes a cancellation to a step that runs;
- the per-request timeout the client set goes with the DiT request;
- if mochi_dit's stub process dies mid-generation, Triton never answers the DiT
  request; the progress long-poll beside it fails instead, and the client is
  answered UNAVAILABLE within seconds rather than waiting for its deadline.

The DiT request blocks a thread of its own (a daemon: if its model dies it is
left waiting and never holds up a pool). Progress comes from mochi_dit's
PROGRESS_OF long-poll, CANCEL stops a generation by id; both carry the
server's control key (see `adapters.control_key`).
"""
from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import Cancelled
from ..validation import GenerationRequest
from . import adapters as A
from .dit_engine import UNKNOWN_STEP, Progress

POLL_TIMEOUT_S = 10.0  # mochi_dit answers a progress poll within ~2 s; none in this long: it is gone
ARRIVAL_S = 30.0
ANSWER_GRACE_S = 5.0  # after a failed poll, how long the DiT's own answer (e.g. "shutting down") may take  # how long a DiT request may take to reach mochi_dit's engine before its absence means it was lost

StepCallback = Callable[[int, Progress], None]  # (the step just done, the generation's latest progress)


@dataclass
class Outcome:
    """What a generation produced: the composing models' output tensors, its step count, and how many of its
    steps the step cache skipped."""

    video: Any  # pb_utils.Tensor VIDEO
    mp4: Any  # pb_utils.Tensor MP4
    steps: int
    steps_skipped: int = 0


def scalar(pb_utils, name: str, value, dtype) -> Any:
    """A one-element input or output tensor."""
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


class _Pending:
    """A blocking BLS call on a daemon thread of its own."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, args=(fn,), name="mochi-bls", daemon=True).start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting side
            self.error = e
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        self._done.wait(timeout)
        if self.error is not None:
            raise self.error
        return self.result


class Orchestrator:
    def __init__(self, pb_utils) -> None:
        self.pb = pb_utils
        self.key = A.control_key()

    def _bls(self, model: str, inputs: list, outputs: list[str], timeout_us: int = 0):
        kwargs = {"timeout": timeout_us} if timeout_us > 0 else {}
        resp = self.pb.InferenceRequest(model_name=model, requested_output_names=outputs, inputs=inputs,
                                        **kwargs).exec()
        A.raise_if_error(self.pb, resp, model)
        return resp

    def run(self, req: GenerationRequest, is_cancelled: Callable[[], bool], timeout_us: int = 0,
            on_step: StepCallback | None = None) -> Outcome:
        """req: validated. is_cancelled: the client-facing request's (or stream's) cancellation. timeout_us: the
        client's per-request timeout (0: none), passed to mochi_dit. on_step(step, progress) once per step."""
        pb = self.pb
        t5 = self._bls("t5_encoder", [scalar(self.pb, "PROMPT", req.prompt.encode(), np.object_),
                                      scalar(self.pb, "NEGATIVE_PROMPT", req.negative_prompt.encode(), np.object_)],
                       ["TEXT_EMBEDS", "TEXT_MASK"])
        if is_cancelled():
            raise Cancelled("cancelled by the client")
        gen_id = uuid.uuid4().hex
        inputs = [pb.get_output_tensor_by_name(t5, "TEXT_EMBEDS"), pb.get_output_tensor_by_name(t5, "TEXT_MASK"),
                  scalar(self.pb, "GENERATION_ID", gen_id.encode(), np.object_)]
        for name, (fld, cast) in A.KNOBS.items():
            value = getattr(req, fld)
            if cast is str:
                inputs.append(scalar(self.pb, name, value.encode(), np.object_))
                continue
            dtype = np.float32 if name == "GUIDANCE" else np.int64 if name == "SEED" else np.int32
            inputs.append(scalar(self.pb, name, value, dtype))
        pending = _Pending(lambda: self._bls("mochi_dit", inputs, ["LATENTS", "STEPS_SKIPPED"], timeout_us))
        sent, cancel_sent, seen, started = 0, False, False, time.monotonic()
        while not pending.done():
            try:
                progress = self._progress(gen_id, sent)
            except Exception as e:  # the poll beside a running generation fails only when mochi_dit is gone,
                pending.wait(ANSWER_GRACE_S)  # or the server is going down: its answer may be on its way
                if pending.done():
                    break
                raise A.Unavailable(f"mochi_dit stopped answering during this generation ({A.short(e)}); its "
                                    f"process may have died and is being restarted; retry the request") from None
            step = progress.step
            if step == UNKNOWN_STEP:  # mochi_dit has no such generation: not arrived yet, or lost with its stub
                if (seen or time.monotonic() - started > ARRIVAL_S) and not pending.done():
                    raise A.Unavailable("mochi_dit lost this generation: its process died and was started "
                                        "again; retry the request")
                continue
            seen = True
            if step < 0:  # finished (or failed): the DiT response is on its way
                break
            if on_step is not None and not cancel_sent:
                for i in range(sent + 1, step + 1):  # a fresh preview rides on the newest step's message
                    on_step(i, progress if i == step else dataclasses.replace(progress, preview=None))
            sent = max(sent, step)
            if not cancel_sent and is_cancelled():
                self._control("CANCEL", gen_id)
                cancel_sent = True
        try:
            resp = pending.wait(timeout=30)
        except A.UpstreamError:
            if cancel_sent:
                raise Cancelled("cancelled by the client") from None
            raise
        if not pending.done():
            raise A.Unavailable("mochi_dit finished the generation but its answer never came; retry the request")
        if cancel_sent or is_cancelled():
            raise Cancelled("cancelled by the client")
        latents = pb.get_output_tensor_by_name(resp, "LATENTS")
        if latents is None:
            raise A.Unavailable("mochi_dit answered without latents; retry the request")
        skipped = pb.get_output_tensor_by_name(resp, "STEPS_SKIPPED")
        vae = self._bls("vae_decoder", [pb.Tensor("LATENTS", latents.as_numpy())], ["VIDEO", "MP4"])
        return Outcome(pb.get_output_tensor_by_name(vae, "VIDEO"), pb.get_output_tensor_by_name(vae, "MP4"),
                       req.steps, 0 if skipped is None else int(skipped.as_numpy()[0]))

    def _control(self, name: str, gen_id: str, after_step: int | None = None):
        inputs = [scalar(self.pb, name, gen_id.encode(), np.object_),
                  scalar(self.pb, "CONTROL_KEY", self.key.encode(), np.object_)]
        if after_step is not None:
            inputs.append(scalar(self.pb, "AFTER_STEP", after_step, np.int32))
        return self._bls("mochi_dit", inputs, ["STEP", "ELAPSED", "STEPS_SKIPPED", "PREVIEW_STEP", "PREVIEW"])

    def _progress(self, gen_id: str, after_step: int) -> Progress:
        """Long-poll mochi_dit until the generation passes after_step (it answers within ~2 s). A poll sent to a
        stub that dies is never answered: after POLL_TIMEOUT_S it counts as failed."""
        poll = _Pending(lambda: self._control("PROGRESS_OF", gen_id, after_step))
        resp = poll.wait(POLL_TIMEOUT_S)
        if not poll.done():
            raise TimeoutError(f"no answer to a progress poll in {POLL_TIMEOUT_S:g} s")
        step, total = (int(v) for v in self.pb.get_output_tensor_by_name(resp, "STEP").as_numpy())
        elapsed = float(self.pb.get_output_tensor_by_name(resp, "ELAPSED").as_numpy()[0])
        skipped = int(self.pb.get_output_tensor_by_name(resp, "STEPS_SKIPPED").as_numpy()[0])
        preview_step = int(self.pb.get_output_tensor_by_name(resp, "PREVIEW_STEP").as_numpy()[0])
        preview = self.pb.get_output_tensor_by_name(resp, "PREVIEW").as_numpy()
        return Progress(step, total, elapsed, skipped, preview_step, preview if preview.size else None)


def request_timeout_us(request) -> int:
    """The client's per-request timeout (Triton's `timeout` parameter, microseconds), 0 when none."""
    try:
        return max(0, int(request.timeout()))
    except (AttributeError, TypeError, ValueError):
        return 0



class FrontModel:
    """The body of the client-facing models: `mochi` (streaming=False: one response, HTTP and gRPC) and
    `mochi_stream` (decoupled: a response per denoising step, then the video).

    Each accepted request runs on a thread of its own, up to `max_inflight` at once (more are refused at once
    with UNAVAILABLE: mochi_dit's own bounded queue is where generations wait for a group). Bad input is refused
    before anything runs, naming the field."""

    def __init__(self, pb_utils, args: dict, streaming: bool) -> None:
        p = A.model_params(args)
        self.pb, self.streaming = pb_utils, streaming
        self.limits, self.defaults = A.limits_from(p), A.defaults_from(p)
        self.orchestrator = Orchestrator(pb_utils)
        self.max_inflight = p.int("max_inflight", 32)
        A.count_failures(pb_utils, p.model)
        self._slots = threading.BoundedSemaphore(self.max_inflight)

    def execute(self, requests) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()
            try:
                req = A.generation_request(self.pb, request, self.defaults, self.limits)
                if not self._slots.acquire(blocking=False):
                    raise A.QueueFull(f"{self.max_inflight} generations are in flight on this server; retry later")
            except Exception as e:  # noqa: BLE001 - every request is answered
                sender.send(self._error(e), flags=final)
                continue
            threading.Thread(target=self._run, args=(request, req, sender), name="mochi-generation",
                             daemon=True).start()
        return None

    def _run(self, request, req: GenerationRequest, sender) -> None:
        pb, final = self.pb, self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL

        def cancelled() -> bool:
            return bool(request.is_cancelled() or (self.streaming and sender.is_cancelled()))

        def step(i: int, progress: Progress) -> None:
            tensors = [scalar(pb, "STEP", i, np.int32), scalar(pb, "TOTAL_STEPS", progress.total, np.int32),
                       scalar(pb, "ELAPSED", progress.elapsed, np.float32),
                       scalar(pb, "STEPS_SKIPPED", min(progress.skipped, i), np.int32)]
            if progress.preview is not None:
                tensors += [scalar(pb, "PREVIEW_STEP", progress.preview_step, np.int32),
                            pb.Tensor("PREVIEW", progress.preview)]
            sender.send(A.response(pb, request, tensors))

        try:
            out = self.orchestrator.run(req, cancelled, request_timeout_us(request),
                                        on_step=step if self.streaming else None)
            response = A.response(pb, request, [out.video, out.mp4,
                                             scalar(pb, "STEPS_COMPUTED", out.steps - out.steps_skipped, np.int32),
                                             scalar(pb, "STEPS_SKIPPED", out.steps_skipped, np.int32)])
        except Exception as e:  # noqa: BLE001 - every request is answered
            response = self._error(e)
        finally:
            self._slots.release()
        try:
            sender.send(response, flags=final)
        except Exception:  # noqa: BLE001 - the client is gone (a cancelled stream); nothing left to answer
            pass

    def _error(self, exc: BaseException):
        """A stream's errors reach the client as a message only (gRPC's stream response has no status field):
        the status ends the message there, and MochiClient.stream turns it back into the exception's status."""
        return A.error_response(self.pb, exc, tag_status=self.streaming)

    def finalize(self) -> None:
        A.release_triton_objects()


def triton_model(pb_utils, streaming: bool) -> type:
    """The TritonPythonModel class of a client-facing model (its model.py is one line)."""

    class TritonPythonModel:
        def initialize(self, args):
            self.front = FrontModel(pb_utils, args, streaming)

        def execute(self, requests):
            return self.front.execute(requests)

        def finalize(self):
            self.front.finalize()

    return TritonPythonModel
