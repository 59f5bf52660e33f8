"""Triton adapter: prompts -> T5 embeddings (thin layer over mochi_runtime)."""
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from mochi_runtime.pipeline import load_text_encoder, open_model_dir
from mochi_runtime.serving import adapters as A
from mochi_runtime.validation import validate_text


class TritonPythonModel:
    def initialize(self, args):
        params = A.model_params(args)
        self.limits = A.limits_from(params)
        md = open_model_dir(A.model_dir(params))
        self.encoder = load_text_encoder(md, torch.device(params.get("device") or "cpu"),
                                         offload=A.flag(params, "offload"))
        self._fam, self.latency = A.histogram(pb_utils, "mochi_t5_latency_seconds",
                                              "T5 prompt encoding time per request", A.LATENCY_BUCKETS)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                t0 = time.monotonic()
                prompt, negative = validate_text(*A.text_inputs(pb_utils, request), self.limits)
                emb = self.encoder.encode([negative, prompt])
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("TEXT_EMBEDS", emb.features.float().cpu().numpy()),
                    pb_utils.Tensor("TEXT_MASK", emb.mask.cpu().numpy().astype(np.bool_)),
                ]))
                self.latency.observe(time.monotonic() - t0)
            except Exception as e:  # per-request error, the model stays up
                responses.append(A.error_response(pb_utils, e))
        return responses

    def finalize(self):
        self.encoder = None
