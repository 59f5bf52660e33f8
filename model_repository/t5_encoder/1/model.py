"""Triton adapter: prompts -> T5 embeddings (thin layer over mochi_runtime)."""
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from mochi_runtime.loading.loaders import load_text_encoder, open_model_dir
from mochi_runtime.serving import adapters as A
from mochi_runtime.serving.metrics import T5Metrics
from mochi_runtime.serving.embedding_cache import EmbeddingCache
from mochi_runtime.validation import validate_text


class TritonPythonModel:
    def initialize(self, args):
        params = A.model_params(args)
        self.limits = A.limits_from(params)
        md = open_model_dir(A.model_dir(params))
        self.encoder = load_text_encoder(md, torch.device(params.text("device", "cpu")),
                                         offload=params.flag("offload"))
        # Our own cache, not Triton's response cache: that one stored an error answer as an empty success and
        # served it to the next request with the same prompt. This one holds successes only.
        self.cache = EmbeddingCache(params.int("cache_bytes", 0))
        self.m = T5Metrics.create(pb_utils)

    def _encode(self, prompt: str, negative: str):
        cached = self.cache.get((prompt, negative))
        if cached is not None:
            self.m.hits.increment(1)
            return cached
        self.encoder.check_lengths(prompt=prompt, negative_prompt=negative)
        emb = self.encoder.encode_cfg(prompt, negative).stacked()  # TEXT_EMBEDS [2, 256, D] in CFGText's order
        out = (emb.features.float().cpu().numpy(), emb.mask.cpu().numpy().astype(np.bool_))
        self.cache.put((prompt, negative), out)
        self.m.misses.increment(1)
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                t0 = time.monotonic()
                prompt, negative = validate_text(*A.text_inputs(pb_utils, request), self.limits)
                feats, mask = self._encode(prompt, negative)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT_EMBEDS", feats),
                                                             pb_utils.Tensor("TEXT_MASK", mask)]))
                self.m.latency.observe(time.monotonic() - t0)
            except Exception as e:  # per-request error, the model stays up
                responses.append(A.error_response(pb_utils, e, tag_status=True))
        return responses

    def finalize(self):
        self.encoder = None
        A.release_triton_objects()
