"""fp8 mode (--dtype fp8): e4m3 block linears with per-channel weight and per-row activation scales.

CPU runs the same torch._scaled_mm path as the GPU, so the quantisation arithmetic is checked here; the speed
and the full-size error are GPU benchmark numbers (bench step --fp8).
"""
from __future__ import annotations

import pytest
import torch
from numerics import error

from benchmarks.weights import build_dit, cfg_inputs
from mochi_runtime.ops.fp8 import FP8, FP8_MAX, Fp8Linear, quantize_blocks_, weight_bytes


def dequantized_reference(q: Fp8Linear, x: torch.Tensor) -> torch.Tensor:
    """The same quantised operands multiplied in fp32: what _scaled_mm must compute."""
    rows = x.reshape(-1, q.in_features).float()
    xs = (rows.abs().amax(dim=1, keepdim=True) / FP8_MAX).clamp(min=1e-12)
    xq = (rows / xs).clamp(-FP8_MAX, FP8_MAX).to(FP8).float() * xs
    w = q.weight.float() * q.weight_scale[:, None]
    out = xq @ w.t()
    if q.bias is not None:
        out = out + q.bias.float()
    return out.reshape(*x.shape[:-1], q.out_features)


@pytest.mark.parametrize("rows", [1, 5, 16, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_equals_its_dequantized_product(rows, bias):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(64, 48, bias=bias).to(torch.bfloat16)
    q = Fp8Linear.from_linear(lin)
    x = torch.randn(rows, 64, dtype=torch.bfloat16) * 3
    out = q(x)
    assert out.shape == (rows, 48) and out.dtype == torch.bfloat16
    ref = dequantized_reference(q, x)
    assert error(out.float(), ref).rel_l2 < 1e-2  # bf16 output rounding only
    # and it approximates the bf16 linear to e4m3's precision
    assert error(out.float(), lin(x).float()).rel_l2 < 0.08


def test_weights_are_e4m3_with_one_scale_per_output_channel():
    lin = torch.nn.Linear(32, 16).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight[3] *= 1000  # one large row must not flatten the others
    q = Fp8Linear.from_linear(lin)
    assert q.weight.dtype == FP8 and q.weight_scale.shape == (16,)
    back = q.weight.float() * q.weight_scale[:, None]
    assert error(back[:3], lin.weight[:3].float()).rel_l2 < 0.05
    assert q.weight.float().abs().amax(dim=1).min() == FP8_MAX  # every row uses the full e4m3 range


def test_sizes_not_divisible_by_16_are_refused():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear.from_linear(torch.nn.Linear(24, 40))


def test_quantized_tiny_dit_halves_weights_and_stays_close_to_bf16():
    dit = build_dit("tiny", "cpu", torch.bfloat16)
    x, sigma, y, mask = cfg_inputs(dit.cfg, 13, 64, 96, 8, "cpu", torch.bfloat16)
    with torch.inference_mode():
        ref = dit(x, sigma, y, mask).float()
        before = weight_bytes(dit)
        n = quantize_blocks_(dit)
        out = dit(x, sigma, y, mask).float()
    linears_per_block = 10  # mod_x, mod_y, qkv_x, qkv_y, proj_x, proj_y, mlp_x w1/w2, mlp_y w1/w2
    assert n == linears_per_block * (dit.cfg.depth - 1) + 7  # the last block has no text output or MLP
    assert not any(isinstance(m, torch.nn.Linear) for m in dit.blocks.modules())
    assert weight_bytes(dit) < 0.6 * before
    assert torch.isfinite(out).all()
    assert error(out, ref).rel_l2 < 0.15


def test_generate_with_dtype_fp8_runs_end_to_end(tmp_path, official_dir):
    from mochi_runtime.pipeline import MochiPipeline
    from mochi_runtime.validation import GenerationRequest

    pipe = MochiPipeline.from_dir(official_dir, device="cpu", dtype="fp8")
    assert any(isinstance(m, Fp8Linear) for m in pipe.denoiser.dit.modules())
    res = pipe.generate(GenerationRequest("a fox", num_frames=7, height=32, width=32, steps=2, seed=1))
    assert res.frames.shape == (7, 32, 32, 3)


def test_fp8_with_sharded_weights_is_refused_clearly():
    from mochi_runtime.parallel import GroupSpec, WorkerGroup, WorkerGroupError
    from mochi_runtime.parallel.topology import Layout

    with pytest.raises((WorkerGroupError, RuntimeError, ValueError), match="fp8"):
        WorkerGroup(GroupSpec(Layout(1, 2, 1), None, None, dtype="fp8", weights="sharded"), start_timeout=120)
