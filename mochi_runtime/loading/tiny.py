"""The embedded default: a tiny random-weight Mochi checkpoint written on first use.

Same architecture as mochi-1-preview (preset `tiny`), deterministic weights
from a fixed seed, a tiny T5 encoder and a character-level T5 tokenizer built
offline (no hub access is needed or attempted).
"""
from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

from .checkpoints import save_diffusers, save_official
from ..models.config import DiTConfig, T5Config, VAEConfig, get_preset
from ..models.dit import AsymmDiT
from ..models.vae import VAEDecoder

EMBEDDED_VERSION = "v1"
EMBEDDED_SEED = 20261127


def init_random_(module: torch.nn.Module, seed: int, scale: float = 1.0) -> torch.nn.Module:
    """Fill a module's parameters in place with seeded random values on their own device.

    Norm weights land near 1 (as trained ones are), matrices get 1/sqrt(fan_in)
    scaled normals, vectors small normals: activations stay in a sane range
    through many blocks, which matters for benchmarks and bf16 error checks.
    FSDP-sharded parameters get their rows of the very same values.
    """
    devices = {p.device for p in module.parameters()}
    assert len(devices) == 1, f"parameters on several devices: {devices}"
    device = devices.pop()
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            base = 1.0 if ("norm" in name or name.endswith(("stack.0.weight", "stack.3.weight"))) else 0.0
            fan_in = 1
            for d in p.shape[1:]:
                fan_in *= d
            std = scale / fan_in**0.5 if p.ndim >= 2 else scale * 0.2
            full = torch.empty(p.shape, dtype=p.dtype, device=device)
            _assign_full(p, full.normal_(generator=gen).mul_(std).add_(base))
    return module


def _assign_full(param: torch.Tensor, full: torch.Tensor) -> None:
    from torch.distributed.tensor import DTensor  # only sharded loads meet DTensors

    if isinstance(param, DTensor):
        from ..parallel.sharded import rows_for_param  # parallel imports loading: a cycle at import time

        param.to_local().copy_(rows_for_param(param, full))
    else:
        param.copy_(full)


def init_random_dit_(dit: AsymmDiT, seed: int) -> AsymmDiT:
    """Seeded random DiT weights, identical on every device and every rank given the seed (sharded or not)."""
    init_random_(dit, seed)
    with torch.no_grad():
        p = dit.pos_frequencies
        full = torch.empty(p.shape, dtype=p.dtype, device=p.device)
        _assign_full(p, full.uniform_(0, 0.5, generator=torch.Generator(p.device).manual_seed(seed)))
    return dit


def random_dit_state(cfg: DiTConfig, seed: int = EMBEDDED_SEED) -> dict[str, torch.Tensor]:
    return init_random_dit_(AsymmDiT(cfg), seed).state_dict()


def random_vae_state(cfg: VAEConfig, seed: int = EMBEDDED_SEED + 1) -> dict[str, torch.Tensor]:
    return init_random_(VAEDecoder(cfg), seed).state_dict()


def build_tokenizer(max_length: int = 256):
    """A character-level SentencePiece-style (unigram) T5 tokenizer: pad=0, eos=1, unk=2."""
    from transformers import T5Tokenizer  # transformers takes seconds to import; only writing the tiny model needs it

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        pieces.append(("\u2581" + ch, -5.0))
        pieces.append((ch, -6.0))
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    tok.model_max_length = max_length
    return tok


def write_t5(folder: Path, cfg: T5Config, seed: int = EMBEDDED_SEED + 2) -> None:
    from transformers import T5Config as HFT5Config  # as above
    from transformers import T5EncoderModel  # as above

    tok = build_tokenizer()
    assert len(tok) <= cfg.vocab_size, "tokenizer larger than the T5 vocabulary"
    torch.manual_seed(seed)
    hf_cfg = HFT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, feed_forward_proj=cfg.feed_forward_proj, is_encoder_decoder=False,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance, use_cache=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5EncoderModel(hf_cfg).eval()
    # is_main_process: transformers skips writing weights on non-zero torch.distributed ranks.
    model.save_pretrained(str(folder / "text_encoder"), safe_serialization=True, is_main_process=True)
    if not (folder / "text_encoder" / "model.safetensors").is_file():
        raise RuntimeError(f"T5 weights were not written to {folder / 'text_encoder'}")
    tok.save_pretrained(str(folder / "tokenizer"))


def write_tiny_checkpoint(folder: str | Path, layout: str = "official", seed: int = EMBEDDED_SEED) -> Path:
    """Write the tiny preset with random weights in `layout` ("official" or "diffusers")."""
    folder = Path(folder)
    preset = get_preset("tiny")
    dit_state = random_dit_state(preset.dit, seed)
    vae_state = random_vae_state(preset.vae, seed + 1)
    if layout == "official":
        save_official(folder, dit_state, vae_state, preset.dit, preset.vae)
    elif layout == "diffusers":
        # Small shards so the index-json path is exercised.
        save_diffusers(folder, dit_state, vae_state, preset.dit, preset.vae, shard_bytes=256 * 1024)
        (folder / "model_index.json").write_text(json.dumps({
            "_class_name": "MochiPipeline",
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            "text_encoder": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "MochiTransformer3DModel"],
            "vae": ["diffusers", "AutoencoderKLMochi"],
        }, indent=2))
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
            "_class_name": "FlowMatchEulerDiscreteScheduler", "invert_sigmas": True, "num_train_timesteps": 1000,
            "shift": 1.0,
        }, indent=2))
    else:
        raise ValueError(f"layout must be 'official' or 'diffusers', got {layout!r}")
    write_t5(folder, preset.t5, seed + 2)
    return folder


def embedded_model_dir() -> Path:
    """Path of the embedded default, written atomically on first use.

    Location: $MOCHI_EMBEDDED_DIR, else $XDG_CACHE_HOME (or ~/.cache)/mochi-runtime/tiny-<version>.
    Several processes may race to create it; each writes a private temp folder and
    renames it into place, so readers never see a half-written checkpoint.
    """
    env = os.environ.get("MOCHI_EMBEDDED_DIR")
    if env:
        target = Path(env)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        target = cache / "mochi-runtime" / f"tiny-{EMBEDDED_VERSION}"
    if (target / "dit.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        write_tiny_checkpoint(tmp, "official")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "dit.safetensors").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
