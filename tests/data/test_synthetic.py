import numpy as np
import pytest
from PIL import Image

from fphtr.data.grid import save_sample_grid
from fphtr.data.sample import Sample
from fphtr.data.synthetic import (
    DEFAULT_VAL_WRITERS,
    WRITERS,
    FontNotFoundError,
    HandwritingRenderer,
    SyntheticHandwriting,
    charset,
    font_files,
    load_corpus,
)


def _writer_of(ds: SyntheticHandwriting, i: int) -> str:
    # The style is the first draw of the sample's generator (see __getitem__).
    rng = np.random.default_rng([ds.seed, ("train", "val", "test").index(ds.split), 0, i])
    return ds.renderer.sample_writer_style(rng).writer


def _assert_image(img: np.ndarray) -> None:
    assert img.dtype == np.uint8 and img.ndim == 2
    assert min(img.shape) >= 5
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    assert np.median(border) > 200  # paper white around the text
    assert (img < 128).sum() >= 10  # some ink
    assert img.min() < 128  # dark enough to read


def test_fonts_of_all_writers_are_installed():
    found = [w for w in WRITERS if font_files(w)]
    assert len(found) >= 8
    assert all(p.suffix == ".ttf" and p.is_file() for w in found for p in font_files(w))


def test_unknown_writer_and_missing_font_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown writer"):
        font_files("comic-sans")
    import fphtr.data.synthetic as synthetic

    monkeypatch.setattr(synthetic.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FontNotFoundError, match="pip install fontpkg-kalam"):
        font_files("kalam")


def test_corpus_splits_are_disjoint_and_deterministic():
    splits = {s: load_corpus(s) for s in ("train", "val", "test")}
    assert len(splits["train"]) > 1000 and len(splits["val"]) > 20 and len(splits["test"]) > 20
    train, val, test = (set(splits[s]) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert load_corpus("val") == splits["val"]
    assert all(s.isascii() and s == " ".join(s.split()) for s in splits["train"])


def test_charset_covers_iam_punctuation():
    chars = charset()
    assert chars == "".join(sorted(set(chars)))
    assert "\n" in chars and " " in chars
    for c in ".,;:!?'\"-()&/#*+0123456789":
        assert c in chars
    assert set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") <= set(chars)


@pytest.mark.parametrize("kind", ["word", "line", "form"])
def test_deterministic_images_and_labels(kind):
    kw = {"max_lines": 3} if kind == "form" else {}
    a = SyntheticHandwriting("train", kind, 4, seed=5, **kw)
    b = SyntheticHandwriting("train", kind, 4, seed=5, **kw)
    for i in (0, 3):
        sa, sb = a[i], b[i]
        assert sa.text == sb.text and sa.id == sb.id == f"synthetic-train-0-{i}"
        assert np.array_equal(sa.image, sb.image)
        _assert_image(sa.image)
        assert set(sa.text) <= set(charset())
        assert sa.text == sa.text.strip() and "  " not in sa.text and sa.text


def test_epochs_differ_for_train_but_not_for_val():
    train = SyntheticHandwriting("train", "line", 8, seed=1)
    first = [train[i].text for i in range(8)]
    train.set_epoch(1)
    second = [train[i] for i in range(8)]
    assert first != [s.text for s in second]
    assert second[0].id == "synthetic-train-1-0"
    val = SyntheticHandwriting("val", "line", 4, seed=1)
    before = val[2]
    val.set_epoch(7)
    after = val[2]
    assert before.text == after.text and np.array_equal(before.image, after.image)
    assert after.id == "synthetic-val-0-2"


def test_seed_changes_samples():
    a = SyntheticHandwriting("train", "line", 4, seed=0)
    b = SyntheticHandwriting("train", "line", 4, seed=1)
    assert [a[i].text for i in range(4)] != [b[i].text for i in range(4)]


def test_train_and_val_writers_and_texts_are_disjoint():
    train = SyntheticHandwriting("train", "line", 24, seed=0)
    val = SyntheticHandwriting("val", "line", 24, seed=0)
    test = SyntheticHandwriting("test", "line", 8, seed=0)
    assert set(val.writers) == set(DEFAULT_VAL_WRITERS) == set(test.writers)
    assert not set(train.writers) & set(val.writers)
    assert {_writer_of(val, i) for i in range(24)} <= set(DEFAULT_VAL_WRITERS)
    assert not {_writer_of(train, i) for i in range(24)} & set(DEFAULT_VAL_WRITERS)
    # Every val line is drawn from val sentences only (a span of one or two of them).
    val_text = " ".join(load_corpus("val")) + " " + " ".join(load_corpus("val"))
    for i in range(8):
        assert val[i].text in val_text
    train_text = " ".join(load_corpus("train"))
    assert all(s not in train_text for s in load_corpus("val"))
    custom = SyntheticHandwriting("val", "word", 2, val_writers=["caveat", "zeyada", "delius"])
    assert custom.writers == ("caveat", "delius", "zeyada")
    # A chosen subset of training writers; validation writers can never be among them.
    chosen = SyntheticHandwriting("train", "line", 24, train_writers=["delius", "caveat"])
    assert chosen.writers == ("caveat", "delius")
    assert {_writer_of(chosen, i) for i in range(24)} == {"caveat", "delius"}
    assert SyntheticHandwriting("val", "line", 2, train_writers=["delius"]).writers == tuple(
        w for w in WRITERS if w in DEFAULT_VAL_WRITERS
    )
    with pytest.raises(ValueError, match="also val_writers"):
        SyntheticHandwriting("train", "line", 2, train_writers=["kalam"])


def test_form_lines_and_curriculum():
    ds = SyntheticHandwriting("train", "form", 6, seed=2, min_lines=2, max_lines=4)
    for i in range(3):
        lines = ds[i].text.split("\n")
        assert 2 <= len(lines) <= 4 and all(line and line == line.strip() for line in lines)
    ds.set_max_lines(1)  # clamped to min_lines
    assert ds.max_lines == 2
    assert all(len(ds[i].text.split("\n")) == 2 for i in range(3))
    exact = SyntheticHandwriting("train", "form", 2, seed=2, min_lines=5, max_lines=5)
    sample = exact[0]
    assert len(sample.text.split("\n")) == 5
    _assert_image(sample.image)
    assert sample.image.shape[1] > sample.image.shape[0] * 0.8  # a page block, not a strip


def test_word_and_line_lengths():
    words = SyntheticHandwriting("train", "word", 30, seed=3)
    assert all(" " not in words[i].text for i in range(30))
    lines = SyntheticHandwriting("train", "line", 10, seed=3, words_per_line=(4, 6))
    assert all(4 <= len(lines[i].text.split(" ")) <= 6 for i in range(10))


def test_lines_filling_a_width_vary_less_than_word_counts():
    # line_width wraps a passage at a width drawn from the range: widths cluster, so batches
    # pad less; word counts give lines from a few letters to several words.
    scale, n = 0.3, 60
    by_width = SyntheticHandwriting("train", "line", n, scale=scale, line_width=(550, 800))
    by_words = SyntheticHandwriting("train", "line", n, scale=scale, words_per_line=(2, 5))
    w_width = np.array([by_width[i].image.shape[1] for i in range(n)])
    w_words = np.array([by_words[i].image.shape[1] for i in range(n)])
    assert w_width.max() < 800 * scale * 1.25  # the wrap width plus margins and slant
    assert w_width.std() < 0.6 * w_words.std()
    texts = [by_width[i].text for i in range(n)]
    assert all(t == t.strip() and t for t in texts) and len(set(texts)) > n - 5
    with pytest.raises(ValueError, match="line_width"):
        SyntheticHandwriting("train", "line", 4, line_width=(800, 500))


def test_renderer_scale_and_crop():
    # Same seed, so the same hand is drawn at both scales.
    small = HandwritingRenderer(["delius"], 0.25).render_line(
        "Hello world", np.random.default_rng(0)
    )
    big = HandwritingRenderer(["delius"], 1.0).render_line("Hello world", np.random.default_rng(0))
    _assert_image(small)
    _assert_image(big)
    assert 3 < big.shape[1] / small.shape[1] < 5
    # Tight crop: the ink spans nearly the whole image (margins are small).
    ink_rows = np.flatnonzero((big < 128).any(axis=1))
    assert ink_rows[0] < 0.35 * big.shape[0] and ink_rows[-1] > 0.65 * big.shape[0]


def test_enum_kind_from_configs():
    from enum import Enum

    class Kind(Enum):
        line = "line"

    assert SyntheticHandwriting("train", Kind.line, 1).kind == "line"


def test_invalid_arguments():
    with pytest.raises(ValueError):
        SyntheticHandwriting("dev", "line", 4)
    with pytest.raises(ValueError):
        SyntheticHandwriting("train", "page", 4)
    with pytest.raises(ValueError):
        SyntheticHandwriting("train", "line", 4, val_writers=["nobody"])
    with pytest.raises(IndexError):
        SyntheticHandwriting("train", "word", 4)[4]


def test_save_sample_grid(tmp_path):
    samples = [
        SyntheticHandwriting("train", "word", 3, seed=0)[0],
        SyntheticHandwriting("val", "form", 1, seed=0, max_lines=2)[0],
        Sample(np.full((20, 3000), 255, np.uint8), "a very wide blank", "blank"),
    ]
    path = save_sample_grid(samples, tmp_path / "sub" / "grid.png", columns=2,
                            predictions=["x", "y\nz", ""])  # fmt: skip
    assert path.exists()
    with Image.open(path) as img:
        img.load()
        assert img.mode == "L" and img.width <= 2 * (720 + 400) and img.height > 60
        assert np.asarray(img).min() < 100  # text and ink were drawn
    with pytest.raises(ValueError):
        save_sample_grid(samples, tmp_path / "bad.png", predictions=["only one"])
