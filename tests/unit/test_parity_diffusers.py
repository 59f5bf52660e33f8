"""Our modules compute diffusers' Mochi functions on the same weights (fp32)."""
from __future__ import annotations

import pytest
import torch
from conftest import text_batch
from numerics import assert_close

from mochi_runtime.loading.checkpoints import ModelDir
from mochi_runtime.pipeline import run_sampler
from mochi_runtime.loading.loaders import load_dit, load_vae
from mochi_runtime.models.text_encoder import CFGText, TextEmbedding
from mochi_runtime.validation import GenerationRequest

CPU = torch.device("cpu")


def diffusers_transformer(diffusers_dir):
    from diffusers import MochiTransformer3DModel

    return MochiTransformer3DModel.from_pretrained(str(diffusers_dir / "transformer"), torch_dtype=torch.float32).eval()


def diffusers_vae(official_dir):
    """diffusers' VAE with our tiny decoder weights, converted by our key map (encoder left random)."""
    from diffusers import AutoencoderKLMochi

    from mochi_runtime.loading.checkpoints import to_diffusers, vae_key_map

    vae = load_vae(ModelDir.open(official_dir), CPU, torch.float32)
    cfg = vae.cfg
    ref = AutoencoderKLMochi(
        encoder_block_out_channels=(32,) * len(cfg.block_out_channels),
        decoder_block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.layers_per_block,
        latents_mean=cfg.latents_mean,
        latents_std=cfg.latents_std,
    ).eval()
    result = ref.load_state_dict(to_diffusers(vae.state_dict(), vae_key_map(cfg)), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith("encoder.") for k in result.missing_keys)
    return vae, ref


@pytest.mark.numeric
def test_dit_forward_matches_diffusers(official_dir, diffusers_dir):
    ours = load_dit(ModelDir.open(official_dir), CPU, torch.float32)
    ref = diffusers_transformer(diffusers_dir)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 3, 6, 10, generator=g)  # non-square latent grid
    sigma = torch.tensor([0.9, 0.9])
    feats, mask = text_batch(ours.cfg.t5_feat_dim, [11, 4])  # batch 2, different text lengths
    with torch.no_grad():
        a = ours(x, sigma, feats, mask)
        b = ref(x, feats, (1 - sigma) * 1000, mask, return_dict=False)[0]
    assert a.shape == b.shape == x.shape
    # Two implementations of the same forward: different op order (fused vs split Q/K/V, attention kernels).
    assert_close(a, b, rel_l2=1e-5, max_rel=2e-5, label="forward")
    # The padded text tokens must not matter: changing them leaves the output unchanged (they are sliced away
    # before attention; only the pooled-text branch's masked mean sees them, and multiplies them by zero).
    feats2 = feats.clone()
    feats2[~mask] = 100.0
    with torch.no_grad():
        c = ours(x, sigma, feats2, mask)
    assert_close(c, a, rel_l2=1e-6, max_rel=2e-6, label="padding")


@pytest.mark.numeric
def test_vae_decode_matches_diffusers(official_dir):
    vae, ref = diffusers_vae(official_dir)
    z = torch.randn(1, 12, 4, 5, 7, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = vae.decode(z, trim="end")  # diffusers' trim rule (Genmo's is our default: tests/unit/test_vae_trim.py)
        mean = torch.tensor(vae.cfg.latents_mean).view(1, 12, 1, 1, 1)
        std = torch.tensor(vae.cfg.latents_std).view(1, 12, 1, 1, 1)
        b = ref.decode(z * std + mean).sample  # diffusers' pipeline de-normalises before decode
    assert a.shape == (1, 3, 19, 40, 56) and b.shape == a.shape
    assert_close(a, b, rel_l2=1e-5, max_rel=2e-5)


@pytest.mark.numeric
def test_three_step_generation_matches_diffusers_pipeline(official_dir, diffusers_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler, MochiPipeline

    from mochi_runtime.sampler import initial_noise

    ours = load_dit(ModelDir.open(official_dir), CPU, torch.float32)
    vae, ref_vae = diffusers_vae(official_dir)
    pipe = MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=ref_vae, text_encoder=None, tokenizer=None, transformer=diffusers_transformer(diffusers_dir),
    )
    pipe.set_progress_bar_config(disable=True)
    request = GenerationRequest("x", num_frames=13, height=48, width=80, steps=3, guidance=4.5, seed=7)
    feats, mask = text_batch(ours.cfg.t5_feat_dim, [9, 0], seed=3)  # empty negative prompt: all-false mask
    cond, uncond = TextEmbedding(feats[:1], mask[:1]), TextEmbedding(feats[1:], mask[1:])
    mine = run_sampler(ours, request, CFGText(cond=cond, uncond=uncond))
    with torch.no_grad():
        theirs = pipe(
            prompt_embeds=cond.features, prompt_attention_mask=cond.mask,
            negative_prompt_embeds=uncond.features, negative_prompt_attention_mask=uncond.mask,
            latents=initial_noise(request.seed, request.latent_shape), num_inference_steps=3, guidance_scale=4.5,
            num_frames=request.num_frames, height=request.height, width=request.width, output_type="latent",
        ).frames
    assert mine.shape == theirs.shape == request.latent_shape
    # three sampler steps of two implementations (largest over the margin matrix: 1.1e-6 rel_l2, 1.5e-6 max_rel)
    assert_close(mine, theirs, rel_l2=2e-5, max_rel=4e-5)


def test_schedule_matches_diffusers():
    from diffusers.pipelines.mochi.pipeline_mochi import linear_quadratic_schedule as ref

    from mochi_runtime.sampler import linear_quadratic_schedule

    for steps in (2, 3, 7, 64):
        assert linear_quadratic_schedule(steps)[:-1] == ref(steps, 0.025)
        assert linear_quadratic_schedule(steps)[-1] == 0.0
