"""Images tiled into one PNG at their stored pixel values (no interpolation: the pixels are the data), row 0 of
every image at the top, as every figure of astrovader draws them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from astrovader.data.outputs import remove_stale_temporaries, temporary_name


def png_grid(images: np.ndarray, ncols: int | None = None, gap: int = 2, scale: int = 1,
             labels: Sequence[str] | None = None):
    """uint8 (N, C, H, W) images tiled into one Pillow image with ``gap`` white pixels between tiles, each tile
    enlarged ``scale`` times by repeating pixels (no interpolation: the pixels are the data) and, with ``labels``,
    a caption strip under each tile."""
    from PIL import Image, ImageDraw

    n, c, h, w = images.shape
    ncols = ncols or max(1, int(np.ceil(np.sqrt(n))))
    nrows = max(1, -(-n // ncols))
    th, tw, strip = h * scale, w * scale, (18 if labels is not None else 0)
    cell_h = th + strip
    canvas = np.full((nrows * (cell_h + gap) - gap, ncols * (tw + gap) - gap, 3 if c == 3 else 1), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        tile = images[i].transpose(1, 2, 0) if c in (1, 3) else images[i].mean(0, keepdims=True).transpose(1, 2, 0)
        tile = np.repeat(np.repeat(tile, scale, 0), scale, 1)
        canvas[r * (cell_h + gap):r * (cell_h + gap) + th, q * (tw + gap):q * (tw + gap) + tw] = tile
    im = Image.fromarray(canvas if c == 3 else canvas[..., 0])
    if labels is not None:
        from PIL import ImageFont

        draw = ImageDraw.Draw(im)
        # a scalable font at a size that stays readable when a page shows the grid smaller than its pixels
        font = ImageFont.load_default(size=max(11, min(14, tw // 5)))
        for i, text in enumerate(labels[:n]):
            r, q = divmod(i, ncols)
            draw.text((q * (tw + gap) + 2, r * (cell_h + gap) + th + 1), str(text), fill=0, font=font)
    return im


def save_png_grid(images: np.ndarray, out: str | Path, ncols: int | None = None, gap: int = 2, scale: int = 1,
                  labels: Sequence[str] | None = None) -> Path:
    """:func:`png_grid` written to ``out``."""
    im = png_grid(images, ncols, gap, scale, labels)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = temporary_name(out)  # a kill leaves no 0-byte or half-written PNG under the final name
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
