"""THE image geometry policy, shared by training, validation, test and prediction.

Every image, whatever its source, goes through the same three steps:

1. `load_image` / `to_grayscale`: any PIL mode (1, L, P, RGB, RGBA, LA, I;16, I, F) becomes
   8-bit grayscale; transparency is composited on paper white; 16-bit and float images are
   rescaled to 0..255 from their own range.
2. `prepare`: resize by the data format's `scale` (IAM scans are ~300 dpi; the default 0.5
   works at ~150 dpi, as the paper does), then shrink further, keeping the aspect ratio, only
   if the result exceeds the data format's `max_height` x `max_width` frame.
3. `pad_batch`: images are placed at the top-left corner of a canvas as large as the largest
   image in the batch, rounded up to the data format's `canvas_multiple` (multiples of the
   encoder stride, 32), and padded with paper white. `to_tensor` maps paper to 0.0 and ink
   to 1.0, so padding is exactly zero.
   The valid (unpadded) size of each image travels with the batch; the encoder turns it into
   the memory key padding mask, so padded regions are never attended.

There is no random placement and no separate evaluation frame: a sample has the same
geometry in every stage (the earlier public re-implementation's main bug).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

PAPER_WHITE = 255
STRIDE = 32  # total stride of the ResNet trunk; canvases are multiples of it
MAX_INPUT_PIXELS = 100_000_000  # refuse larger inputs instead of running out of memory
# (about 10000 x 10000, at most 400 MB decoded as RGBA; checked from the header, before decoding)


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, with a clear error for anything unusable."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_INPUT_PIXELS:
                raise ImageError(
                    f"{path}: {img.width}x{img.height} pixels exceeds the limit of "
                    f"{MAX_INPUT_PIXELS:,} pixels; downscale the image before use"
                )
            img.load()
            return img.copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # PIL refuses even to open it (> 2x its own limit)
        raise ImageError(
            f"{path}: exceeds the limit of {MAX_INPUT_PIXELS:,} pixels ({e}); "
            "downscale the image before use"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({e})") from e


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 (H, W), paper white 255, transparency composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.full_like(a, PAPER_WHITE)
        return a.round().astype(np.uint8)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return np.asarray(ImageOps.grayscale(img) if img.mode != "L" else img, dtype=np.uint8)


def prepare(
    image: Image.Image | np.ndarray, scale: float, max_height: int, max_width: int
) -> np.ndarray:
    """Resize an image by `scale` and fit it into the max_height x max_width frame.

    Returns uint8 (H, W) with H <= max_height, W <= max_width, both >= 1.
    """
    arr = image if isinstance(image, np.ndarray) else to_grayscale(image)
    h, w = arr.shape
    new_h, new_w = prepared_size(h, w, scale, max_height, max_width)
    if (new_h, new_w) == (h, w):
        return arr
    factor = min(scale, max_height / (h * 1.0), max_width / (w * 1.0)) if h and w else scale
    resample = Image.Resampling.BOX if factor < 1 else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((new_w, new_h), resample), dtype=np.uint8)


def prepared_size(h: int, w: int, scale: float, max_height: int, max_width: int) -> tuple[int, int]:
    """The (height, width) `prepare` gives an h x w image (e.g. to plan batches from image
    headers before decoding them)."""
    factor = min(scale, max_height / (h * 1.0), max_width / (w * 1.0)) if h and w else scale
    return max(1, min(max_height, round(h * factor))), max(1, min(max_width, round(w * factor)))


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) from the file's header without decoding it; None if unreadable."""
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) paper-white image -> float (1, H, W), paper 0.0, ink 1.0."""
    return torch.from_numpy(1.0 - arr.astype(np.float32) / 255.0).unsqueeze(0)


def pad_batch(
    images: list[torch.Tensor], multiple: tuple[int, int] = (STRIDE, STRIDE)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place tensors (1, h, w) top-left on a paper canvas (B, 1, H, W), H and W rounded up to
    `multiple` (the data format's `canvas_multiple`, multiples of STRIDE: coarser canvases
    mean fewer distinct tensor shapes, which CPU kernels compile once per shape).
    Returns the canvas and the valid sizes (B, 2) as (h, w)."""
    sizes = torch.tensor([img.shape[-2:] for img in images], dtype=torch.long)
    height = -(-int(sizes[:, 0].max()) // multiple[0]) * multiple[0]
    width = -(-int(sizes[:, 1].max()) // multiple[1]) * multiple[1]
    canvas = images[0].new_zeros(len(images), 1, height, width)  # 0.0 = paper white
    for i, img in enumerate(images):
        canvas[i, :, : img.shape[-2], : img.shape[-1]] = img
    return canvas, sizes
