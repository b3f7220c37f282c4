"""A small fake IAM, in IAM's exact layout, drawn with the built-in synthetic handwriting.

For tests, and for anyone who wants to try the IAM code path without IAM:

    python scripts/make_iam_fixture.py --out /tmp/iam-fixture --forms 6

writes, like the real download:

    formsA-D/ formsE-H/ formsI-Z/   full form pages (machine-printed header, then the
                                    handwritten part), ~300 dpi: 2479 x 3542 px at scale 1
    lines/a01/a01-000u/a01-000u-00.png         line images (crops of the form)
    words/a01/a01-000u/a01-000u-00-00.png      word images (crops of the form)
    xml/a01-000u.xml                IAM's XML: writer-id, machine-printed-part,
                                    handwritten-part/line(text, segmentation, asx/asy/dsx/dsy)
                                    /word(text, tag)/cmp(x, y, width, height)
    ascii/forms.txt lines.txt words.txt        IAM's records after its '#' comment headers
                                    (words.txt: nine fields, as IAM's records)
    largeWriterIndependentTextLineRecognitionTask/{trainset,validationset1,validationset2,
                                    testset}.txt        IAM's own task lists (line ids)
    splits/aachen/{train,validation,test}.uttlist       RWTH Aachen-style lists (form ids)
    fixture.json                    what was generated (for tests' expected counts)

Some lines (and some of their words) are marked `err`, as in IAM. `inject_broken` then damages
a copy in known places (missing, empty and unreadable images, malformed ascii records,
unknown ids in split lists) for the broken-input tests.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fphtr.data.stitch import compose_line, compose_page
from fphtr.data.synthetic import (
    DEFAULT_VAL_WRITERS,
    WRITERS,
    HandwritingRenderer,
    _iam_tokens,
    load_corpus,
)

PAGE_W, PAGE_H = 2479, 3542  # IAM's form size at ~300 dpi
# Form id prefixes: first letters spread over formsA-D, formsE-H and formsI-Z.
_PREFIXES = ("a01", "b02", "c03", "e04", "h05", "k06", "n07", "r08", "g06", "m01", "p02", "d04")
_SUFFIXES = ("u", "", "x", "", "u", "")
# Form 0 starts with HTML-escaped characters, so the XML has &quot; &apos; &amp;.
_FIRST_SENTENCE = 'He said, "Fish & chips aren\'t bad at all."'
OFFICIAL_DIR = "largeWriterIndependentTextLineRecognitionTask"
AACHEN_DIR = "splits/aachen"

_FORMS_HEADER = """\
#--- forms.txt ---------------------------------------------------------------#
#
# iam database form information
#
# format: a01-000u 000 2 prt 7 5 52 36
#
#     a01-000u  -> form id
#     000       -> writer id
#     2         -> number of sentences
#     prt       -> word segmentation
#                     prt: some lines correctly segmented
#                     all: all lines correctly segmented
#     7 5       -> 5 of 7 lines are correctly segmented into words
#     52 36     -> the form contains 52 words,
#                  36 are in lines which have been correctly segmented
#
"""
_LINES_HEADER = """\
#--- lines.txt ---------------------------------------------------------------#
#
# iam database line information
#
# format: a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from
#
#     a01-000u-00  -> line id for form a01-000u
#     ok              -> result of word segmentation
#                            ok: line is correctly segmented
#                            er: segmentation of line has one or more errors
#
#                        notice: if the line could not be properly segmented
#                                the transcription and extraction of the whole
#                                line should not be affected negatively
#
#     154             -> graylevel to binarize line
#     19              -> number of components for this line
#     408 746 1661 89 -> bounding box around this line in x,y,w,h format
#
#     A|MOVE|to|stop|Mr.|Gaitskell|from -> transcription for this line. word
#                        tokens are separated by the character |
#
"""
_WORDS_HEADER = """\
#--- words.txt ---------------------------------------------------------------#
#
# iam database word information
#
# format: a01-000u-00-00 ok 154 1 408 768 27 51 AT A
#
#     a01-000u-00-00  -> word id for line 00 in form a01-000u
#     ok              -> result of word segmentation
#                            ok: word was correctly
#                            er: segmentation of word can be bad
#
#     154             -> graylevel to binarize the line containing this word
#     1               -> number of components for this word
#     408 768 27 51   -> bounding box around this word in x,y,w,h format
#     AT              -> the grammatical tag for this word, see the
#                        file tagset.txt for an explanation
#     A               -> the transcription for this word
#
"""


@dataclass
class FixtureWord:
    id: str
    text: str
    segmentation: str  # "ok" or "err"
    box: tuple[int, int, int, int]  # x, y, w, h on the form page


@dataclass
class FixtureLine:
    id: str
    text: str
    segmentation: str
    box: tuple[int, int, int, int]
    words: list[FixtureWord]


@dataclass
class FixtureForm:
    id: str
    writer: str
    aachen: str  # train / val / test
    official: str
    header_bottom: int  # y of the rule under the machine-printed part (page pixels)
    lines: list[FixtureLine]
    font: str = ""  # the writer's font (the synthetic renderer's writer)


@dataclass
class FixtureInfo:
    root: str
    forms: list[FixtureForm]
    scale: float
    broken: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        (Path(self.root) / "fixture.json").write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, root: str | Path) -> FixtureInfo:
        d = json.loads((Path(root) / "fixture.json").read_text())
        d["root"] = str(root)  # the folder may have been copied or moved
        forms = []
        for f in d.pop("forms"):
            lines = [
                FixtureLine(**{**ln, "words": [FixtureWord(**w) for w in ln["words"]]})
                for ln in f.pop("lines")
            ]
            forms.append(FixtureForm(**f, lines=lines))
        return cls(forms=forms, **d)

    def split_forms(self, kind: str, split: str) -> list[FixtureForm]:
        """Forms of a split in the generated `aachen` or `official` lists."""
        return [f for f in self.forms if getattr(f, kind) == split]


def _xml_escape(text: str) -> str:
    # IAM writes &quot; and &apos; (not &#34;), so readers must unescape HTML entities.
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace('"', "&quot;").replace("'", "&apos;")
    )  # fmt: skip


def _form_ids(n: int) -> list[str]:
    ids = []
    for i in range(n):
        prefix = _PREFIXES[i % len(_PREFIXES)]
        ids.append(f"{prefix}-{10 * (i // len(_PREFIXES)):03d}{_SUFFIXES[i % len(_SUFFIXES)]}")
    return ids


def _writer_of(i: int) -> str:
    # Forms 0-1 and 2-3 share a writer; every later form has its own (several forms per
    # writer, as in IAM, and enough writers for a writer-disjoint split).
    return f"{i // 2 if i < 4 else i - 2:03d}"


def _splits(n: int) -> tuple[list[str], list[str]]:
    """(aachen, official) split of each form: the last forms are validation and test."""
    n_test, n_val = max(1, round(0.15 * n)), max(1, round(0.1 * n))
    aachen = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    official = ["train"] * (n - 3) + ["val", "val", "test"]
    return aachen, official


def _passage(rng: np.random.Generator, sentences: list[str], n_words: int) -> list[str]:
    s = int(rng.integers(len(sentences)))
    words: list[str] = []
    while len(words) < n_words:
        words += sentences[s % len(sentences)].split()
        s += 1
    return words


def _printed_lines(text: str, width: int, font: ImageFont.FreeTypeFont) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


def make_iam_fixture(
    out: str | Path,
    forms: int = 6,
    seed: int = 0,
    scale: float = 1.0,
    lines_per_form: tuple[int, int] = (3, 6),
    single_forms_dir: bool = False,
    overwrite: bool = False,
    held_out_fonts: Sequence[str] = (),
    held_out_texts: bool = False,
) -> FixtureInfo:
    """Write a fake IAM with `forms` forms under `out` and return what was written.

    scale: page resolution relative to IAM's ~300 dpi (1.0 = 2479 x 3542 px pages; tests may
    use less). held_out_fonts: fonts that write only the validation and test forms (of both
    split lists), so that held-out writers are new hands, as in IAM's writer-independent
    task; by default every form's font is drawn from all fonts but the synthetic dataset's
    validation writers. held_out_texts: validation and test forms (Aachen lists) copy
    sentences of the corpus's validation and test parts, never a training form's text
    (by default all forms copy training sentences, and with enough forms every held-out
    text has been seen in training). If `out` already holds a fixture made with the same arguments it is
    reused.
    """
    out = Path(out)
    params = {"forms": forms, "seed": seed, "scale": scale, "lines_per_form": list(lines_per_form),
              "single_forms_dir": single_forms_dir, "held_out_fonts": list(held_out_fonts),
              "held_out_texts": held_out_texts}  # fmt: skip
    marker = out / "fixture-params.json"
    if not overwrite and marker.is_file() and json.loads(marker.read_text()) == params:
        return FixtureInfo.load(out)
    if forms < 3:
        raise ValueError(f"need at least 3 forms (train, validation, test), got {forms}")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    rng = np.random.default_rng(seed)
    unknown = sorted(set(held_out_fonts) - set(WRITERS))
    if unknown:
        raise ValueError(f"held_out_fonts: unknown fonts {unknown}; choose from {list(WRITERS)}")
    if held_out_fonts and set(held_out_fonts) >= set(WRITERS):
        raise ValueError("held_out_fonts: leave at least one font for the training forms")
    excluded = set(held_out_fonts) or set(DEFAULT_VAL_WRITERS)
    renderer = HandwritingRenderer([w for w in WRITERS if w not in excluded], scale=scale)
    held_out = HandwritingRenderer(held_out_fonts, scale=scale) if held_out_fonts else renderer
    corpus = {split: load_corpus(split) for split in (("train", "val", "test")
                                                      if held_out_texts else ("train",))}  # fmt: skip
    font = ImageFont.load_default(size=max(8, round(38 * scale)))
    title_font = ImageFont.load_default(size=max(10, round(70 * scale)))
    page_w, page_h = round(PAGE_W * scale), round(PAGE_H * scale)
    aachen, official = _splits(forms)
    infos: list[FixtureForm] = []

    for i, form_id in enumerate(_form_ids(forms)):
        evaluated = aachen[i] != "train" or official[i] != "train"
        style = (held_out if evaluated else renderer).sample_writer_style(rng)
        n_lines = int(rng.integers(lines_per_form[0], lines_per_form[1], endpoint=True))
        text_split = aachen[i] if held_out_texts else "train"
        words = _passage(rng, corpus[text_split], 14 * n_lines)
        if i == 0:
            words = _FIRST_SENTENCE.split() + words
        wrap_width = rng.uniform(1700, 2000) * scale
        texts = renderer.wrap(words, wrap_width, style)[:n_lines]

        # The machine-printed part: what the writer was asked to copy.
        page = Image.new("L", (page_w, page_h), 255)
        draw = ImageDraw.Draw(page)
        draw.text((round(180 * scale), round(120 * scale)), "Sentence Database", fill=0,
                  font=title_font)  # fmt: skip
        draw.text((round(1900 * scale), round(140 * scale)), form_id.upper(), fill=0, font=font)
        y = round(420 * scale)
        printed = _printed_lines(" ".join(texts), round(2100 * scale), font)
        for text in printed:
            draw.text((round(180 * scale), y), text, fill=20, font=font)
            y += round(58 * scale)
        header_bottom = y + round(40 * scale)
        draw.line(
            [(0, header_bottom), (page_w, header_bottom)], fill=0, width=max(1, round(4 * scale))
        )

        # The handwritten part: IAM-tokenised words rendered in one hand, laid out as lines.
        line_images, line_tokens, line_boxes = [], [], []
        for text in texts:
            tokens, spaces = [], []
            for word in text.split():
                for k, token in enumerate(_iam_tokens(word)):
                    tokens.append(token)
                    spaces.append(k == 0 and bool(tokens[:-1]))
            images = [renderer.render_word(t, rng, style) for t in tokens]
            image, boxes, base = compose_line(images, tokens, rng, margin=0.3, spaces=spaces)
            line_images.append((image, base))
            line_tokens.append(tokens)
            line_boxes.append(boxes)
        block, positions = compose_page(
            line_images, rng, style.x_height, margin=0, pitch=style.line_pitch * 1.15
        )
        top = header_bottom + round(rng.uniform(90, 140) * scale)
        left = round(rng.uniform(140, 260) * scale)
        block = block[: page_h - top - round(250 * scale), : page_w - left]
        region = np.asarray(page)[top : top + block.shape[0], left : left + block.shape[1]]
        page.paste(Image.fromarray(np.minimum(region, block)), (left, top))
        bottom = top + block.shape[0] + round(60 * scale)
        draw.line([(0, bottom), (page_w, bottom)], fill=0, width=max(1, round(4 * scale)))
        draw.text((round(180 * scale), bottom + round(60 * scale)), "Name:", fill=0, font=font)
        page_arr = np.asarray(page)

        lines = []
        for k, (text, tokens, boxes) in enumerate(zip(texts, line_tokens, line_boxes, strict=True)):
            lx, ly = positions[k]
            line_id = f"{form_id}-{k:02d}"
            err = rng.random() < 0.2 or (i == 0 and k == 1)
            bad_words = (
                set(rng.choice(len(tokens), size=min(2, len(tokens)), replace=False))
                if err
                else set()
            )
            fwords = []
            for j, (token, (x0, y0, x1, y1)) in enumerate(zip(tokens, boxes, strict=True)):
                x0, y0 = max(0, x0 + lx + left), max(0, y0 + ly + top)
                x1, y1 = min(page_w, x1 + lx + left), min(page_h, y1 + ly + top)
                fwords.append(FixtureWord(f"{line_id}-{j:02d}", token,
                                          "err" if j in bad_words else "ok",
                                          (x0, y0, x1 - x0, y1 - y0)))  # fmt: skip
            xs = [w.box[0] for w in fwords] + [w.box[0] + w.box[2] for w in fwords]
            ys = [w.box[1] for w in fwords] + [w.box[1] + w.box[3] for w in fwords]
            box = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
            lines.append(FixtureLine(line_id, text, "err" if err else "ok", box, fwords))

        form = FixtureForm(form_id, _writer_of(i), aachen[i], official[i], header_bottom, lines,
                           font=style.writer)  # fmt: skip
        infos.append(form)
        _write_images(out, form, page, page_arr, single_forms_dir)
        _write_xml(out, form, printed, page_w, page_h, rng)

    info = FixtureInfo(str(out), infos, scale)
    _write_ascii(out, infos, rng)
    _write_split_lists(out, infos)
    info.save()
    marker.write_text(json.dumps(params))
    return info


def forms_dir(form_id: str, single: bool = False) -> str:
    """IAM's form image folder for a form id: formsA-D, formsE-H or formsI-Z."""
    if single:
        return "forms"
    c = form_id[0].upper()
    return "formsA-D" if c <= "D" else "formsE-H" if c <= "H" else "formsI-Z"


def _write_images(out: Path, form: FixtureForm, page: Image.Image, arr: np.ndarray,
                  single: bool) -> None:  # fmt: skip
    folder = out / forms_dir(form.id, single)
    folder.mkdir(exist_ok=True)
    page.save(folder / f"{form.id}.png")
    group = form.id.split("-")[0]
    for line in form.lines:
        x, y, w, h = line.box
        (out / "lines" / group / form.id).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr[y : y + h, x : x + w]).save(
            out / "lines" / group / form.id / f"{line.id}.png"
        )
        (out / "words" / group / form.id).mkdir(parents=True, exist_ok=True)
        for word in line.words:
            x, y, w, h = word.box
            Image.fromarray(arr[y : y + h, x : x + w]).save(
                out / "words" / group / form.id / f"{word.id}.png"
            )


def _write_xml(out: Path, form: FixtureForm, printed: list[str], width: int, height: int,
               rng: np.random.Generator) -> None:  # fmt: skip
    rows = [
        '<?xml version="1.0" encoding="ISO-8859-1"?>',
        f'<form created="2002-01-14" height="{height}" id="{form.id}" modified="2002-07-17" '
        f'width="{width}" writer-id="{form.writer}">',
        "<machine-printed-part>",
        *(f'<machine-print-line text="{_xml_escape(t)}"/>' for t in printed),
        "</machine-printed-part>",
        "<handwritten-part>",
    ]
    for line in form.lines:
        x, y, w, h = line.box
        rows.append(
            f'<line asx="0" asy="{y}" dsx="0" dsy="{y + h}" id="{line.id}" '
            f'segmentation="{line.segmentation}" text="{_xml_escape(line.text)}" '
            f'threshold="{int(rng.integers(150, 190))}">'
        )
        for word in line.words:
            wx, wy, ww, wh = word.box
            rows += [
                f'<word id="{word.id}" tag="{_xml_escape(_tag(word.text))}" text="{_xml_escape(word.text)}">',
                f'<cmp height="{wh}" width="{ww}" x="{wx}" y="{wy}"/>',
                "</word>",
            ]
        rows.append("</line>")
    rows += ["</handwritten-part>", "</form>", ""]
    (out / "xml").mkdir(exist_ok=True)
    (out / "xml" / f"{form.id}.xml").write_bytes("\n".join(rows).encode("iso-8859-1"))


def _tag(token: str) -> str:
    # IAM tags punctuation with itself and words with LOB tags; any non-space tag will do.
    return token if not token[0].isalnum() else "NN"


def _write_ascii(out: Path, forms: list[FixtureForm], rng: np.random.Generator) -> None:
    (out / "ascii").mkdir(exist_ok=True)
    form_rows, line_rows, word_rows = [], [], []
    for form in forms:
        words = [w for line in form.lines for w in line.words]
        # as IAM counts: lines segmented correctly, and the words in those lines
        ok_lines = sum(line.segmentation == "ok" for line in form.lines)
        ok_words = sum(len(line.words) for line in form.lines if line.segmentation == "ok")
        seg = "all" if ok_lines == len(form.lines) else "prt"
        n_sentences = max(1, sum(line.text.count(".") for line in form.lines))
        form_rows.append(f"{form.id} {form.writer} {n_sentences} {seg} {len(form.lines)} "
                         f"{ok_lines} {len(words)} {ok_words}")  # fmt: skip
        for line in form.lines:
            gray = int(rng.integers(150, 190))
            tokens = "|".join(w.text for w in line.words)
            line_rows.append(f"{line.id} {line.segmentation} {gray} {len(line.words)} "
                             f"{' '.join(map(str, line.box))} {tokens}")  # fmt: skip
            for w in line.words:
                # nine fields as in IAM's records: no component count (the header has one)
                word_rows.append(f"{w.id} {w.segmentation} {gray} "
                                 f"{' '.join(map(str, w.box))} {_tag(w.text)} {w.text}")  # fmt: skip
    for name, header, rows in (("forms", _FORMS_HEADER, form_rows),
                               ("lines", _LINES_HEADER, line_rows),
                               ("words", _WORDS_HEADER, word_rows)):  # fmt: skip
        (out / "ascii" / f"{name}.txt").write_text(header + "\n".join(rows) + "\n")


def _write_split_lists(out: Path, forms: list[FixtureForm]) -> None:
    aachen = out / AACHEN_DIR
    aachen.mkdir(parents=True)
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        ids = [f.id for f in forms if f.aachen == split]
        (aachen / f"{name}.uttlist").write_text("\n".join(ids) + "\n")
    official = out / OFFICIAL_DIR
    official.mkdir()
    val = [f for f in forms if f.official == "val"]
    groups = {"trainset": [f for f in forms if f.official == "train"],
              "validationset1": val[: len(val) // 2 or 1], "validationset2": val[len(val) // 2 or 1 :],
              "testset": [f for f in forms if f.official == "test"]}  # fmt: skip
    for name, group in groups.items():
        ids = [line.id for f in group for line in f.lines]
        (official / f"{name}.txt").write_text("\n".join(ids) + "\n")


# ----------------------------------------------------------------------------- broken input


def inject_broken(root: str | Path) -> dict[str, str]:
    """Damage a fixture in known places; returns {what: id} (also saved in fixture.json).

    In training forms (both the aachen and the official lists): a missing line image, a
    zero-byte word image, a form image that is not a PNG, a truncated line image (a valid
    header, so only decoding finds it), a malformed record in lines.txt and one in words.txt,
    and a garbage record in lines.txt; in the split lists an unknown form id (aachen
    validation) and an unknown line id (official test set).
    """
    root = Path(root)
    info = FixtureInfo.load(root)
    train = [f for f in info.forms if f.aachen == "train" and f.official == "train"]
    if len(train) < 3:
        raise ValueError("inject_broken needs a fixture with at least 3 training forms (6+ forms)")

    def ok_line(form: FixtureForm, skip: int = 0) -> FixtureLine:
        return [ln for ln in form.lines if ln.segmentation == "ok"][skip]

    def path(kind: str, item_id: str) -> Path:
        form_id = "-".join(item_id.split("-")[:2])
        return root / kind / form_id.split("-")[0] / form_id / f"{item_id}.png"

    broken = {}
    line = ok_line(train[0])
    path("lines", line.id).unlink()
    broken["missing_line_image"] = line.id
    word = ok_line(train[1]).words[0]
    path("words", word.id).write_bytes(b"")
    broken["zero_byte_word_image"] = word.id
    form = train[2]
    single = (root / "forms").is_dir()
    (root / forms_dir(form.id, single) / f"{form.id}.png").write_bytes(b"this is not an image")
    broken["unreadable_form_image"] = form.id
    line = ok_line(train[1])
    data = path("lines", line.id).read_bytes()
    path("lines", line.id).write_bytes(data[: len(data) // 2])
    broken["truncated_line_image"] = line.id

    lines_txt = root / "ascii" / "lines.txt"
    bad_line = ok_line(train[2])
    rows = lines_txt.read_text().splitlines()
    rows = [
        f"{bad_line.id} ok 154 x7 broken" if r.startswith(bad_line.id + " ") else r for r in rows
    ]
    rows.append("garbage-without-fields")
    lines_txt.write_text("\n".join(rows) + "\n")
    broken["malformed_lines_record"] = bad_line.id
    broken["garbage_lines_record"] = "garbage-without-fields"
    words_txt = root / "ascii" / "words.txt"
    bad_word = ok_line(train[0]).words[1]
    rows = words_txt.read_text().splitlines()
    rows = [f"{bad_word.id} ok 154" if r.startswith(bad_word.id + " ") else r for r in rows]
    words_txt.write_text("\n".join(rows) + "\n")
    broken["malformed_words_record"] = bad_word.id

    with open(root / AACHEN_DIR / "validation.uttlist", "a") as f:
        f.write("z99-999\n")
    broken["unknown_aachen_form"] = "z99-999"
    with open(root / OFFICIAL_DIR / "testset.txt", "a") as f:
        f.write("z99-999-00\n")
    broken["unknown_official_line"] = "z99-999-00"
    info.broken = broken
    info.save()
    return broken
