"""IAM reader on the generated fixture: formats, splits, labels, crops, broken input, errors."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fphtr.config import ConfigError, validate
from fphtr.data.augment import Augmenter
from fphtr.data.datamodule import build_datamodule
from fphtr.data.iam import IAM, IAMError, build_iam, unseen_characters
from fphtr.predict import ImageFiles

from ..conftest import TINY, compose_train
from .conftest import aachen_dir

FORMATS = ("word", "line", "form")


def expected_count(forms, kind: str, keep_err_lines=True, keep_err_words=False) -> int:
    if kind == "form":
        return len(forms)
    lines = [ln for f in forms for ln in f.lines]
    if kind == "line":
        return sum(keep_err_lines or ln.segmentation == "ok" for ln in lines)
    return sum(keep_err_words or w.segmentation == "ok" for ln in lines for w in ln.words)


@pytest.fixture(scope="module")
def indexes(iam_fixture) -> dict[str, IAM]:
    root = iam_fixture.root
    return {
        "aachen": IAM(root, split="aachen", split_dir=aachen_dir(iam_fixture)),
        "official": IAM(root, split="official"),
        "writers": IAM(root, split="writers", writers_seed=0),
    }


@pytest.mark.parametrize("kind", FORMATS)
@pytest.mark.parametrize("split_kind", ["aachen", "official"])
def test_counts_of_each_format_and_list_split(indexes, iam_fixture, split_kind, kind):
    iam = indexes[split_kind]
    for split in ("train", "val", "test"):
        forms = iam_fixture.split_forms(split_kind, split)
        items, skipped = iam.items(split, kind)
        assert len(items) == expected_count(forms, kind), (split, skipped)
        assert {it.form for it in items} == {f.id for f in forms}
        # only the documented policy skips anything in a clean copy
        assert set(skipped) <= {"segmentation err (dataset.keep_err_words=false)"}
    assert [len(iam.forms_of(s)) for s in ("train", "val", "test")] == {
        "aachen": [4, 1, 1], "official": [3, 2, 1]
    }[split_kind]  # fmt: skip


def test_writer_split_is_writer_disjoint_complete_and_seeded(indexes, iam_fixture):
    iam = indexes["writers"]
    writers = {s: {f.writer for f in iam.forms_of(s)} for s in ("train", "val", "test")}
    assert all(writers.values()), writers  # every split has a writer
    assert not (writers["train"] & writers["val"] or writers["train"] & writers["test"]
                or writers["val"] & writers["test"])  # fmt: skip
    assert sorted(iam.split_of) == sorted(f.id for f in iam_fixture.forms)
    for kind in FORMATS:  # counts follow the forms each split got
        for split in ("train", "val", "test"):
            forms = [f for f in iam_fixture.forms if iam.split_of[f.id] == split]
            assert len(iam.items(split, kind)[0]) == expected_count(forms, kind)
    again = IAM(iam_fixture.root, split="writers", writers_seed=0)
    assert again.split_of == iam.split_of


def test_auto_split_prefers_aachen_then_official_then_writers(iam_fixture, tmp_path, caplog):
    root = iam_fixture.root
    assert IAM(root, split_dir=aachen_dir(iam_fixture)).split_kind == "aachen"
    assert IAM(root).split_kind == "official"  # the task lists are under the root
    with caplog.at_level(logging.WARNING):
        assert IAM(root, split_dir=tmp_path).split_kind == "writers"  # no lists anywhere
    assert "dataset.split=auto -> writers" in caplog.text and "split_dir" in caplog.text


def test_labels_are_unescaped_and_forms_join_lines(indexes, iam_fixture):
    xml = (Path(iam_fixture.root) / "xml" / "a01-000u.xml").read_text(encoding="latin-1")
    assert "&quot;" in xml and "&apos;" in xml and "&amp;" in xml
    iam = indexes["aachen"]
    first = iam.forms["a01-000u"].lines[0]
    assert first.text.startswith("He said, \"Fish & chips aren't bad")
    assert first.text == iam_fixture.forms[0].lines[0].text
    forms = {it.id: it for it in iam.items("train", "form")[0]}
    form = iam.forms["a01-000u"]
    assert forms["a01-000u"].text == "\n".join(ln.text for ln in form.lines)
    assert form.writer == iam_fixture.forms[0].writer


def test_form_image_is_the_handwritten_part_only(indexes, iam_fixture):
    iam = indexes["aachen"]
    ds = iam.dataset("train", "form", 0.5, 4000, 4000)
    item, sample = ds.items[0], ds[0]
    info = next(f for f in iam_fixture.forms if f.id == item.id)
    x0, y0, x1, y1 = item.crop
    assert y0 > info.header_bottom  # the machine-printed part is cut away
    words = [w.box for ln in info.lines for w in ln.words]
    assert x0 <= min(b[0] for b in words) and y1 >= max(b[1] + b[3] for b in words)
    assert sample.image.shape == (round((y1 - y0) * 0.5), round((x1 - x0) * 0.5))
    assert np.median(sample.image[:3]) > 240 and sample.image.min() < 100  # margin, then ink


def test_segmentation_err_policy(iam_fixture):
    forms = iam_fixture.split_forms("aachen", "train")
    n_err = sum(ln.segmentation == "err" for f in forms for ln in f.lines)
    assert n_err >= 1
    strict = IAM(iam_fixture.root, split="aachen", split_dir=aachen_dir(iam_fixture),
                 keep_err_lines=False, keep_err_words=True)  # fmt: skip
    lines, skipped = strict.items("train", "line")
    assert len(lines) == expected_count(forms, "line", keep_err_lines=False)
    assert skipped["segmentation err (dataset.keep_err_lines=false)"] == n_err
    words, _ = strict.items("train", "word")
    assert len(words) == expected_count(forms, "word", keep_err_words=True)


def test_single_forms_folder_is_accepted(iam_fixture, tmp_path):
    root = tmp_path / "iam"
    shutil.copytree(iam_fixture.root, root, ignore=shutil.ignore_patterns("words", "lines"))
    (root / "forms").mkdir()
    for png in root.glob("forms?-?/*.png"):
        png.rename(root / "forms" / png.name)
    iam = IAM(root, split="official")
    assert len(iam.items("train", "form")[0]) == 3


def test_broken_input_is_skipped_counted_and_summarised(broken_fixture, caplog):
    b = broken_fixture.broken
    with caplog.at_level(logging.INFO, logger="fphtr.data.iam"):
        iam = IAM(broken_fixture.root, split="aachen", split_dir=aachen_dir(broken_fixture))
        datasets = {(s, k): iam.dataset(s, k, 0.5, 4000, 4000)
                    for k in FORMATS for s in ("train", "val", "test")}  # fmt: skip
    clean = {s: broken_fixture.split_forms("aachen", s) for s in ("train", "val", "test")}
    train = {k: datasets["train", k] for k in FORMATS}
    assert len(train["line"]) == expected_count(clean["train"], "line") - 2
    assert train["line"].skipped["missing image"] == 1
    assert train["line"].skipped["malformed record in ascii/lines.txt"] == 1
    assert len(train["word"]) == expected_count(clean["train"], "word") - 2
    assert train["word"].skipped["empty image file (0 bytes)"] == 1
    assert train["word"].skipped["malformed record in ascii/words.txt"] == 1
    assert len(train["form"]) == 3 and train["form"].skipped["unreadable image (not a PNG)"] == 1
    ids = {k: {it.id for it in train[k].items} for k in FORMATS}
    assert (
        b["missing_line_image"] not in ids["line"]
        and b["malformed_lines_record"] not in ids["line"]
    )
    assert (
        b["zero_byte_word_image"] not in ids["word"]
        and b["unreadable_form_image"] not in ids["form"]
    )
    for k in FORMATS:  # the unknown form id of the validation list, in every format
        assert datasets["val", k].skipped["unknown id in split list"] == 1
    assert iam.problems["malformed record in ascii/lines.txt"] == 1  # the garbage record
    # one summary line per split and format, with counts and reasons
    summaries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("IAM train:")]
    assert len(summaries) == 3
    assert any("skipped 2: " in s and "1 missing image" in s for s in summaries)
    assert "index problems 1: 1 malformed record in ascii/lines.txt" in caplog.text

    # a truncated PNG passes the cheap checks; decoding it warns and serves the next sample
    ds = train["line"]
    k = next(i for i, it in enumerate(ds.items) if it.id == b["truncated_line_image"])
    with caplog.at_level(logging.WARNING):
        sample = ds[k]
    assert sample.id == ds.items[(k + 1) % len(ds)].id
    assert b["truncated_line_image"] in caplog.text and "using the next sample" in caplog.text
    assert "1 unreadable samples replaced so far" in caplog.text and ds.replaced == 1

    official = IAM(broken_fixture.root, split="official")
    assert official.items("test", "line")[1]["unknown id in split list"] == 1


def test_unusable_roots_say_what_is_expected_where(iam_fixture, tmp_path):
    with pytest.raises(IAMError, match="no such directory") as e:
        IAM(tmp_path / "nowhere")
    assert "xml/a01-000u.xml" in str(e.value) and "formsA-D" in str(e.value)
    with pytest.raises(IAMError, match=r"expected .*/xml/<form id>\.xml") as e:
        IAM(tmp_path)
    parent = tmp_path / "downloads"
    shutil.copytree(Path(iam_fixture.root) / "xml", parent / "IAM" / "xml")
    with pytest.raises(IAMError, match="Did you mean dataset.root=.*IAM"):
        IAM(parent)
    iam = IAM(parent / "IAM", split="writers")  # xml only: forms, lines, words missing
    for kind, folder in (("line", "lines/"), ("word", "words/"), ("form", "formsA-D/")):
        with pytest.raises(IAMError, match=folder):
            iam.items("train", kind)
    with pytest.raises(IAMError, match="split_dir"):
        IAM(iam_fixture.root, split="aachen")
    with pytest.raises(IAMError, match="missing split list"):
        IAM(iam_fixture.root, split="aachen", split_dir=tmp_path)


def iam_config(root, overrides=(), tmp_path=None) -> dict:
    cfg = compose_train([*TINY, "dataset=iam", f"dataset.root={root}", *overrides])
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config["dataset"]["cache_dir"] = str(tmp_path / "cache") if tmp_path else None
    return config


def test_config_checks_and_missing_root(tmp_path):
    for override in ("dataset.writers_fractions=[0,1,1]", "dataset.form_margin=-1",
                     "dataset.split=aachen", "dataset.train_size=0"):  # fmt: skip
        cfg = compose_train(["dataset=iam", "dataset.root=/x", override])
        with pytest.raises(ConfigError, match=r"dataset\."):
            validate(cfg)
    config = iam_config("/x")
    config["dataset"]["root"] = "???"
    with pytest.raises(IAMError, match="dataset.root is not set"):
        build_iam(config)


def test_vocabulary_comes_from_training_and_unseen_characters_are_reported(
    iam_fixture, tmp_path, caplog
):
    config = iam_config(iam_fixture.root, ["dataset.split=official", "dataset.train_size=null",
                                           "dataset.val_size=null"], tmp_path)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="fphtr.data.iam"):
        splits, chars, stitched = build_iam(config)
    assert stitched is None
    assert set(chars) == set("".join(splits["train"].texts()))
    unseen, n = unseen_characters(chars, splits["val"].texts())
    assert unseen  # this fixture's validation text has letters the training text lacks
    assert f"IAM val: {len(unseen)} characters never seen in training" in caplog.text
    assert unseen_characters("ab", ["abc", "xa", "ab"]) == ({"c": 1, "x": 1}, 2)


def test_size_limits_take_a_seeded_subset(iam_fixture, tmp_path):
    config = iam_config(
        iam_fixture.root, ["dataset.split=official", "dataset.train_size=5"], tmp_path
    )
    first = [it.id for it in build_iam(config)[0]["train"].items]
    assert len(first) == 5 and first == [it.id for it in build_iam(config)[0]["train"].items]


@pytest.mark.parametrize("kind", ["word", "line", "form"])
def test_val_test_and_predict_tensors_equal_the_training_path_s(iam_fixture, tmp_path, kind):
    """One image file, four ways in: the training path (augmentation off), the real
    validation and test datasets and fphtr-predict's loading give the same tensor. The
    training path is a second copy of the index in which every form is a training form,
    with its own image cache, so nothing is shared but the image files."""
    root = iam_fixture.root
    all_train = tmp_path / "all-train"
    all_train.mkdir()
    (all_train / "train.uttlist").write_text("\n".join(f.id for f in iam_fixture.forms))
    for name in ("validation.uttlist", "test.uttlist"):
        (all_train / name).write_text("")
    fmt = [f"data_format={kind}", "dataset.split=aachen"]
    config = iam_config(root, [*fmt, f"dataset.split_dir={all_train}",
                               "dataset.train_size=null"], tmp_path / "t")  # fmt: skip
    train = build_datamodule(config, splits=("train",)).train
    assert train.augment is None and train.synthetic is None  # the plain training stream
    training = {train[i][2]: train[i][0] for i in range(len(train))}
    config = iam_config(root, [*fmt, f"dataset.split_dir={aachen_dir(iam_fixture)}"],
                        tmp_path / "e")  # fmt: skip
    dm = build_datamodule(config, splits=("val", "test"))
    fmt = config["data_format"]
    compared = 0
    for split in ("val", "test"):
        ds = dm.evaluation[split]
        for i in range(len(ds)):
            image, _, sample_id = ds[i]
            assert torch.equal(image, training[sample_id]), (split, sample_id)
            compared += 1
            if kind == "form":  # predict reads the whole scan; a form sample is its crop
                continue
            item = ds.base.items[i]
            files = ImageFiles([item.path], fmt["scale"], fmt["max_height"], fmt["max_width"])
            assert torch.equal(files[0][1], image), (split, sample_id, "fphtr-predict")
    assert compared >= 2


def test_a_rotated_line_keeps_its_text_scale_and_paper_white_corners(iam_fixture):
    iam = IAM(iam_fixture.root, split="official")
    line = iam.dataset("train", "line", 0.5, 4000, 4000)[0].image
    rotate = Augmenter(rotate_limit=3.0, rotate_p=1.0)
    for seed in range(4):
        out = rotate(line, seed=seed)
        assert out.shape[1] >= 0.97 * line.shape[1] and out.shape[0] >= line.shape[0]
        # interpolation blurs strokes but keeps the ink mass; shrinking would lose it
        mass_before = (255.0 - line).sum()
        mass_after = (255.0 - out).sum()
        assert 0.9 < mass_after / mass_before < 1.1
        # the canvas grows into the corners: filled with paper white, not ink
        grey = rotate(np.full_like(line, 128), seed=seed)
        if grey.shape != line.shape:  # rotated by a visible angle
            assert grey[0, 0] == grey[0, -1] == grey[-1, 0] == grey[-1, -1] == 255
            assert grey[grey.shape[0] // 2, grey.shape[1] // 2] == 128


def test_an_unreadable_xml_skips_its_form_and_is_reported(iam_fixture, tmp_path):
    root = tmp_path / "iam"
    shutil.copytree(iam_fixture.root, root, ignore=shutil.ignore_patterns("words", "lines"))
    (root / "xml" / "b02-000.xml").write_text("<form id='b02-000'><handwritten-part>")
    iam = IAM(root, split="aachen", split_dir=root / "splits" / "aachen")
    assert "b02-000" not in iam.forms and iam.problems["unreadable xml"] == 1
    items, skipped = iam.items("train", "form")
    assert len(items) == 3 and skipped["unreadable xml"] == 1


def _records(path: Path) -> list[list[str]]:
    return [r.split() for r in path.read_text().splitlines() if r and not r.startswith("#")]


def test_fixture_ascii_records_have_iam_s_fields(iam_fixture):
    """IAM's records (ascii.tgz), record for record:
    forms.txt `a01-000u 000 2 prt 7 5 52 36`: id, writer, sentences, all/prt, lines, lines
      segmented correctly, words, words in correctly segmented lines;
    lines.txt `a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from`:
      id, ok/err, grey level, components, x, y, w, h, transcription with | between words;
    words.txt `a01-000u-00-00 ok 154 408 768 27 51 AT A`: id, ok/err, grey level, x, y, w,
      h, tag, transcription: nine fields, no component count (its header says there is one)."""
    ascii_dir = Path(iam_fixture.root) / "ascii"
    forms = {f.id: f for f in iam_fixture.forms}
    lines = {ln.id: ln for f in iam_fixture.forms for ln in f.lines}
    words = {w.id: w for ln in lines.values() for w in ln.words}
    for r in _records(ascii_dir / "forms.txt"):
        form = forms[r[0]]
        ok_lines = [ln for ln in form.lines if ln.segmentation == "ok"]
        assert len(r) == 8 and r[1] == form.writer
        assert r[3] == ("all" if len(ok_lines) == len(form.lines) else "prt")
        assert [int(v) for v in r[4:]] == [len(form.lines), len(ok_lines),
                                           sum(len(ln.words) for ln in form.lines),
                                           sum(len(ln.words) for ln in ok_lines)]  # fmt: skip
    for r in _records(ascii_dir / "lines.txt"):
        line = lines[r[0]]
        assert len(r) == 9 and r[1] == line.segmentation and r[2].isdigit() and r[3].isdigit()
        assert tuple(int(v) for v in r[4:8]) == tuple(line.box)
        assert r[8] == "|".join(w.text for w in line.words)
    records = _records(ascii_dir / "words.txt")
    assert len(records) == len(words)
    for r in records:
        word = words[r[0]]
        assert len(r) == 9 and r[1] == word.segmentation and r[2].isdigit()
        assert tuple(int(v) for v in r[3:7]) == tuple(word.box) and not r[7].isdigit()
        assert r[8] == word.text


@pytest.mark.parametrize("layout", ["iam", "with component count"])
def test_words_txt_records_are_read_as_iam_ships_them(iam_fixture, tmp_path, layout):
    """Nine-field words.txt records (IAM's) and ten-field ones (with the component count its
    header advertises) both give every word, its segmentation flag and, without XML
    boxes, its box."""
    root = tmp_path / "iam"
    shutil.copytree(iam_fixture.root, root, ignore=shutil.ignore_patterns("lines", "forms?-?"))
    words_txt = root / "ascii" / "words.txt"
    flipped = {}
    rows = []
    for k, r in enumerate(_records(words_txt)):
        if k % 3 == 0:  # flags from words.txt, not from the XML line
            r[1] = "ok" if r[1] == "err" else "err"
            flipped[r[0]] = r[1]
        if layout != "iam":
            r = [*r[:3], "1", *r[3:]]
        rows.append(" ".join(r))
    words_txt.write_text("\n".join(rows) + "\n")
    for xml in (root / "xml").glob("*.xml"):  # no <cmp> boxes: they come from words.txt
        text = xml.read_text(encoding="latin-1")
        xml.write_text(re.sub(r"<cmp [^>]*/>", "", text), encoding="latin-1")
    iam = IAM(root, split="aachen", split_dir=root / "splits" / "aachen")
    assert not iam.problems and not iam.bad_items
    expected = {w.id: w for f in iam_fixture.forms for ln in f.lines for w in ln.words}
    got = {w.id: w for f in iam.forms.values() for ln in f.lines for w in ln.words}
    assert got.keys() == expected.keys()
    for word_id, w in got.items():
        x, y, bw, bh = expected[word_id].box
        assert w.box == (x, y, x + bw, y + bh)
        assert w.segmentation == flipped.get(word_id, expected[word_id].segmentation)
    items, skipped = iam.items("train", "word")
    n_ok = sum(w.segmentation == "ok" for f in iam.forms_of("train") for ln in f.lines
               for w in ln.words)  # fmt: skip
    assert len(items) == n_ok and set(skipped) == {
        "segmentation err (dataset.keep_err_words=false)"
    }


def test_page_curriculum_cuts_forms_below_their_first_lines(indexes):
    ds = indexes["aachen"].dataset("train", "form", 0.5, 4000, 4000)
    k = max(range(len(ds)), key=lambda i: len(ds.items[i].line_spans))
    item, whole = ds.items[k], ds[k]
    assert ds.max_page_lines == len(item.line_spans) >= 3
    ds.set_max_lines(2)
    cut = ds[k]
    assert cut.text == "\n".join(whole.text.split("\n")[:2])
    assert cut.image.shape[1] == whole.image.shape[1]  # the form's width, cut at the bottom
    top_of_third = (item.line_spans[2][0] - item.crop[1]) * 0.5
    assert cut.image.shape[0] <= round(top_of_third) < whole.image.shape[0]
    assert np.array_equal(cut.image, whole.image[: cut.image.shape[0]])
    ds.set_max_lines(len(item.line_spans))
    assert ds[k].text == whole.text
    ds.set_max_lines(None)
    assert np.array_equal(ds[k].image, whole.image)


def test_the_curriculum_reaches_the_forms_most_lines_on_iam(indexes):
    from types import SimpleNamespace

    from fphtr.callbacks import PageCurriculum
    from fphtr.data.datamodule import PreparedDataset

    ds = indexes["aachen"].dataset("train", "form", 0.5, 4000, 4000)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train=PreparedDataset(ds, 4000, 4000)))
    curriculum = PageCurriculum(min_lines=1, max_lines=None, lines_every=10)
    assert curriculum._apply(trainer, 0) == (1, 0.0)
    assert all(s.text.count("\n") == 0 for s in (ds[i] for i in range(len(ds))))
    assert curriculum._apply(trainer, 10_000) == (ds.max_page_lines, 0.0)
    assert [s.text for s in (ds[i] for i in range(len(ds)))] == ds.texts()


def test_fixture_held_out_fonts_and_texts(tmp_path):
    from fphtr.data.iam_fixture import make_iam_fixture
    from fphtr.data.synthetic import load_corpus

    info = make_iam_fixture(tmp_path / "fx", forms=8, scale=0.25, lines_per_form=(1, 2),
                            held_out_fonts=("kalam",), held_out_texts=True)  # fmt: skip
    corpus = {s: "".join("".join(load_corpus(s)).split()) for s in ("train", "val", "test")}
    for form in info.forms:
        held_out = form.aachen != "train" or form.official != "train"
        assert (form.font == "kalam") == held_out
        start = "".join(form.lines[0].text.split())
        if form.aachen != "train":
            assert start in corpus[form.aachen] and start not in corpus["train"]
    with pytest.raises(ValueError, match="unknown fonts"):
        make_iam_fixture(tmp_path / "bad", forms=3, held_out_fonts=("comic-sans",))
