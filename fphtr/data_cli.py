"""fphtr-data: look at a dataset the way training will see it, before training on it.

    fphtr-data dataset=iam dataset.root=/data/IAM data_format=line
    fphtr-data dataset=iam dataset.root=/data/IAM --formats all --grid iam.png

Takes the same overrides as fphtr-train (it composes conf/train.yaml) and prints, per data
format and split: the number of samples, the skipped items with their reasons, the vocabulary
and characters unseen in training, image sizes (as fed to the model) and label lengths.
`--grid` writes a PNG contact sheet of samples with their labels.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fphtr.config import ConfigError, register_configs, validate

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
FORMATS = ("word", "line", "form")


def _config(overrides: Sequence[str]) -> dict[str, Any]:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.output_dir = "unused"  # no run directory: nothing is written
    validate(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _stats(values: Sequence[float]) -> str:
    if not len(values):
        return "-"
    v = np.asarray(values, dtype=float)
    return f"{v.min():.0f} / {np.median(v):.0f} / {v.max():.0f}"


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n)."""
    return sorted({int(i) for i in np.linspace(0, n - 1, min(n, k))}) if n else []


def describe(config: dict[str, Any], images: int = 100, out=None) -> dict[str, Any]:
    """Print the report of one data format; returns the datasets and samples it looked at."""
    from fphtr.data.datamodule import build_datasets
    from fphtr.data.geometry import prepare

    fmt, ds = config["data_format"], config["dataset"]
    datasets, chars, stitched = build_datasets(config)

    def p(line: str = "") -> None:
        print(line, file=out or sys.stdout)

    where = f" root={ds['root']} split={ds['split']}" if ds["name"] == "iam" else ""
    p(f"\n== dataset={ds['name']}{where}  data_format={fmt['name']}  scale {fmt['scale']}  "
      f"frame {fmt['max_height']}x{fmt['max_width']}")  # fmt: skip
    p(f"{'split':<6} {'samples':>8} {'skipped':>8}  reasons")
    samples: dict[str, list] = {}
    for split, d in datasets.items():
        samples[split] = [d[i] for i in _spread(len(d), images)]  # decoding finds bad files
        skipped = dict(getattr(d, "skipped", {}))
        if getattr(d, "failed", None):
            skipped["undecodable image (replaced by the next sample when training)"] = len(d.failed)
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items(), key=lambda x: -x[1]))
        p(f"{split:<6} {len(d):>8} {sum(skipped.values()):>8}  {reasons}")

    shown = repr(chars.replace("\n", "")) + (" + newline" if "\n" in chars else "")
    p(f"vocabulary from train: {len(chars)} characters {shown}")
    labels: dict[str, list[str]] = {}
    for split, d in datasets.items():
        picked = samples[split]
        labels[split] = d.texts() if hasattr(d, "texts") else [s.text for s in picked]
        unseen = sorted({c for t in labels[split] for c in t} - set(chars))
        if unseen and split != "train":
            p(f"  {split}: characters unseen in training (encoded as <unk>): {''.join(unseen)!r}")

    p(f"image height and width in px as fed to the model, min / median / max "
      f"(over up to {images} samples per split)")  # fmt: skip
    for split, picked in samples.items():
        shapes = [prepare(s.image, 1.0, fmt["max_height"], fmt["max_width"]).shape for s in picked]
        p(f"  {split:<6} h {_stats([h for h, _ in shapes]):<18} w {_stats([w for _, w in shapes])}")
    p(
        "label length in characters, min / median / max"
        + ("; lines per form" if fmt["name"] == "form" else "")
    )
    for split, texts in labels.items():
        extra = (
            f"; lines {_stats([t.count(chr(10)) + 1 for t in texts])}"
            if fmt["name"] == "form"
            else ""
        )
        p(f"  {split:<6} {_stats([len(t) for t in texts])}{extra}")
    proba = config["augmentation"]["synthetic_proba"]
    if stitched is not None:
        p(f"synthetic augmentation: {proba:.0%} of training samples stitched from "
          f"{len(stitched.words)} training words")  # fmt: skip
        samples["stitched"] = [stitched[i] for i in range(min(4, len(stitched)))]
    else:
        p("synthetic augmentation: off (augmentation.synthetic_proba=0)")
    return {"datasets": datasets, "samples": samples}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fphtr-data",
        description="Report on a dataset as training will see it (takes fphtr-train overrides).",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. dataset=iam "
                        "dataset.root=/data/IAM data_format=line")  # fmt: skip
    parser.add_argument("--formats", default=None,
                        help="comma-separated data formats to report, or 'all' "
                        "(default: the configured data_format)")  # fmt: skip
    parser.add_argument(
        "--images",
        type=int,
        default=100,
        help="samples per split decoded for image statistics (default 100)",
    )
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of samples")
    parser.add_argument("--grid-samples", type=int, default=4, help="samples per split in the grid")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    register_configs()

    formats = (
        FORMATS if args.formats == "all" else (args.formats.split(",") if args.formats else [None])
    )
    grid = []
    try:
        for fmt in formats:
            if fmt is not None and fmt not in FORMATS:
                parser.error(f"--formats: unknown data format {fmt!r}; choose from {FORMATS}")
            overrides = [*args.overrides, *([f"data_format={fmt}"] if fmt else [])]
            report = describe(_config(overrides), images=max(1, args.images))
            for split_samples in report["samples"].values():
                grid += split_samples[: args.grid_samples]
    except (ConfigError, ValueError, HydraException, OmegaConfBaseException) as e:
        # IAMError is a ValueError: its message says what is expected where; no traceback
        cause = f" ({e.__cause__})" if isinstance(e, HydraException) and e.__cause__ else ""
        print(f"fphtr-data: error: {e}{cause}", file=sys.stderr)
        return 2
    if args.grid is not None:
        from fphtr.data.grid import save_sample_grid

        print(f"grid of {len(grid)} samples: {save_sample_grid(grid, args.grid)}")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
