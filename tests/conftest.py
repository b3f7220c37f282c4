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


# The word model of `varied_checkpoint`: TINY with word images, no dropout or smoothing.
VARIED = [*TINY, "data_format=word", "encoder.dropout=0", "decoder.dropout=0",
          "optim.label_smoothing=0", "data_format.max_target_len=20"]  # fmt: skip


@pytest.fixture(scope="session")
def varied_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint (as training writes them) of a tiny word model overfitted on the first
    6 synthetic validation words of `VARIED`: its transcriptions differ from sample to
    sample and are mostly right, so that a mix-up of samples or a double count changes
    CER (a 2-step model writes nearly the same string for every image)."""
    from omegaconf import OmegaConf

    from fphtr.data.datamodule import build_datamodule
    from fphtr.lit_module import HTRModule
    from fphtr.model.fphtr import build_model

    path = tmp_path_factory.mktemp("varied") / "varied.ckpt"
    cfg = compose_train([*VARIED, "dataset.val_size=6", "data_format.batch_size=6"])
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    torch.manual_seed(0)
    dm = build_datamodule(config, splits=("val",))
    batch = next(iter(dm.val_dataloader()))
    module = HTRModule(build_model(config, len(dm.tokenizer)), dm.tokenizer, config)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module.train()
    for _ in range(60):
        loss = module._loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = {f"model.{k}": v for k, v in module.model.state_dict().items()}
    fphtr = {"config": config, "tokenizer": dm.tokenizer.to_dict()}
    torch.save({"state_dict": state, "fphtr": fphtr}, path)
    return path
