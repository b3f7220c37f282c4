"""CPU DDP (trainer=ddp_cpu: 2 gloo processes, ddp_spawn) inside a Hydra multirun: exact
corpus-level validation metrics, one writer, no extra folders; samplers shard without
duplicates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest

from fphtr.checkpoint import load_model
from fphtr.data.datamodule import build_datamodule
from fphtr.lit_module import HTRModule

from .conftest import TINY, VARIED, compose_train

# 5 validation samples over 2 processes: a padding sampler would count one twice. The
# model starts from `varied_checkpoint` (lr negligible): its transcriptions differ per
# sample, so a mix-up or a double count across the processes changes CER.
ARGS = [
    *(a for a in VARIED if not a.startswith(("logger=", "trainer.max_steps", "dataset.val_size"))),
    "logger=csv",
    "dataset.val_size=5",
    "data_format.batch_size=2",
    "trainer.max_steps=2",
    "run_test=false",
    "optim.lr=1e-9",
    "callbacks.train_cer_samples=0",
]


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, varied_checkpoint) -> tuple[Path, subprocess.CompletedProcess]:
    """One job of a multirun (-m) with trainer=ddp_cpu, as `fphtr-train` runs it."""
    cwd = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    out = subprocess.run(
        [sys.executable, "-m", "fphtr.train", "-m", "trainer=ddp_cpu", *ARGS,
         f"model.init_from={varied_checkpoint}", f"hydra.sweep.dir={cwd / 'sweep'}"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd, out


def test_ddp_validation_cer_equals_a_single_process_validation(ddp_sweep):
    cwd, out = ddp_sweep
    assert "distributed_backend=gloo" in out.stderr and "Starting with 2 processes" in out.stderr
    job = cwd / "sweep" / "0"
    ddp = json.loads((job / "metrics.json").read_text())
    assert ddp["steps"] == 2

    # the same weights (saved right after that validation), validated by one process
    model, tokenizer, config = load_model(job / "checkpoints" / "last.ckpt")
    datamodule = build_datamodule(config)
    datamodule.tokenizer = tokenizer
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    module = HTRModule(model, tokenizer, config)
    single = trainer.validate(module, datamodule=datamodule)[0]
    # corpus level: edit and length totals summed over the ranks, then divided
    assert single["val/cer"] == ddp["val/cer"] and single["val/wer"] == ddp["val/wer"]
    # a model that reads: every sample its own string, so each one counts in the totals
    batch = next(iter(datamodule.val_dataloader()))
    assert len(set(module.transcribe(batch))) == len(batch.texts) and ddp["val/cer"] < 0.5
    # (val/loss is a mean of batch means, so it depends on how samples are batched)


def test_ddp_in_a_multirun_writes_once_into_the_job_folder_only(ddp_sweep):
    cwd, out = ddp_sweep
    assert sorted(p.name for p in cwd.iterdir()) == ["sweep"]  # no outputs/ of relaunched jobs
    assert sorted(p.name for p in (cwd / "sweep").iterdir()) == ["0", "multirun.yaml"]
    assert out.stdout.count("fphtr run summary") == 1
    assert len(list(cwd.rglob("metrics.json"))) == 1 and len(list(cwd.rglob("metrics.csv"))) == 1


def test_samplers_shard_without_duplicates(tmp_path):
    config = compose_train([*TINY, "dataset.val_size=5", "dataset.train_size=9"], tmp_path)
    from omegaconf import OmegaConf

    datamodule = build_datamodule(OmegaConf.to_container(config, resolve=True))
    val, train = [], []
    for rank in (0, 1):
        datamodule.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        val.append(list(datamodule.val_dataloader().sampler))
        sampler = datamodule.train_dataloader().sampler
        sampler.set_epoch(3)
        train.append(list(sampler))
    assert sorted(val[0] + val[1]) == list(range(5))  # every sample once over the ranks
    assert len(train[0]) == len(train[1]) == 4 and not set(train[0]) & set(train[1])
    datamodule.trainer = None
    assert list(datamodule.val_dataloader().sampler) == list(range(5))
