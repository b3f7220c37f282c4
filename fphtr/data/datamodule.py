"""LightningDataModule: datasets -> geometry frame + augmentation -> padded batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from fphtr.data.augment import Augmenter
from fphtr.data.geometry import pad_batch, prepare, to_tensor
from fphtr.data.loader import EpochSampler, ResumableDataLoader
from fphtr.data.sample import Sample
from fphtr.data.tokenizer import PAD, Tokenizer


@dataclass
class Batch:
    images: torch.Tensor  # (B, 1, H, W) paper 0.0, ink 1.0, top-left placed
    sizes: torch.Tensor  # (B, 2) valid (h, w) of each image
    tokens: torch.Tensor  # (B, T) [SOS, chars..., EOS, PAD...]
    texts: list[str]
    ids: list[str]
    # evaluation samples whose image could not be decoded: left out of the batch, not replaced
    skipped: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device), self.sizes.to(device), self.tokens.to(device),
            self.texts, self.ids, self.skipped,
        )  # fmt: skip


class PreparedDataset(Dataset):
    """Wraps a dataset of `Sample`s: optional synthetic replacement and augmentation
    (training only), then the geometry frame and tensor conversion (every split)."""

    def __init__(
        self,
        base: Dataset,
        max_height: int,
        max_width: int,
        augment: Augmenter | None = None,
        synthetic: Dataset | None = None,
        synthetic_proba: float = 0.0,
        seed: int = 0,
    ):
        self.base, self.synthetic, self.augment = base, synthetic, augment
        self.max_height, self.max_width = max_height, max_width
        self.synthetic_proba = synthetic_proba
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """Called at every training epoch start: random draws depend on (seed, epoch, index)."""
        self.epoch = epoch
        for ds in (self.base, self.synthetic):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str, str]:
        rng = np.random.default_rng([self.seed, self.epoch, i, 7])
        if self.synthetic is not None and rng.random() < self.synthetic_proba:
            sample: Sample = self.synthetic[int(rng.integers(len(self.synthetic)))]
        else:
            sample = self.base[i]
        if sample.unreadable:  # an evaluation image that cannot be decoded: collate drops it
            return None, sample.text, sample.id
        image = sample.image
        if self.augment is not None:
            image = self.augment(image, seed=int(rng.integers(2**31)))
        image = prepare(image, 1.0, self.max_height, self.max_width)  # keep within the frame
        return to_tensor(image), sample.text, sample.id


def collate(
    tokenizer: Tokenizer, canvas_multiple: tuple[int, int] = (32, 32)
) -> Callable[[list], Batch]:
    def fn(items: list[tuple[torch.Tensor | None, str, str]]) -> Batch:
        skipped = [i for image, _, i in items if image is None]
        items = [item for item in items if item[0] is not None]
        if not items:  # every image of this batch unreadable
            empty = torch.zeros(0, 2, dtype=torch.long)
            return Batch(torch.zeros(0, 1, 32, 32), empty, empty, [], [], skipped)
        images, texts, ids = zip(*items, strict=True)
        canvas, sizes = pad_batch(list(images), tuple(canvas_multiple))
        encoded = [tokenizer.encode(t) for t in texts]
        tokens = torch.full((len(encoded), max(map(len, encoded))), PAD, dtype=torch.long)
        for j, seq in enumerate(encoded):
            tokens[j, : len(seq)] = torch.tensor(seq)
        return Batch(canvas, sizes, tokens, list(texts), list(ids), skipped)

    return fn


class HTRDataModule(pl.LightningDataModule):
    """Holds the train/val/test datasets of one dataset + data format and the tokenizer.

    `datasets` maps split -> dataset of `Sample`s at the data format's scale."""

    def __init__(
        self,
        datasets: dict[str, Dataset],
        tokenizer: Tokenizer,
        batch_size: int,
        max_height: int,
        max_width: int,
        augment: Augmenter | None = None,
        synthetic: Dataset | None = None,
        synthetic_proba: float = 0.0,
        num_workers: int = 0,
        seed: int = 0,
        probe_size: int = 0,
        canvas_multiple: tuple[int, int] = (32, 32),
        eval_batch_size: int | None = None,
    ):
        super().__init__()
        self.probe_size = probe_size
        self.canvas_multiple = tuple(canvas_multiple)
        self._resume_position: dict[str, int] | None = None
        self.tokenizer = tokenizer
        self.batch_size, self.num_workers = batch_size, num_workers
        # decoding costs per step, not per sample: evaluation can batch more than training
        self.eval_batch_size = eval_batch_size or batch_size
        frame = {"max_height": max_height, "max_width": max_width}
        self.train = PreparedDataset(  # empty when only evaluation splits are built
            datasets.get("train", []), augment=augment, synthetic=synthetic,
            synthetic_proba=synthetic_proba, seed=seed, **frame,
        )  # fmt: skip
        self.evaluation = {
            split: PreparedDataset(ds, seed=seed, **frame)
            for split, ds in datasets.items()
            if split != "train"
        }

    def _world(self) -> tuple[int, int]:
        """(number of processes, this process's global rank); (1, 0) outside a Trainer."""
        trainer = self.trainer  # None when used on its own (fphtr-eval)
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _loader(
        self,
        ds: Dataset,
        sampler: Sampler,
        cls: type[DataLoader] = DataLoader,
        batch_size: int | None = None,
    ) -> DataLoader:
        return cls(
            ds,
            batch_size=batch_size or self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate(self.tokenizer, self.canvas_multiple),
            # workers are re-created each epoch so they see the new epoch of the datasets
            persistent_workers=False,
            # a private generator: creating a loader's iterator draws worker seeds from it,
            # not from the global RNG, whose state a resumed run restores for dropout
            generator=torch.Generator().manual_seed(self.train.seed),
        )

    def train_dataloader(self) -> DataLoader:
        """One shard per process, reshuffled per (seed, epoch); resumable mid-epoch."""
        replicas, rank = self._world()
        sampler = EpochSampler(self.train, replicas, rank, seed=self.train.seed)
        self._train_loader = self._loader(self.train, sampler, ResumableDataLoader)
        if self._resume_position:  # restored from a checkpoint (see fphtr.data.loader)
            self._train_loader.load_state_dict(self._resume_position)
        return self._train_loader

    def state_dict(self) -> dict[str, Any]:
        """The training data position, stored in checkpoints for an exact resume."""
        loader = getattr(self, "_train_loader", None)
        return {"train_loader": loader.state_dict()} if loader else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume_position = state.get("train_loader")

    def _eval_loader(self, ds: Dataset) -> DataLoader:
        # every sample exactly once over all processes: corpus-level CER sums are exact
        replicas, rank = self._world()
        sampler = UnrepeatedDistributedSampler(ds, replicas, rank, shuffle=False)
        return self._loader(ds, sampler, batch_size=self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.evaluation["val"])

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.evaluation["test"])

    def train_probe(self, n: int | None = None) -> Batch | None:
        """A fixed batch of training samples (no augmentation) for measuring train/cer."""
        n = self.probe_size if n is None else n
        if n <= 0:
            return None
        base = PreparedDataset(self.train.base, self.train.max_height, self.train.max_width)
        items = [base[i] for i in range(min(n, len(base)))]
        return collate(self.tokenizer, self.canvas_multiple)(items)


def build_datasets(
    config: dict[str, Any], splits: Sequence[str] = ("train", "val", "test")
) -> tuple[dict[str, Dataset], str, Dataset | None]:
    """(split -> dataset, the characters of the training labels, synthetic source or None)
    for the configured dataset and data format, for `splits` only (fphtr-eval builds the
    one it evaluates). The synthetic source stitches new samples from training-split words
    only (`stitch.Stitcher`)."""
    ds, fmt = config["dataset"], config["data_format"]
    if ds["name"] == "synthetic":
        from fphtr.data import synthetic
        from fphtr.data.stitch import Stitcher

        common = {
            "seed": config["seed"],
            "scale": fmt["scale"],
            "val_writers": ds["val_writers"],
            "train_writers": ds["train_writers"],
            "min_lines": ds["min_lines"],
            "max_lines": ds["max_lines"],
            "words_per_line": (ds["min_words"], ds["max_words"]),
            "line_width": tuple(ds["line_width"]) if ds["line_width"] else None,
        }
        by_split = {
            split: synthetic.SyntheticHandwriting(
                split, kind=fmt["name"], size=ds[f"{split}_size"], **common
            )
            for split in splits
        }
        stitched = None
        if config["augmentation"]["synthetic_proba"] > 0 and "train" in splits:
            # The word pool: rendered words of the training writers and corpus sentences.
            words = synthetic.SyntheticHandwriting("train", "word", size=ds["train_size"], **common)
            s = fmt["scale"]
            stitched = Stitcher(
                words,
                fmt["name"],
                size=ds["train_size"],
                seed=config["seed"],
                # about 3 to 9 words, like the line samples, unless those fill a given width
                line_width=tuple(w * s for w in common["line_width"] or (600, 2000)),
                page_width=(1700 * s, 2300 * s),  # SyntheticHandwriting's form_width
                lines_per_form=range(ds["min_lines"], ds["max_lines"] + 1),
                margin=(20 * s, 70 * s),
            )
        return by_split, synthetic.charset(), stitched
    if ds["name"] == "iam":
        from fphtr.data.iam import build_iam

        return build_iam(config, splits)
    raise ValueError(f"dataset.name={ds['name']!r}: expected one of synthetic, iam")


def build_datamodule(
    config: dict[str, Any], splits: Sequence[str] = ("train", "val", "test")
) -> HTRDataModule:
    """The data module of a resolved config (see conf/dataset, conf/data_format), with the
    datasets of `splits` only (the training set is empty without "train")."""
    datasets, chars, synthetic_source = build_datasets(config, splits)
    fmt, aug = config["data_format"], config["augmentation"]
    augment = Augmenter(**aug) if aug["name"] != "none" else None
    return HTRDataModule(
        datasets,
        Tokenizer(chars),
        batch_size=fmt["batch_size"],
        max_height=fmt["max_height"],
        max_width=fmt["max_width"],
        augment=augment,
        synthetic=synthetic_source,
        synthetic_proba=aug["synthetic_proba"],
        num_workers=config["num_workers"],
        seed=config["seed"],
        probe_size=config["callbacks"]["train_cer_samples"],
        canvas_multiple=tuple(fmt.get("canvas_multiple", (32, 32))),
        eval_batch_size=fmt.get("eval_batch_size"),
    )
