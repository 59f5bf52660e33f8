"""Triton adapter for the DiT worker group (thin layer over mochi_runtime.serving.dit_engine).

The stub process never initialises CUDA: the workers are spawned and own the GPUs.
"""
import dataclasses
import json
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from mochi_runtime.parallel import GroupSpec, Layout
from mochi_runtime.pipeline import open_model_dir
from mochi_runtime.serving import adapters as A
from mochi_runtime.serving.dit_engine import DiTEngine, Job, load_warmup
from mochi_runtime.text_encoder import TextEmbedding
from mochi_runtime.validation import GenerationRequest, RequestError, validate

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def plan_weights(p, dit_cfg, layout, devices, limits):
    """Weight mode ('auto' picks by the budget), the per-GPU budget, and the memory model requests are checked on."""
    from mochi_runtime.memory import DiTMemoryModel, choose_weights

    budget = int(p.get("memory_budget_bytes") or 0)
    weights = p.get("weights") or "replicated"
    over = p.get("shard_over") or "world"
    dtype = p.get("dtype") or "auto"
    dtype_bytes = 4 if dtype == "fp32" or (dtype == "auto" and not devices) else 2
    model = DiTMemoryModel(dit_cfg, layout.cfg, layout.ulysses, layout.ring, weights,
                           layout.world if over == "world" else layout.sp, dtype_bytes, gpu=bool(devices),
                           fp8=dtype == "fp8")
    if weights == "auto":
        height = min(480, limits.max_pixels // 16 // 16 * 16)  # the largest request the caps allow
        width = max(16, limits.max_pixels // height // 16 * 16)
        largest = GenerationRequest("", num_frames=limits.max_frames, height=height, width=width, steps=1)
        weights = choose_weights(model, largest, budget)
        model = dataclasses.replace(model, weights=weights)
    if budget and model.weight_bytes() > budget:
        raise ValueError(f"memory_budget_bytes={budget} cannot hold the DiT's {model.weights} weights "
                         f"({model.weight_bytes() / 2**30:.2f} GiB per GPU); use weights=sharded or more GPUs")
    return weights, budget, model


def instance_index(args) -> int:
    try:
        return int(args["model_instance_name"].rsplit("_", 1)[-1])
    except (KeyError, ValueError):
        return 0


def lane_devices(p, args) -> list[tuple[int, ...] | None]:
    """GPU sets (`;`-separated) this instance drives, one worker group (lane) each; [None] * cpu_groups on CPU.

    With one instance (the default) every set is a lane of it: one queue feeds whichever group is free, and
    control requests see every generation. With `count: N` instance i takes sets i, i+N, ...
    """
    sets = [tuple(int(d) for d in s.split(",")) for s in (p.get("gpus") or "").split(";") if s.strip()]
    if not sets:
        return [None] * max(1, int(p.get("cpu_groups") or 1))
    cfg = json.loads(args["model_config"])
    count = sum(int(g.get("count", 1)) for g in cfg.get("instance_group", [])) or 1
    mine = sets[instance_index(args)::count]
    if not mine:
        raise ValueError(f"instance {instance_index(args)} of {count} has no GPU set in gpus={p['gpus']!r}")
    return mine


class TritonPythonModel:
    def initialize(self, args):
        p = A.model_params(args)
        self.limits, self.defaults = A.limits_from(p), A.defaults_from(p)
        self.stop_timeout = float(p.get("stop_timeout_s") or 30)
        self.request_timeout = float(p.get("request_timeout_s") or 0)
        layout = Layout(2 if A.flag(p, "cfg_parallel") else 1,
                        int(p.get("ulysses") or 1), int(p.get("ring") or 1))
        compile_dit = A.switch(p, "compile")
        lanes = lane_devices(p, args)
        devices = lanes[0]
        if devices is None and int(p.get("cpu_world") or layout.world) != layout.world:
            raise ValueError(f"cpu_world {p.get('cpu_world')} != {layout.describe()}")
        md_path = A.model_dir(p)
        dit_cfg = open_model_dir(md_path).dit_config()
        self.feat_dim = dit_cfg.t5_feat_dim
        weights, self.budget, self.memory = plan_weights(p, dit_cfg, layout, devices, self.limits)
        self._fams = []
        for fam, m, name in (
            A.histogram(pb_utils, "mochi_denoise_latency_seconds", "DiT denoising time per generation",
                        A.LATENCY_BUCKETS) + ("latency",),
            A.counter(pb_utils, "mochi_denoise_steps_total", "Denoising steps run") + ("steps",),
            A.gauge(pb_utils, "mochi_active_generations", "Generations running on the DiT group") + ("active",),
            A.counter(pb_utils, "mochi_dit_group_restarts_total", "Times the DiT worker group was respawned")
            + ("restarts",),
            A.counter(pb_utils, "mochi_generations_cancelled_total", "Generations stopped by cancellation")
            + ("cancelled",),
            A.gauge(pb_utils, "mochi_dit_queued_generations", "Generations waiting for the DiT group")
            + ("queued",),
            A.histogram(pb_utils, "mochi_dit_queue_wait_seconds", "Time a generation waited for the DiT group",
                        A.LATENCY_BUCKETS) + ("queue_wait",),
        ):
            self._fams.append(fam)
            setattr(self, f"m_{name}", m)
        self.engine = DiTEngine(
            [GroupSpec(layout, md_path, lane, p.get("dtype") or "auto", p.get("attention") or "auto",
                       compile_dit, weights=weights, shard_over=p.get("shard_over") or "world") for lane in lanes],
            max_queue=int(p.get("max_queue") or 8),
            on_restart=lambda: self.m_restarts.increment(1),
            on_steps=self.m_steps.increment,
            on_queue=self._on_queue,
        )
        self._warm_up()

    def _on_queue(self, depth: int, waited_s: float | None) -> None:
        self.m_queued.set(depth)
        if waited_s is not None:
            self.m_queue_wait.observe(waited_s)

    def _warm_up(self):
        """One 1-step generation at the smallest size on every worker group, so no user request pays for
        start-up."""
        req, z = load_warmup(self.feat_dim)
        try:
            self.engine.warm_up(req, z, z)
        except BaseException as e:
            self.engine.close(self.stop_timeout)  # no workers left behind by a model that failed to load
            raise RuntimeError(f"DiT warm-up failed: {e}") from e

    def _control(self, request, sender) -> bool:
        """CANCEL, PROGRESS_OF and DRAIN requests; True when the request was one of them."""
        if A.single(pb_utils, request, "DRAIN") is not None:  # sent by the supervisor before SIGTERM
            answered = self.engine.drain()
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("STEP", np.array([answered, 0], np.int32))]),
                        flags=FINAL)
            return True
        cancel = _text(A.single(pb_utils, request, "CANCEL"))
        if cancel is not None:
            found = self.engine.cancel(cancel)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("STEP", np.array([int(found), 0], np.int32))]),
                        flags=FINAL)
            return True
        gen_id = _text(A.single(pb_utils, request, "PROGRESS_OF"))
        if gen_id is not None:
            after = int(A.single(pb_utils, request, "AFTER_STEP") or 0)

            def reply(step, total, elapsed):
                sender.send(pb_utils.InferenceResponse([
                    pb_utils.Tensor("STEP", np.array([step, total], dtype=np.int32)),
                    pb_utils.Tensor("ELAPSED", np.array([elapsed], dtype=np.float32)),
                ]), flags=FINAL)

            self.engine.wait_progress(gen_id, after, reply)
            return True
        return False

    def _job(self, request, sender) -> Job | None:
        if self._control(request, sender):
            return None
        embeds = A.input_array(pb_utils, request, "TEXT_EMBEDS")
        mask = A.input_array(pb_utils, request, "TEXT_MASK")
        if embeds is None or mask is None:
            raise RequestError("text_embeds", "TEXT_EMBEDS and TEXT_MASK are required")
        if embeds.ndim != 3 or embeds.shape[0] != 2 or embeds.shape[2] != self.feat_dim:
            raise RequestError("text_embeds", f"must be [2, L, {self.feat_dim}], got {list(embeds.shape)}")
        if mask.shape != embeds.shape[:2]:
            raise RequestError("text_mask", f"must be [2, {embeds.shape[1]}], got {list(mask.shape)}")
        if not np.isfinite(embeds).all():
            raise RequestError("text_embeds", "must be finite")
        req = validate(GenerationRequest(prompt="", **A.knobs(pb_utils, request, self.defaults)), self.limits,
                       check_text=False)
        self.memory.check(req, self.budget)
        gen_id = _text(A.single(pb_utils, request, "GENERATION_ID"))
        feats, m = torch.from_numpy(embeds.copy()), torch.from_numpy(mask.astype(np.bool_))
        t0 = time.monotonic()
        self.m_active.increment(1)

        def on_done(latents):
            self.m_active.increment(-1)
            self.m_latency.observe(time.monotonic() - t0)
            sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("LATENTS", latents.numpy())]), flags=FINAL)

        def on_error(exc):
            self.m_active.increment(-1)
            from mochi_runtime.parallel import Cancelled

            if isinstance(exc, Cancelled):
                self.m_cancelled.increment(1)
            sender.send(A.error_response(pb_utils, exc), flags=FINAL)

        return Job(req, TextEmbedding(feats[1:], m[1:]), TextEmbedding(feats[:1], m[:1]), on_done,
                   on_error, is_cancelled=sender.is_cancelled, generation_id=gen_id,
                   timeout_s=self._timeout_s(request))

    def _timeout_s(self, request) -> float | None:
        """The client's per-request timeout (Triton's `timeout`, microseconds), else the config default."""
        try:
            us = int(request.timeout())
        except (AttributeError, TypeError, ValueError):
            us = 0
        if us > 0:
            return us / 1e6
        return self.request_timeout or None

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                job = self._job(request, sender)
                if job is not None:
                    try:
                        self.engine.submit(job)
                    except Exception:
                        self.m_active.increment(-1)
                        raise
            except Exception as e:
                sender.send(A.error_response(pb_utils, e), flags=FINAL)
        return None

    def finalize(self):
        self.engine.close(self.stop_timeout)
