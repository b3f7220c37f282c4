"""Render synthetic handwriting samples into a PNG contact sheet, to look at the data.

    python scripts/sample_grid.py --kind line --split train --n 16 --scale 0.5 --seed 0 \
        --out samples_line.png
"""

from __future__ import annotations

import argparse

from fphtr.data.grid import save_sample_grid
from fphtr.data.synthetic import DEFAULT_VAL_WRITERS, WRITERS, SyntheticHandwriting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["word", "line", "form"], default="line")
    parser.add_argument("--split", choices=["train", "val", "test"], default="train")
    parser.add_argument("--n", type=int, default=16, help="number of samples")
    parser.add_argument("--scale", type=float, default=0.5, help="relative to a 300 dpi scan")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epoch", type=int, default=0, help="training epoch to draw from")
    parser.add_argument("--columns", type=int, default=None, help="default: 4 (forms: 2)")
    parser.add_argument("--max-lines", type=int, default=10, help="forms: most lines per page")
    parser.add_argument(
        "--val-writers", nargs="+", default=list(DEFAULT_VAL_WRITERS), choices=WRITERS,
        help="writers held out for val/test",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="PNG path (default samples_<kind>_<split>.png)")
    args = parser.parse_args()

    dataset = SyntheticHandwriting(
        args.split, args.kind, size=args.n, seed=args.seed, scale=args.scale,
        val_writers=args.val_writers, max_lines=args.max_lines,
    )  # fmt: skip
    dataset.set_epoch(args.epoch)
    samples = [dataset[i] for i in range(len(dataset))]
    columns = args.columns or (2 if args.kind == "form" else 4)
    out = args.out or f"samples_{args.kind}_{args.split}.png"
    print(save_sample_grid(samples, out, columns=columns))


if __name__ == "__main__":
    main()
