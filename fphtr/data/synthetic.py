"""Built-in synthetic handwriting: the shipped English corpus drawn with handwriting fonts.

Each font package (fontpkg-*) is one "writer". A writer style (size, slant, spacing, baseline
drift, stroke weight, ink and paper) is sampled per image, so one font yields many "hands".
Train and validation/test use disjoint writers and disjoint corpus sentences, so validation
measures generalisation to unseen hands and unseen text, as IAM's writer-independent split does.

Everything random comes from the `np.random.Generator` passed in, so a sample is a pure
function of (seed, split, epoch, index) and does not depend on DataLoader workers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from fphtr.data.sample import Sample

WRITERS: tuple[str, ...] = (
    "caveat",
    "dancing-script",
    "delius",
    "indie-flower",
    "kalam",
    "pacifico",
    "permanent-marker",
    "satisfy",
    "shadows-into-light",
    "yellowtail",
    "zeyada",
    "great-vibes",
)
# Two legible print hands held out: unseen-writer validation that is hard but fair.
DEFAULT_VAL_WRITERS: tuple[str, ...] = ("kalam", "shadows-into-light")

# Joined scripts: per-glyph jitter and extra letter spacing would break the joins.
_CURSIVE = frozenset({"dancing-script", "pacifico", "satisfy", "yellowtail", "great-vibes"})
_WEIGHTS = (400.0, 550.0, 700.0)  # wght values used for variable fonts (Caveat, Dancing Script)

CORPUS_DIR = Path(__file__).parent / "corpus"
SPLITS = ("train", "val", "test")
KINDS = ("word", "line", "form")


class FontNotFoundError(RuntimeError):
    """A writer's font package is not installed."""


def split_writers(
    split: str, val_writers: Sequence[str], train_writers: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The writers (fonts) of a split, in WRITERS order: val and test use `val_writers`;
    train uses `train_writers`, by default every writer not in `val_writers`. A problem
    raises ValueError naming the argument (config validation reports it the same way)."""
    for name, chosen in (("val_writers", val_writers), ("train_writers", train_writers or ())):
        if unknown := sorted(set(chosen) - set(WRITERS)):
            raise ValueError(
                f"{name}={list(chosen)} is not allowed: unknown {', '.join(unknown)}; "
                f"choose from {', '.join(WRITERS)}"
            )
    if shared := sorted(set(train_writers or ()) & set(val_writers)):
        raise ValueError(
            f"train_writers={list(train_writers or ())} is not allowed: these are also "
            f"val_writers: {', '.join(shared)}; validation must use writers the model never "
            "trained on"
        )
    if split != "train":
        writers = tuple(w for w in WRITERS if w in val_writers)
    elif train_writers:
        writers = tuple(w for w in WRITERS if w in train_writers)
    else:
        writers = tuple(w for w in WRITERS if w not in val_writers)
    if not writers:
        raise ValueError(
            f"val_writers={list(val_writers)} is not allowed: no writers left for split {split!r}"
        )
    return writers


# ----------------------------------------------------------------------------- fonts


def font_files(writer: str) -> list[Path]:
    """The .ttf files of one writer's font package (several files = weights of one hand)."""
    if writer not in WRITERS:
        raise ValueError(f"unknown writer {writer!r}; choose from {', '.join(WRITERS)}")
    module = "fontpkg_" + writer.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FontNotFoundError(
            f"font for writer {writer!r} is missing: run `pip install fontpkg-{writer}`"
        )
    files = sorted(
        p for loc in spec.submodule_search_locations for p in Path(loc, "files").glob("*.ttf")
    )
    if not files:
        raise FontNotFoundError(
            f"package fontpkg-{writer} has no .ttf files; reinstall it with "
            f"`pip install --force-reinstall fontpkg-{writer}`"
        )
    return files


@dataclass(frozen=True)
class _Face:
    """One font file at one weight (wght is None for static fonts)."""

    path: Path
    wght: float | None


@functools.cache
def _faces(writer: str) -> tuple[_Face, ...]:
    faces = []
    for path in font_files(writer):
        if "[wght]" in path.name:  # variable font: a few weights of the same hand
            faces += [_Face(path, w) for w in _WEIGHTS]
        else:
            faces.append(_Face(path, None))
    return tuple(faces)


@functools.lru_cache(maxsize=512)
def _font(face: _Face, size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.truetype(str(face.path), size)
    if face.wght is not None:
        font.set_variation_by_axes([face.wght])
    return font


# Typical English letters, for measuring how wide a font writes on average.
_SAMPLE_TEXT = "When the quick brown fox jumped over six lazy dogs, nobody saw it happen."


@functools.cache
def _face_metrics(face: _Face) -> tuple[float, float, float, float]:
    """(x-height, ascent, descent, mean letter advance) per pixel of font size, measured on
    glyphs: fonts differ a lot (Dancing Script's x-height is half of Permanent Marker's,
    Shadows Into Light is very condensed), so sizes follow x-height and letter width, and
    line pitch follows the real ink extent rather than the nominal em size."""
    font = _font(face, 100)
    x_height = -font.getbbox("x", anchor="ls")[1]
    ascent = -min(font.getbbox(c, anchor="ls")[1] for c in "bdfhklAHT(")
    descent = max(font.getbbox(c, anchor="ls")[3] for c in "gjpqy(")
    letters = _SAMPLE_TEXT.replace(" ", "")
    advance = sum(font.getlength(c) for c in letters) / len(letters)
    return x_height / 100, ascent / 100, descent / 100, advance / 100


@dataclass(frozen=True)
class _Glyph:
    mask: np.ndarray  # uint8 coverage, 255 = ink
    left: int  # mask offset from the pen position (baseline origin)
    top: int
    advance: float


_GLYPHS: dict[tuple[_Face, int, str], _Glyph] = {}


def _glyph(face: _Face, size: int, ch: str) -> _Glyph:
    """A cached glyph bitmap: drawing cached masks with numpy is ~10x faster than one
    ImageDraw.text call per character, which per-glyph jitter would otherwise need."""
    key = (face, size, ch)
    glyph = _GLYPHS.get(key)
    if glyph is None:
        if len(_GLYPHS) > 200_000:  # bound memory in long runs with many sizes
            _GLYPHS.clear()
        font = _font(face, size)
        left, top, right, bottom = font.getbbox(ch, anchor="ls")
        img = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
        ImageDraw.Draw(img).text((-left, -top), ch, font=font, fill=255, anchor="ls")
        glyph = _Glyph(np.asarray(img), left, top, font.getlength(ch))
        _GLYPHS[key] = glyph
    return glyph


# ----------------------------------------------------------------------------- corpus


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    files = sorted(CORPUS_DIR.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpus files in {CORPUS_DIR}")
    seen: dict[str, None] = {}  # ordered set: keeps passages in file order
    for path in files:
        for line in path.read_text(encoding="ascii").splitlines():
            text = " ".join(line.split())
            if text:
                seen[text] = None
    return tuple(seen)


def _split_of(sentence: str) -> str:
    # A stable hash (not Python's salted hash()) so the split never changes between runs.
    bucket = int(hashlib.md5(sentence.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


@functools.cache
def _corpus(split: str) -> tuple[str, ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return tuple(s for s in _all_sentences() if _split_of(s) == split)


def load_corpus(split: str) -> list[str]:
    """Corpus sentences of one split: a deterministic, disjoint 90/5/5 split by a stable hash
    of each sentence, in file order (consecutive sentences read as a passage)."""
    return list(_corpus(split))


@functools.lru_cache(maxsize=1)
def charset() -> str:
    """Every character that can appear in a label (corpus characters, space and "\\n"),
    sorted: build the model's vocabulary from this."""
    chars = {" ", "\n"}
    for sentence in _all_sentences():
        chars.update(sentence)
    return "".join(sorted(chars))


# IAM tokenises punctuation as separate words: `"Hello,` is `"`, `Hello`, `,`.
_EDGE_PUNCT = re.compile(r"^([^A-Za-z0-9]*)(.*?)([^A-Za-z0-9]*)$")


def _iam_tokens(word: str) -> list[str]:
    lead, core, trail = _EDGE_PUNCT.match(word).groups()
    return [*lead, *([core] if core else []), *trail]


# ----------------------------------------------------------------------------- renderer


@dataclass(frozen=True)
class WriterStyle:
    """One sampled hand. Lengths are in output pixels (already multiplied by `scale`)."""

    writer: str
    face: _Face
    size: int  # font size in px
    x_height: float
    slant: float  # horizontal shear: dx = slant * height above the baseline
    tracking: float  # extra space between letters
    word_gap: float  # mean space between words
    word_gap_jitter: float  # relative spread of word gaps
    line_pitch: float  # baseline to baseline in forms
    glyph_jitter: float  # std of per-letter baseline offset
    size_jitter: float  # probability that a letter is one size step bigger/smaller
    word_drift: float  # std of per-word baseline steps
    tilt: float  # std of line angle (radians)
    wave: float  # amplitude of a slow baseline wave
    blur: float  # Gaussian sigma before the weight curve (also softens edges)
    weight: float  # coverage level kept as ink: lower = thicker strokes
    softness: float  # width of the coverage ramp: higher = blurrier edges
    ink: float  # ink grey level
    ink_variation: float  # amplitude of slow ink density changes (pen pressure)
    paper: float  # paper grey level
    texture: float  # amplitude of slow paper shading
    noise: float  # std of per-pixel sensor noise


class HandwritingRenderer:
    """Draws text as handwriting with the given writers' fonts.

    `scale` is relative to a ~300 dpi scan like IAM (x-height ~30-40 px at scale 1);
    glyphs are rendered directly at font size * scale, never drawn big and downscaled.
    """

    def __init__(self, writers: Sequence[str], scale: float = 0.5) -> None:
        if not writers:
            raise ValueError("at least one writer is needed")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.writers = tuple(writers)
        self.scale = float(scale)
        for writer in self.writers:
            _faces(writer)  # fail early, with the pip command, if a font is missing

    # -- style

    def sample_writer_style(
        self, rng: np.random.Generator, writer: str | None = None
    ) -> WriterStyle:
        """Sample one hand: a writer (font) and everything that varies between people."""
        if writer is None:
            writer = self.writers[rng.integers(len(self.writers))]
        faces = _faces(writer)
        face = faces[rng.integers(len(faces))]
        rel_x, rel_asc, rel_desc, rel_adv = _face_metrics(face)
        s = self.scale
        cursive = writer in _CURSIVE
        x_height = rng.uniform(28, 46) * s  # IAM: ~30-40 px at 300 dpi, some larger hands
        # Hands write letters about as wide as their x-height (IAM ~45-55 letters per line);
        # condensed fonts are brought halfway there by size and the rest by letter spacing.
        width_ratio = rng.uniform(0.9, 1.2) / (rel_adv / rel_x)
        size = max(6, round(x_height / rel_x * float(np.clip(width_ratio**0.5, 0.9, 1.4))))
        x_height = size * rel_x  # the x-height actually drawn
        letter = size * rel_adv  # mean letter advance before tracking
        wanted = x_height * width_ratio**0.5 * (rel_adv / rel_x)  # desired mean advance
        if cursive:  # joins break if letters move apart: spacing stays almost natural
            tracking = x_height * rng.uniform(-0.02, 0.03)
        else:
            spread = x_height * rng.uniform(-0.04, 0.06)
            tracking = float(np.clip(wanted - letter + spread, -0.05 * x_height, 0.15 * x_height))
        extent = size * (rel_asc + rel_desc)
        return WriterStyle(
            writer=writer,
            face=face,
            size=size,
            x_height=x_height,
            slant=float(np.clip(rng.normal(0.02, 0.1 if cursive else 0.13), -0.3, 0.35)),
            tracking=tracking,
            word_gap=x_height * rng.uniform(0.65, 1.4),
            word_gap_jitter=rng.uniform(0.05, 0.25),
            line_pitch=max(extent * rng.uniform(1.0, 1.3), x_height * 3.2),
            glyph_jitter=x_height * (rng.uniform(0, 0.012) if cursive else rng.uniform(0, 0.05)),
            size_jitter=0.0 if cursive else rng.uniform(0, 0.3),
            word_drift=x_height * rng.uniform(0, 0.07),
            tilt=rng.uniform(0, 0.012),
            wave=x_height * rng.uniform(0, 0.15),
            blur=max(0.35, rng.uniform(0.4, 0.9) * s / 0.5),
            weight=rng.uniform(0.28, 0.6),
            softness=rng.uniform(0.35, 0.9),
            ink=rng.uniform(0, 90),
            ink_variation=rng.uniform(0, 30),
            paper=rng.uniform(228, 255),
            texture=rng.uniform(0, 10),
            noise=rng.uniform(0, 7),
        )

    # -- layout

    def text_width(self, text: str, style: WriterStyle) -> float:
        """Mean drawn width of `text` in px (used to wrap form lines)."""
        width = 0.0
        for ch in text:
            if ch == " ":
                width += style.word_gap
            else:
                width += _glyph(style.face, style.size, ch).advance + style.tracking
        return width

    def wrap(
        self,
        words: Sequence[str],
        max_width: float,
        style: WriterStyle,
        max_lines: int | None = None,
    ) -> list[str]:
        """Greedy word wrap to `max_width` px as this hand would write it; stops after
        `max_lines` full lines if given (measuring glyphs is the costly part)."""
        lines: list[str] = []
        current: list[str] = []
        width = 0.0
        for word in words:
            w = self.text_width(word, style)
            if current and width + style.word_gap + w > max_width:
                lines.append(" ".join(current))
                if max_lines is not None and len(lines) >= max_lines:
                    return lines
                current, width = [], 0.0
            width += (style.word_gap if current else 0.0) + w
            current.append(word)
        if current:
            lines.append(" ".join(current))
        return lines

    def _place_line(
        self, text: str, style: WriterStyle, rng: np.random.Generator, x0: float, y0: float
    ) -> list[tuple[_Glyph, int, int]]:
        """Pen positions of every glyph of one line: word gaps, letter jitter, baseline drift."""
        n = len(text)
        # Draw all random numbers of the line at once: per-call Generator overhead adds up.
        jitter = rng.normal(0.0, 1.0, n) * style.glyph_jitter
        size_step = rng.choice(
            [-1, 0, 1],
            size=n,
            p=[style.size_jitter / 2, 1 - style.size_jitter, style.size_jitter / 2],
        )
        gaps = 1.0 + rng.normal(0.0, 1.0, n) * style.word_gap_jitter
        steps = rng.normal(0.0, 1.0, n) * style.word_drift
        angle = rng.normal(0.0, style.tilt)
        period = rng.uniform(8, 30) * style.x_height
        phase = rng.uniform(0, 2 * math.pi)
        step_size = max(1, round(style.size * 0.04))
        placed = []
        x, drift = x0, 0.0
        ink_right, gap = None, 0.0  # right ink edge of the last glyph, pending word gap
        for k, ch in enumerate(text):
            if ch == " ":
                gap += style.word_gap * max(0.7, gaps[k])
                drift += steps[k]  # each word sits a little higher or lower
                continue
            glyph = _glyph(style.face, style.size + int(size_step[k]) * step_size, ch)
            if gap and ink_right is not None:
                # Measure word gaps between ink, not advances: swashy fonts (Pacifico) reach
                # far past their advance, and the space must stay visible for the label.
                x = ink_right + gap - glyph.left
            gap = 0.0
            dx = x - x0
            y = y0 + angle * dx + style.wave * math.sin(dx / period * 2 * math.pi + phase)
            y += drift + jitter[k]
            placed.append((glyph, round(x), round(y)))
            ink_right = x + glyph.left + glyph.mask.shape[1]
            x += glyph.advance + style.tracking
        return placed

    # -- drawing

    def _render(
        self,
        lines: Sequence[str],
        rng: np.random.Generator,
        style: WriterStyle | None,
        margin: tuple[float, float],
        indent: float = 0.0,
    ) -> np.ndarray:
        if style is None:
            style = self.sample_writer_style(rng)
        pad = 2 * style.size  # room for swashes, descenders and drift before cropping
        lines_placed = []
        for i, text in enumerate(lines):
            x0 = pad + abs(rng.normal(0.0, indent)) if indent else pad
            y0 = pad + i * style.line_pitch + rng.normal(0.0, 0.04) * style.line_pitch
            lines_placed.append((y0, self._place_line(text, style, rng, x0, y0)))
        if not any(p for _, p in lines_placed):  # nothing visible: a blank scrap of paper
            return np.full((max(8, style.size), max(8, style.size)), round(style.paper), np.uint8)

        # Coverage canvas (0 = paper, 255 = ink): the glyph boxes, moved `pad` px away from
        # every edge (baseline drift can move them anywhere), plus room for the slant shear.
        k = style.slant
        boxes = [(g, x + g.left, y + g.top) for _, p in lines_placed for g, x, y in p]
        dy = pad - min(y for _, _, y in boxes)
        height = max(y + g.mask.shape[0] for g, _, y in boxes) + dy + pad
        shear_room = int(abs(k) * height) + 1
        # The shear below moves ink at height y left by k * y; shifting each line right by
        # k * its baseline keeps the left margin vertical instead of drifting down the page.
        placed = [
            (g, x + g.left + round(k * (y0 + dy)), y + g.top + dy)
            for y0, p in lines_placed
            for g, x, y in p
        ]
        dx = pad + shear_room - min(x for _, x, _ in placed)
        placed = [(g, x + dx, y) for g, x, y in placed]
        width = max(x + g.mask.shape[1] for g, x, _ in placed) + pad + shear_room
        cover = np.zeros((height, width), np.uint8)
        for glyph, x, y in placed:
            h, w = glyph.mask.shape
            region = cover[y : y + h, x : x + w]
            np.maximum(region, glyph.mask, out=region)

        img = Image.fromarray(cover)
        if k:
            # Slant: output(x, y) = input(x + k * y), so ink above a baseline leans right for k > 0.
            img = img.transform(
                img.size, Image.Transform.AFFINE, (1, k, 0, 0, 1, 0), Image.Resampling.BILINEAR
            )
        # Stroke weight and edge softness: blur, then keep coverage above `weight` as ink.
        img = img.filter(ImageFilter.GaussianBlur(style.blur))
        # The ramp starts above zero so faint blur tails stay paper and the crop stays tight.
        lo = max(0.05, style.weight - style.softness / 2 * (1 - style.weight))
        hi = style.weight + style.softness / 2 * style.weight
        lut = np.clip((np.arange(256) / 255 - lo) / max(hi - lo, 1e-3), 0, 1)
        img = img.point((lut * 255).round().astype(np.uint8).tolist())

        bbox = img.getbbox()
        if bbox is None:
            return np.full((max(8, style.size), max(8, style.size)), round(style.paper), np.uint8)
        # Tight crop with a small random margin, as in IAM's word and line crops.
        lo_m, hi_m = margin
        m = rng.uniform(lo_m, hi_m, 4) * style.x_height
        left = max(0, bbox[0] - round(m[0]))
        top = max(0, bbox[1] - round(m[1]))
        right = min(width, bbox[2] + round(m[2]))
        bottom = min(height, bbox[3] + round(m[3]))
        alpha = np.asarray(img.crop((left, top, right, bottom)), np.float32) / 255
        return self._ink_on_paper(alpha, style, rng)

    def _ink_on_paper(
        self, alpha: np.ndarray, style: WriterStyle, rng: np.random.Generator
    ) -> np.ndarray:
        """Composite coverage on textured paper with uneven ink and sensor noise."""
        h, w = alpha.shape
        paper = style.paper + style.texture * _smooth_noise(rng, h, w, cell=40 * self.scale * 4)
        ink = style.ink + style.ink_variation * _smooth_noise(rng, h, w, cell=style.x_height * 2)
        img = paper - alpha * np.maximum(paper - ink, 0)
        img += rng.standard_normal((h, w), dtype=np.float32) * style.noise
        return np.clip(img + 0.5, 0, 255).astype(np.uint8)

    # -- public entry points

    def render_word(
        self, text: str, rng: np.random.Generator, style: WriterStyle | None = None
    ) -> np.ndarray:
        """One word (or punctuation token), tightly cropped: uint8 (H, W), paper 255."""
        return self._render([text], rng, style, margin=(0.1, 0.5))

    def render_line(
        self, text: str, rng: np.random.Generator, style: WriterStyle | None = None
    ) -> np.ndarray:
        """One line of text, tightly cropped: uint8 (H, W), paper 255."""
        return self._render([text], rng, style, margin=(0.15, 0.7))

    def render_form(
        self, lines: list[str], rng: np.random.Generator, style: WriterStyle | None = None
    ) -> np.ndarray:
        """The handwritten part of a page: `lines` stacked at the hand's line pitch with a
        slight per-line indent, cropped with page-like margins: uint8 (H, W), paper 255."""
        if style is None:
            style = self.sample_writer_style(rng)
        return self._render(lines, rng, style, margin=(0.5, 2.0), indent=0.3 * style.x_height)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bilinearly."""
    gh, gw = max(2, math.ceil(h / cell) + 1), max(2, math.ceil(w / cell) + 1)
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR))


# ----------------------------------------------------------------------------- dataset


class SyntheticHandwriting(torch.utils.data.Dataset):
    """Corpus text rendered as handwriting words, lines or form pages.

    The sample at index i is a pure function of (seed, split, epoch, i). Train uses the
    writers not in `val_writers` and the corpus "train" sentences; val and test use
    `val_writers` with the "val" and "test" sentences, and are always epoch 0 (fixed).
    Call `set_epoch` before each training epoch (DataLoader workers must be re-created to
    see it, i.e. persistent_workers=False).
    """

    def __init__(
        self,
        split: str,
        kind: str,
        size: int,
        seed: int = 0,
        scale: float = 0.5,
        val_writers: Sequence[str] = DEFAULT_VAL_WRITERS,
        train_writers: Sequence[str] | None = None,
        min_lines: int = 1,
        max_lines: int = 10,
        words_per_line: tuple[int, int] = (3, 9),
        line_width: tuple[float, float] | None = None,
        form_width: tuple[float, float] = (1700, 2300),
        iam_word_tokens: float = 0.85,
    ) -> None:
        """train_writers: the writers of the train split (default: all not in val_writers;
        see `split_writers`). line_width: if given, line samples hold as many words as fit a
        wrap width drawn from this range (px at scale 1), like lines cut from a text block,
        instead of `words_per_line` words: similar widths pad less in a batch. form_width:
        range of the line wrap width of forms in px at scale 1 (IAM's handwritten block is
        ~2000-2300 px wide). iam_word_tokens: probability that a "word" sample splits
        punctuation off as IAM does (`said,` -> `said`, `,`)."""
        # Accept config enums (e.g. DataFormatName.line) as well as plain strings.
        split, kind = str(getattr(split, "value", split)), str(getattr(kind, "value", kind))
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 1 <= min_lines <= max_lines:
            raise ValueError(f"need 1 <= min_lines <= max_lines, got {min_lines}, {max_lines}")
        if not 1 <= words_per_line[0] <= words_per_line[1]:
            raise ValueError(f"bad words_per_line {words_per_line}")
        if line_width is not None and not 0 < line_width[0] <= line_width[1]:
            raise ValueError(f"need 0 < line_width[0] <= line_width[1], got {line_width}")
        writers = split_writers(split, val_writers, train_writers)
        self.split, self.kind, self.size, self.seed = split, kind, size, seed
        self.writers = writers
        self.renderer = HandwritingRenderer(self.writers, scale)
        self.min_lines, self.max_lines = min_lines, max_lines
        self.words_per_line = words_per_line
        self.line_width = line_width
        self.form_width = form_width
        self.iam_word_tokens = iam_word_tokens
        self.sentences = load_corpus(split)
        self.words = [s.split(" ") for s in self.sentences]
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """Draw different training samples each epoch (val/test stay fixed)."""
        self.epoch = int(epoch)

    def set_max_lines(self, n: int) -> None:
        """Curriculum: cap the number of lines of form samples (never below min_lines)."""
        self.max_lines = max(self.min_lines, int(n))

    def __getitem__(self, index: int) -> Sample:
        i = int(index)
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        epoch = self.epoch if self.split == "train" else 0
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), epoch, i])
        style = self.renderer.sample_writer_style(rng)
        if self.kind == "word":
            text = self._word_text(rng)
            image = self.renderer.render_word(text, rng, style)
        elif self.kind == "line":
            text = self._line_text(rng, style)
            image = self.renderer.render_line(text, rng, style)
        else:
            lines = self._form_lines(rng, style)
            text = "\n".join(lines)
            image = self.renderer.render_form(lines, rng, style)
        return Sample(image=image, text=text, id=f"synthetic-{self.split}-{epoch}-{i}")

    # -- text sampling

    def _word_text(self, rng: np.random.Generator) -> str:
        words = self.words[rng.integers(len(self.words))]
        word = words[rng.integers(len(words))]
        if rng.random() < self.iam_word_tokens:
            tokens = _iam_tokens(word)
            word = tokens[rng.integers(len(tokens))]
        return word

    def _passage(self, rng: np.random.Generator, n: int) -> list[str]:
        """n consecutive corpus words, from a sentence start or mid-sentence, running on into
        the following sentences as a passage."""
        s = int(rng.integers(len(self.words)))
        start = 0 if rng.random() < 0.35 else int(rng.integers(len(self.words[s])))
        out = self.words[s][start : start + n]
        while len(out) < n:
            s = (s + 1) % len(self.words)
            out += self.words[s][: n - len(out)]
        return out

    def _line_text(self, rng: np.random.Generator, style: WriterStyle) -> str:
        if self.line_width is None:
            n = int(rng.integers(*self.words_per_line, endpoint=True))
            return " ".join(self._passage(rng, n))
        width = rng.uniform(*self.line_width) * self.renderer.scale
        return self._full_lines(rng, style, 1, width)[0]

    def _form_lines(self, rng: np.random.Generator, style: WriterStyle) -> list[str]:
        n_lines = int(rng.integers(self.min_lines, self.max_lines, endpoint=True))
        max_width = rng.uniform(*self.form_width) * self.renderer.scale
        return self._full_lines(rng, style, n_lines, max_width)

    def _full_lines(
        self, rng: np.random.Generator, style: WriterStyle, n_lines: int, max_width: float
    ) -> list[str]:
        """The first n_lines lines of a passage wrapped at max_width px, each filled up to
        the wrap (so the last line is as full as the others)."""
        n_words = 16 * n_lines
        while True:  # fetch more words until the wrap fills n_lines (rarely loops)
            words = self._passage(rng, n_words)
            lines = self.renderer.wrap(words, max_width, style, max_lines=n_lines)
            if sum(line.count(" ") + 1 for line in lines) < len(words):  # stopped on a full line
                return lines
            n_words *= 2
