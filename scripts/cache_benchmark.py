"""How much the image cache saves: load every form of an IAM copy twice (two "epochs").

    python scripts/cache_benchmark.py                      # on a generated 12-form fixture
    python scripts/cache_benchmark.py --root /data/IAM --limit 200

The first epoch decodes the 2479 x 3542 scans, crops and resizes them and fills the cache;
the second reads the small cached images. Without the cache both epochs cost the same.
Acceptance (issue 3): the second epoch is at least 3x faster.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from fphtr.data.cache import ImageCache
from fphtr.data.iam import IAM, IAMDataset
from fphtr.data.iam_fixture import make_iam_fixture


def epoch_seconds(dataset, workers: int) -> float:
    """Seconds to load every sample once, as a training epoch would (no model)."""
    start = time.perf_counter()
    if workers == 0:
        for i in range(len(dataset)):
            dataset[i]
    else:
        loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=lambda b: b)
        for _ in loader:
            pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="an IAM copy (default: a fixture)")
    parser.add_argument("--forms", type=int, default=12, help="fixture forms (without --root)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many forms")
    parser.add_argument("--scale", type=float, default=0.5, help="data_format.scale")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: inline)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or make_iam_fixture(Path(tmp) / "iam", forms=args.forms).root
        iam = IAM(root, split="writers")
        items = [it for s in ("train", "val", "test") for it in iam.items(s, "form")[0]]
        items = items[: args.limit] if args.limit else items
        print(f"{len(items)} form scans from {root}, scale {args.scale}, workers {args.workers}")
        print(f"{'':<10} {'epoch 1':>9} {'epoch 2':>9} {'speed-up':>9}")
        for name, cache_dir in (("no cache", None), ("cache", Path(tmp) / "cache")):
            dataset = IAMDataset(
                items, args.scale, 1600, 1280, ImageCache(cache_dir), "all", "form"
            )
            first = epoch_seconds(dataset, args.workers)
            second = epoch_seconds(dataset, args.workers)
            print(f"{name:<10} {first:>8.2f}s {second:>8.2f}s {first / second:>8.1f}x")
        size = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.png"))
        print(f"cache size: {size / 1e6:.1f} MB for {len(items)} forms "
              f"({size / len(items) / 1e3:.0f} kB per form)")  # fmt: skip


if __name__ == "__main__":
    main()
