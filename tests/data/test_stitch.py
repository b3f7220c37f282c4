"""Stitched synthetic lines and pages: layout, training-words-only, a fresh stream per epoch."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from fphtr.data.datamodule import PreparedDataset, build_datamodule, build_datasets, collate
from fphtr.data.iam import IAM, NO_FRAME, stitch_layout
from fphtr.data.sample import Sample
from fphtr.data.stitch import Stitcher, compose_line, join_tokens, measure, whiten
from fphtr.data.synthetic import SyntheticHandwriting, charset
from fphtr.data.tokenizer import Tokenizer

from ..conftest import TINY, compose_train
from .test_iam import iam_config


@pytest.mark.parametrize(
    "tokens,text",
    [
        ("A MOVE to stop Mr. Gaitskell from", "A MOVE to stop Mr. Gaitskell from"),
        ('He said , " Yes . "', 'He said, "Yes."'),
        ('all . " " Sorry , I', 'all." "Sorry, I'),
        ("the ( big ) dog 's toy ; end ...", "the (big) dog's toy; end..."),
        ("Is it ? No !", "Is it? No!"),
    ],
)
def test_punctuation_is_joined_as_in_iam_labels(tokens, text):
    assert join_tokens(tokens.split()) == text


def _word(width: int, height: int, top: int, bottom: int, paper: int = 235) -> np.ndarray:
    img = np.full((height, width), paper, np.uint8)
    img[top:bottom, 2 : width - 2] = 30
    return img


def test_words_share_a_baseline_and_paper_is_white():
    rng = np.random.default_rng(0)
    low = _word(40, 30, 5, 20)  # ink ends at row 20: baseline 20
    high = _word(40, 50, 20, 40)  # baseline 40
    line, boxes, base = compose_line([low, high, _word(10, 8, 2, 6)], ["ab", "cd", "."], rng,
                                     gap=1.0, margin=0.5)  # fmt: skip
    assert [b[3] for b in boxes] == pytest.approx([base] * 3, abs=3)  # wobble is small
    assert boxes[0][2] < boxes[1][0] and boxes[1][2] <= boxes[2][0]  # left to right
    assert line.max() == 255 and np.median(line) == 255  # paper whitened, no rectangles
    assert measure(whiten(low)).baseline == 20


@pytest.fixture(scope="module")
def iam_stitching(iam_fixture):
    iam = IAM(iam_fixture.root, split="official")
    words = iam.dataset("train", "word", 0.5, NO_FRAME, NO_FRAME)
    return iam, words, stitch_layout(iam, 0.5)


def test_stitched_samples_use_training_words_only(iam_fixture, tmp_path):
    config = iam_config(iam_fixture.root, ["data_format=form", "dataset.split=official",
                                           "augmentation.synthetic_proba=1.0"], tmp_path)  # fmt: skip
    dm = build_datamodule(config)
    stitcher = dm.train.synthetic
    assert isinstance(stitcher, Stitcher)
    train_forms = {f.id for f in iam_fixture.split_forms("official", "train")}
    held_out = {w.id for s in ("val", "test") for f in iam_fixture.split_forms("official", s)
                for ln in f.lines for w in ln.words}  # fmt: skip
    assert {it.form for it in stitcher.words.items} == train_forms  # the pool: train only
    for epoch in range(2):
        stitcher.set_epoch(epoch)
        for i in range(len(stitcher)):
            sources = stitcher[i].sources
            assert sources and not set(sources) & held_out
            assert {"-".join(s.split("-")[:2]) for s in sources} <= train_forms
    # and the training stream with synthetic_proba=1 is made of stitched pages only
    assert all(dm.train[i][2].startswith("stitched-form-") for i in range(len(dm.train)))


def _texts(loader: DataLoader) -> list[str]:
    return [t for batch in loader for t in batch.texts]


def test_two_epochs_differ_and_do_not_depend_on_workers(iam_stitching):
    iam, words, layout = iam_stitching
    base = iam.dataset("train", "line", 0.5, 192, 2048)
    stitcher = Stitcher(words, "line", size=len(base), seed=3, **layout)
    train = PreparedDataset(base, 192, 2048, synthetic=stitcher, synthetic_proba=1.0, seed=3)
    fn = collate(Tokenizer(" ".join(base.texts())))

    def epoch(e: int, workers: int) -> list[str]:
        train.set_epoch(e)
        return _texts(DataLoader(train, batch_size=4, num_workers=workers, collate_fn=fn))

    first, second = epoch(0, 2), epoch(1, 2)
    assert len(first) == len(base) and first != second
    assert epoch(1, 0) == second  # the same stream whatever the number of workers
    stitcher.set_epoch(0)
    a = stitcher[0]
    stitcher.set_epoch(1)
    assert stitcher[0].text != a.text  # the stitcher itself draws anew, not just the picks


def test_page_length_follows_real_forms_and_the_curriculum_cap(iam_stitching):
    iam, words, layout = iam_stitching
    stitcher = Stitcher(words, "form", size=12, seed=0, **layout)
    pages = [stitcher[i] for i in range(12)]
    counts = [p.text.count("\n") + 1 for p in pages]
    assert set(counts) <= set(layout["lines_per_form"]) and len(set(counts)) > 1
    lo, hi = layout["page_width"]
    for page in pages:
        assert page.image.shape[1] - 2 * layout["margin"][1] < 1.3 * hi
    stitcher.set_max_lines(1)
    one = stitcher[0]
    assert "\n" not in one.text and one.image.shape[0] < 0.6 * pages[0].image.shape[0]
    stitcher.set_max_lines(None)
    assert stitcher[0].text.count("\n") + 1 == counts[0]


def test_the_synthetic_dataset_stitches_rendered_training_words(tmp_path):
    cfg = compose_train([*TINY, "augmentation.synthetic_proba=0.5", "data_format=form",
                         "dataset.max_lines=3"])  # fmt: skip
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    _, chars, stitched = build_datasets(config)
    assert isinstance(stitched, Stitcher)
    assert isinstance(stitched.words, SyntheticHandwriting) and stitched.words.split == "train"
    sample = stitched[0]
    assert isinstance(sample, Sample) and 1 <= sample.text.count("\n") + 1 <= 3
    assert set(sample.text) <= set(charset()) and sample.image.dtype == np.uint8
    stitched.set_epoch(1)
    assert stitched[0].text != sample.text
