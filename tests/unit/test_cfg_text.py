"""The two CFG branches travel as one named pair (CFGText); its stacked order is defined in one place.

Every batch of 2 that holds both branches (Triton's TEXT_EMBEDS, the DiT's CFG batch, its velocities) is
built by `stacked()` and read back by `from_stacked()` / `split()`; these tests pin that the three agree, and
the diffusers parity test (tests/unit/test_parity_diffusers.py) checks the order against an outside oracle.
"""
from __future__ import annotations

import pytest
import torch

from mochi_runtime.loading.checkpoints import ModelDir
from mochi_runtime.loading.loaders import load_text_encoder
from mochi_runtime.models.text_encoder import CFGText, TextEmbedding
from mochi_runtime.sampler import guide


def _emb(value: float, valid: int) -> TextEmbedding:
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :valid] = True
    return TextEmbedding(torch.full((1, 8, 4), value), mask)


def test_stacked_and_from_stacked_are_inverse_and_keep_the_names():
    text = CFGText(cond=_emb(1.0, 5), uncond=_emb(-1.0, 2))
    both = text.stacked()
    assert both.features.shape == (2, 8, 4) and both.mask.shape == (2, 8)
    back = CFGText.from_stacked(both.features, both.mask)
    assert torch.equal(back.cond.features, text.cond.features) and torch.equal(back.cond.mask, text.cond.mask)
    assert torch.equal(back.uncond.features, text.uncond.features)
    assert [text.branch(i) for i in range(2)] == [getattr(text, name) for name in CFGText.STACKED]


def test_guidance_combines_the_branches_by_name():
    """guide() on velocities computed from `stacked()` gives uncond + g * (cond - uncond)."""
    text = CFGText(cond=_emb(3.0, 5), uncond=_emb(1.0, 2))
    velocities = text.stacked().features  # stands in for a DiT that returns its text input
    g = 4.5
    assert torch.equal(guide(velocities, g), torch.full((1, 8, 4), 1.0 + g * (3.0 - 1.0)))
    v_cond, v_uncond = CFGText.split(velocities)
    assert torch.equal(v_cond, text.cond.features) and torch.equal(v_uncond, text.uncond.features)


def test_the_encoder_puts_the_prompt_in_cond_and_the_negative_in_uncond(official_dir):
    te = load_text_encoder(ModelDir.open(official_dir), "cpu")
    text = te.encode_cfg("a red fox", "")
    alone = te.encode(["a red fox"])
    assert torch.equal(text.cond.features, alone.features) and torch.equal(text.cond.mask, alone.mask)
    empty = te.encode([""])
    assert torch.equal(text.uncond.features, empty.features) and not text.uncond.mask.any()  # no valid tokens


def test_a_pair_of_unequal_shapes_is_refused():
    with pytest.raises(AssertionError):
        CFGText(cond=_emb(1.0, 5), uncond=TextEmbedding(torch.zeros(2, 8, 4), torch.zeros(2, 8, dtype=torch.bool)))
