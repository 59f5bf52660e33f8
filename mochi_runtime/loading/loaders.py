"""Each model built on its device from a model directory, in the dtype asked for.

The DiT and VAE are built on the meta device and filled straight from the checkpoint
(`checkpoints.load_module`), so a full-size model never exists twice in host memory.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..models.dit import AsymmDiT
from ..models.text_encoder import TextEncoder
from ..models.vae import VAEDecoder
from ..ops.attention import LocalJointAttention, resolve_kernel
from ..ops.fp8 import quantize_blocks_
from .checkpoints import CheckpointError, ModelDir, load_module
from .tiny import embedded_model_dir

# "fp8" is the DiT's mode with e4m3 block linears (mochi_runtime.ops.fp8); everything else computes in bf16 then.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {name!r}")
    return DTYPES[name]


def open_model_dir(model_dir: str | Path | None) -> ModelDir:
    if model_dir is None or str(model_dir) == "":
        return ModelDir.open(embedded_model_dir())
    return ModelDir.open(model_dir)


def load_dit(md: ModelDir, device: torch.device, dtype: torch.dtype, attention: str = "auto",
             compile: bool | None = None, fp8: bool = False) -> AsymmDiT:
    """Build on the meta device, fill from the checkpoint; compile the blocks on GPU unless told not to.

    fp8: the block linears are quantised to e4m3 right after loading (from the checkpoint's bf16/fp32).
    """
    cfg = md.dit_config()
    with torch.device("meta"):
        dit = AsymmDiT(cfg)
    source, rules = md.dit_source()
    load_module(dit, source, rules, device, dtype, what=f"DiT ({md.root}, {md.layout})")
    if fp8:
        quantize_blocks_(dit)
    return prepare_dit(dit, device, attention, compile)


def prepare_dit(dit: AsymmDiT, device: torch.device, attention: str = "auto", compile: bool | None = None) -> AsymmDiT:
    """Attention kernel, eval mode, and compiled blocks on GPU unless told not to."""
    resolve_kernel(attention, device)  # an unknown kernel, or one this device lacks, fails at load, not mid-request
    dit.joint_attention = LocalJointAttention(attention)
    dit = dit.eval().requires_grad_(False)
    if compile if compile is not None else device.type == "cuda":
        dit.compile_blocks()
    return dit


def load_vae(md: ModelDir, device: torch.device, dtype: torch.dtype) -> VAEDecoder:
    cfg = md.vae_config()
    with torch.device("meta"):
        vae = VAEDecoder(cfg)
    source, rules = md.vae_source()
    load_module(vae, source, rules, device, dtype, what=f"VAE decoder ({md.root}, {md.layout})",
                ignore_prefixes=("encoder.",))
    return vae.eval().requires_grad_(False)


def load_text_encoder(md: ModelDir, device: torch.device, dtype: torch.dtype | None = None,
                      t5_dir: str | Path | None = None, offload: bool = False) -> TextEncoder:
    if t5_dir is not None:
        enc, tok = Path(t5_dir) / "text_encoder", Path(t5_dir) / "tokenizer"
    else:
        enc, tok = md.t5_paths()
    return TextEncoder(enc, tok, device, dtype, offload=offload)


def check_text_width(te: TextEncoder, t5_feat_dim: int) -> None:
    if te.feature_dim != t5_feat_dim:
        raise CheckpointError(f"T5 width {te.feature_dim} does not match the DiT's t5_feat_dim {t5_feat_dim}")
