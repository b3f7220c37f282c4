"""Callbacks that connect training to data state and to the logging edge."""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger

from fphtr.metrics import cer


class EpochSeeding(pl.Callback):
    """Tell the training dataset which epoch starts, so its random stream (synthetic
    samples, augmentation) differs per epoch; workers are re-created each epoch and pick
    it up. (The earlier re-implementation repeated the same stream every epoch.)"""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.datamodule.train.set_epoch(trainer.current_epoch)


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
    """Synthetic page curriculum (as in DAN): pages start with `min_lines` lines and gain one
    line every `lines_every` optimiser steps up to `max_lines`; once full pages are reached,
    the share of synthetic samples decays linearly to `final_proba` over as many steps.

    The state is applied at each training epoch start (dataloader workers are re-created per
    epoch), so keep epochs short (`dataset.train_size`) for a smooth curriculum. The current
    state is logged as `curriculum/max_lines` and `curriculum/synthetic_proba`."""

    def __init__(
        self,
        min_lines: int,
        max_lines: int,
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

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        data = trainer.datamodule.train
        if not hasattr(self, "start_proba"):
            self.start_proba = data.synthetic_proba
        lines, proba = self.state(trainer.global_step, self.start_proba)
        for ds in (data.base, data.synthetic):
            if hasattr(ds, "set_max_lines"):
                ds.set_max_lines(lines)
        data.synthetic_proba = proba
        pl_module.log("curriculum/max_lines", float(lines))
        pl_module.log("curriculum/synthetic_proba", proba)
