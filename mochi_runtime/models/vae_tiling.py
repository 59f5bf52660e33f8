"""Tiled VAE decoding: exact in time, blended in space, sized from a memory budget.

Time is streamed exactly. The decoder's only temporal operators are causal
3x3x3 convolutions (norms, activations and the depth-to-space projections act
per frame), so every level of the decoder can be fed its input a few frames at
a time while each conv carries the last two input frames it saw. Each level
splits what it receives into pieces of at most `piece_elements` activation
elements, so the peak is bounded at every resolution (the 128-channel full-size
levels run one frame at a time) and the result equals the untiled decode frame
for frame, with exactly 6(T-1)+1 frames, under either trim rule (`vae.TRIM_RULES`):
Genmo's rule trims the first piece each up-sampling level sees, diffusers' the
first frames of the output.

Space is tiled only when asked for (or when the budget cannot hold one frame):
tiles overlap by `overlap` latent pixels and are blended with linear ramps; each
tile is decoded with `halo` extra latent pixels beyond its inner edges that are
dropped afterwards, so the replicate padding at a tile's edge lands outside
what is kept. GroupNorm statistics differ per tile, so spatial tiling is an
approximation (bounded in the tests); the ramps keep it seamless.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from .vae import DEFAULT_TRIM, CausalConv3d, UpsampleBlock, VAEDecoder, check_trim


@dataclass(frozen=True)
class TilePlan:
    """How to cut one decode. Spatial sizes are in latent pixels; tile_h/tile_w <= 0 means no spatial tiling."""

    piece_elements: int = 40 * 2**20  # activation elements per streamed piece at every level (measured: bench vae)
    tile_h: int = 0
    tile_w: int = 0
    overlap: int = 4  # blended band between neighbouring tiles
    halo: int = 2  # decoded beyond each inner tile edge, then dropped
    trim: str = DEFAULT_TRIM  # where the causal warm-up frames are dropped (vae.TRIM_RULES)

    def __post_init__(self) -> None:
        check_trim(self.trim)
        if self.piece_elements < 1:
            raise ValueError("piece_elements must be >= 1")
        if self.overlap < 0 or self.halo < 0:
            raise ValueError("overlap and halo must be >= 0")
        if self.tile_h > 0 and self.tile_h <= self.overlap or self.tile_w > 0 and self.tile_w <= self.overlap:
            raise ValueError("spatial tiles must be larger than the overlap")


@dataclass(frozen=True)
class Tile:
    """One spatial tile: the kept region [y0, y0+th) x [x0, x0+tw) and the decoded region with its halo."""

    y0: int
    x0: int
    th: int
    tw: int
    ya: int
    yb: int
    xa: int
    xb: int


def activation_elements_per_frame(vae: VAEDecoder, h: int, w: int) -> int:
    """Largest activation (elements, batch 1) one output frame needs at any level: the 128-ch full-res level."""
    cfg = vae.cfg
    return cfg.block_out_channels[0] * h * w * cfg.spatial_factor**2


def carry_elements(vae: VAEDecoder, h: int, w: int) -> int:
    """Elements every causal conv keeps between pieces (its last two input frames) for an h x w latent tile.

    This is the floor of exact streaming: at 848x480 in bf16 it is ~2.6 GB, so budgets below that need tiles.
    """
    total = 0
    level_hw = h * w
    for block in vae.blocks:
        convs = [m for m in block.modules() if isinstance(m, CausalConv3d)]
        total += sum((m.kernel_size[0] - 1) * m.in_channels for m in convs) * level_hw
        if isinstance(block, UpsampleBlock):
            level_hw *= block.s_exp**2
    return total


# Besides the carries, about this many piece-sized tensors are alive at once (input, norm, padded conv input
# with its two carried frames, conv output, residual), plus convolution workspace.
LIVE_TENSORS = 8
WORKSPACE_BYTES = 768 * 2**20
MAX_TILES = 64


def estimate_bytes(vae: VAEDecoder, latent_shape: tuple[int, ...], plan: "TilePlan", dtype_bytes: int = 2,
                   gpu: bool | None = None) -> int:
    """Activation + output bytes of a decode with this plan, plus conv workspace on GPU (weights not counted).
    gpu: whether the decode runs on a GPU (None: where the decoder's weights are; planners pass a meta decoder)."""
    _, _, t, h, w = latent_shape
    s2 = vae.cfg.spatial_factor**2
    frames = vae.cfg.frames_out(t)
    tiles = tiles_of(plan, h, w)
    tile = max(tiles, key=lambda k: (k.yb - k.ya) * (k.xb - k.xa))
    th, tw = tile.yb - tile.ya, tile.xb - tile.xa
    # Counted as one full-resolution tile frame; pieces of several frames (up to piece_elements) are not modelled:
    # the constants are calibrated against measured peaks instead.
    piece = activation_elements_per_frame(vae, th, tw)
    out = 3 * frames * h * w * s2
    tile_out = 0 if len(tiles) == 1 else 3 * frames * th * tw * s2
    workspace = WORKSPACE_BYTES if (vae.output_proj.weight.is_cuda if gpu is None else gpu) else 0
    return (out + tile_out + carry_elements(vae, th, tw) + LIVE_TENSORS * piece) * dtype_bytes + workspace


def plan_for_budget(vae: VAEDecoder, latent_shape: tuple[int, ...], budget_bytes: int, dtype_bytes: int = 2,
                    overlap: int = 4, halo: int = 2, trim: str = DEFAULT_TRIM, gpu: bool | None = None) -> "TilePlan":
    """The fastest plan whose estimated activations and output fit `budget_bytes` (weights not counted).

    Exact streaming over whole frames when it fits, else the fewest spatial tiles that do.
    """
    _, _, _, h, w = latent_shape
    whole = TilePlan(overlap=overlap, halo=halo, trim=trim)
    if estimate_bytes(vae, latent_shape, whole, dtype_bytes, gpu) <= budget_bytes:
        return whole
    for n in range(2, MAX_TILES + 1):
        try:
            plan = grid_plan((h, w), n, overlap, halo, trim=trim)
        except ValueError:
            continue
        if estimate_bytes(vae, latent_shape, plan, dtype_bytes, gpu) <= budget_bytes:
            return plan
    raise ValueError(f"a budget of {budget_bytes} bytes cannot hold this decode even in the smallest tiles")


def grid_plan(latent_hw: tuple[int, int], tiles: int, overlap: int = 4, halo: int = 2,
              piece_elements: int = TilePlan.piece_elements, trim: str = DEFAULT_TRIM) -> TilePlan:
    """A grid of exactly `tiles` spatial tiles with the least work per tile (one per rank when spreading a decode)."""
    h, w = latent_hw
    if tiles <= 1:
        return TilePlan(piece_elements=piece_elements, overlap=overlap, halo=halo, trim=trim)
    best: tuple[float, TilePlan] | None = None
    for gh in range(1, tiles + 1):
        if tiles % gh:
            continue
        gw = tiles // gh
        th = h if gh == 1 else math.ceil((h + (gh - 1) * overlap) / gh)
        tw = w if gw == 1 else math.ceil((w + (gw - 1) * overlap) / gw)
        if (gh > 1 and th <= overlap) or (gw > 1 and tw <= overlap) or th > h or tw > w:
            continue
        plan = TilePlan(piece_elements=piece_elements, tile_h=th if gh > 1 else 0, tile_w=tw if gw > 1 else 0,
                        overlap=overlap, halo=halo, trim=trim)
        cut = tiles_of(plan, h, w)
        work = max((t.yb - t.ya) * (t.xb - t.xa) for t in cut)
        if len(cut) == tiles and (best is None or work < best[0]):
            best = (work, plan)
    if best is None:
        raise ValueError(f"cannot cut a {h}x{w} latent into {tiles} tiles wider than the overlap {overlap}")
    return best[1]


@contextmanager
def streaming(vae: VAEDecoder) -> Iterator[None]:
    convs = [m for m in vae.modules() if isinstance(m, CausalConv3d)]
    for c in convs:
        c.streaming, c.carry = True, None
    try:
        yield
    finally:
        for c in convs:
            c.streaming, c.carry = False, None


def _growth(block: torch.nn.Module) -> float:
    """Output elements per input element of one decoder level: the first level widens 12 latent channels to
    768, the depth-to-space projections grow time and space."""
    if isinstance(block, UpsampleBlock):
        return block.proj.out_features / block.proj.in_features
    first = next(iter(block.children()), None)
    if isinstance(first, torch.nn.Conv3d) and not isinstance(first, CausalConv3d):
        return first.out_channels / first.in_channels
    return 1.0


def _stream(vae: VAEDecoder, x: torch.Tensor, level: int, piece_elements: int, first: list[bool],
            trim: str) -> Iterator[torch.Tensor]:
    """first[level]: the next piece this level sees starts the video (Genmo's rule trims it)."""
    if level == len(vae.blocks):
        yield vae.head(x)
        return
    per_frame = x[:, :, :1].numel() * max(1.0, _growth(vae.blocks[level]))
    step = max(1, int(piece_elements // per_frame))
    for piece in x.split(step, dim=2):
        out = vae.run_block(level, piece, first[level], trim)
        first[level] = False
        yield from _stream(vae, out, level + 1, piece_elements, first, trim)


def decode_stream(vae: VAEDecoder, z: torch.Tensor, piece_elements: int,
                  trim: str = DEFAULT_TRIM) -> Iterator[torch.Tensor]:
    """De-normalised latents [B, C, T, h, w] -> decoded frames in time order, a few frames at a time (exact).

    The causal decoder's warm-up frames are dropped by `trim`'s rule (inside the blocks, or the first
    `temporal_factor - 1` output frames here), so the pieces add up to exactly 6(T-1)+1 frames.
    """
    assert z.ndim == 5 and z.shape[1] == vae.cfg.latent_channels, f"bad latents {tuple(z.shape)}"
    skip = vae.end_frames(trim)
    x = z.to(vae.output_proj.weight.dtype)
    with streaming(vae):
        for piece in _stream(vae, x, 0, piece_elements, [True] * len(vae.blocks), trim):
            if skip >= piece.shape[2]:
                skip -= piece.shape[2]
                continue
            yield piece[:, :, skip:]
            skip = 0


def decode_frames(vae: VAEDecoder, z: torch.Tensor, piece_elements: int, trim: str = DEFAULT_TRIM) -> torch.Tensor:
    """De-normalised latents -> frames [B, 3, 6(T-1)+1, 8h, 8w], written piece by piece into one buffer."""
    b, _, t, h, w = z.shape
    s = vae.cfg.spatial_factor
    frames = vae.cfg.frames_out(t)
    out = torch.empty(b, vae.cfg.out_channels, frames, h * s, w * s, device=z.device,
                      dtype=vae.output_proj.weight.dtype)
    i = 0
    for piece in decode_stream(vae, z, piece_elements, trim):
        out[:, :, i:i + piece.shape[2]] = piece
        i += piece.shape[2]
    assert i == frames, (i, frames)
    return out


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if tile <= 0 or tile >= size:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def tiles_of(plan: TilePlan, h: int, w: int) -> list[Tile]:
    """The plan's tiles for an h x w latent, row-major. All tiles have the same kept size."""
    hs, ws = _starts(h, plan.tile_h, plan.overlap), _starts(w, plan.tile_w, plan.overlap)
    th = h if len(hs) == 1 else plan.tile_h
    tw = w if len(ws) == 1 else plan.tile_w
    return [Tile(y0, x0, th, tw, max(0, y0 - plan.halo), min(h, y0 + th + plan.halo),
                 max(0, x0 - plan.halo), min(w, x0 + tw + plan.halo)) for y0 in hs for x0 in ws]


def decode_tile(vae: VAEDecoder, z: torch.Tensor, tile: Tile, plan: TilePlan) -> torch.Tensor:
    """De-normalised latents -> the tile's kept region [B, 3, F, 8*th, 8*tw] in the decoder's dtype (halo cropped)."""
    ys, xs = _inside_halo(tile, vae.cfg.spatial_factor)
    return decode_frames(vae, z[:, :, :, tile.ya:tile.yb, tile.xa:tile.xb], plan.piece_elements,
                         plan.trim)[..., ys, xs]


def _inside_halo(tile: Tile, spatial_factor: int) -> tuple[slice, slice]:
    """Rows and columns of a decoded tile (halo included) that are kept."""
    s = spatial_factor
    dy, dx = (tile.y0 - tile.ya) * s, (tile.x0 - tile.xa) * s
    return slice(dy, dy + tile.th * s), slice(dx, dx + tile.tw * s)


def _ramp(length: int, lo_overlap: int, hi_overlap: int, device) -> torch.Tensor:
    """Blend weights along one axis: ramps up over the leading overlap, down over the trailing one."""
    w = torch.ones(length, device=device)
    if lo_overlap > 0:
        w[:lo_overlap] = (torch.arange(lo_overlap, device=device) + 0.5) / lo_overlap
    if hi_overlap > 0:
        w[length - hi_overlap:] = torch.minimum(
            w[length - hi_overlap:], (torch.arange(hi_overlap, 0, -1, device=device) - 0.5) / hi_overlap)
    return w


def tile_weight(tile: Tile, plan: TilePlan, h: int, w: int, spatial_factor: int, device) -> torch.Tensor:
    """The tile's blend weights over its kept region [th*s, tw*s] (fp32): ramps only along inner edges."""
    s, ov = spatial_factor, plan.overlap * spatial_factor
    wy = _ramp(tile.th * s, ov if tile.y0 > 0 else 0, ov if tile.y0 + tile.th < h else 0, device)
    wx = _ramp(tile.tw * s, ov if tile.x0 > 0 else 0, ov if tile.x0 + tile.tw < w else 0, device)
    return wy[:, None] * wx[None, :]


class _Blend:
    """The weighted sum of a plan's tiles in one output-sized buffer of the decoded dtype.

    Accumulates in that dtype (bf16 on GPU: at most four terms per pixel, each weight <= 1), so a long video
    costs one output-sized buffer, not a float32 one; the ramps are complementary, so the final division by
    the summed weights only corrects rounding. Whole tiles (`blend_tiles`) and streamed pieces of them
    (`decode_tiled`) go through the same `add`, so both give the same frames.
    """

    def __init__(self, tiles: list[Tile], plan: TilePlan, h: int, w: int, spatial_factor: int,
                 lead: tuple[int, ...], device, dtype: torch.dtype) -> None:
        s = spatial_factor
        self.s = s
        self.out = torch.zeros(*lead, h * s, w * s, device=device, dtype=dtype)  # lead: (B, C, F)
        self.weight = torch.zeros(h * s, w * s, device=device)
        self.weights: dict[Tile, torch.Tensor] = {}
        for tile in tiles:
            wt = tile_weight(tile, plan, h, w, s, device)
            self.weights[tile] = wt.to(dtype)
            ys, xs = self._kept(tile)
            self.weight[ys, xs] += wt

    def _kept(self, tile: Tile) -> tuple[slice, slice]:
        s = self.s
        return slice(tile.y0 * s, (tile.y0 + tile.th) * s), slice(tile.x0 * s, (tile.x0 + tile.tw) * s)

    def add(self, tile: Tile, part: torch.Tensor, first_frame: int = 0) -> None:
        """part: frames [first_frame, first_frame + n) of the tile's kept region."""
        ys, xs = self._kept(tile)
        n = part.shape[2]
        # In place: no tile-sized temporary.
        self.out[:, :, first_frame:first_frame + n, ys, xs].addcmul_(part.to(self.out.device), self.weights[tile])

    def result(self) -> torch.Tensor:
        return self.out.div_(self.weight.to(self.out.dtype))


def blend_tiles(parts: Iterable[tuple[Tile, torch.Tensor]], plan: TilePlan, h: int, w: int,
                spatial_factor: int) -> torch.Tensor:
    """Weighted sum of the plan's whole decoded tiles, consumed one at a time -> [B, 3, F, 8h, 8w] in the tiles'
    dtype (see `_Blend`)."""
    blend: _Blend | None = None
    for tile, part in parts:
        if blend is None:
            blend = _Blend(tiles_of(plan, h, w), plan, h, w, spatial_factor, tuple(part.shape[:3]), part.device,
                           part.dtype)
        blend.add(tile, part)
    assert blend is not None, "no tiles"
    return blend.result()


@torch.inference_mode()
def decode_tiled(vae: VAEDecoder, latents: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Normalised DiT latents -> frames [B, 3, 6(T-1)+1, 8h, 8w] in [-1, 1], within the plan's sizes.

    The result is in the decoder's dtype; without spatial tiles it equals the untiled decode under the plan's
    trim rule, with tiles it is their blend.
    """
    z = vae.denormalize(latents)
    b, _, t, h, w = z.shape
    tiles = tiles_of(plan, h, w)
    if len(tiles) == 1:
        return decode_frames(vae, z, plan.piece_elements, plan.trim)
    s = vae.cfg.spatial_factor
    frames = vae.cfg.frames_out(t)
    blend = _Blend(tiles, plan, h, w, s, (b, vae.cfg.out_channels, frames), z.device, vae.output_proj.weight.dtype)
    for tile in tiles:
        # Each streamed piece is blended as it comes: no tile-sized buffer of the whole video is ever held.
        ys, xs = _inside_halo(tile, s)
        f = 0
        for piece in decode_stream(vae, z[:, :, :, tile.ya:tile.yb, tile.xa:tile.xb], plan.piece_elements,
                                   plan.trim):
            blend.add(tile, piece[..., ys, xs], f)
            f += piece.shape[2]
        assert f == frames, (f, frames)
    return blend.result()
