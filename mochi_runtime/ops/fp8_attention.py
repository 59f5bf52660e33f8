"""fp8 (e4m3) attention forward through cuDNN's graph API (`--attention fp8`).

Why this path: torch's SDPA reaches fp8 only through FlashAttention-3 (`_scaled_dot_product_attention_quantized`),
which is not in the GPU images; cuDNN has a Hopper fp8 flash-attention forward, reachable from the
nvidia-cudnn-frontend package (a wheel of ~12 MB, `pip install '.[fp8]'`), against the cuDNN library torch already
loads.

Scales are per tensor. Q, K and V are each scaled so their largest magnitude maps to e4m3's largest (448). The softmax
probabilities lie in [0, 1] and are scaled by 448. The output is a convex combination of V's rows, so its magnitude is
at most max|V|: its scale follows from V's without a second pass over the scores. On Hopper cuDNN writes O in fp8;
it is widened back to the caller's dtype here.

Forward only, no log-sum-exp: the ring path (which merges partial results by LSE) keeps a bf16 kernel.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = float(torch.finfo(E4M3).max)  # 448


def tensor_scale(x: torch.Tensor) -> torch.Tensor:
    """fp32 [1, 1, 1, 1]: x ~= quantize(x, scale) * scale with max|x| at e4m3's largest value."""
    return (x.detach().abs().amax().float() / E4M3_MAX).clamp(min=1e-12).reshape(1, 1, 1, 1)


def quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).contiguous()


def _to_e4m3(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(q8, k8, v8, sq, sk, sv, 1/sv): compiled on GPU into one reduction and one conversion pass per tensor."""
    sq, sk, sv = tensor_scale(q), tensor_scale(k), tensor_scale(v)
    return quantize(q, sq), quantize(k, sk), quantize(v, sv), sq, sk, sv, 1.0 / sv


def _widen(out8: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (out8.float() * scale).to(dtype)


@dataclass
class _Plan:
    graph: Any
    tensors: dict[str, Any]
    workspace: torch.Tensor
    constants: dict[str, torch.Tensor]  # the probabilities' scale and the amax outputs nothing reads: made once


class CudnnFp8Attention:
    """Unmasked attention on [B, H, S, D] tensors in e4m3 with fp32 accumulation; one cuDNN plan per shape."""

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError("attention 'fp8' runs on GPUs only (cuDNN's fp8 flash attention)")
        major, minor = torch.cuda.get_device_capability(device)
        if major < 9:
            raise ValueError(f"attention 'fp8' needs a Hopper or newer GPU (sm90+), this one is sm{major}{minor}")
        try:
            import cudnn  # nvidia-cudnn-frontend
        except ImportError as e:
            raise ValueError("attention 'fp8' needs the nvidia-cudnn-frontend package: pip install '.[fp8]'") from e
        self.cudnn = cudnn
        self.device = device
        with torch.cuda.device(device):
            self.handle = cudnn.create_handle()
        self.plans: dict[tuple, _Plan] = {}
        # Eager, the scales and conversions would be ~6 full passes over each of Q, K, V per call.
        self.to_e4m3 = torch.compile(_to_e4m3, dynamic=False)
        self.widen = torch.compile(_widen, dynamic=False)

    def _plan(self, q_shape: tuple[int, ...], kv_shape: tuple[int, ...]) -> _Plan:
        key = (q_shape, kv_shape)
        if key in self.plans:
            return self.plans[key]
        cudnn = self.cudnn
        fp8, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=fp32, compute_data_type=fp32,
                              handle=self.handle)

        def dense(shape: tuple[int, ...]) -> list[int]:
            b, h, s, d = shape
            return [h * s * d, s * d, d, 1]

        t = {name: graph.tensor(name=name, dim=list(shape), stride=dense(shape), data_type=fp8)
             for name, shape in (("q", q_shape), ("k", kv_shape), ("v", kv_shape))}
        for name in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o"):
            t[name] = graph.tensor(name=name, dim=[1, 1, 1, 1], stride=[1, 1, 1, 1], data_type=fp32)
        args = dict(q=t["q"], k=t["k"], v=t["v"], descale_q=t["descale_q"], descale_k=t["descale_k"],
                    descale_v=t["descale_v"], descale_s=t["descale_s"], scale_s=t["scale_s"],
                    scale_o=t["scale_o"], attn_scale=1.0 / math.sqrt(q_shape[-1]), use_causal_mask=False,
                    name="mochi_fp8_sdpa")
        try:  # newer frontends name the no-LSE forward this way, older ones is_inference
            o, _, amax_s, amax_o = graph.sdpa_fp8(generate_stats=False, **args)
        except TypeError:
            o, _, amax_s, amax_o = graph.sdpa_fp8(is_inference=True, **args)
        o.set_output(True).set_dim(list(q_shape)).set_stride(dense(q_shape)).set_data_type(fp8)
        for amax in (amax_s, amax_o):  # cuDNN reports them; nothing here reads them
            amax.set_output(True).set_dim([1, 1, 1, 1]).set_stride([1, 1, 1, 1]).set_data_type(fp32)
        t.update(o=o, amax_s=amax_s, amax_o=amax_o)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        workspace = torch.empty(graph.get_workspace_size(), dtype=torch.uint8, device=self.device)
        scalar = dict(dtype=torch.float32, device=self.device)
        constants = {"scale_s": torch.full((1, 1, 1, 1), E4M3_MAX, **scalar),
                     "descale_s": torch.full((1, 1, 1, 1), 1.0 / E4M3_MAX, **scalar),
                     "amax_s": torch.empty((1, 1, 1, 1), **scalar), "amax_o": torch.empty((1, 1, 1, 1), **scalar)}
        self.plans[key] = plan = _Plan(graph, t, workspace, constants)
        return plan

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        assert q.ndim == 4 and k.shape == v.shape and q.shape[:2] == k.shape[:2] and q.shape[3] == k.shape[3], \
            f"fp8 attention takes [B, H, S, D] q/k/v, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        quantized = self.to_e4m3(q, k, v)
        plan = self._plan(tuple(q.shape), tuple(k.shape))
        out = torch.empty(q.shape, dtype=E4M3, device=q.device)
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
        plan.graph.execute(self.variant_pack(plan, quantized, out), plan.workspace, handle=self.handle)
        return self.widen(out, quantized[5], q.dtype)

    @staticmethod
    def variant_pack(plan: _Plan, quantized: tuple[torch.Tensor, ...], out: torch.Tensor) -> dict:
        """The graph's tensors bound to data: `quantized` as `to_e4m3` returns it, `out` the e4m3 output."""
        q8, k8, v8, sq, sk, sv, inv_sv = quantized
        t = plan.tensors
        return {t["q"]: q8, t["k"]: k8, t["v"]: v8, t["descale_q"]: sq, t["descale_k"]: sk, t["descale_v"]: sv,
                t["scale_o"]: inv_sv, t["o"]: out, **{t[name]: value for name, value in plan.constants.items()}}


@functools.cache
def fp8_attention_on(device_index: int) -> CudnnFp8Attention:
    """One handle and plan cache per GPU of this process."""
    return CudnnFp8Attention(torch.device("cuda", device_index))


def emulated_fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A model of what the cuDNN graph computes, on any device: fp32 arithmetic with e4m3 rounding where the graph
    rounds (Q, K, V, the flash kernel's unnormalised probabilities exp(s - rowmax) in (0, 1], and O). The tests'
    statement of the scaling scheme and of the error it costs; cuDNN's own rounding order differs in detail."""
    sq, sk, sv = tensor_scale(q), tensor_scale(k), tensor_scale(v)
    qf, kf, vf = (quantize(x, s).float() * s for x, s in ((q, sq), (k, sk), (v, sv)))
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    p = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    p8 = (p * E4M3_MAX).to(E4M3).float() / E4M3_MAX
    o = (p8 @ vf) / p.sum(dim=-1, keepdim=True)
    return (quantize(o, sv).float() * sv).to(q.dtype)
