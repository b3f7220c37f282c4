"""fphtr-train: the one training entry point (a Hydra app on conf/train.yaml).

compose config -> validate -> build data, model, loggers -> fit -> test -> summary.
Returns the best validation CER, the objective of Optuna sweeps.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from fphtr.callbacks import (
    EpochSeeding,
    FitResults,
    PageCurriculum,
    PredictionTable,
    PreemptionCheckpoint,
)
from fphtr.checkpoint import (
    CheckpointError,
    init_from_checkpoint,
    read_checkpoint,
    transfer_tokenizer,
)
from fphtr.config import ConfigError, register_configs, validate
from fphtr.data.datamodule import build_datamodule
from fphtr.data.tokenizer import Tokenizer
from fphtr.lit_module import HTRModule
from fphtr.loggers import build_loggers, finish_loggers
from fphtr.model.fphtr import build_model

log = logging.getLogger(__name__)
# conf/ sits next to the package in the repository (editable install)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LAST_CKPT = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
register_configs()


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says where and why."""


def _run_identity(cfg: DictConfig) -> tuple[str, str | None]:
    """(run name, group) for loggers: the job's overrides, grouped by sweep."""
    if not HydraConfig.initialized():
        return cfg.task_name, None
    hc = HydraConfig.get()
    name = hc.job.override_dirname or cfg.task_name
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return name, group


def build_callbacks(
    config: dict[str, Any], output_dir: Path
) -> tuple[list[pl.Callback], ModelCheckpoint]:
    """The run's callbacks from the `callbacks` config section; the checkpoint callback is
    returned separately because the best checkpoint is tested and reported."""
    cb = config["callbacks"]
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="best-step{step}",
        auto_insert_metric_name=False,
        monitor="val/cer",
        mode="min",
        save_top_k=cb["save_top_k"],
        save_last=cb["save_last"],
    )
    callbacks: list[pl.Callback] = [
        checkpoint,
        PreemptionCheckpoint(checkpoint),
        FitResults(checkpoint),
        EpochSeeding(),
        PredictionTable(),
    ]
    if config["trainer"]["enable_progress_bar"]:
        callbacks.append(RichProgressBar())
    if cb["curriculum"]:
        ds = config["dataset"]
        callbacks.append(
            PageCurriculum(
                ds.get("min_lines", 1), ds.get("max_lines"),  # IAM: its forms' most lines
                cb["curriculum_lines_every"], cb["curriculum_final_synthetic_proba"],
            )
        )  # fmt: skip
    if cb["early_stopping_patience"]:
        callbacks.append(
            EarlyStopping("val/cer", mode="min", patience=cb["early_stopping_patience"])
        )
    return callbacks, checkpoint


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """`ckpt_path=last` -> <run dir>/checkpoints/last.ckpt, or None (a fresh start) when the
    run has none yet, so a requeued cluster job can always pass ckpt_path=last."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        return Path(ckpt_path)  # read_checkpoint says so if it is missing
    path = output_dir / "checkpoints" / LAST_CKPT
    if path.is_file():
        return path
    log.warning(
        "ckpt_path=last: no checkpoint at %s, starting a new run. To resume a run, run in its "
        "directory: fphtr-train hydra.run.dir=<old run dir> ckpt_path=last",
        path,
    )
    return None


def check_writable(output_dir: Path) -> None:
    """Fail before any data is read when the run directory cannot take checkpoints."""
    try:
        folder = output_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output directory {output_dir} is not writable ({e.strerror or e}): choose "
            "another with hydra.run.dir=... (hydra.sweep.dir=... for -m)"
        ) from e


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and test one model; returns the final metrics (also written to metrics.json)."""
    validate(cfg)
    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    output_dir = Path(config["output_dir"])
    check_writable(output_dir)
    ckpt_path = resolve_ckpt_path(config["ckpt_path"], output_dir)
    # read with the weights-only loader first: a foreign or malicious file is refused
    # before Lightning sees it; the W&B run id inside lets the resumed run continue it
    resume = read_checkpoint(ckpt_path) if ckpt_path else None
    pl.seed_everything(cfg.seed, workers=True)
    started = time.time()

    datamodule = build_datamodule(config)
    init_from = config["model"]["init_from"]
    if resume:  # the resumed model keeps its own character ids
        data_chars = "".join(datamodule.tokenizer.chars)
        datamodule.tokenizer = Tokenizer.from_dict(resume["fphtr"]["tokenizer"])
        if unknown := datamodule.tokenizer.unknown_chars(data_chars):
            log.warning("characters the resumed model does not know are encoded as <unk>: %r",
                        "".join(sorted(unknown)))  # fmt: skip
    elif init_from:  # keep the source model's character ids, append what this data adds
        datamodule.tokenizer, added = transfer_tokenizer(init_from, datamodule.tokenizer)
        log.info("vocabulary from %s, new characters: %r", init_from, "".join(added))
    tokenizer = datamodule.tokenizer
    model = build_model(config, len(tokenizer))
    if init_from and not resume:
        init_from_checkpoint(model, init_from, tokenizer)
    module = HTRModule(model, tokenizer, config, train_probe=datamodule.train_probe())

    callbacks, checkpoint = build_callbacks(config, output_dir)
    run_name, group = _run_identity(cfg)
    run_id = resume.get("wandb_run_id") if resume else None
    resumed_step = resume.get("global_step", 0) if resume else None
    del resume
    loggers = build_loggers(config, output_dir, run_name, group, run_id, resumed_step)
    try:
        trainer = pl.Trainer(
            **config["trainer"],
            logger=loggers or False,
            callbacks=callbacks,
            default_root_dir=output_dir,
        )
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        except FloatingPointError as e:  # raised by HTRModule.training_step
            kept = sorted(str(p) for p in (output_dir / "checkpoints").glob("*.ckpt"))
            raise TrainingStopped(
                f"training stopped: {e}. Checkpoints kept: {', '.join(kept) or 'none yet'}"
            ) from e
        if "val/cer" not in trainer.callback_metrics and not trainer.interrupted:
            # training ended before its first scheduled validation (e.g. a short max_steps):
            # validate the final weights, so every run reports val/cer and val/wer
            trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if config["run_test"]:
            best = checkpoint.best_model_path or None
            trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
    finally:
        sync_command = finish_loggers(loggers)  # always, so sweep jobs never share a run

    # FitResults put these in the metrics (also when fit ran in spawned processes)
    best_score = metrics.pop("fit/best_val_cer", None)
    last = output_dir / "checkpoints" / LAST_CKPT
    metrics.update(
        best_val_cer=best_score if best_score is not None else metrics.get("val/cer", math.inf),
        steps=int(metrics.pop("fit/steps", trainer.global_step)),
        seconds=round(time.time() - started, 1),
        best_checkpoint=checkpoint.best_model_path,
        last_checkpoint=str(last) if last.is_file() else "",
        run_dir=str(output_dir),
        wandb_sync=sync_command,
        # unreadable evaluation images, left out (never replaced); counts are in val/skipped
        # and test/skipped (summed over processes), the ids are this process's
        skipped_ids={s: sorted(module.rates[s].skipped_ids) for s in ("val", "test")},
    )
    if trainer.is_global_zero:  # under DDP every process returns here; one writes
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        _print_summary(metrics)
    return metrics


def _print_summary(m: dict[str, Any]) -> None:
    def pct(key: str) -> str:
        return f"{100 * m[key]:.2f}%" if key in m else "-"

    lines = [
        "",
        "fphtr run summary",
        f"  steps            {m['steps']} in {m['seconds']} s",
        f"  val   CER / WER  {pct('val/cer')} / {pct('val/wer')}  (best val CER {100 * m['best_val_cer']:.2f}%)",
        f"  test  CER / WER  {pct('test/cer')} / {pct('test/wer')}",
        f"  train CER        {pct('train/cer')}",
        *(
            f"  {s:<5} skipped    {int(m[f'{s}/skipped'])} unreadable images, left out: "
            f"{', '.join(m['skipped_ids'][s]) or '(ids in the log)'}"
            for s in ("val", "test")
            if m.get(f"{s}/skipped")
        ),
        f"  run directory    {m['run_dir']}",
        f"  best checkpoint  {m['best_checkpoint'] or '- (no validation during training)'}",
    ]
    if m["last_checkpoint"]:  # the one to resume from; the only one if fit never validated
        lines.append(f"  last checkpoint  {m['last_checkpoint']}")
    if m["wandb_sync"]:
        lines.append(f"  upload to W&B    {m['wandb_sync']}")
    print("\n".join(lines), flush=True)


_KIND = {ConfigError: "Config error", CheckpointError: "Checkpoint error"}


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entry point; returns the objective (best val CER) for sweepers."""
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg)
    except (ConfigError, CheckpointError, TrainingStopped) as e:
        if not multirun:
            raise SystemExit(f"{_KIND.get(type(e), 'Error')}: {e}") from None  # no traceback
        log.error("%s; objective recorded as inf", e)
        return math.inf
    except SIGTERMException:
        # preempted: PreemptionCheckpoint saved last.ckpt; a non-zero exit tells the scheduler
        print(
            f"Stopped by SIGTERM. Resume with: fphtr-train hydra.run.dir={cfg.output_dir} "
            "ckpt_path=last (and the same overrides)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    except Exception:
        if not multirun:
            raise
        # one failing sweep job is recorded as failed; the sweep goes on
        log.exception("job failed; objective recorded as inf")
        return math.inf
    objective = metrics["best_val_cer"]
    return objective if math.isfinite(objective) else math.inf


if __name__ == "__main__":
    main()
