"""Samplers and the training DataLoader for exact resume and exact DDP metrics.

- Training: `EpochSampler`, torch's DistributedSampler (one shard per process, shuffled by
  (seed, epoch); Lightning calls `set_epoch`) that can skip the batches a resumed run already
  trained on. Under DDP the tail that does not divide evenly is dropped, so no sample is seen
  twice in an epoch.
- Validation and test: Lightning's UnrepeatedDistributedSampler, every sample exactly once
  over all processes, so corpus-level CER/WER summed over ranks equal a single process's.
- `ResumableDataLoader` implements the `state_dict` / `load_state_dict` protocol Lightning
  checks for: a checkpoint written mid-epoch (e.g. on SIGTERM) records how many batches of
  the epoch were handed out, and the resumed run continues with the next one. (torchdata's
  StatefulDataLoader does this generally; it is not a dependency of this project.) The
  state also travels as the data module's state (`HTRDataModule.state_dict`): Lightning
  builds the training loader before it restores loop states when the LR schedule asks for
  `estimated_stepping_batches`, and then never hands the loader its state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """DistributedSampler that also sets its dataset's epoch (the random draws of synthetic
    samples and augmentation depend on it) and whose next iteration can start `skip`
    samples into the epoch. Lightning calls `set_epoch` at every epoch start, also when a
    run resumes mid-epoch (when `on_train_epoch_start` hooks are not called)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the first iteration after a restore skips
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """Training DataLoader that knows how far into its epoch it is (see module docstring).

    Lightning does not prefetch from loaders with a length, so the number of batches yielded
    equals the number of batches the training loop has taken. Iteration is lazy: worker
    processes start at the first batch, after Lightning has set the epoch."""

    sampler: EpochSampler

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        self._yielded = self.sampler.skip // self.batch_size
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches"]
        if done >= len(self):  # the checkpoint was written after the epoch's last batch
            epoch, done = epoch + 1, 0
        self.sampler.set_epoch(epoch)
        self.sampler.skip = done * self.batch_size
