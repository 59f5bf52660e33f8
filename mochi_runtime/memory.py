"""Per-GPU memory of the DiT group: weights by mode, activations by request, and the budget check.

The activation model is linear in the visual token-samples one rank carries
(batch per rank x visual tokens per rank), in units of the model width, fitted
on measured peaks (4x H200, full size, bf16, docs/benchmarks.md) and rounded up
so that every measured case lands below its estimate:

    1 GPU 49 f: 3.07 GiB measured over weights   estimate 4.08
    1 GPU 163 f: 10.33                           11.6
    cfg2 x ulysses2 49 f: 1.06                   1.75
    cfg2 x ulysses2 163 f: 3.69                  4.4

Ulysses ranks hold all-to-all buffers besides (factor 1.4). Sharded weights keep
1/N of the DiT plus about three gathered blocks (current, prefetched, in flight).
A step cache keeps one or two activation-sized tensors per rank for the whole
generation (its residual, and the measure's reference), counted on top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch

from .models.config import DiTConfig
from .models.dit import AsymmDiT
from .models.step_cache import tensors_kept
from .models.vae_tiling import estimate_bytes, plan_for_budget
from .validation import CacheMode, GenerationRequest, RequestError

HIDDEN_VECTORS_PER_TOKEN = 22  # activation bytes per token-sample / (hidden_size_x * dtype bytes)
ULYSSES_FACTOR = 1.4
GPU_FIXED_BYTES = 512 * 2**20  # kernels' workspaces, allocator slack
GATHERED_BLOCKS = 3
# Left free under a budget for the caching allocator's blocks that are reserved but cannot serve the next size:
# a 49-frame fp8 run capped at 24 GiB on one H100 failed with 21.8 GiB allocated and 2.04 GiB reserved unused,
# its plan's estimate 23.3 GiB (docs/bench/pipeline_budget_1gpu_h100_run1.json).
ALLOCATOR_HEADROOM_BYTES = 2 * 2**30


@lru_cache(maxsize=8)
def _param_counts(cfg: DiTConfig) -> tuple[int, int, int]:
    """(all parameters, parameters of the largest block, weights of the blocks' linears: what fp8 stores in one
    byte), counted on the meta device once per config (requests are checked against it one by one)."""
    with torch.device("meta"):
        dit = AsymmDiT(cfg)
    block = max(sum(p.numel() for p in b.parameters()) for b in dit.blocks)
    linear = sum(m.weight.numel() for m in dit.blocks.modules() if isinstance(m, torch.nn.Linear))
    return sum(p.numel() for p in dit.parameters()), block, linear


@dataclass(frozen=True)
class DiTMemoryModel:
    """Estimates for one group: layout degrees, weight mode, dtype."""

    cfg: DiTConfig
    cfg_degree: int = 1
    ulysses: int = 1
    ring: int = 1
    weights: str = "replicated"
    shard_ranks: int = 1  # ranks the weights are sharded over (world or sp)
    dtype_bytes: int = 2
    gpu: bool = True
    fp8: bool = False  # block linears in e4m3 (one byte each, plus a scale per output row)

    @property
    def dtype_name(self) -> str:
        return "fp8" if self.fp8 else {4: "fp32", 2: "bf16"}.get(self.dtype_bytes, f"{8 * self.dtype_bytes}-bit")

    def describe(self) -> str:
        """The DiT arrangement in words that fit the layout ("fp8 DiT on one GPU", "bf16 DiT sharded over 4
        GPUs")."""
        if self.world == 1:
            where = "on one GPU"
        elif self.weights == "sharded":
            where = f"sharded over {self.shard_ranks} GPUs"
        else:
            where = f"replicated on each of {self.world} GPUs"
        return f"{self.dtype_name} DiT {where}"

    @property
    def world(self) -> int:
        return self.cfg_degree * self.ulysses * self.ring

    def weight_bytes(self) -> int:
        """Weights resident on each GPU (the shard, when sharded)."""
        total, _, linear = _param_counts(self.cfg)
        if self.fp8:
            return (total - linear) * self.dtype_bytes + linear
        if self.weights == "sharded":
            return math.ceil(total / self.shard_ranks) * self.dtype_bytes
        return total * self.dtype_bytes

    def gather_bytes(self) -> int:
        """Blocks gathered for the forward pass at once (sharded only)."""
        if self.weights != "sharded":
            return 0
        return GATHERED_BLOCKS * _param_counts(self.cfg)[1] * self.dtype_bytes

    def activation_bytes(self, request: GenerationRequest) -> int:
        """The forward pass's peak activations (the fit in the module docstring), without the step cache."""
        token_samples = self._token_samples(request)
        per = HIDDEN_VECTORS_PER_TOKEN * self.cfg.hidden_size_x * self.dtype_bytes
        factor = ULYSSES_FACTOR if self.ulysses > 1 else 1.0
        return int(token_samples * per * factor) + (GPU_FIXED_BYTES if self.gpu else 0)

    def cache_bytes(self, request: GenerationRequest) -> int:
        """What the request's step cache keeps on each rank for the whole generation: activation-sized tensors
        [batch per rank, visual tokens per rank, hidden_size_x] in the model dtype (step_cache.tensors_kept)."""
        kept = tensors_kept(CacheMode.parse(request.cache))
        return kept * self._token_samples(request) * self.cfg.hidden_size_x * self.dtype_bytes

    def _token_samples(self, request: GenerationRequest) -> int:
        """Visual token-samples one rank carries through the blocks (its CFG branches x its token share)."""
        t, h, w = request.latent_shape[2:]
        tokens = t * (h // self.cfg.patch_size) * (w // self.cfg.patch_size)
        batch = 1 if self.cfg_degree == 2 or request.guidance == 1.0 else 2
        return batch * math.ceil(tokens / (self.ulysses * self.ring))

    def total_bytes(self, request: GenerationRequest) -> int:
        return self.weight_bytes() + self.gather_bytes() + self.activation_bytes(request) + self.cache_bytes(request)

    def check(self, request: GenerationRequest, budget_bytes: int) -> None:
        """RequestError (INVALID_ARG) before anything runs when the request cannot fit the per-GPU budget."""
        if budget_bytes <= 0:
            return
        need = self.total_bytes(request)
        cache = self.cache_bytes(request)
        if need > budget_bytes >= need - cache:
            raise RequestError(
                "cache",
                f"{request.cache} keeps {cache / 2**30:.2f} GiB per GPU for {request.num_frames} frames at "
                f"{request.width}x{request.height}, which this server's memory_budget_bytes={budget_bytes} "
                f"({budget_bytes / 2**30:.2f} GiB) cannot hold beside the generation itself; use cache off or "
                f"interval:<n> (one tensor instead of two), or fewer frames or pixels",
            )
        if need > budget_bytes:
            raise RequestError(
                "num_frames",
                f"{request.num_frames} frames at {request.width}x{request.height} needs about {need / 2**30:.2f} GiB "
                f"per GPU ({self.weights} weights {self.weight_bytes() / 2**30:.2f} GiB + activations), over this "
                f"server's memory_budget_bytes={budget_bytes} ({budget_bytes / 2**30:.2f} GiB); ask for fewer frames "
                f"or pixels",
            )


def choose_weights(model: DiTMemoryModel, largest: GenerationRequest, budget_bytes: int) -> str:
    """'replicated' when the largest allowed request fits the budget with full copies, else 'sharded'."""
    if budget_bytes <= 0:
        return "replicated"
    replicated = replace(model, weights="replicated")
    return "replicated" if replicated.total_bytes(largest) <= budget_bytes else "sharded"


@dataclass(frozen=True)
class PipelinePlan:
    """How one generation fits a per-GPU budget with T5 and the VAE on the first GPU beside DiT rank 0."""

    dit: DiTMemoryModel  # the DiT arrangement chosen: weight mode and dtype (fp8 when only it fits)
    offload_t5: bool
    vae_plan: object  # vae_tiling.TilePlan
    peak_bytes: int  # estimated, the largest of the three phases

    @property
    def weights(self) -> str:
        return self.dit.weights

    def describe(self) -> str:
        tp = self.vae_plan
        vae = ("in whole frames" if tp.tile_h <= 0 and tp.tile_w <= 0 else
               f"in tiles of {tp.tile_h or 'all'} x {tp.tile_w or 'all'} latent pixels")
        return f"{self.dit.describe()}, T5 {'offloaded between encodes' if self.offload_t5 else 'resident'}, VAE {vae}"


def plan_pipeline(budget_bytes: int, dit: DiTMemoryModel, request: GenerationRequest, t5_parameters: int,
                  vae, t5_activation_bytes: int = 256 * 2**20, allow_fp8: bool = False) -> PipelinePlan:
    """The fastest arrangement that fits, in order of preference: replicated DiT weights with T5 resident,
    replicated with T5 offloaded after encoding, then (several GPUs only) sharded with T5 resident and sharded
    with T5 offloaded; the VAE tiles sized from what the chosen arrangement leaves. T5 and the VAE count in the
    DiT's compute dtype (bf16 for the fp8 DiT), T5 from its parameter count.

    allow_fp8: when the DiT's own dtype fits no arrangement, try the fp8 DiT (block linears in one byte: half
    the weights) before refusing. RequestError naming the budget when nothing fits; it says when fp8 would.

    Phases on the first GPU: encode (T5 + its activations), denoise (DiT + activations), decode (VAE tiles);
    resident weights count in every phase.
    """
    fits, leanest = _fit(budget_bytes, dit, request, t5_parameters, vae, t5_activation_bytes)
    if fits is not None:
        return fits
    hint = ""
    if not dit.fp8:
        fp8, fp8_leanest = _fit(budget_bytes, replace(dit, fp8=True, dtype_bytes=2), request, t5_parameters, vae,
                                t5_activation_bytes)
        if fp8 is not None and allow_fp8:
            return fp8
        if fp8 is not None:
            hint = f"; the fp8 DiT fits ({fp8.describe()}, ~{fp8.peak_bytes / 2**30:.2f} GiB): use dtype fp8"
        elif fp8_leanest is not None:
            hint = f"; even the fp8 DiT needs {fp8_leanest[1] / 2**30:.2f} GiB"
    assert leanest is not None
    arrangement, need = leanest
    raise RequestError(
        "num_frames",
        f"{request.num_frames} frames at {request.width}x{request.height} needs at least {need / 2**30:.2f} GiB on "
        f"the first GPU ({arrangement}), over the memory budget of {budget_bytes / 2**30:.2f} GiB per GPU{hint}; "
        f"ask for fewer frames or pixels, or use more GPUs",
    )


def _fit(budget_bytes: int, dit: DiTMemoryModel, request: GenerationRequest, t5_parameters: int, vae,
         t5_activation_bytes: int) -> tuple[PipelinePlan | None, tuple[str, int] | None]:
    """(the first arrangement of `dit` that fits, None) or (None, (the leanest arrangement, its estimated need))."""
    vae_weights = sum(p.numel() for p in vae.parameters()) * dit.dtype_bytes
    t5_bytes = t5_parameters * dit.dtype_bytes
    latent_shape = request.latent_shape
    leanest: tuple[str, int] | None = None
    # One GPU has nothing to shard over; fp8 block linears are not sharded (parallel/worker.py refuses it).
    modes = ("replicated", "sharded") if dit.world > 1 and not dit.fp8 else ("replicated",)
    for weights in modes:
        model = replace(dit, weights=weights)
        for offload in (False, True):
            resident = model.weight_bytes() + vae_weights + (0 if offload else t5_bytes)
            encode = resident + (t5_bytes if offload else 0) + t5_activation_bytes
            denoise = resident + model.gather_bytes() + model.activation_bytes(request) + model.cache_bytes(request)
            words = f"{model.describe()}, T5 {'offloaded between encodes' if offload else 'resident'}, VAE in tiles"
            usable = budget_bytes - (ALLOCATOR_HEADROOM_BYTES if dit.gpu else 0)
            try:
                vae_plan = plan_for_budget(vae, latent_shape, usable - resident, dtype_bytes=dit.dtype_bytes,
                                           gpu=dit.gpu)
            except ValueError:
                need = max(encode, denoise)
            else:  # (need is the estimate; the budget must also hold the allocator's headroom on a GPU)
                need = max(encode, denoise,
                           resident + estimate_bytes(vae, latent_shape, vae_plan, dit.dtype_bytes, dit.gpu))
                if need <= usable:
                    return PipelinePlan(model, offload, vae_plan, need), None
            need += budget_bytes - usable  # what the budget must hold: the estimate and the allocator's headroom
            if leanest is None or need < leanest[1]:
                leanest = (words, need)
    return None, leanest


def cap_gpu_memory(budget_bytes: int, device: torch.device) -> None:
    """Hold this process's allocations on `device` to the budget (torch's per-process memory fraction), so a plan
    that underestimates fails with out-of-memory instead of quietly taking more than it was given."""
    if device.type == "cuda" and budget_bytes > 0:
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_bytes / total), device)
