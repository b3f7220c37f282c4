"""Shared test fixtures: tiny configs composed with Hydra's compose API."""

from __future__ import annotations

import os

# before anything imports albumentations or wandb
os.environ["NO_ALBUMENTATIONS_UPDATE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

from fphtr.config import register_configs  # noqa: E402

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
REPO = CONF_DIR.parent

# A configuration small enough for a test: tiny decoder, tiny images, a few samples.
TINY = [
    "~experiment",  # drop the default CPU quick-start preset
    "decoder=small",
    "logger=none",
    "num_workers=0",
    "dataset.train_size=8",
    "dataset.val_size=4",
    "dataset.test_size=4",
    "data_format.scale=0.25",
    "data_format.batch_size=4",
    "trainer.max_steps=2",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "callbacks.train_cer_samples=2",
]

torch.set_num_threads(2)
register_configs()


def compose_train(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
    """Compose conf/train.yaml like `fphtr-train` would, with the given overrides."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(output_dir) if output_dir else "unused"
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> DictConfig:
    return compose_train(TINY, tmp_path / "run")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of one tiny model trained once per session (2 steps, line images,
    synthetic data): checkpoints/ and metrics.json, for tests that need a trained model."""
    from fphtr.train import train

    run = tmp_path_factory.mktemp("tiny_run") / "run"
    fast = ["run_test=false", "callbacks.train_cer_samples=0", "data_format.max_target_len=40"]
    train(compose_train([*TINY, *fast], run))
    return run
