#!/usr/bin/env python
"""CER and WER of a page model by the number of lines on the page, from fphtr-eval's output.

    fphtr-eval checkpoint=runs/pages/checkpoints/last.ckpt split=val
    python scripts/cer_by_lines.py outputs/eval/<date>/<time>/predictions.csv

A page's line count is the number of lines of its reference (lines are separated by "\\n").
Rates are pooled within each group (edits / reference characters, as everywhere in fphtr),
so the last row ("all") is the CER/WER that fphtr-eval printed. Shows which page sizes a
model has learned to read (docs/page_study.md).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from fphtr.metrics import cer, wer


def by_lines(rows: list[dict]) -> list[dict]:
    """One row per line count (and a last row "all"): pages, CER, WER, hypothesis length."""
    groups: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["reference"].count("\n") + 1].append(row)

    def summary(name: str, items: list[dict]) -> dict:
        refs, hyps = [r["reference"] for r in items], [r["hypothesis"] for r in items]
        return {"lines": name, "pages": len(items), "cer": cer(refs, hyps), "wer": wer(refs, hyps),
                "hyp_per_ref_chars": sum(map(len, hyps)) / max(sum(map(len, refs)), 1)}  # fmt: skip

    out = [summary(str(n), groups[n]) for n in sorted(groups)]
    out.append(summary("all", rows))
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| lines | pages | CER | WER | hypothesis / reference length |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in table:
        lines.append(f"| {r['lines']} | {r['pages']} | {100 * r['cer']:.2f}% | "
                     f"{100 * r['wer']:.2f}% | {r['hyp_per_ref_chars']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="predictions.csv written by fphtr-eval")
    args = parser.parse_args()
    if not args.predictions.is_file():
        parser.error(f"{args.predictions} is not a file: pass the predictions.csv of a "
                     "fphtr-eval run (its output folder is printed at the end)")  # fmt: skip
    with open(args.predictions, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"reference", "hypothesis"} <= set(rows[0]):
        parser.error(f"{args.predictions}: no rows with reference and hypothesis columns")
    print(markdown(by_lines(rows)))


if __name__ == "__main__":
    main()
