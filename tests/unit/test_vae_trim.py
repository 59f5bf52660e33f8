"""Where the VAE drops its causal warm-up frames, pinned by a slow reference written here from the rule.

Genmo's decoder (genmoai/mochi `vae/models.py`, the one the VAE was trained with) drops the first
`temporal_expansion - 1` frames inside every up-sampling block, right after its depth-to-space step, so each
later causal conv pads by repeating the first *kept* frame. diffusers keeps them and drops the first
`temporal_factor - 1` output frames after the decoder. `reference_decode` below computes either rule frame by
frame in float64, with nothing of the runtime's decode path but the weights: per-frame GroupNorm written out,
each causal 3x3x3 conv as three 2D convs over the frames t-2, t-1, t (indices below 0 read frame 0), the
depth-to-space step by explicit frame order.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mochi_runtime.loading.checkpoints import ModelDir
from mochi_runtime.loading.loaders import load_vae
from mochi_runtime.models.vae import CausalConv3d, FrameGroupNorm, ResBlock, UpsampleBlock

from numerics import assert_close, error


@pytest.fixture(scope="module")
def vae(official_dir):
    return load_vae(ModelDir.open(official_dir), torch.device("cpu"), torch.float32)


def _norm(frame: torch.Tensor, norm: FrameGroupNorm) -> torch.Tensor:
    c = frame.shape[0]
    x = frame.reshape(norm.num_groups, -1)
    x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + norm.eps)
    return x.reshape(frame.shape) * norm.weight.view(c, 1, 1) + norm.bias.view(c, 1, 1)


def _silu(frame: torch.Tensor) -> torch.Tensor:
    return frame * torch.sigmoid(frame)


def _conv(frames: list[torch.Tensor], conv: CausalConv3d) -> list[torch.Tensor]:
    kt = conv.weight.shape[2]
    out = []
    for t in range(len(frames)):
        acc = conv.bias.view(-1, 1, 1).clone()
        for k in range(kt):
            src = frames[max(0, t - (kt - 1) + k)]  # causal: before the first frame, the first frame again
            acc = acc + F.conv2d(F.pad(src[None], (1, 1, 1, 1), mode="replicate"), conv.weight[:, :, k])[0]
        out.append(acc)
    return out


def _per_frame(frames: list[torch.Tensor], fn) -> list[torch.Tensor]:
    return [fn(f) for f in frames]


def _linear(weight: torch.Tensor, bias: torch.Tensor):
    return lambda f: torch.einsum("oc,chw->ohw", weight.reshape(weight.shape[0], -1), f) + bias.view(-1, 1, 1)


def _resblock(frames: list[torch.Tensor], block: ResBlock) -> list[torch.Tensor]:
    n1, _, c1, n2, _, c2 = block.stack
    h = _conv(_per_frame(_per_frame(frames, lambda f: _norm(f, n1)), _silu), c1)
    h = _conv(_per_frame(_per_frame(h, lambda f: _norm(f, n2)), _silu), c2)
    return [a + b for a, b in zip(frames, h)]


def _depth_to_space_time(frames: list[torch.Tensor], st: int, ss: int) -> list[torch.Tensor]:
    """Each [cout*st*ss*ss, H, W] frame becomes st frames [cout, H*ss, W*ss]; channels ordered (c, st, sh, sw)."""
    out = []
    for f in frames:
        _, h, w = f.shape
        g = f.reshape(-1, st, ss, ss, h, w)
        for i in range(st):
            out.append(g[:, i].permute(0, 3, 1, 4, 2).reshape(-1, h * ss, w * ss))
    return out


def reference_decode(vae, z: torch.Tensor, rule: str) -> torch.Tensor:
    """De-normalised latents [1, C, T, h, w] -> frames [1, 3, F, 8h, 8w] in float64 under `rule`."""
    m = copy.deepcopy(vae).double()
    frames = [z[0, :, t].double() for t in range(z.shape[2])]
    for block in m.blocks:
        if isinstance(block, UpsampleBlock):
            for rb in block.blocks:
                frames = _resblock(frames, rb)
            frames = _per_frame(frames, _linear(block.proj.weight, block.proj.bias))
            frames = _depth_to_space_time(frames, block.t_exp, block.s_exp)
            if rule == "genmo":
                frames = frames[block.t_exp - 1:]
            continue
        for layer in block:
            if isinstance(layer, ResBlock):
                frames = _resblock(frames, layer)
            else:  # the 1x1x1 input conv
                frames = _per_frame(frames, _linear(layer.weight, layer.bias))
    frames = _per_frame(_per_frame(frames, _silu), _linear(m.output_proj.weight, m.output_proj.bias))
    if rule == "end":
        frames = frames[m.cfg.temporal_factor - 1:]
    return torch.stack(frames, dim=1)[None]


@pytest.mark.numeric
@pytest.mark.parametrize("latent_frames", [2, 3, 5])
def test_decoder_follows_genmo_rule_by_default_and_diffusers_rule_on_request(vae, latent_frames):
    z = torch.randn(1, 12, latent_frames, 4, 6, generator=torch.Generator().manual_seed(latent_frames))
    zd = vae.denormalize(z)
    genmo, end = reference_decode(vae, zd, "genmo"), reference_decode(vae, zd, "end")
    frames = 6 * (latent_frames - 1) + 1
    assert genmo.shape == end.shape == (1, 3, frames, 32, 48)
    # The two rules must differ where the test claims to tell them apart: the first frames, by far more than
    # any rounding (measured on these random weights: first-frame differences of ~0.5-1 of the output's RMS).
    first = error(genmo[:, :, :1], end[:, :, :1])
    assert first.rel_l2 > 0.05, first
    with torch.inference_mode():
        ours = vae.decode(z)
        ours_end = vae.decode(z, trim="end")
    # fp32 against a float64 reference of the same arithmetic: a few units of fp32 rounding per layer
    # (largest over the margin matrix, tests/numerics.py: 5.3e-7 rel_l2, 6.3e-7 max_rel).
    assert_close(ours, genmo, rel_l2=1e-5, max_rel=2e-5, label="genmo")
    assert_close(ours_end, end, rel_l2=1e-5, max_rel=2e-5, label="end")


def test_trim_rule_is_checked():
    from mochi_runtime.models.vae_tiling import TilePlan

    with pytest.raises(ValueError, match=r"trim must be one of \['genmo', 'end'\]"):
        TilePlan(trim="diffusers")
