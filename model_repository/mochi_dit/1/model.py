"""Triton adapter for the DiT worker group (thin layer over mochi_runtime.serving.dit_engine).

The stub process never initialises CUDA: the workers are spawned and own the GPUs.
"""
import hmac
import sys
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from mochi_runtime.parallel import Cancelled, GroupSpec, Layout, LayoutError
from mochi_runtime.loading.loaders import open_model_dir
from mochi_runtime.serving import adapters as A
from mochi_runtime.serving.metrics import DiTMetrics
from mochi_runtime.serving.dit_deployment import lane_devices, plan_weights
from mochi_runtime.serving.dit_engine import DiTEngine, Job, load_warmup
from mochi_runtime.serving.orchestrator import request_timeout_us
from mochi_runtime.models.text_encoder import CFGText
from mochi_runtime.validation import GenerationRequest, RequestError, validate

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
CONTROL_INPUTS = ("DRAIN", "HEALTH", "CANCEL", "PROGRESS_OF")
NO_PREVIEW = np.zeros((0, 0, 0, 3), dtype=np.uint8)  # PREVIEW when there is none (yet, or new)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class TritonPythonModel:
    def initialize(self, args):
        self._init_limits(args)
        self._init_layout(args)
        self._init_metrics()
        self._init_engine()

    def _init_limits(self, args):
        p = self.params = A.model_params(args)
        self.args = args
        self.limits, self.defaults = A.limits_from(p), A.defaults_from(p)
        self.stop_timeout = p.float("stop_timeout_s", 30.0)
        self.request_timeout = p.float("request_timeout_s", 0.0)
        self.key = A.control_key()

    def _init_layout(self, args):
        """GPU sets (lanes) and the layout of each group, checked before anything heavy starts: a layout that
        does not fit the GPUs given fails the load at once, naming the variable to set."""
        p = self.params
        self.lanes = lane_devices(p, args)
        devices = self.lanes[0]
        world = len(devices) if devices is not None else p.int("cpu_world", 2)
        self.md_path = A.model_dir(p)
        self.dit_cfg = open_model_dir(self.md_path).dit_config()
        self.feat_dim, self.max_tokens = self.dit_cfg.t5_feat_dim, self.dit_cfg.t5_token_length
        degrees = {"cfg": {True: 2, False: 1, None: None}[p.switch("cfg_parallel")],
                   "ulysses": None if p.text("ulysses", "auto") == "auto" else p.int("ulysses", 1),
                   "ring": p.int("ring", 1)}
        try:
            self.layout = Layout.for_world(world, num_heads=self.dit_cfg.num_heads, **degrees)
        except LayoutError as e:
            where = f"{len(devices)} GPUs ({p.text('gpus')})" if devices is not None else f"cpu_world={world}"
            raise ValueError(
                f"mochi_dit: {e}; the group has {where}. Set the layout to match (MOCHI_MOCHI_DIT_CFG_PARALLEL, "
                f"MOCHI_MOCHI_DIT_ULYSSES, MOCHI_MOCHI_DIT_RING) or leave ulysses and cfg_parallel on auto") from None
        self.weights, self.budget, self.memory = plan_weights(p, self.dit_cfg, self.layout, devices, self.limits)
        # (pb_utils.Logger here aborted tritonserver 2.51 at load in 2 of 2 starts: lock_exception)
        print(f"mochi_dit: {len(self.lanes)} group(s) of {self.layout.describe()}, {self.weights} weights, "
              f"devices {self.lanes}", file=sys.stderr, flush=True)

    def _init_metrics(self):
        self.m = DiTMetrics.create(pb_utils)

    def _init_engine(self):
        p = self.params
        self.engine = DiTEngine(
            [GroupSpec(self.layout, self.md_path, lane, p.text("dtype", "auto"), p.text("attention", "auto"),
                       p.switch("compile"), weights=self.weights, shard_over=p.text("shard_over", "world"))
             for lane in self.lanes],
            max_queue=p.int("max_queue", 8),
            on_restart=lambda: self.m.restarts.increment(1),
            on_step=self._on_step,
            on_queue=self._on_queue,
        )
        req, text = load_warmup(self.feat_dim)
        try:  # one 1-step generation at the smallest size on every group: no user request pays for start-up
            self.engine.warm_up(req, text)
        except BaseException as e:
            self.engine.close(self.stop_timeout)  # no workers left behind by a model that failed to load
            raise RuntimeError(f"DiT warm-up failed: {e}") from e

    def _on_step(self, skipped: bool) -> None:
        self.m.steps.increment(1)
        (self.m.skipped if skipped else self.m.computed).increment(1)

    def _on_queue(self, depth: int, waited_s: float | None) -> None:
        self.m.queued.set(depth)
        if waited_s is not None:
            self.m.queue_wait.observe(waited_s)

    def _control(self, request, sender) -> bool:
        """The server's own control inputs (DRAIN, CANCEL, PROGRESS_OF, HEALTH); True when the request was one.
        They carry the server's control key (adapters.control_key): no client can drain or watch the model."""
        names = [n for n in CONTROL_INPUTS if pb_utils.get_input_tensor_by_name(request, n) is not None]
        if not names:
            return False
        given = _text(A.single(pb_utils, request, "CONTROL_KEY")) or ""
        # Without a key (tritonserver run by hand, not by the supervisor) nobody may DRAIN or ask HEALTH, and
        # generations are watched and cancelled by their ids, which only their orchestrator knows.
        keyless = not self.key and not {"DRAIN", "HEALTH"} & set(names)
        if not (keyless or self.key and hmac.compare_digest(given, self.key)):
            raise RequestError(names[0].lower(), "is one of the server's own control inputs; clients cannot send it")

        def reply(step, total, elapsed=0.0, skipped=0, preview_step=0, preview=None):
            sender.send(A.response(pb_utils, request, [
                pb_utils.Tensor("STEP", np.array([step, total], dtype=np.int32)),
                pb_utils.Tensor("ELAPSED", np.array([elapsed], dtype=np.float32)),
                pb_utils.Tensor("STEPS_SKIPPED", np.array([skipped], dtype=np.int32)),
                pb_utils.Tensor("PREVIEW_STEP", np.array([preview_step], dtype=np.int32)),
                pb_utils.Tensor("PREVIEW", NO_PREVIEW if preview is None else preview),
            ]), flags=FINAL)

        if "DRAIN" in names:  # sent by the supervisor before SIGTERM
            reply(self.engine.drain(), 0)
        elif "HEALTH" in names:  # [groups that can generate, groups]
            reply(self.engine.healthy_lanes(), len(self.engine.lanes))
        elif "CANCEL" in names:
            reply(int(self.engine.cancel(_text(A.single(pb_utils, request, "CANCEL")))), 0)
        else:
            after = int(A.single(pb_utils, request, "AFTER_STEP") or 0)

            def progress(p):  # a preview goes once: with the first answer past the step it was made at
                fresh = p.preview is not None and p.preview_step > after
                reply(p.step, p.total, p.elapsed, p.skipped, p.preview_step, p.preview if fresh else None)

            self.engine.wait_progress(_text(A.single(pb_utils, request, "PROGRESS_OF")), after, progress)
        return True

    def _text_inputs(self, request) -> tuple[np.ndarray, np.ndarray]:
        """TEXT_EMBEDS [2, L, D] (row 0 negative, row 1 prompt) and TEXT_MASK [2, L], checked before anything
        reaches a worker: L is 1..t5_token_length (what T5 gives), D the DiT's text width, values finite."""
        embeds = A.input_array(pb_utils, request, "TEXT_EMBEDS")
        mask = A.input_array(pb_utils, request, "TEXT_MASK")
        if embeds is None or mask is None:
            raise RequestError("text_embeds", "TEXT_EMBEDS and TEXT_MASK are required")
        if embeds.dtype != np.float32 or embeds.ndim != 3 or embeds.shape[0] != 2 or embeds.shape[2] != self.feat_dim:
            raise RequestError("text_embeds", f"must be FP32 [2, L, {self.feat_dim}], got {embeds.dtype} "
                                              f"{list(embeds.shape)}")
        if not 1 <= embeds.shape[1] <= self.max_tokens:
            raise RequestError("text_embeds", f"must hold 1 to {self.max_tokens} tokens (what T5 gives), got "
                                              f"{embeds.shape[1]}")
        if mask.dtype != np.bool_ or mask.shape != embeds.shape[:2]:
            raise RequestError("text_mask", f"must be BOOL [2, {embeds.shape[1]}], got {mask.dtype} {list(mask.shape)}")
        if not np.isfinite(embeds).all():
            raise RequestError("text_embeds", "must be finite")
        return embeds, mask

    def _job(self, request, sender) -> Job | None:
        if self._control(request, sender):
            return None
        embeds, mask = self._text_inputs(request)
        req = validate(GenerationRequest(prompt="", **A.knobs(pb_utils, request, self.defaults)), self.limits,
                       check_text=False)
        self.memory.check(req, self.budget)
        gen_id = _text(A.single(pb_utils, request, "GENERATION_ID"))
        feats, m = torch.from_numpy(embeds.copy()), torch.from_numpy(mask.copy())
        t0 = time.monotonic()
        self.m.active.increment(1)

        def on_done(latents, skipped):
            self.m.active.increment(-1)
            self.m.latency.observe(time.monotonic() - t0)
            sender.send(A.response(pb_utils, request, [pb_utils.Tensor("LATENTS", latents.numpy()),
                                                       pb_utils.Tensor("STEPS_SKIPPED", np.array([skipped], np.int32))]),
                        flags=FINAL)

        def on_error(exc):
            self.m.active.increment(-1)
            if isinstance(exc, Cancelled):
                self.m.cancelled.increment(1)
            sender.send(A.error_response(pb_utils, exc, tag_status=True), flags=FINAL)

        # request.is_cancelled covers the client's cancel, a gRPC deadline and a disconnect
        return Job(req, CFGText.from_stacked(feats, m), on_done, on_error, is_cancelled=request.is_cancelled,
                   generation_id=gen_id, timeout_s=self._timeout_s(request))

    def _timeout_s(self, request) -> float | None:
        """The client's per-request timeout (Triton's `timeout`, microseconds), else the config default."""
        us = request_timeout_us(request)
        return us / 1e6 if us > 0 else (self.request_timeout or None)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._job(request, sender)
                if job is not None:
                    try:
                        self.engine.submit(job)
                    except Exception:
                        self.m.active.increment(-1)
                        raise
            except Exception as e:
                sender.send(A.error_response(pb_utils, e, tag_status=True), flags=FINAL)
        return None

    def finalize(self):
        try:
            self.engine.close(self.stop_timeout)
        finally:
            A.release_triton_objects()
