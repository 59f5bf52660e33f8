"""T5-XXL prompt encoder (transformers' T5EncoderModel and its tokenizer).

Prompts are padded to 256 tokens and the attention mask is returned with the
embeddings; the DiT drops padded tokens itself. An empty prompt (the usual
negative prompt) becomes zero ids with an all-false mask, as Genmo's code does.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..validation import RequestError


@dataclass
class TextEmbedding:
    """T5 features [B, L, D] (fp32 on CPU or model dtype on GPU) and validity mask [B, L] bool."""

    features: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        assert self.features.ndim == 3 and self.mask.shape == self.features.shape[:2], (
            f"features {tuple(self.features.shape)} / mask {tuple(self.mask.shape)}"
        )

    def to(self, device) -> "TextEmbedding":
        return TextEmbedding(self.features.to(device), self.mask.to(device))


@dataclass(frozen=True)
class CFGText:
    """The two texts classifier-free guidance mixes: the prompt's embedding (`cond`) and the negative prompt's
    (`uncond`), each [1, L, D] with mask [1, L].

    Where both travel as one batch of 2 (Triton's TEXT_EMBEDS [2, L, D] / TEXT_MASK [2, L], the DiT's CFG
    batch, the velocities it returns) the rows are in `STACKED` order, defined here and used through
    `stacked`, `from_stacked` and `split` only.
    """

    cond: TextEmbedding
    uncond: TextEmbedding
    STACKED = ("uncond", "cond")  # row 0 the negative prompt, row 1 the prompt

    def __post_init__(self) -> None:
        assert self.cond.features.shape[0] == 1 and self.cond.features.shape == self.uncond.features.shape, (
            f"cond {tuple(self.cond.features.shape)} / uncond {tuple(self.uncond.features.shape)}")

    def to(self, device) -> "CFGText":
        return CFGText(self.cond.to(device), self.uncond.to(device))

    def branch(self, index: int) -> TextEmbedding:
        """The `index`-th branch in stacked order (a CFG-parallel rank pair runs one branch each)."""
        return getattr(self, self.STACKED[index])

    def stacked(self) -> TextEmbedding:
        """Both branches as one batch: features [2, L, D], mask [2, L]."""
        rows = [self.branch(0), self.branch(1)]
        return TextEmbedding(torch.cat([r.features for r in rows]), torch.cat([r.mask for r in rows]))

    @classmethod
    def from_stacked(cls, features: torch.Tensor, mask: torch.Tensor) -> "CFGText":
        """From features [2, L, D] and mask [2, L] in stacked order."""
        assert features.shape[0] == 2 and mask.shape == features.shape[:2], (tuple(features.shape), tuple(mask.shape))
        rows = {name: TextEmbedding(features[i:i + 1], mask[i:i + 1]) for i, name in enumerate(cls.STACKED)}
        return cls(**rows)

    @classmethod
    def split(cls, both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of 2 computed from `stacked()` (e.g. the DiT's velocities) -> (cond, uncond) halves."""
        rows = dict(zip(cls.STACKED, both.chunk(2)))
        return rows["cond"], rows["uncond"]


class TextEncoder:
    def __init__(
        self,
        encoder_dir: str | Path,
        tokenizer_dir: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        max_length: int = 256,
        offload: bool = False,
    ) -> None:
        """offload=True keeps the weights in host memory between encodes (T5-XXL is 9.5 GB in bf16: on a
        24 GB card it is the difference between fitting the DiT or not)."""
        from transformers import AutoTokenizer, T5EncoderModel  # slow to import; DiT workers never need it

        self.device = torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        if self.device.type == "cpu" and dtype != torch.float32:
            raise ValueError("T5 runs in fp32 on CPU")
        self.dtype = dtype
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.offload = offload
        home = torch.device("cpu") if offload else self.device
        self.model = T5EncoderModel.from_pretrained(str(encoder_dir), dtype=dtype).to(home).eval()

    @contextmanager
    def on_device(self) -> Iterator[None]:
        """The weights on the compute device for the duration; back to host memory after, when offloading."""
        if not self.offload:
            yield
            return
        self.model.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def check_lengths(self, **texts: str) -> None:
        """RequestError naming the field of a text longer than the `max_length` tokens T5 reads (the rest would
        be cut off without a word)."""
        for field, text in texts.items():
            n = len(self.tokenizer(text).input_ids)
            if n > self.max_length:
                raise RequestError(field, f"is {n} tokens, over the {self.max_length} that T5 reads; shorten it")

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.d_model)

    def encode_cfg(self, prompt: str, negative_prompt: str) -> CFGText:
        """Both CFG branches in one T5 pass: an empty negative prompt gives an all-zero, fully masked row."""
        texts = {"cond": prompt, "uncond": negative_prompt}
        emb = self.encode([texts[name] for name in CFGText.STACKED])
        return CFGText.from_stacked(emb.features, emb.mask)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> TextEmbedding:
        tok = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        ids, mask = tok.input_ids, tok.attention_mask.bool()
        for i, p in enumerate(prompts):
            if not p.strip():
                ids[i].zero_()
                mask[i] = False
        with self.on_device():
            feats = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))[0]
        return TextEmbedding(feats, mask.to(self.device))
