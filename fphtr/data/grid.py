"""A contact sheet of samples with their labels, for looking at data and predictions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fphtr.data.sample import Sample

_FONT_SIZE = 14
_PAD = 8


def save_sample_grid(
    samples: Sequence[Sample],
    path: str | Path,
    columns: int = 4,
    predictions: Sequence[str] | None = None,
    thumb_width: int = 720,
) -> Path:
    """Write a PNG grid: each image (shrunk to at most `thumb_width` px wide) with its label
    underneath, and the prediction under that if given. Form labels keep their line breaks.
    Returns the path written."""
    if not samples:
        raise ValueError("no samples to draw")
    if predictions is not None and len(predictions) != len(samples):
        raise ValueError(f"{len(predictions)} predictions for {len(samples)} samples")
    columns = max(1, min(columns, len(samples)))
    font = ImageFont.load_default(size=_FONT_SIZE)
    line_h = _FONT_SIZE + 4

    cells = []
    for k, sample in enumerate(samples):
        img = Image.fromarray(np.asarray(sample.image, dtype=np.uint8))
        if img.width > thumb_width:  # big forms become thumbnails; small words stay 1:1
            img = img.resize(
                (thumb_width, max(1, round(img.height * thumb_width / img.width))),
                Image.Resampling.BOX,
            )
        # (text, grey): the label in black, the prediction in dark grey below it.
        text_lines = [(f"{sample.id}:", 0)] + [(f"  {t}", 0) for t in sample.text.split("\n")]
        if predictions is not None:
            text_lines += [("pred:", 100)] + [(f"  {t}", 100) for t in predictions[k].split("\n")]
        text_w = max(int(font.getlength(t)) for t, _ in text_lines)
        cell = Image.new(
            "L",
            (max(img.width, text_w) + 2 * _PAD, img.height + line_h * len(text_lines) + 3 * _PAD),
            255,
        )
        cell.paste(img, (_PAD, _PAD))
        draw = ImageDraw.Draw(cell)
        # A thin frame shows the image's real extent (margins are part of the data).
        draw.rectangle((_PAD - 1, _PAD - 1, _PAD + img.width, _PAD + img.height), outline=170)
        for j, (t, grey) in enumerate(text_lines):
            draw.text((_PAD, img.height + 2 * _PAD + j * line_h), t, fill=grey, font=font)
        cells.append(cell)

    rows = [cells[r : r + columns] for r in range(0, len(cells), columns)]
    col_w = [max(row[c].width for row in rows if c < len(row)) for c in range(columns)]
    row_h = [max(c.height for c in row) for row in rows]
    sheet = Image.new("L", (sum(col_w), sum(row_h)), 255)
    y = 0
    for row, h in zip(rows, row_h, strict=True):
        x = 0
        for c, cell in enumerate(row):
            sheet.paste(cell, (x, y))
            x += col_w[c]
        y += h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
