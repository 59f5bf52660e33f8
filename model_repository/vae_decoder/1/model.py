"""Triton adapter: latents -> frames + mp4 (thin layer over mochi_runtime)."""
import time

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from mochi_runtime.loading.loaders import load_vae, open_model_dir, resolve_dtype
from mochi_runtime.serving import adapters as A
from mochi_runtime.serving.metrics import VAEMetrics
from mochi_runtime.validation import RequestError
from mochi_runtime.models.vae import DEFAULT_TRIM, check_trim, frames_to_uint8
from mochi_runtime.models.vae_tiling import TilePlan, decode_tiled, plan_for_budget
from mochi_runtime.video import mp4_bytes


class TritonPythonModel:
    def initialize(self, args):
        params = A.model_params(args)
        self.limits = A.limits_from(params)
        self.fps = params.int("fps", 30)
        device = torch.device(params.text("device", "cpu"))
        dtype = resolve_dtype(params.text("dtype", "auto"), device)
        self.vae = load_vae(open_model_dir(A.model_dir(params)), device, dtype)
        self.device = device
        self.piece_elements = params.int("piece_elements", TilePlan.piece_elements)
        self.budget = params.int("memory_budget_bytes", 0)
        self.trim = check_trim(params.text("trim", DEFAULT_TRIM))  # a bad value fails the load
        # false: MP4 comes back empty and clients encode VIDEO themselves (saves the server's CPU; PyAV not needed)
        self.encode_mp4 = params.flag("encode_mp4", default=True)
        if self.encode_mp4:
            from mochi_runtime.video import pick_codec  # PyAV only when this model encodes MP4s

            try:
                pick_codec()  # fail at load, not on the first request
            except ImportError as e:
                raise RuntimeError("vae_decoder: encode_mp4=true needs PyAV (pip install av); "
                                   "or set encode_mp4=false and let clients encode VIDEO") from e
        self.m = VAEMetrics.create(pb_utils)

    def _check(self, z: np.ndarray) -> None:
        c = self.vae.cfg.latent_channels
        if z.ndim != 5 or z.shape[0] != 1 or z.shape[1] != c:
            raise RequestError("latents", f"must be [1, {c}, T, h, w], got {list(z.shape)}")
        t, h, w = z.shape[2:]
        frames = self.vae.cfg.frames_out(t)
        if t < 2 or h < 1 or w < 1:
            raise RequestError("latents", f"need T >= 2 latent frames and h, w >= 1, got {list(z.shape)}")
        if frames > self.limits.max_frames or 64 * h * w > self.limits.max_pixels:
            raise RequestError("latents", f"decode of {frames} frames at {8 * w}x{8 * h} exceeds this server's caps")
        if not np.isfinite(z).all():
            raise RequestError("latents", "must be finite")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                t0 = time.monotonic()
                z = A.input_array(pb_utils, request, "LATENTS")
                self._check(z)
                plan = (plan_for_budget(self.vae, z.shape, self.budget, trim=self.trim) if self.budget
                        else TilePlan(piece_elements=self.piece_elements, trim=self.trim))
                video = decode_tiled(self.vae, torch.from_numpy(z).to(self.device), plan)
                video = frames_to_uint8(video, device="cpu")[0].numpy()
                mp4 = mp4_bytes(video, self.fps) if self.encode_mp4 else b""
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("VIDEO", video),
                    pb_utils.Tensor("MP4", np.array([mp4], dtype=np.object_)),
                ]))
                self.m.latency.observe(time.monotonic() - t0)
            except Exception as e:
                responses.append(A.error_response(pb_utils, e, tag_status=True))
        return responses

    def finalize(self):
        self.vae = None
        A.release_triton_objects()
