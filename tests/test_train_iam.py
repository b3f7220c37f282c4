"""`fphtr-train dataset=iam` for a few steps on the generated IAM fixture, in each data format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fphtr.checkpoint import load_model
from fphtr.train import train

from .conftest import TINY, compose_train
from .data.conftest import aachen_dir, session_fixture


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    return session_fixture(tmp_path_factory)


def iam_overrides(info, cache: Path) -> list[str]:
    return ["dataset=iam", f"dataset.root={info.root}", "dataset.split=aachen",
            f"dataset.split_dir={aachen_dir(info)}", f"dataset.cache_dir={cache}"]  # fmt: skip


@pytest.mark.parametrize(
    "fmt,extra",
    [("word", []), ("line", ["augmentation=paper", "augmentation.synthetic_proba=0.5"])],
)
def test_train_in_process(iam, tmp_path, fmt, extra):
    cfg = compose_train([*TINY, *iam_overrides(iam, tmp_path / "cache"), f"data_format={fmt}",
                         *extra], tmp_path / "run")  # fmt: skip
    metrics = train(cfg)
    assert metrics["steps"] == 2 and {"val/cer", "test/cer", "train/cer"} <= set(metrics)
    model, tokenizer, config = load_model(metrics["best_checkpoint"])
    assert config["dataset"]["name"] == "iam" and config["data_format"]["name"] == fmt
    assert "a" in tokenizer.chars and ("\n" in tokenizer.chars) is False


def test_fphtr_train_cli_on_iam_forms_with_stitched_pages(iam, tmp_path):
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    args = [a for a in TINY if not a.startswith("num_workers")]
    out = subprocess.run(
        [sys.executable, "-m", "fphtr.train", *args, *iam_overrides(iam, tmp_path / "cache"),
         "data_format=form", "data_format.batch_size=2", "decoding.max_len=60",
         "augmentation.synthetic_proba=0.5",
         "num_workers=2",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "IAM train: 4 forms [split=aachen]" in log and "word pool of the synthetic" in log
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and "test/cer" in metrics
    _, tokenizer, _ = load_model(metrics["best_checkpoint"])
    assert "\n" in tokenizer.chars
