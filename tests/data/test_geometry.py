import numpy as np
import pytest
import torch
from PIL import Image

from fphtr.data.geometry import (
    STRIDE,
    ImageError,
    load_image,
    pad_batch,
    prepare,
    to_grayscale,
    to_tensor,
)


def test_to_grayscale_modes():
    rgb = Image.new("RGB", (10, 5), (255, 255, 255))
    assert to_grayscale(rgb).shape == (5, 10)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent -> paper white
    assert (to_grayscale(rgba) == 255).all()
    i16 = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    assert to_grayscale(i16).tolist() == [[0, 255]]
    assert to_grayscale(Image.new("1", (3, 3), 1)).dtype == np.uint8


def test_prepare_scales_and_fits_the_frame():
    img = np.full((100, 400), 255, np.uint8)
    assert prepare(img, 0.5, 1000, 1000).shape == (50, 200)
    out = prepare(img, 1.0, 1000, 100)  # too wide: shrunk, aspect kept
    assert out.shape == (25, 100)
    assert prepare(np.zeros((1, 1), np.uint8), 0.1, 10, 10).shape == (1, 1)


def test_pad_batch_top_left_paper_white():
    a = to_tensor(np.zeros((10, 20), np.uint8))  # all ink
    b = to_tensor(np.zeros((40, 5), np.uint8))
    canvas, sizes = pad_batch([a, b])
    assert canvas.shape == (2, 1, 64, 32)
    assert canvas.shape[-1] % STRIDE == 0 and canvas.shape[-2] % STRIDE == 0
    assert sizes.tolist() == [[10, 20], [40, 5]]
    assert torch.all(canvas[0, 0, :10, :20] == 1.0)  # image at the top-left
    assert canvas[0, 0, 10:].abs().sum() == 0 and canvas[0, 0, :, 20:].abs().sum() == 0


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(tmp_path / "text.png")


def test_pad_batch_canvas_multiple():
    images = [to_tensor(np.zeros((40, 300), np.uint8)), to_tensor(np.zeros((70, 20), np.uint8))]
    canvas, sizes = pad_batch(images, (96, 256))
    assert canvas.shape == (2, 1, 96, 512) and sizes.tolist() == [[40, 300], [70, 20]]
    assert canvas[:, :, 70:].abs().sum() == 0 and canvas[:, :, :, 300:].abs().sum() == 0
