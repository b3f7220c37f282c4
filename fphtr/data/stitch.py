"""The paper's synthetic augmentation: new lines and pages stitched from real word images.

A stitched sample takes a contiguous span of words from a word pool (IAM: the word images of
the TRAINING split, in reading order; built-in synthetic data: rendered training words) and
lays them out as one handwritten line or a page of lines:

- words sit on a common baseline (estimated from each word's ink profile), with a small
  vertical wobble; punctuation follows its own rules (quotes high, dashes mid-height);
- word gaps are a per-sample multiple of the x-height with per-gap jitter; no space before
  , . ; : ! ? ) and contractions, none after ( and opening quotes, as IAM's labels do;
- line widths, lines per page and page widths are drawn from the real training data;
- pages get a slight per-line indent, a line pitch of ~3-4 x-heights and paper margins.

Each word image is whitened (its paper level mapped to 255) and composited with `min`, so no
word rectangles show. The sample at index i is a pure function of (seed, epoch, i): two epochs
differ and the stream does not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fphtr.data.geometry import PAPER_WHITE
from fphtr.data.sample import Sample

KINDS = ("word", "line", "form")

# Punctuation placement, as in IAM's transcriptions (tokens are separate "words" there).
_NO_SPACE_BEFORE = frozenset(",.;:!?)]}%")
_NO_SPACE_AFTER = frozenset("([{")
_QUOTES = frozenset({'"', "``", "''"})
_HIGH = frozenset({'"', "'", "`", "``", "''", "*"})  # written at the top of the x-height
_MIDDLE = frozenset({"-", "--", "~", "+", "="})  # written at mid x-height


def _attaches_left(token: str) -> bool:
    """No space before: closing punctuation and contractions ('s, n't)."""
    return (
        (token[0] in _NO_SPACE_BEFORE and all(c in _NO_SPACE_BEFORE for c in token))
        or (token[0] == "'" and len(token) > 1 and token[1:].isalpha())
        or token == "n't"
    )


def space_flags(tokens: Sequence[str]) -> list[bool]:
    """For each token: is there a space before it in the text? (IAM's punctuation rules.)

    A straight quote closes at the end, before , . ! ? etc. and before another quote; opens at
    the start, after ( and after a closing quote; otherwise quotes alternate."""
    flags: list[bool] = []
    open_quote = False
    closing = [False] * len(tokens)
    for k, tok in enumerate(tokens):
        prev = tokens[k - 1] if k else None
        if tok in _QUOTES:
            nxt = tokens[k + 1] if k + 1 < len(tokens) else None
            if prev is None or prev in _NO_SPACE_AFTER:
                closing[k] = False
            elif prev in _QUOTES:
                closing[k] = not closing[k - 1]
            elif nxt is None or nxt in _QUOTES or nxt[0] in _NO_SPACE_BEFORE:
                closing[k] = True
            else:
                closing[k] = open_quote
            open_quote = not closing[k]
            flags.append(prev is not None and not closing[k])
        elif prev is None or _attaches_left(tok) or tok == "'":
            flags.append(False)
        else:
            opened = prev in _QUOTES and not closing[k - 1]
            flags.append(not (prev in _NO_SPACE_AFTER or opened))
    return flags


def join_tokens(tokens: Sequence[str]) -> str:
    """IAM-style word tokens -> text: `He said , " Yes . "` -> `He said, "Yes."`."""
    return "".join((" " if s else "") + t for s, t in zip(space_flags(tokens), tokens, strict=True))


# ----------------------------------------------------------------------------- geometry


def whiten(image: np.ndarray) -> np.ndarray:
    """Stretch the grey levels so the paper (with its texture and noise) becomes white and the
    darkest ink stays: pasted words then show no paper rectangles."""
    ink = float(image.min())
    paper = image[image > (ink + float(np.percentile(image, 90))) / 2]
    if paper.size == 0:
        return image
    level = float(np.percentile(paper, 5))  # nearly all paper pixels are above this
    if level >= PAPER_WHITE or level - ink < 20:
        return image
    out = ink + (image.astype(np.float32) - ink) * ((PAPER_WHITE - ink) / (level - ink))
    return np.clip(out, 0, PAPER_WHITE).astype(np.uint8)


@dataclass(frozen=True)
class WordShape:
    """Ink box (x0, y0, x1, y1) in image coordinates, baseline row and x-height (rows of
    the densest ink band)."""

    box: tuple[int, int, int, int]
    baseline: int
    x_height: int


def measure(image: np.ndarray) -> WordShape:
    """Ink extent, baseline and x-height of a word image (paper white, ink dark)."""
    h, w = image.shape
    darkest, paper = int(image.min()), float(np.percentile(image, 90))
    if paper - darkest < 30:  # no visible ink
        return WordShape((0, 0, w, h), h, max(1, h // 2))
    ink = image < (paper + darkest) / 2
    rows, cols = ink.sum(1), ink.sum(0)
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    core = np.flatnonzero(rows >= 0.5 * rows.max())  # the x-height band carries most ink
    box = (int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1)
    return WordShape(box, int(core[-1]) + 1, max(1, int(core[-1] - core[0]) + 1))


def _typical_x_height(shapes: Sequence[WordShape], texts: Sequence[str]) -> float:
    words = [s.x_height for s, t in zip(shapes, texts, strict=True) if len(t) > 1 or t.isalnum()]
    return float(np.median(words or [s.x_height for s in shapes]))


def _paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int) -> None:
    h, w = image.shape
    region = canvas[y : y + h, x : x + w]
    np.minimum(region, image, out=region)


def compose_line(
    images: Sequence[np.ndarray],
    texts: Sequence[str],
    rng: np.random.Generator,
    gap: float | None = None,
    margin: float | None = None,
    spaces: Sequence[bool] | None = None,
) -> tuple[np.ndarray, list[tuple[int, int, int, int]], int]:
    """Lay word images out as one handwritten line.

    gap: word gap in x-heights (default: drawn in [0.5, 1.1]); margin: paper around the ink
    in x-heights (default: drawn in [0.1, 0.6]); spaces: whether each word follows a space
    (default: IAM's punctuation rules, `space_flags`). Returns the line image (uint8, paper
    255), the ink box of every word in it and the baseline row.
    """
    if not images or len(images) != len(texts):
        raise ValueError(f"need one text per image, got {len(images)} images, {len(texts)} texts")
    images = [whiten(im) for im in images]
    shapes = [measure(im) for im in images]
    xh = _typical_x_height(shapes, texts)
    gap = rng.uniform(0.5, 1.1) if gap is None else gap
    spaces = space_flags(texts) if spaces is None else spaces
    wobble = rng.normal(0.0, 0.05 * xh, len(images))
    jitter = rng.normal(0.0, 0.2, len(images))
    placed = []  # (image, x, y) of each word's top-left corner; the baseline is row 0
    ink_right = 0.0
    for k, (img, shape, text) in enumerate(zip(images, shapes, texts, strict=True)):
        x0, y0, x1, y1 = shape.box
        if text in _HIGH:
            top = -1.1 * xh - y0  # quotes hang from the top of the x-height
        elif text in _MIDDLE:
            top = -0.45 * xh - (y0 + y1) / 2  # dashes sit at mid x-height
        elif text.isalnum() or len(text) > 1:
            top = -shape.baseline
        else:  # . , ; : ! ? ) sit on the baseline with their lowest ink
            top = -y1
        if k == 0:
            left = -x0
        elif spaces[k]:
            left = ink_right + gap * xh * max(0.4, 1.0 + jitter[k]) - x0
        else:
            left = ink_right + xh * rng.uniform(0.05, 0.3) - x0
        placed.append((img, round(left), round(top + wobble[k])))
        ink_right = left + x1
    # Crop to the ink with a paper margin, as IAM's line images are cropped.
    boxes = [(x + s.box[0], y + s.box[1], x + s.box[2], y + s.box[3])
             for (_, x, y), s in zip(placed, shapes, strict=True)]  # fmt: skip
    m = np.round(xh * (rng.uniform(0.1, 0.6, 4) if margin is None else np.full(4, margin)))
    left = min(b[0] for b in boxes) - int(m[0])
    top = min(b[1] for b in boxes) - int(m[1])
    right = max(b[2] for b in boxes) + int(m[2])
    bottom = max(b[3] for b in boxes) + int(m[3])
    # Word images can reach past the crop (their own margins): draw on a larger canvas.
    ox = left - min(left, min(x for _, x, _ in placed))
    oy = top - min(top, min(y for _, _, y in placed))
    full_w = max(right, max(x + im.shape[1] for im, x, _ in placed)) - left + ox
    full_h = max(bottom, max(y + im.shape[0] for im, _, y in placed)) - top + oy
    canvas = np.full((full_h, full_w), PAPER_WHITE, np.uint8)
    for img, x, y in placed:
        _paste(canvas, img, x - left + ox, y - top + oy)
    line = canvas[oy : oy + bottom - top, ox : ox + right - left].copy()
    boxes = [(b[0] - left, b[1] - top, b[2] - left, b[3] - top) for b in boxes]
    return line, boxes, -top


def compose_page(
    lines: Sequence[tuple[np.ndarray, int]],
    rng: np.random.Generator,
    x_height: float,
    margin: float,
    pitch: float | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Stack line images (image, baseline row) into a page: baselines `pitch` px apart
    (default: drawn in [3.0, 4.2] x-heights), a slight random indent per line, `margin` px of
    paper all around. Returns the page and the top-left position of each line."""
    if not lines:
        raise ValueError("a page needs at least one line")
    pitch = x_height * rng.uniform(3.0, 4.2) if pitch is None else pitch
    indent = np.abs(rng.normal(0.0, 0.4 * x_height, len(lines)))
    drift = rng.normal(0.0, 0.04 * pitch, len(lines))
    pos = [
        (round(indent[k]), round(k * pitch + drift[k] - base)) for k, (_, base) in enumerate(lines)
    ]
    top = min(y for _, y in pos)
    pos = [(x + round(margin), y - top + round(margin)) for x, y in pos]
    width = max(x + img.shape[1] for (img, _), (x, _) in zip(lines, pos, strict=True))
    height = max(y + img.shape[0] for (img, _), (_, y) in zip(lines, pos, strict=True))
    page = np.full((height + round(margin), width + round(margin)), PAPER_WHITE, np.uint8)
    for (img, _), (x, y) in zip(lines, pos, strict=True):
        _paste(page, img, x, y)
    return page, pos


# ----------------------------------------------------------------------------- dataset


@dataclass
class StitchedSample(Sample):
    """A stitched sample, with the ids of the pool words it is made of (its provenance)."""

    sources: tuple[str, ...] = field(default=())


class Stitcher(torch.utils.data.Dataset):
    """Synthetic lines or pages stitched from contiguous spans of a word pool.

    words: a dataset of word `Sample`s in reading order, images at the data format's scale
           and never shrunk to a frame (IAM: the training split's word images; synthetic:
           `SyntheticHandwriting("train", "word", ...)`). Nothing else is ever read.
    kind: "line" or "form" ("word" returns single pool words).
    line_width / page_width: ranges (px at the data scale) of line and page widths.
    lines_per_form: line counts to draw from (e.g. those of the real training forms).
    margin: range of the page margin in px.
    """

    def __init__(
        self,
        words: torch.utils.data.Dataset,
        kind: str,
        size: int,
        seed: int = 0,
        line_width: tuple[float, float] = (300.0, 1000.0),
        page_width: tuple[float, float] = (800.0, 1100.0),
        lines_per_form: Sequence[int] = (8,),
        margin: tuple[float, float] = (10.0, 30.0),
        memo_size: int = 4096,
    ) -> None:
        kind = str(getattr(kind, "value", kind))
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if len(words) == 0:
            raise ValueError("the word pool is empty: no training words to stitch")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not lines_per_form or min(lines_per_form) < 1:
            raise ValueError(f"lines_per_form must be positive counts, got {lines_per_form}")
        self.words, self.kind, self.size, self.seed = words, kind, size, seed
        self.line_width, self.page_width = line_width, page_width
        self.lines_per_form = np.asarray(sorted(lines_per_form))
        self.margin = margin
        self.max_lines: int | None = None
        self.epoch = 0
        self._memo: OrderedDict[int, tuple[np.ndarray, str, str, WordShape]] = OrderedDict()
        self._memo_size = memo_size

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """A new random stream per epoch (a word pool that varies per epoch follows)."""
        self.epoch = int(epoch)
        if hasattr(self.words, "set_epoch"):
            self.words.set_epoch(epoch)
            self._memo.clear()

    @property
    def max_page_lines(self) -> int:
        """The most lines a stitched page has (where the page curriculum ends)."""
        return int(self.lines_per_form.max())

    def set_max_lines(self, n: int | None) -> None:
        """Curriculum: cap the number of lines of stitched pages (None: no cap)."""
        self.max_lines = None if n is None else max(1, int(n))

    def _word(self, k: int) -> tuple[np.ndarray, str, str, WordShape]:
        k %= len(self.words)
        hit = self._memo.get(k)
        if hit is None:
            sample = self.words[k]
            image = whiten(sample.image)
            hit = (image, sample.text, sample.id, measure(image))
            self._memo[k] = hit
            if len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(k)
        return hit

    def _take(self, start: int, width: float, gap: float) -> list[int]:
        """Pool positions of the words of one line: from `start` until `width` is full."""
        taken: list[int] = []
        used, texts = 0.0, []
        while len(taken) < 60:
            _, text, _, shape = self._word(start + len(taken))
            w = shape.box[2] - shape.box[0]
            if taken:
                spaced = space_flags([*texts, text])[-1]
                w += (gap if spaced else 0.15) * shape.x_height
                if used + w > width:
                    break
            taken.append(start + len(taken))
            texts.append(text)
            used += w
        return taken

    def _line(self, positions: list[int], rng: np.random.Generator, gap: float):
        words = [self._word(k) for k in positions]
        texts = [t for _, t, _, _ in words]
        image, _, base = compose_line([im for im, *_ in words], texts, rng, gap)
        return image, base, join_tokens(texts), [i for _, _, i, _ in words]

    def __getitem__(self, index: int) -> StitchedSample:
        i = int(index)
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        rng = np.random.default_rng([self.seed, 0x57, self.epoch, i])
        sample_id = f"stitched-{self.kind}-{self.epoch}-{i}"
        start = int(rng.integers(len(self.words)))
        if self.kind == "word":
            image, text, word_id, _ = self._word(start)
            return StitchedSample(image, text, sample_id, sources=(word_id,))
        gap = rng.uniform(0.5, 1.1)
        if self.kind == "line":
            positions = self._take(start, rng.uniform(*self.line_width), gap)
            image, _, text, ids = self._line(positions, rng, gap)
            return StitchedSample(image, text, sample_id, sources=tuple(ids))
        n_lines = int(rng.choice(self.lines_per_form))
        if self.max_lines is not None:
            n_lines = min(n_lines, self.max_lines)
        width = rng.uniform(*self.page_width)
        lines, texts, ids, x_heights = [], [], [], []
        for _ in range(n_lines):
            positions = self._take(start, width, gap)
            start = positions[-1] + 1
            image, base, text, line_ids = self._line(positions, rng, gap)
            lines.append((image, base))
            texts.append(text)
            ids += line_ids
            x_heights += [self._word(k)[3].x_height for k in positions]
        page, _ = compose_page(lines, rng, float(np.median(x_heights)), rng.uniform(*self.margin))
        return StitchedSample(page, "\n".join(texts), sample_id, sources=tuple(ids))
