"""Triton adapter: streaming orchestrator over t5_encoder -> mochi_dit -> vae_decoder (BLS).

Each request runs on a worker thread: it forwards the DiT's per-step progress to
the client and, when the client cancels, asks mochi_dit to stop that generation
(by id) so the group halts at the next step; the client is answered CANCELLED.
"""
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from mochi_runtime.parallel import Cancelled
from mochi_runtime.serving import adapters as A
from mochi_runtime.validation import GenerationRequest, validate

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _tensor(name, value, dtype):
    return pb_utils.Tensor(name, np.array([value], dtype=dtype))


def _raise_if_error(response, stage):
    if response.has_error():
        err = response.error()
        if err.code() == pb_utils.TritonError.CANCELLED:
            raise Cancelled(f"{stage}: {err.message()}")
        raise RuntimeError(f"{stage}: {err.message()}")


class TritonPythonModel:
    def initialize(self, args):
        p = A.model_params(args)
        self.limits, self.defaults = A.limits_from(p), A.defaults_from(p)
        n = int(p.get("max_concurrent") or 4)
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="stream")
        self.bls = ThreadPoolExecutor(max_workers=n, thread_name_prefix="stream-dit")  # blocking DiT calls

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, negative = A.text_inputs(pb_utils, request)
                req = validate(GenerationRequest(prompt, negative, **A.knobs(pb_utils, request, self.defaults)),
                               self.limits)
            except Exception as e:
                sender.send(A.error_response(pb_utils, e), flags=FINAL)
                continue
            self.pool.submit(self._run, req, sender)
        return None

    def _run(self, req, sender):
        try:
            sender.send(self._generate(req, sender), flags=FINAL)
        except Exception as e:
            sender.send(A.error_response(pb_utils, e), flags=FINAL)

    def _generate(self, req, sender):
        t5 = pb_utils.InferenceRequest(
            model_name="t5_encoder", requested_output_names=["TEXT_EMBEDS", "TEXT_MASK"],
            inputs=[_tensor("PROMPT", req.prompt.encode(), np.object_),
                    _tensor("NEGATIVE_PROMPT", req.negative_prompt.encode(), np.object_)],
        ).exec()
        _raise_if_error(t5, "t5_encoder")
        gen_id = uuid.uuid4().hex
        dit = pb_utils.InferenceRequest(
            model_name="mochi_dit", requested_output_names=["LATENTS"],
            inputs=[
                pb_utils.get_output_tensor_by_name(t5, "TEXT_EMBEDS"),
                pb_utils.get_output_tensor_by_name(t5, "TEXT_MASK"),
                _tensor("NUM_FRAMES", req.num_frames, np.int32), _tensor("HEIGHT", req.height, np.int32),
                _tensor("WIDTH", req.width, np.int32), _tensor("STEPS", req.steps, np.int32),
                _tensor("GUIDANCE", req.guidance, np.float32), _tensor("SEED", req.seed, np.int64),
                _tensor("GENERATION_ID", gen_id.encode(), np.object_),
            ],
        )
        pending = self.bls.submit(dit.exec)
        sent, cancel_sent = 0, False
        while not pending.done():
            step, total, elapsed = self._poll(gen_id, sent)
            if step < 0:  # finished (or failed): the DiT response is on its way
                break
            if not cancel_sent:
                for i in range(sent + 1, step + 1):  # one progress message per step
                    sender.send(pb_utils.InferenceResponse([
                        _tensor("STEP", i, np.int32), _tensor("TOTAL_STEPS", total, np.int32),
                        _tensor("ELAPSED", elapsed, np.float32),
                    ]))
            sent = max(sent, step)
            if sender.is_cancelled() and not cancel_sent:
                self._control("CANCEL", gen_id)
                cancel_sent = True
        resp = pending.result()
        if cancel_sent and resp.has_error():
            raise Cancelled("cancelled by the client")
        _raise_if_error(resp, "mochi_dit")
        out = pb_utils.get_output_tensor_by_name(resp, "LATENTS")
        latents = None if out is None else out.as_numpy()
        if cancel_sent or sender.is_cancelled():
            raise Cancelled("cancelled by the client")
        if latents is None:
            raise RuntimeError("mochi_dit finished without latents")
        vae = pb_utils.InferenceRequest(
            model_name="vae_decoder", requested_output_names=["VIDEO", "MP4"],
            inputs=[pb_utils.Tensor("LATENTS", latents)],
        ).exec()
        _raise_if_error(vae, "vae_decoder")
        return pb_utils.InferenceResponse([
            pb_utils.get_output_tensor_by_name(vae, "VIDEO"), pb_utils.get_output_tensor_by_name(vae, "MP4"),
        ])

    @staticmethod
    def _control(name, gen_id, after_step=None):
        inputs = [_tensor(name, gen_id.encode(), np.object_)]
        if after_step is not None:
            inputs.append(_tensor("AFTER_STEP", after_step, np.int32))
        resp = pb_utils.InferenceRequest(model_name="mochi_dit", requested_output_names=["STEP", "ELAPSED"],
                                         inputs=inputs).exec()
        _raise_if_error(resp, "mochi_dit")
        return resp

    def _poll(self, gen_id, after_step):
        """Long-poll mochi_dit until the generation passes after_step (or ~2 s pass)."""
        resp = self._control("PROGRESS_OF", gen_id, after_step)
        step, total = (int(v) for v in pb_utils.get_output_tensor_by_name(resp, "STEP").as_numpy())
        elapsed = float(pb_utils.get_output_tensor_by_name(resp, "ELAPSED").as_numpy()[0])
        return step, total, elapsed

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.bls.shutdown(wait=True, cancel_futures=True)
