"""Callbacks that connect training to data state and to the logging edge."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fphtr.metrics import cer


class EpochSeeding(pl.Callback):
    """Tell the training dataset which epoch starts, so its random stream (synthetic
    samples, augmentation) differs per epoch; workers are re-created each epoch and pick
    it up. (The earlier re-implementation repeated the same stream every epoch.)"""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.datamodule.train.set_epoch(trainer.current_epoch)


class PreemptionCheckpoint(pl.Callback):
    """On SIGTERM (cluster preemption, `scancel`, `kill`), save `last.ckpt` before exiting.

    Lightning's signal handler records the SIGTERM and raises SIGTERMException at the next
    safe point (after a training batch, or between validation batches); this callback writes
    the checkpoint there, so the run resumes with `ckpt_path=last` where it stopped."""

    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint
        self.saved: Path | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        name = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
        self.saved = Path(self.checkpoint.dirpath) / name
        trainer.save_checkpoint(self.saved, weights_only=False)
        rank_zero_info(f"SIGTERM: saved {self.saved} at step {trainer.global_step}")


class FitResults(pl.Callback):
    """Copy the step count and best validation CER into `trainer.callback_metrics` when fit
    ends: with process-spawning strategies (ddp_spawn) the metrics are the only trainer
    state Lightning sends back to the process that called `fit`."""

    def __init__(self, checkpoint: ModelCheckpoint):
        self.checkpoint = checkpoint

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.callback_metrics["fit/steps"] = torch.tensor(float(trainer.global_step))
        if self.checkpoint.best_model_score is not None:
            trainer.callback_metrics["fit/best_val_cer"] = self.checkpoint.best_model_score.cpu()


class PredictionTable(pl.Callback):
    """Log a W&B table of sample predictions (image, truth, prediction, CER) per validation."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, key: str) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not pl_module.examples or trainer.sanity_checking:
            return
        import wandb

        rows = [
            [wandb.Image(1.0 - image.float().numpy()), ref, hyp, cer([ref], [hyp]), sample_id]
            for image, ref, hyp, sample_id in pl_module.examples
        ]
        for lg in loggers:
            lg.log_table(
                key=key,
                columns=["image", "ground truth", "prediction", "cer", "id"],
                data=rows,
                step=trainer.global_step,
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "val/predictions")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test/predictions")


class PageCurriculum(pl.Callback):
    """Page curriculum (as in DAN): pages start with `min_lines` lines and gain one line
    every `lines_every` optimiser steps up to `max_lines`; once full pages are reached, the
    share of synthetic samples decays linearly to `final_proba` over as many steps. It caps
    synthetic pages, pages stitched from IAM words and real IAM forms (cut below their
    first lines) alike. `max_lines=None`: the most lines a training page has (IAM).

    The state is applied at each training epoch start (dataloader workers are re-created per
    epoch), so keep epochs short (`dataset.train_size`) for a smooth curriculum. The current
    state is logged as `curriculum/max_lines` and `curriculum/synthetic_proba`."""

    def __init__(
        self,
        min_lines: int,
        max_lines: int | None,
        lines_every: int,
        final_proba: float | None = None,
    ):
        self.min_lines, self.max_lines, self.lines_every = min_lines, max_lines, lines_every
        self.final_proba = final_proba

    def state(self, step: int, start_proba: float) -> tuple[int, float]:
        """(max lines per page, synthetic share) at optimiser step `step`."""
        lines = min(self.max_lines, self.min_lines + step // self.lines_every)
        proba = start_proba
        full_at = (self.max_lines - self.min_lines) * self.lines_every
        if self.final_proba is not None and step > full_at:
            progress = min(1.0, (step - full_at) / max(1, full_at))
            proba = start_proba + (self.final_proba - start_proba) * progress
        return lines, proba

    def _apply(self, trainer: pl.Trainer, step: int) -> tuple[int, float]:
        data = trainer.datamodule.train
        sources = [ds for ds in (data.base, data.synthetic) if hasattr(ds, "set_max_lines")]
        if not hasattr(self, "start_proba"):
            self.start_proba = data.synthetic_proba
        if self.max_lines is None:
            self.max_lines = max(
                [ds.max_page_lines for ds in sources if hasattr(ds, "max_page_lines")],
                default=self.min_lines,
            )
        lines, proba = self.state(step, self.start_proba)
        for ds in sources:
            ds.set_max_lines(lines)
        data.synthetic_proba = proba
        return lines, proba

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a run resumed mid-epoch gets no on_train_epoch_start for that epoch: apply the
        # state the epoch started with, as the interrupted run did
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if 0 < done < trainer.num_training_batches:
            self._apply(trainer, trainer.global_step - done // trainer.accumulate_grad_batches)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        lines, proba = self._apply(trainer, trainer.global_step)
        pl_module.log("curriculum/max_lines", float(lines))
        pl_module.log("curriculum/synthetic_proba", proba)
