"""Images made from a video's frames: the thumbnail, the spritesheet, and a preview as PNG bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(image: np.ndarray, scale: int = 1) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes, scaled up `scale` times (nearest: a preview is 1/8 of the video)."""
    img = Image.fromarray(image)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def thumbnail(frames: np.ndarray) -> bytes:
    """The middle frame of uint8 [F, H, W, 3]."""
    return png(frames[len(frames) // 2])


def spritesheet(frames: np.ndarray, count: int = 8, columns: int = 4) -> bytes:
    """`count` frames evenly spread over the video, in a grid `columns` wide."""
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    tiles = [frames[i] for i in picks]
    rows = -(-len(tiles) // columns)
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    return png(sheet)


def preview_png(preview: np.ndarray) -> bytes:
    """A stream preview [T, h, w, 3] as one image: its middle frame, 4x."""
    return png(preview[len(preview) // 2], scale=4)
