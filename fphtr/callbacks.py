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
