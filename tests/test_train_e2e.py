"""`fphtr-train` end to end as a user runs it: run directory, checkpoint, W&B offline files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fphtr.checkpoint import load_model

from .conftest import TINY


def run_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "fphtr.train", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("e2e")
    run_dir = tmp / "run"
    args = [a for a in TINY if not a.startswith("logger=")]
    out = run_train([*args, "logger=wandb", f"hydra.run.dir={run_dir}"], tmp)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def test_run_directory_holds_the_resolved_config(wandb_run):
    run_dir, _ = wandb_run
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["decoder"]["d_model"] == 128 and config["dataset"]["name"] == "synthetic"
    assert "decoder=small" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"val/cer", "val/wer", "val/loss", "test/cer", "train/cer"} <= set(metrics)
    assert metrics["steps"] == 2


def test_checkpoint_alone_is_enough_to_use_the_model(wandb_run):
    run_dir, _ = wandb_run
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best and (run_dir / "checkpoints" / "last.ckpt").is_file()
    ckpt = torch.load(best[0], map_location="cpu", weights_only=True)
    assert set(ckpt["fphtr"]) == {"config", "tokenizer"}
    assert ckpt["fphtr"]["config"]["data_format"]["name"] == "line"
    model, tokenizer, config = load_model(best[0])
    assert len(tokenizer) == model.decoder.classifier.out_features
    assert "\n" in tokenizer.chars and config["decoder"]["num_layers"] == 2


def test_wandb_offline_files_and_sync_command(wandb_run):
    run_dir, out = wandb_run
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert f"wandb sync {runs[0]}" in out.stdout
    assert "val   CER / WER" in out.stdout and str(run_dir) in out.stdout
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert f"best checkpoint  {best[0]}" in out.stdout
    assert f"last checkpoint  {run_dir / 'checkpoints' / 'last.ckpt'}" in out.stdout


def test_rerun_from_saved_config_reproduces_the_run(wandb_run, tmp_path):
    run_dir, _ = wandb_run
    out = run_train(
        [
            "--config-path",
            str(run_dir / ".hydra"),
            "--config-name",
            "config",
            "logger.kind=none",
            f"hydra.run.dir={tmp_path / 'again'}",
        ],  # fmt: skip
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    first = json.loads((run_dir / "metrics.json").read_text())
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["steps"] == first["steps"]
    assert again["val/loss"] == pytest.approx(first["val/loss"], rel=1e-4)
