"""Checkpoint layouts: Genmo's official files and the diffusers folder layout.

Our module names are the official keys, so the official layout loads as is; the
diffusers layout goes through an explicit key-by-key map (`dit_key_map`,
`vae_key_map`) that is used in both directions (loading diffusers weights and
writing diffusers-layout test checkpoints). Loading fails on a missing key,
naming it, and reports keys it did not use.

Weights are read one tensor at a time from safetensors (memory-mapped) and cast
straight to the target dtype and device, into modules built on the meta device,
so peak host memory stays near one copy of the model in the target dtype.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..models.config import DiTConfig, VAEConfig

log = logging.getLogger(__name__)

MOCHI_CONFIG_FILE = "mochi_config.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed or does not match the model."""


# ----------------------------------------------------------------------------------------------
# Tensor sources


class TensorSource:
    """Lazy access to the tensors of one or more safetensors files."""

    def __init__(self, files: list[Path]) -> None:
        if not files:
            raise CheckpointError("no safetensors files given")
        self.files = files
        self._where: dict[str, Path] = {}
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"checkpoint file not found: {f}")
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    self._where[k] = f
        self._handles: dict[Path, object] = {}

    @classmethod
    def from_folder(cls, folder: Path, stem: str) -> "TensorSource":
        """`stem`.safetensors, a sharded `stem`.safetensors.index.json, or their bf16/fp16 variants."""
        for variant in ("", ".bf16", ".fp16", ".fp32"):
            index = folder / f"{stem}.safetensors.index{variant}.json"
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                return cls(sorted({folder / name for name in weight_map.values()}))
            single = folder / f"{stem}{variant}.safetensors"
            if single.is_file():
                return cls([single])
        raise CheckpointError(f"no {stem}*.safetensors or index json in {folder}")

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def _handle(self, key: str):
        f = self._where[key]
        if f not in self._handles:
            self._handles[f] = safe_open(str(f), framework="pt")
        return self._handles[f]

    def get(self, key: str) -> torch.Tensor:
        return self._handle(key).get_tensor(key)  # type: ignore[attr-defined]

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of dim 0, read without materialising the rest of the tensor."""
        return self._handle(key).get_slice(key)[start:stop]  # type: ignore[attr-defined]

    def num_rows(self, key: str) -> int:
        return int(self._handle(key).get_slice(key).get_shape()[0])  # type: ignore[attr-defined]

    def numel(self) -> int:
        """Elements of every tensor, read from the file headers (no tensor is loaded)."""
        return sum(math.prod(self._handle(k).get_slice(k).get_shape()) for k in self._where)  # type: ignore


# ----------------------------------------------------------------------------------------------
# Key maps between the official names (ours) and diffusers names


@dataclass(frozen=True)
class KeyRule:
    """One official tensor and the diffusers tensor(s) it corresponds to.

    kind: "same" (1:1), "split3" (official = cat of 3 diffusers tensors on dim 0),
    "swap2" (same tensor with its two halves on dim 0 swapped).
    """

    ours: str
    theirs: tuple[str, ...]
    kind: str = "same"


def _wb(ours: str, theirs: str, bias: bool = True) -> list[KeyRule]:
    rules = [KeyRule(f"{ours}.weight", (f"{theirs}.weight",))]
    if bias:
        rules.append(KeyRule(f"{ours}.bias", (f"{theirs}.bias",)))
    return rules


def dit_key_map(cfg: DiTConfig) -> list[KeyRule]:
    r = []
    r += _wb("x_embedder.proj", "patch_embed.proj")
    r += _wb("t_embedder.mlp.0", "time_embed.timestep_embedder.linear_1")
    r += _wb("t_embedder.mlp.2", "time_embed.timestep_embedder.linear_2")
    for name in ("to_kv", "to_q", "to_out"):
        r += _wb(f"t5_y_embedder.{name}", f"time_embed.pooler.{name}")
    r += _wb("t5_yproj", "time_embed.caption_proj")
    r.append(KeyRule("pos_frequencies", ("pos_frequencies",)))
    for i in range(cfg.depth):
        o, d = f"blocks.{i}", f"transformer_blocks.{i}"
        last = i == cfg.depth - 1
        r += _wb(f"{o}.mod_x", f"{d}.norm1.linear")
        r += _wb(f"{o}.mod_y", f"{d}.norm1_context.{'linear_1' if last else 'linear'}")
        r.append(KeyRule(f"{o}.attn.qkv_x.weight", tuple(f"{d}.attn1.to_{c}.weight" for c in "qkv"), "split3"))
        r.append(
            KeyRule(f"{o}.attn.qkv_y.weight", tuple(f"{d}.attn1.add_{c}_proj.weight" for c in "qkv"), "split3")
        )
        for ours, theirs in (("q_norm_x", "norm_q"), ("k_norm_x", "norm_k"), ("q_norm_y", "norm_added_q"),
                             ("k_norm_y", "norm_added_k")):
            r.append(KeyRule(f"{o}.attn.{ours}.weight", (f"{d}.attn1.{theirs}.weight",)))
        r += _wb(f"{o}.attn.proj_x", f"{d}.attn1.to_out.0")
        mlps = [("mlp_x", "ff")] if last else [("mlp_x", "ff"), ("mlp_y", "ff_context")]
        if not last:
            r += _wb(f"{o}.attn.proj_y", f"{d}.attn1.to_add_out")
        for ours, theirs in mlps:
            r.append(KeyRule(f"{o}.{ours}.w1.weight", (f"{d}.{theirs}.net.0.proj.weight",), "swap2"))
            r.append(KeyRule(f"{o}.{ours}.w2.weight", (f"{d}.{theirs}.net.2.weight",)))
    r.append(KeyRule("final_layer.mod.weight", ("norm_out.linear.weight",), "swap2"))
    r.append(KeyRule("final_layer.mod.bias", ("norm_out.linear.bias",), "swap2"))
    r += _wb("final_layer.linear", "proj_out")
    return r


def _resblock_rules(ours: str, theirs: str) -> list[KeyRule]:
    r = []
    for idx, name in ((0, "norm1.norm_layer"), (2, "conv1.conv"), (3, "norm2.norm_layer"), (5, "conv2.conv")):
        r += _wb(f"{ours}.stack.{idx}", f"{theirs}.{name}")
    return r


def vae_key_map(cfg: VAEConfig) -> list[KeyRule]:
    """Decoder keys: official `decoder.safetensors` names -> diffusers `vae/` names."""
    nb = len(cfg.block_out_channels) - 1
    r = _wb("blocks.0.0", "decoder.conv_in")
    for i in range(cfg.layers_per_block[-1]):
        r += _resblock_rules(f"blocks.0.{i + 1}", f"decoder.block_in.resnets.{i}")
    for b in range(nb):
        for i in range(cfg.layers_per_block[-b - 2]):
            r += _resblock_rules(f"blocks.{b + 1}.blocks.{i}", f"decoder.up_blocks.{b}.resnets.{i}")
        r += _wb(f"blocks.{b + 1}.proj", f"decoder.up_blocks.{b}.proj")
    for i in range(cfg.layers_per_block[0]):
        r += _resblock_rules(f"blocks.{nb + 1}.{i}", f"decoder.block_out.resnets.{i}")
    r += _wb("output_proj", "decoder.proj_out")
    return r


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def to_diffusers(state: dict[str, torch.Tensor], rules: list[KeyRule]) -> dict[str, torch.Tensor]:
    """Official-named state dict -> diffusers-named state dict (used to write test checkpoints)."""
    out: dict[str, torch.Tensor] = {}
    for rule in rules:
        t = state[rule.ours]
        if rule.kind == "split3":
            for name, part in zip(rule.theirs, t.chunk(3, dim=0)):
                out[name] = part.contiguous()
        elif rule.kind == "swap2":
            out[rule.theirs[0]] = _swap_halves(t).contiguous()
        else:
            out[rule.theirs[0]] = t
    return out


@dataclass
class LoadReport:
    loaded: int = 0
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def plan_reads(source: TensorSource, rules: list[KeyRule] | None, expected: list[str],
               what: str = "checkpoint") -> list[KeyRule]:
    """One rule per expected (official-named) tensor; every source key it needs must exist."""
    by_ours = {r.ours: r for r in rules} if rules is not None else None
    plan: list[KeyRule] = []
    missing: list[str] = []
    for key in expected:
        rule = by_ours.get(key) if by_ours is not None else KeyRule(key, (key,))
        if rule is None:
            raise CheckpointError(f"{what}: no conversion rule for parameter {key!r}")
        absent = [k for k in rule.theirs if k not in source]
        missing.extend(absent)
        if not absent:
            plan.append(rule)
    if missing:
        raise CheckpointError(f"{what}: missing key(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return plan


def leftover_report(source: TensorSource, plan: list[KeyRule], ignore_prefixes: tuple[str, ...] = (),
                    what: str = "checkpoint") -> LoadReport:
    """Which source keys the plan leaves unread: expected leftovers (ignored prefixes) and unexpected ones."""
    used = {k for r in plan for k in r.theirs}
    report = LoadReport(loaded=len(plan))
    for k in source.keys():
        if k not in used:
            (report.ignored if k.startswith(ignore_prefixes) else report.unexpected).append(k)
    if report.unexpected:
        log.warning("%s: %d unexpected key(s) not loaded: %s", what, len(report.unexpected), report.unexpected[:10])
    return report


def read_tensor(source: TensorSource, rule: KeyRule, cast: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One parameter in our layout, assembled from its source tensor(s)."""
    if rule.kind == "split3":
        return torch.cat([cast(source.get(k)) for k in rule.theirs], dim=0)
    if rule.kind == "swap2":
        return _swap_halves(cast(source.get(rule.theirs[0])))
    return cast(source.get(rule.theirs[0]))


def read_rows(source: TensorSource, rule: KeyRule, start: int, stop: int,
              cast: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Rows [start, stop) of one parameter in our layout, reading only those rows from the source.

    Our tensor is a run of source row ranges (a fused QKV is three diffusers tensors end to end; a swapped
    modulation is the second half of one tensor, then its first half); the requested rows are cut from them.
    """
    if rule.kind == "split3":
        segments = [(k, 0, source.num_rows(k)) for k in rule.theirs]
    elif rule.kind == "swap2":
        n = source.num_rows(rule.theirs[0])
        first = (n + 1) // 2  # torch.chunk(2): the first half takes the odd row
        segments = [(rule.theirs[0], first, n), (rule.theirs[0], 0, first)]
    else:
        segments = [(rule.theirs[0], 0, source.num_rows(rule.theirs[0]))]
    parts, offset = [], 0
    for key, lo, hi in segments:
        a, b = max(start, offset), min(stop, offset + hi - lo)
        if a < b:
            parts.append(cast(source.rows(key, lo + a - offset, lo + b - offset)))
        offset += hi - lo
    if not parts:  # an empty shard (more ranks than rows)
        return cast(source.rows(segments[0][0], 0, 0))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def read_state(
    source: TensorSource,
    rules: list[KeyRule] | None,
    expected: list[str],
    cast: Callable[[torch.Tensor], torch.Tensor],
    ignore_prefixes: tuple[str, ...] = (),
    what: str = "checkpoint",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Read every expected (official-named) tensor from `source`, through `rules` when given."""
    plan = plan_reads(source, rules, expected, what)
    state = {rule.ours: read_tensor(source, rule, cast) for rule in plan}
    return state, leftover_report(source, plan, ignore_prefixes, what)


def caster(device: torch.device | str, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    def cast(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device=device)
        return t.to(dtype) if t.is_floating_point() else t

    return cast


# ----------------------------------------------------------------------------------------------
# Model directories


@dataclass(frozen=True)
class ModelDir:
    """A resolved checkpoint directory in one of the two supported layouts."""

    root: Path
    layout: str  # "official" | "diffusers"

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ModelDir":
        root = Path(root)
        if not root.is_dir():
            raise CheckpointError(f"model directory not found: {root}")
        if (root / "dit.safetensors").is_file():
            return cls(root, "official")
        if (root / "transformer").is_dir():
            return cls(root, "diffusers")
        raise CheckpointError(
            f"{root}: neither an official Genmo directory (dit.safetensors) nor a diffusers layout (transformer/)"
        )

    # configs ------------------------------------------------------------------------------
    def dit_config(self) -> DiTConfig:
        own = self.root / MOCHI_CONFIG_FILE
        if own.is_file():
            return DiTConfig.from_dict(json.loads(own.read_text())["dit"])
        if self.layout == "diffusers":
            d = json.loads((self.root / "transformer" / "config.json").read_text())
            return DiTConfig(
                depth=d.get("num_layers", 48),
                hidden_size_x=d.get("num_attention_heads", 24) * d.get("attention_head_dim", 128),
                hidden_size_y=d.get("pooled_projection_dim", 1536),
                num_heads=d.get("num_attention_heads", 24),
                in_channels=d.get("in_channels", 12),
                patch_size=d.get("patch_size", 2),
                t5_feat_dim=d.get("text_embed_dim", 4096),
                t5_token_length=d.get("max_sequence_length", 256),
                timestep_freq_dim=d.get("time_embed_dim", 256),
            )
        return DiTConfig()

    def vae_config(self) -> VAEConfig:
        own = self.root / MOCHI_CONFIG_FILE
        if own.is_file():
            return VAEConfig.from_dict(json.loads(own.read_text())["vae"])
        if self.layout == "diffusers":
            d = json.loads((self.root / "vae" / "config.json").read_text())
            base = VAEConfig()
            return VAEConfig(
                latent_channels=d.get("latent_channels", 12),
                out_channels=d.get("out_channels", 3),
                block_out_channels=tuple(d.get("decoder_block_out_channels", base.block_out_channels)),
                layers_per_block=tuple(d.get("layers_per_block", base.layers_per_block)),
                temporal_expansions=tuple(d.get("temporal_expansions", base.temporal_expansions)),
                spatial_expansions=tuple(d.get("spatial_expansions", base.spatial_expansions)),
                latents_mean=tuple(d.get("latents_mean") or base.latents_mean),
                latents_std=tuple(d.get("latents_std") or base.latents_std),
            )
        return VAEConfig()

    # sources ------------------------------------------------------------------------------
    def dit_source(self) -> tuple[TensorSource, list[KeyRule] | None]:
        if self.layout == "official":
            return TensorSource([self.root / "dit.safetensors"]), None
        return TensorSource.from_folder(self.root / "transformer", "diffusion_pytorch_model"), dit_key_map(
            self.dit_config()
        )

    def vae_source(self) -> tuple[TensorSource, list[KeyRule] | None]:
        if self.layout == "official":
            return TensorSource([self.root / "decoder.safetensors"]), None
        return TensorSource.from_folder(self.root / "vae", "diffusion_pytorch_model"), vae_key_map(
            self.vae_config()
        )

    def t5_paths(self) -> tuple[Path, Path]:
        enc, tok = self.root / "text_encoder", self.root / "tokenizer"
        if not enc.is_dir() or not tok.is_dir():
            raise CheckpointError(
                f"{self.root}: T5 needs text_encoder/ and tokenizer/ folders (or pass --t5-dir explicitly)"
            )
        return enc, tok

    def t5_parameters(self) -> int:
        """Parameters of the T5 encoder's checkpoint, from its file headers."""
        return TensorSource.from_folder(self.t5_paths()[0], "model").numel()


def iter_expected(module: torch.nn.Module) -> Iterator[str]:
    yield from (k for k, _ in module.state_dict(keep_vars=True).items())


def load_module(
    module: torch.nn.Module,
    source: TensorSource,
    rules: list[KeyRule] | None,
    device: torch.device | str,
    dtype: torch.dtype,
    what: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Fill a (meta-device) module from a source; every parameter must be present."""
    state, report = read_state(
        source, rules, list(iter_expected(module)), caster(device, dtype), ignore_prefixes, what
    )
    module.load_state_dict(state, strict=True, assign=True)
    return report


def save_official(folder: Path, dit_state: dict, vae_state: dict, dit_cfg: DiTConfig, vae_cfg: VAEConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in dit_state.items()}, str(folder / "dit.safetensors"))
    save_file({k: v.contiguous() for k, v in vae_state.items()}, str(folder / "decoder.safetensors"))
    (folder / MOCHI_CONFIG_FILE).write_text(json.dumps({"dit": dit_cfg.to_dict(), "vae": vae_cfg.to_dict()}, indent=2))


def save_diffusers(
    folder: Path, dit_state: dict, vae_state: dict, dit_cfg: DiTConfig, vae_cfg: VAEConfig, shard_bytes: int
) -> None:
    """Write the diffusers layout (transformer sharded with an index json, vae single file)."""
    (folder / "transformer").mkdir(parents=True, exist_ok=True)
    (folder / "vae").mkdir(parents=True, exist_ok=True)
    tstate = to_diffusers(dit_state, dit_key_map(dit_cfg))
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tstate.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v.contiguous()
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / "transformer" / name))
        weight_map.update({k: name for k in shard})
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )
    (folder / "transformer" / "config.json").write_text(json.dumps({
        "_class_name": "MochiTransformer3DModel",
        "num_layers": dit_cfg.depth,
        "num_attention_heads": dit_cfg.num_heads,
        "attention_head_dim": dit_cfg.head_dim,
        "pooled_projection_dim": dit_cfg.hidden_size_y,
        "in_channels": dit_cfg.in_channels,
        "patch_size": dit_cfg.patch_size,
        "text_embed_dim": dit_cfg.t5_feat_dim,
        "time_embed_dim": dit_cfg.timestep_freq_dim,
        "max_sequence_length": dit_cfg.t5_token_length,
        "qk_norm": "rms_norm",
        "activation_fn": "swiglu",
    }, indent=2))
    save_file(
        {k: v.contiguous() for k, v in to_diffusers(vae_state, vae_key_map(vae_cfg)).items()},
        str(folder / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    (folder / "vae" / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKLMochi",
        "latent_channels": vae_cfg.latent_channels,
        "out_channels": vae_cfg.out_channels,
        "decoder_block_out_channels": list(vae_cfg.block_out_channels),
        "layers_per_block": list(vae_cfg.layers_per_block),
        "temporal_expansions": list(vae_cfg.temporal_expansions),
        "spatial_expansions": list(vae_cfg.spatial_expansions),
        "latents_mean": list(vae_cfg.latents_mean),
        "latents_std": list(vae_cfg.latents_std),
        "scaling_factor": 1.0,
    }, indent=2))
