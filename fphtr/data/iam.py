"""The IAM Handwriting Database, read from the layout it is downloaded in.

    <root>/xml/a01-000u.xml                         labels, writer ids, word and line boxes
    <root>/formsA-D/ formsE-H/ formsI-Z/ (or forms/)  a01-000u.png: full form scans (~300 dpi)
    <root>/lines/a01/a01-000u/a01-000u-00.png       line images
    <root>/words/a01/a01-000u/a01-000u-00-00.png    word images
    <root>/ascii/forms.txt lines.txt words.txt      optional: writer ids, segmentation flags

Labels come from the XML `text` attributes (HTML entities such as &quot; unescaped). A form
sample is the handwritten part of the page only: the scan is cropped to the union of its word
boxes plus `form_margin` pixels, so the machine-printed header is never in the input; its label
is the handwritten lines joined by "\\n".

`segmentation="err"` marks lines whose word segmentation failed: the line image and its
transcription are fine, so such lines are kept by default (`keep_err_lines=True`), while the
words of a bad segmentation may be badly cropped and are skipped (`keep_err_words=False`;
word flags come from ascii/words.txt, else from their line).

Splits are always made of whole forms, so the lines and words of one form never straddle
splits: `aachen` (RWTH Aachen lists of form ids in `split_dir`), `official` (IAM's large
writer-independent line recognition task lists), `writers` (a seeded writer-disjoint split
that needs no files) or `auto` (the first of these whose files are present).

Broken input never stops a run and is never dropped silently: each skipped item is counted
with its reason and every split logs one summary line.
"""

from __future__ import annotations

import html
import logging
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from fphtr.data.cache import ImageCache, default_cache_dir
from fphtr.data.geometry import ImageError
from fphtr.data.sample import Sample

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
KINDS = ("word", "line", "form")
SPLIT_KINDS = ("auto", "aachen", "official", "writers")
FORMS_DIRS = ("formsA-D", "formsE-H", "formsI-Z", "forms")
OFFICIAL_DIR = "largeWriterIndependentTextLineRecognitionTask"
OFFICIAL_FILES = {
    "train": ("trainset.txt",),
    "val": ("validationset1.txt", "validationset2.txt"),
    "test": ("testset.txt",),
}
AACHEN_FILES = {"train": "train.uttlist", "val": "validation.uttlist", "test": "test.uttlist"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_FRAME = 1 << 20  # a frame that never shrinks anything (word pool images)

LAYOUT = """\
IAM is expected as downloaded from https://fki.tic.heia-fr.ch/databases/iam-handwriting-database,
each archive unpacked into dataset.root:
  {root}/xml/a01-000u.xml ...                       xml.tgz (required: labels, writer ids, boxes)
  {root}/formsA-D/ formsE-H/ formsI-Z/ (or forms/)  formsA-D.tgz ... (data_format=form)
  {root}/lines/a01/a01-000u/a01-000u-00.png         lines.tgz (data_format=line)
  {root}/words/a01/a01-000u/a01-000u-00-00.png      words.tgz (data_format=word)
  {root}/ascii/forms.txt lines.txt words.txt        ascii.tgz (optional)"""

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in scan pixels


class IAMError(ValueError):
    """An IAM copy or split setting that cannot be used; the message says what is expected."""


@dataclass(frozen=True)
class Word:
    id: str
    text: str
    segmentation: str  # "ok" or "err"
    box: Box | None


@dataclass(frozen=True)
class Line:
    id: str
    text: str
    segmentation: str
    box: Box | None
    words: tuple[Word, ...]


@dataclass(frozen=True)
class Form:
    id: str
    writer: str | None
    lines: tuple[Line, ...]

    def handwritten_box(self, margin: int) -> Box | None:
        """The union of the line boxes grown by `margin` px (None if no line has a box)."""
        boxes = [ln.box for ln in self.lines if ln.box is not None]
        if not boxes:
            return None
        return (min(b[0] for b in boxes) - margin, min(b[1] for b in boxes) - margin,
                max(b[2] for b in boxes) + margin, max(b[3] for b in boxes) + margin)  # fmt: skip


@dataclass(frozen=True)
class Item:
    """One sample before loading: label, image file and (forms) the crop box."""

    id: str
    text: str
    path: Path
    form: str
    crop: Box | None = None
    # forms: the (top, bottom) edges in file px of each line in `text`, None for a line
    # without a box; the page curriculum cuts a form below its first n lines
    line_spans: tuple[tuple[int, int] | None, ...] = ()


def form_of(item_id: str) -> str:
    """a01-000u-00-01 -> a01-000u."""
    return "-".join(item_id.split("-")[:2])


def _union(boxes: Sequence[Box]) -> Box | None:
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[2] for b in boxes), max(b[3] for b in boxes))  # fmt: skip


def _xywh(fields: Sequence[str]) -> Box | None:
    x, y, w, h = (int(v) for v in fields)
    return (x, y, x + w, y + h) if x >= 0 and y >= 0 and w > 0 and h > 0 else None


def _check_image(path: Path) -> str | None:
    """Why an image file cannot be used, or None. Cheap: reads 8 bytes, never decodes."""
    try:
        size = path.stat().st_size
    except OSError:
        return "missing image"
    if size == 0:
        return "empty image file (0 bytes)"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return "unreadable image"
    return None if head == PNG_SIGNATURE else "unreadable image (not a PNG)"


# ----------------------------------------------------------------------------- ascii files

_ASCII_FORMAT = {  # file: (min fields, integer field slice)
    "forms": (8, slice(4, 8)),  # id writer sentences all/prt lines ok-lines words ok-words
    "lines": (9, slice(2, 8)),  # id ok/err grey components x y w h a|b|c
    "words": (9, slice(2, 7)),  # id ok/err grey x y w h tag text
}


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def _read_ascii(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(id -> fields, malformed record ids) of one ascii/*.txt file ('#' lines are comments).

    words.txt records are returned as IAM ships them, nine fields (`a01-000u-00-00 ok 154
    408 768 27 51 AT A`), although its header advertises a component count after the grey
    level; records that have that count (ten fields, the 8th an integer, where IAM's has the
    tag) are accepted too and returned without it."""
    min_fields, ints = _ASCII_FORMAT[path.stem]
    records: dict[str, list[str]] = {}
    bad: list[str] = []
    with open(path, encoding="latin-1") as f:
        for row in f:
            if row.startswith("#") or not row.strip():
                continue
            fields = row.split()
            if path.stem == "words" and len(fields) >= 10 and _is_int(fields[7]):
                fields = fields[:3] + fields[4:]  # drop the component count
            ok = len(fields) >= min_fields
            if ok and path.stem != "forms":
                ok = fields[1] in ("ok", "err", "er")
            if ok:
                ok = all(_is_int(v) for v in fields[ints])
            if ok:
                records[fields[0]] = fields
            else:
                bad.append(fields[0])
    return records, bad


# ----------------------------------------------------------------------------- the index


class IAM:
    """An IAM copy: every form's lines and words parsed from xml/ (and ascii/), and each form
    assigned to a split. `dataset(split, kind, ...)` gives the samples of one split."""

    def __init__(
        self,
        root: str | Path,
        split: str = "auto",
        split_dir: str | Path | None = None,
        keep_err_lines: bool = True,
        keep_err_words: bool = False,
        form_margin: int = 50,
        writers_seed: int = 0,
        writers_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    ) -> None:
        split = str(getattr(split, "value", split))
        if split not in SPLIT_KINDS:
            raise IAMError(f"dataset.split={split!r}: expected one of {', '.join(SPLIT_KINDS)}")
        self.root = Path(root).expanduser()
        self.split_dir = Path(split_dir).expanduser() if split_dir else None
        self.keep_err_lines, self.keep_err_words = keep_err_lines, keep_err_words
        self.form_margin = form_margin
        self._check_root()
        # problems not tied to one split: reported on the index summary line
        self.problems: Counter[str] = Counter()
        self.bad_items: dict[str, str] = {}  # item id -> reason (malformed ascii record)
        self.bad_forms: dict[str, str] = {}  # form id -> reason (no or unreadable xml)
        self.forms = self._read_forms()
        self.split_kind = self._resolve_split(split)
        self.split_of, self.listed_lines, self.split_problems = self._assign(
            writers_seed, writers_fractions
        )
        self._form_images = self._find_form_images()
        self._items: dict[tuple[str, str], tuple[list[Item], Counter[str]]] = {}
        n_lines = sum(len(f.lines) for f in self.forms.values())
        n_words = sum(len(ln.words) for f in self.forms.values() for ln in f.lines)
        log.info("IAM %s: %d forms, %d lines, %d words in xml/; split %s; %s", self.root,
                 len(self.forms), n_lines, n_words, self.split_kind,
                 _reasons(self.problems, "index problems"))  # fmt: skip

    # -- reading

    def _check_root(self) -> None:
        layout = LAYOUT.format(root=self.root)
        if not self.root.is_dir():
            raise IAMError(f"dataset.root={self.root}: no such directory.\n{layout}")
        xml_dir = self.root / "xml"
        if not xml_dir.is_dir() or not any(xml_dir.glob("*.xml")):
            below = sorted(p.parent for p in self.root.glob("*/xml") if any(p.glob("*.xml")))
            hint = f" Did you mean dataset.root={below[0]}?" if below else ""
            raise IAMError(
                f"dataset.root={self.root}: no IAM annotations, expected "
                f"{xml_dir}/<form id>.xml files.{hint}\n{layout}"
            )

    def _read_forms(self) -> dict[str, Form]:
        ascii_dir = self.root / "ascii"
        records: dict[str, dict[str, list[str]]] = {}
        malformed: list[tuple[str, str]] = []
        for name in ("forms", "lines", "words"):
            path = ascii_dir / f"{name}.txt"
            if path.is_file():
                records[name], bad = _read_ascii(path)
                malformed += [(f"malformed record in ascii/{name}.txt", i) for i in bad]
            else:
                records[name] = {}
        if not ascii_dir.is_dir():
            log.info("IAM: no %s; writer ids and segmentation flags come from xml/ only", ascii_dir)

        forms: dict[str, Form] = {}
        for path in sorted((self.root / "xml").glob("*.xml")):
            try:
                form = self._read_xml(path, records)
            except (ET.ParseError, ValueError, OSError) as e:
                self.bad_forms[path.stem] = "unreadable xml"
                log.warning("IAM: skipping form %s: cannot read %s (%s)", path.stem, path, e)
                continue
            forms[form.id] = form
        for form_id in records["forms"]:
            if form_id not in forms and form_id not in self.bad_forms:
                self.bad_forms[form_id] = f"no xml/{form_id}.xml"
        for reason in self.bad_forms.values():  # forms that cannot be used at all
            self.problems["form without xml" if reason.startswith("no xml") else reason] += 1
        known = {
            i for f in forms.values() for ln in f.lines for i in (ln.id, *(w.id for w in ln.words))
        }
        for reason, item_id in malformed:  # the item a malformed record describes is skipped
            if item_id in known or item_id in forms:
                self.bad_items[item_id] = reason
            else:
                self.problems[reason] += 1
        if not forms:
            raise IAMError(f"{self.root}/xml: no readable form xml file.\n"
                           f"{LAYOUT.format(root=self.root)}")  # fmt: skip
        return forms

    def _read_xml(self, path: Path, records: dict[str, dict[str, list[str]]]) -> Form:
        form_el = ET.parse(path).getroot()
        form_id = form_el.get("id") or path.stem
        writer = form_el.get("writer-id")
        if not writer and form_id in records["forms"]:
            writer = records["forms"][form_id][1]
        part = form_el.find("handwritten-part")
        if part is None:
            raise ValueError("no <handwritten-part> element")
        lines = []
        for line_el in part.iter("line"):
            line_id = line_el.get("id", "")
            line_seg = "err" if line_el.get("segmentation", "ok") != "ok" else "ok"
            words = []
            for word_el in line_el.iter("word"):
                word_id = word_el.get("id", "")
                boxes = []
                for cmp in word_el.iter("cmp"):
                    try:
                        box = _xywh([cmp.get(k, "-1") for k in ("x", "y", "width", "height")])
                    except ValueError:
                        box = None
                    if box:
                        boxes.append(box)
                record = records["words"].get(word_id)
                box = _union(boxes) or (_xywh(record[3:7]) if record else None)
                seg = ("ok" if record[1] == "ok" else "err") if record else line_seg
                text = html.unescape(word_el.get("text", ""))
                words.append(Word(word_id, text, seg, box))
            record = records["lines"].get(line_id)
            box = _union([w.box for w in words if w.box]) or (
                _xywh(record[4:8]) if record else None
            )
            if box is None and line_el.get("asy") and line_el.get("dsy"):  # vertical extent only
                box = (0, int(line_el.get("asy")), int(form_el.get("width", 1 << 16)),
                       int(line_el.get("dsy")))  # fmt: skip
            text = html.unescape(line_el.get("text", ""))
            lines.append(Line(line_id, text, line_seg, box, tuple(words)))
        return Form(form_id, writer, tuple(lines))

    def _find_form_images(self) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for name in FORMS_DIRS:
            folder = self.root / name
            if folder.is_dir():
                for entry in os.scandir(folder):
                    if entry.name.endswith(".png"):
                        found.setdefault(entry.name[:-4], Path(entry.path))
        return found

    # -- splits

    def _official_dir(self) -> Path:
        return self.split_dir or self.root / OFFICIAL_DIR

    def _resolve_split(self, split: str) -> str:
        if split != "auto":
            return split
        if self.split_dir and (self.split_dir / AACHEN_FILES["train"]).is_file():
            chosen, why = "aachen", f"{self.split_dir}/train.uttlist"
        elif (self._official_dir() / OFFICIAL_FILES["train"][0]).is_file():
            chosen, why = "official", f"{self._official_dir()}/trainset.txt"
        else:
            chosen, why = (
                "writers",
                f"no split lists in dataset.split_dir or {self._official_dir()}",
            )
        log.warning("IAM: dataset.split=auto -> %s (%s). For the RWTH Aachen split used by most "
                    "papers pass dataset.split=aachen dataset.split_dir=<folder with "
                    "train.uttlist, validation.uttlist, test.uttlist>", chosen, why)  # fmt: skip
        return chosen

    def _read_lists(self) -> dict[str, list[str]]:
        if self.split_kind == "aachen":
            if self.split_dir is None:
                raise IAMError("dataset.split=aachen needs dataset.split_dir: a folder with the "
                               "RWTH Aachen lists train.uttlist, validation.uttlist, test.uttlist "
                               "(one form id per line)")  # fmt: skip
            files = {s: [self.split_dir / name] for s, name in AACHEN_FILES.items()}
        else:
            folder = self._official_dir()
            files = {s: [folder / n for n in names] for s, names in OFFICIAL_FILES.items()}
        missing = [str(p) for paths in files.values() for p in paths if not p.is_file()]
        if missing:
            raise IAMError(f"dataset.split={self.split_kind}: missing split list(s) "
                           f"{', '.join(missing)}")  # fmt: skip
        return {
            s: [ln.split()[0] for p in paths for ln in p.read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
            for s, paths in files.items()
        }  # fmt: skip

    def _assign(
        self, seed: int, fractions: Sequence[float]
    ) -> tuple[dict[str, str], dict[str, set[str]] | None, dict[str, Counter[str]]]:
        """(form -> split, split -> listed line ids or None, split -> problems)."""
        problems: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        if self.split_kind == "writers":
            return self._writer_split(seed, fractions), None, problems
        split_of: dict[str, str] = {}
        listed: dict[str, set[str]] = {s: set() for s in SPLITS}
        line_ids = {ln.id for f in self.forms.values() for ln in f.lines}
        has_line_ids = False
        for split, ids in self._read_lists().items():  # train, val, test: later splits win
            for item_id in ids:
                form = form_of(item_id)
                if form not in self.forms:
                    reason = self.bad_forms.get(form, "unknown id in split list")
                    problems[split][reason] += 1
                    continue
                if item_id != form:
                    has_line_ids = True
                    if item_id not in line_ids:
                        problems[split]["unknown id in split list"] += 1
                        continue
                    listed[split].add(item_id)
                previous = split_of.get(form)
                if previous is not None and previous != split:
                    # never let a form be in two splits: the later (evaluation) split keeps it
                    problems[previous]["form also listed in a later split"] += 1
                split_of[form] = split
        return split_of, (listed if has_line_ids else None), problems

    def _writer_split(self, seed: int, fractions: Sequence[float]) -> dict[str, str]:
        """Whole writers go to train/val/test, in seeded random order, until each split has
        about its fraction of the forms; every split gets at least one writer if possible."""
        by_writer: dict[str, list[str]] = {}
        for form in self.forms.values():
            # a form without writer id is its own writer: it can never leak
            by_writer.setdefault(form.writer or f"unknown-{form.id}", []).append(form.id)
        writers = sorted(by_writer)
        order = [writers[k] for k in np.random.default_rng(seed).permutation(len(writers))]
        total = sum(len(v) for v in by_writer.values())
        bounds = np.cumsum(fractions) / sum(fractions) * total
        groups: dict[str, list[str]] = {s: [] for s in SPLITS}
        done = 0
        for writer in order:
            k = int(np.searchsorted(bounds, done, side="right"))
            groups[SPLITS[min(k, 2)]].append(writer)
            done += len(by_writer[writer])
        for split in ("val", "test"):  # a split with no writer takes the last one of train
            if not groups[split] and len(groups["train"]) > 1:
                groups[split].append(groups["train"].pop())
        return {form: s for s in SPLITS for w in groups[s] for form in by_writer[w]}

    # -- samples

    def forms_of(self, split: str) -> list[Form]:
        return [f for fid, f in self.forms.items() if self.split_of.get(fid) == split]

    def items(self, split: str, kind: str) -> tuple[list[Item], Counter[str]]:
        """The usable samples of one split and data format, and the skipped ones by reason."""
        kind = str(getattr(kind, "value", kind))
        if (split, kind) not in self._items:  # checking ~100k word files takes seconds
            self._items[split, kind] = self._find_items(split, kind)
        items, skipped = self._items[split, kind]
        return list(items), Counter(skipped)

    def _find_items(self, split: str, kind: str) -> tuple[list[Item], Counter[str]]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._check_images_dir(kind)
        skipped: Counter[str] = Counter(self.split_problems[split])
        candidates: list[Item] = []
        for form in self.forms_of(split):
            if kind == "form":
                why = self.bad_items.get(form.id)
                text = "\n".join(ln.text for ln in form.lines if ln.text)
                spans = tuple((ln.box[1], ln.box[3]) if ln.box else None
                              for ln in form.lines if ln.text)  # fmt: skip
                path = self._form_images.get(form.id, self.root / "forms" / f"{form.id}.png")
                if why is None and not text:
                    why = "no handwritten lines in xml"
                crop = form.handwritten_box(self.form_margin)
                if why:
                    skipped[why] += 1
                else:
                    candidates.append(Item(form.id, text, path, form.id, crop, spans))
                continue
            group = form.id.split("-")[0]
            for line in form.lines:
                if kind == "line":
                    why = self._line_problem(split, line)
                    path = self.root / "lines" / group / form.id / f"{line.id}.png"
                    if why:
                        skipped[why] += 1
                    else:
                        candidates.append(Item(line.id, line.text, path, form.id))
                    continue
                for word in line.words:
                    why = self.bad_items.get(word.id)
                    if why is None and word.segmentation != "ok" and not self.keep_err_words:
                        why = "segmentation err (dataset.keep_err_words=false)"
                    if why is None and not word.text:
                        why = "empty transcription"
                    path = self.root / "words" / group / form.id / f"{word.id}.png"
                    if why:
                        skipped[why] += 1
                    else:
                        candidates.append(Item(word.id, word.text, path, form.id))
        items = []
        for item in candidates:
            why = _check_image(item.path)
            if why:
                skipped[why] += 1
            else:
                items.append(item)
        return items, skipped

    def _line_problem(self, split: str, line: Line) -> str | None:
        if line.id in self.bad_items:
            return self.bad_items[line.id]
        if self.listed_lines is not None and line.id not in self.listed_lines[split]:
            return "line not in the split's line list"
        if line.segmentation != "ok" and not self.keep_err_lines:
            return "segmentation err (dataset.keep_err_lines=false)"
        return None if line.text else "empty transcription"

    def _check_images_dir(self, kind: str) -> None:
        layout = LAYOUT.format(root=self.root)
        if kind == "form" and not self._form_images:
            raise IAMError(f"data_format=form needs the form scans: expected {self.root}/formsA-D/"
                           f", formsE-H/, formsI-Z/ (or forms/) with <form id>.png files.\n"
                           f"{layout}")  # fmt: skip
        folder = {"line": "lines", "word": "words"}.get(kind)
        if folder and not (self.root / folder).is_dir():
            example = (
                "a01/a01-000u/a01-000u-00.png"
                if kind == "line"
                else "a01/a01-000u/a01-000u-00-00.png"
            )
            raise IAMError(f"data_format={kind} needs {self.root}/{folder}/ ({folder}/{example} "
                           f"...).\n{layout}")  # fmt: skip

    def dataset(
        self,
        split: str,
        kind: str,
        scale: float,
        max_height: int,
        max_width: int,
        cache: ImageCache | None = None,
        limit: int | None = None,
        seed: int = 0,
        purpose: str = "",
    ) -> IAMDataset:
        """The samples of one split, prepared at `scale` within the frame; `limit` keeps a
        seeded subset of at most that many (quick runs). Logs the split's summary line
        (`purpose` is added to it, e.g. for the stitching word pool)."""
        kind = str(getattr(kind, "value", kind))
        items, skipped = self.items(split, kind)
        total = len(items)
        if limit is not None and 0 < limit < total:
            keep = np.sort(
                np.random.default_rng([seed, SPLITS.index(split)]).choice(
                    total, limit, replace=False
                )
            )
            items = [items[k] for k in keep]
        n_forms = len({it.form for it in items})
        used = f" (a subset of {total}: dataset.{split}_size={limit})" if len(items) < total else ""
        source = "" if kind == "form" else f" from {n_forms} forms"
        summary = (f"IAM {split}{purpose}: {len(items)} {kind}s{source}{used} "
                   f"[split={self.split_kind}]; {_reasons(skipped, 'skipped')}")  # fmt: skip
        log.info(summary)
        if not items:
            raise IAMError(f"{summary}\nNo usable {kind} samples in the {split} split of "
                           f"{self.root}.\n{LAYOUT.format(root=self.root)}")  # fmt: skip
        return IAMDataset(items, scale, max_height, max_width, cache, split, kind, skipped, summary)


def _reasons(counts: Counter[str], what: str) -> str:
    total = sum(counts.values())
    if not total:
        return f"{what} 0"
    return f"{what} {total}: " + ", ".join(f"{n} {r}" for r, n in counts.most_common())


class IAMDataset(Dataset):
    """IAM samples of one split and data format: `Sample`s with images prepared by the
    geometry policy (through the disk cache if one is given)."""

    def __init__(
        self,
        items: Sequence[Item],
        scale: float,
        max_height: int,
        max_width: int,
        cache: ImageCache | None = None,
        split: str = "",
        kind: str = "",
        skipped: Counter[str] | None = None,
        summary: str = "",
    ) -> None:
        self.items = list(items)
        self.scale, self.max_height, self.max_width = scale, max_height, max_width
        self.cache = cache or ImageCache(None)
        self.split, self.kind = split, kind
        self.skipped = skipped or Counter()
        self.summary = summary
        self.failed: set[str] = set()  # ids whose image could not be decoded (this process)
        # training: an unreadable image is replaced by the next sample; evaluation: left out
        self.replace_unreadable = split == "train"
        self.replaced = 0  # replacements served by this process
        self.max_lines: int | None = None  # page curriculum: forms cut below this many lines

    @property
    def max_page_lines(self) -> int:
        """The most lines a sample has (where the page curriculum ends)."""
        return max((len(it.line_spans) for it in self.items), default=1)

    def set_max_lines(self, n: int | None) -> None:
        """Page curriculum (forms): serve each form cut below its first `n` lines, with the
        transcription of those lines (None: whole forms). A form with a line without a box
        is served whole."""
        self.max_lines = None if n is None else max(1, int(n))

    def _cut(self, item: Item) -> Item:
        """`item` cut below its first `max_lines` lines: the form's left, top and right
        edges; at the bottom the margin the whole form has, or less where the next line
        starts sooner."""
        n, spans = self.max_lines, item.line_spans
        if n is None or n >= len(spans) or item.crop is None or None in spans:
            return item
        x0, y0, x1, y1 = item.crop
        margin = y1 - max(b for _, b in spans)  # type: ignore[misc]
        bottom = max(b for _, b in spans[:n])  # type: ignore[misc]
        gap = max(0, spans[n][0] - bottom)  # type: ignore[index]
        text = "\n".join(item.text.split("\n")[:n])
        return replace(item, text=text, crop=(x0, y0, x1, bottom + min(margin, gap)),
                       line_spans=spans[:n])  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def texts(self) -> list[str]:
        return [it.text for it in self.items]

    def __getitem__(self, index: int) -> Sample:
        """The sample at `index`. An image found unreadable only when decoding (e.g. a
        truncated PNG) never crashes a run: in training it is replaced by the next readable
        sample (and the replacements are counted); in validation and test it is returned
        as `unreadable`, so that it is left out and reported, never scored twice."""
        n = len(self.items)
        for k in range(n):
            item = self._cut(self.items[(int(index) + k) % n])
            if item.id not in self.failed:
                try:
                    image = self.cache.load(item.path, self.scale, self.max_height,
                                            self.max_width, item.crop)  # fmt: skip
                except ImageError as e:
                    self.failed.add(item.id)
                    log.warning("IAM %s: skipping %s: %s; %s", self.split, item.id, e,
                                "using the next sample instead" if self.replace_unreadable
                                else "left out of the evaluation (never replaced)")  # fmt: skip
                else:
                    if k:
                        self.replaced += 1
                        log.warning("IAM %s: sample %d served by %s (%d unreadable samples "
                                    "replaced so far in this process)", self.split, index,
                                    item.id, self.replaced)  # fmt: skip
                    return Sample(image=image, text=item.text, id=item.id)
            if not self.replace_unreadable:
                return Sample(np.zeros((0, 0), np.uint8), item.text, item.id, unreadable=True)
        raise IAMError(f"IAM {self.split}: none of the {n} images can be decoded")


# ----------------------------------------------------------------------------- from a config


def unseen_characters(chars: str, texts: Sequence[str]) -> tuple[Counter[str], int]:
    """(occurrences of each character not in `chars`, number of texts containing any)."""
    known = set(chars)
    counts: Counter[str] = Counter()
    n_texts = 0
    for text in texts:
        missing = [c for c in text if c not in known]
        counts.update(missing)
        n_texts += bool(missing)
    return counts, n_texts


def build_iam(
    config: dict[str, Any], splits: Sequence[str] = SPLITS
) -> tuple[dict[str, Dataset], str, Dataset | None]:
    """`datamodule.build_datasets` for dataset=iam: (split -> IAMDataset for each of `splits`,
    vocabulary from the training split, stitched synthetic source or None). Without "train"
    in `splits` (fphtr-eval: e.g. a collection of test pages only, with empty train and
    validation lists) the vocabulary is that of the splits built and nothing is stitched."""
    from fphtr.data.stitch import Stitcher

    ds, fmt = config["dataset"], config["data_format"]
    root = ds.get("root")
    if root in (None, "", "???"):
        raise IAMError("dataset.root is not set: pass dataset.root=/path/to/IAM\n"
                       + LAYOUT.format(root="<root>"))  # fmt: skip
    iam = IAM(
        root,
        split=ds["split"],
        split_dir=ds.get("split_dir"),
        keep_err_lines=ds["keep_err_lines"],
        keep_err_words=ds["keep_err_words"],
        form_margin=ds["form_margin"],
        writers_seed=ds["writers_seed"],
        writers_fractions=ds["writers_fractions"],
    )
    cache = ImageCache((ds.get("cache_dir") or default_cache_dir()) if ds["cache"] else None)
    kind, scale = fmt["name"], fmt["scale"]
    frame = (fmt["max_height"], fmt["max_width"])
    datasets = {
        s: iam.dataset(
            s, kind, scale, *frame, cache=cache, limit=ds.get(f"{s}_size"), seed=config["seed"]
        )  # fmt: skip
        for s in splits
    }
    vocab_from = ["train"] if "train" in datasets else list(datasets)
    chars = {c for s in vocab_from for text in datasets[s].texts() for c in text}
    stitched = None
    if config["augmentation"]["synthetic_proba"] > 0 and "train" in datasets:
        # The word pool is the TRAINING split's words only (the earlier re-implementation
        # stitched validation and test words into its training data).
        try:
            words = iam.dataset("train", "word", scale, NO_FRAME, NO_FRAME, cache=cache,
                                purpose=" (word pool of the synthetic augmentation)")  # fmt: skip
        except IAMError as e:
            raise IAMError(f"augmentation.synthetic_proba > 0 stitches IAM's training word "
                           f"images, which cannot be read: {e}") from e  # fmt: skip
        chars |= set("".join(words.texts())) | {" "}
        stitched = Stitcher(words, kind, size=len(datasets["train"]), seed=config["seed"],
                            **stitch_layout(iam, scale))  # fmt: skip
    if kind == "form":
        chars.add("\n")
    vocabulary = "".join(sorted(chars))
    for split in ("val", "test"):
        if "train" not in datasets or split not in datasets:
            continue
        counts, n_texts = unseen_characters(vocabulary, datasets[split].texts())
        if counts:
            listed = ", ".join(f"{c!r} x{n}" for c, n in counts.most_common())
            log.warning("IAM %s: %d characters never seen in training (%s) in %d samples are "
                        "encoded as <unk>", split, len(counts), listed, n_texts)  # fmt: skip
    return datasets, vocabulary, stitched


def stitch_layout(iam: IAM, scale: float) -> dict[str, Any]:
    """Line widths, page widths, lines per page and page margins of the real training forms
    (at `scale`), for the stitcher: synthetic pages as long and wide as real ones."""
    forms = iam.forms_of("train")
    line_w = [(ln.box[2] - ln.box[0]) * scale for f in forms for ln in f.lines if ln.box]
    page_w = [
        max(ln.box[2] for ln in f.lines if ln.box) * scale
        - min(ln.box[0] for ln in f.lines if ln.box) * scale
        for f in forms
        if any(ln.box for ln in f.lines)
    ]
    counts = [len(f.lines) for f in forms if f.lines] or [8]
    line_w = line_w or [1800 * scale]
    page_w = page_w or [1800 * scale]
    margin = iam.form_margin * scale
    return {
        "line_width": (float(np.percentile(line_w, 10)), float(np.percentile(line_w, 90))),
        "page_width": (float(np.percentile(page_w, 10)), float(np.percentile(page_w, 90))),
        "lines_per_form": counts,
        "margin": (0.6 * margin, 1.4 * margin),
    }
