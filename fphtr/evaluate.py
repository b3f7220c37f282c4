"""fphtr-eval: corpus-level CER and WER of a checkpoint on a dataset split.

    fphtr-eval checkpoint=run/checkpoints/best-step900.ckpt               # its own test split
    fphtr-eval checkpoint=model.ckpt split=val decoding.beam_width=4
    fphtr-eval checkpoint=model.ckpt dataset=iam dataset.root=/data/IAM dataset.split=aachen
    fphtr-eval checkpoint=model.ckpt +dataset.root=/mnt/IAM               # one key changed

A Hydra app on conf/eval.yaml. The model, vocabulary, data format and decoding settings come
from the checkpoint's stored config. The dataset is the checkpoint's too, unless a `dataset=`
option is chosen (then that group config, with its overrides, replaces it) or single keys
are changed with `+dataset.KEY=VALUE`. The data module is built exactly as in training
(`build_datamodule`, same batch size, order and padding) and decoded by the training
module's own `transcribe` under the run's precision, so `split=val` reproduces the CER/WER
that validation logged for the same weights.

Every readable sample is scored exactly once; an image that cannot be decoded is left out
(never replaced by another sample) and named in the summary and in metrics.json
(`skipped`, `skipped_ids`).

Writes to the run folder (outputs/eval/<date>/<time>, or hydra.run.dir=...):
metrics.json, predictions.csv (id, reference, hypothesis, cer per sample) and worst.png
(the `worst` samples by CER with reference and hypothesis). `logger=wandb` also logs the
metrics and a table of the worst samples to Weights & Biases.
"""

from __future__ import annotations

import copy
import csv
import heapq
import json
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fphtr.checkpoint import CheckpointError, load_model
from fphtr.config import (
    ConfigError,
    LoggerConfig,
    native_bf16,
    register_configs,
    resolve_precision,
    validate,
)
from fphtr.data.datamodule import Batch, PreparedDataset, build_datamodule
from fphtr.data.grid import save_sample_grid
from fphtr.data.sample import Sample
from fphtr.lit_module import HTRModule
from fphtr.loggers import build_loggers, finish_loggers
from fphtr.metrics import cer, wer
from fphtr.predict import CONF_DIR, DecodingOverrides, UsageError, decoding_settings


class Split(Enum):
    train = "train"
    val = "val"
    test = "test"


@dataclass
class EvalTrainerConfig:
    # written by fphtr-train's `precision` group (`precision=32-true`, `# @package trainer`):
    # a plain `precision` key could not be set, Hydra reads that name as the group
    precision: str | None = None  # default: the checkpoint's trainer.precision; or "auto"


@dataclass
class EvalConfig:
    checkpoint: str = MISSING  # a .ckpt written by fphtr-train
    split: Split = Split.test
    # a `dataset=` group option replaces the checkpoint's dataset; `+dataset.KEY=` edits it
    dataset: dict[str, Any] = field(default_factory=dict)
    decoding: DecodingOverrides = field(default_factory=DecodingOverrides)
    batch_size: int | None = None  # default: the checkpoint's eval_batch_size or batch_size
    num_workers: int | None = None  # default: the checkpoint's num_workers
    device: str = "cpu"  # cpu, cuda, cuda:1 ...
    trainer: EvalTrainerConfig = field(default_factory=EvalTrainerConfig)
    worst: int = 16  # samples drawn in worst.png (0: none)
    progress: bool = True  # Lightning's progress bar
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    task_name: str = "eval"
    output_dir: str = "${hydra:runtime.output_dir}"


register_configs()  # the dataset and logger group schemas
ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


class EvalModule(HTRModule):
    """The training module's decoding, recording every sample instead of only the totals."""

    def __init__(self, *args: Any, worst: int = 16, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.rows: list[dict[str, Any]] = []  # id, reference, hypothesis, cer
        self.skipped: list[str] = []  # ids of unreadable images, left out (never replaced)
        self.worst = worst
        self._worst: list[tuple[float, int, np.ndarray]] = []  # min-heap of the worst samples

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.skipped += batch.skipped
        if not batch.texts:
            return
        hyps = self.transcribe(batch)
        for i, (ref, hyp, sample_id) in enumerate(zip(batch.texts, hyps, batch.ids, strict=True)):
            rate = cer([ref], [hyp])
            self.rows.append({"id": sample_id, "reference": ref, "hypothesis": hyp, "cer": rate})
            if self.worst > 0:
                key = (rate, -len(self.rows), None)
                if len(self._worst) < self.worst or key[:2] > self._worst[0][:2]:
                    h, w = batch.sizes[i].tolist()
                    ink = batch.images[i, 0, :h, :w].float().cpu()
                    image = ((1.0 - ink) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
                    heapq.heappush(self._worst, (rate, -len(self.rows), image))
                    if len(self._worst) > self.worst:
                        heapq.heappop(self._worst)

    def on_test_epoch_end(self) -> None:  # totals are computed from the rows
        pass

    def worst_samples(self) -> list[tuple[dict[str, Any], np.ndarray]]:
        """(row, image) of the worst samples, worst first."""
        ranked = sorted(self._worst, key=lambda e: (-e[0], -e[1]))
        return [(self.rows[-order - 1], image) for _, order, image in ranked]


def eval_config(
    stored: dict[str, Any], cfg: DictConfig, dataset_choice: str | None
) -> dict[str, Any]:
    """The checkpoint's config with this evaluation's overrides applied."""
    config = copy.deepcopy(stored)
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True, enum_to_str=True)
    if dataset_choice:  # a dataset group option replaces the stored dataset
        config["dataset"] = dataset
    else:  # +dataset.KEY=VALUE edits it
        config["dataset"] = {**config["dataset"], **dataset}
    config["decoding"] = decoding_settings(stored, cfg.decoding)
    if cfg.batch_size is not None:  # the evaluation batch size, whatever training used
        config["data_format"]["batch_size"] = cfg.batch_size
        config["data_format"]["eval_batch_size"] = cfg.batch_size
    if cfg.num_workers is not None:
        config["num_workers"] = cfg.num_workers
    config["logger"] = OmegaConf.to_container(cfg.logger, resolve=True, enum_to_str=True)
    try:
        validate(OmegaConf.create(config))
    except ConfigError as e:
        raise UsageError(str(e)) from e
    return config


def _loader(config: dict[str, Any], split: str, module: HTRModule) -> DataLoader:
    """The split's loader exactly as training builds it (for train: without augmentation).
    Only that split is built: a collection may have nothing but test pages."""
    try:
        dm = build_datamodule(config, splits=(split,))
    except (ValueError, OSError) as e:  # datasets explain what is missing (e.g. IAMError)
        raise UsageError(f"dataset {config['dataset']['name']}: {e}") from e
    dm.tokenizer = module.tokenizer  # the checkpoint's vocabulary encodes the references
    if split == "val":
        return dm.val_dataloader()
    if split == "test":
        return dm.test_dataloader()
    # the training samples through the evaluation loader: no augmentation, fixed order
    return dm._eval_loader(PreparedDataset(dm.train.base, dm.train.max_height, dm.train.max_width))


def _trainer(cfg: DictConfig, stored: dict[str, Any]) -> pl.Trainer:
    device = cfg.device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device={device}: CUDA is not available; use device=cpu")
        index = device.partition(":")[2]
        accelerator, devices = "gpu", [int(index)] if index else 1
    elif device == "cpu":
        accelerator, devices = "cpu", 1
    else:
        raise UsageError(f"device={device} is not allowed: expected cpu, cuda or cuda:N")
    requested = cfg.trainer.precision
    precision = resolve_precision(requested or stored["trainer"]["precision"], accelerator)
    if requested is None and precision.startswith("bf16") and not native_bf16(accelerator):
        # trained where bf16 is native; emulated here it would be ~20x slower than fp32
        print(
            f"fphtr-eval: precision {precision} (the checkpoint's) has no native bf16 on "
            "this machine; using 32-true (precision=bf16-mixed to insist)",
            file=sys.stderr,
        )
        precision = "32-true"
    if accelerator == "cpu" and precision in ("16-mixed", "16-true"):
        print(f"fphtr-eval: precision {precision} needs a GPU; using 32-true", file=sys.stderr)
        precision = "32-true"
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.progress,
    )


def evaluate(cfg: DictConfig, dataset_choice: str | None = None) -> dict[str, Any]:
    """Evaluate `cfg.checkpoint`; returns the metrics (also written to metrics.json)."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UsageError("checkpoint=... is required (fphtr-eval checkpoint=PATH)")
    started = time.time()
    split = cfg.split.value if isinstance(cfg.split, Enum) else str(cfg.split)
    model, tokenizer, stored = load_model(cfg.checkpoint)
    config = eval_config(stored, cfg, dataset_choice)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    module = EvalModule(model, tokenizer, config, worst=cfg.worst)
    loader = _loader(config, split, module)
    trainer = _trainer(cfg, stored)
    trainer.test(module, dataloaders=loader, verbose=False)
    rows = module.rows
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]

    metrics = {
        "cer": cer(refs, hyps),
        "wer": wer(refs, hyps),
        "samples": len(rows),
        "skipped": len(module.skipped),  # unreadable images: not scored, not replaced
        "skipped_ids": module.skipped,
        "split": split,
        "dataset": config["dataset"],
        "decoding": config["decoding"],
        "checkpoint": str(cfg.checkpoint),
        "seconds": round(time.time() - started, 1),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(output_dir / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "reference", "hypothesis", "cer"])
        writer.writeheader()
        writer.writerows(rows)
    worst = module.worst_samples()
    if worst:
        samples = [Sample(img, r["reference"], f"{r['id']} CER {r['cer']:.1%}") for r, img in worst]
        save_sample_grid(samples, output_dir / "worst.png", columns=2,
                         predictions=[r["hypothesis"] for r, _ in worst])  # fmt: skip
    metrics["wandb_sync"] = _log_to_loggers(config, output_dir, metrics, worst)
    _print_summary(metrics, output_dir, bool(worst))
    return metrics


def _log_to_loggers(
    config: dict[str, Any],
    output_dir: Path,
    metrics: dict[str, Any],
    worst: list[tuple[dict[str, Any], np.ndarray]],
) -> str | None:
    """Metrics (and the worst samples as a table, for W&B) to the configured logger."""
    split = metrics["split"]
    loggers = build_loggers(config, output_dir, f"eval-{split}-{Path(metrics['checkpoint']).stem}",
                            None)  # fmt: skip
    if not loggers:
        return None
    for lg in loggers:
        lg.log_metrics({f"eval/{split}/cer": metrics["cer"], f"eval/{split}/wer": metrics["wer"]})
        if hasattr(lg, "log_table") and worst:  # WandbLogger
            import wandb

            lg.log_table(
                key=f"eval/{split}/worst",
                columns=["image", "reference", "hypothesis", "cer", "id"],
                data=[[wandb.Image(img), r["reference"], r["hypothesis"], r["cer"], r["id"]]
                      for r, img in worst],
            )  # fmt: skip
        lg.save()
    return finish_loggers(loggers)


def _print_summary(m: dict[str, Any], output_dir: Path, grid: bool) -> None:
    lines = [
        "",
        "fphtr evaluation",
        f"  checkpoint  {m['checkpoint']}",
        f"  dataset     {m['dataset']['name']}, split {m['split']}, {m['samples']} samples",
        f"  decoding    beam width {m['decoding']['beam_width']}, max length "
        f"{m['decoding']['max_len']}",
        f"  CER / WER   {100 * m['cer']:.2f}% / {100 * m['wer']:.2f}%",
        *(
            [f"  skipped     {m['skipped']} unreadable: {', '.join(m['skipped_ids'])}"]
            if m["skipped"]
            else []
        ),
        f"  outputs     {output_dir}/metrics.json, predictions.csv"
        + (", worst.png" if grid else ""),
    ]
    if m.get("wandb_sync"):
        lines.append(f"  upload W&B  {m['wandb_sync']}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="eval")
def _app(cfg: DictConfig) -> None:
    try:
        evaluate(cfg, HydraConfig.get().runtime.choices.get("dataset"))
    except (UsageError, CheckpointError) as e:
        print(f"fphtr-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Console entry point `fphtr-eval`."""
    _app()


if __name__ == "__main__":
    main()
