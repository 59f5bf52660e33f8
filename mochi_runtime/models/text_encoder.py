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
        from transformers import AutoTokenizer, T5EncoderModel

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
