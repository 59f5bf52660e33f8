"""DiT weights sharded over a process group with PyTorch's FSDP2 (`fully_shard`), inference only.

Each block is one FSDP unit: its weights are all-gathered just before it runs
and freed right after, and the next block's gather is issued while the current
one computes (explicit forward prefetch). The DiT itself is the root unit (its
embedders and final layer are gathered for each pass and freed after it), which
is why the sequence-parallel forward goes through `AsymmDiT.__call__`.

Loading never materialises the model on any rank: the module is built on the
meta device, sharded, allocated shard-sized on its device, and every parameter
reads only this rank's rows from the safetensors file (through the layout's key
map: a diffusers checkpoint's split Q/K/V are cut where they meet) into its shard.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from ..loading.checkpoints import ModelDir, caster, iter_expected, leftover_report, plan_reads, read_rows
from ..models.dit import AsymmDiT

def shard_rows(rows: int, rank: int, world: int) -> tuple[int, int]:
    """FSDP2's dim-0 split (torch.chunk's pieces): this rank's [start, stop); ranks past the last piece hold none."""
    size = -(-rows // world)
    start = min(rows, rank * size)
    return start, min(rows, start + size)


def rows_for_param(param: DTensor, full: torch.Tensor) -> torch.Tensor:
    """The rows of a full tensor that a sharded parameter holds on this rank."""
    mesh = param.device_mesh
    start, stop = shard_rows(full.shape[0], mesh.get_local_rank(), mesh.size())
    return full[start:stop]


def shard_modules(dit: AsymmDiT, group: dist.ProcessGroup, device: torch.device, prefetch: int = 1) -> AsymmDiT:
    """Apply fully_shard per block and at the root, gathering the next `prefetch` blocks ahead."""
    mesh = DeviceMesh.from_group(group, device.type)
    blocks = list(dit.blocks)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(dit, mesh=mesh, reshard_after_forward=True)
    for i, current in enumerate(blocks[:-1]):
        current.set_modules_to_forward_prefetch(blocks[i + 1:i + 1 + prefetch])
    return dit


@torch.no_grad()
def load_sharded_dit(md: ModelDir, group: dist.ProcessGroup, device: torch.device, dtype: torch.dtype) -> AsymmDiT:
    """This rank's FSDP2 shard of the DiT, read straight from the checkpoint (never the whole model)."""
    cfg = md.dit_config()
    with torch.device("meta"):
        dit = AsymmDiT(cfg)
    shard_modules(dit, group, device)
    dit.to_empty(device=device)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    source, rules = md.dit_source()
    what = f"DiT ({md.root}, {md.layout}, sharded)"
    plan = plan_reads(source, rules, list(iter_expected(dit)), what)
    params = dict(dit.named_parameters())
    cast = caster("cpu", dtype)
    for rule in plan:
        param = params[rule.ours]
        local = param.to_local() if isinstance(param, DTensor) else param
        rows = read_rows(source, rule, *shard_rows(param.shape[0], rank, world), cast)
        assert rows.shape == local.shape, f"{rule.ours}: shard {tuple(local.shape)} vs rows {tuple(rows.shape)}"
        local.copy_(rows)
    leftover_report(source, plan, (), what)
    return dit.eval().requires_grad_(False)


def local_parameter_count(module: torch.nn.Module) -> int:
    """Elements this rank actually holds (the local shard of each sharded parameter)."""
    total = 0
    for p in module.parameters():
        total += (p.to_local() if isinstance(p, DTensor) else p).numel()
    return total
