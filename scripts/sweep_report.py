#!/usr/bin/env python
"""Summarise a Hydra multirun sweep: a ranked table (markdown + CSV) and a plot.

    python scripts/sweep_report.py multirun/<date>/<time> [--out DIR]

Reads every job folder's `.hydra/overrides.yaml` and `metrics.json` (written by
fphtr-train), ranks the jobs by best validation CER and writes, into the sweep folder (or
--out): `report.md`, `report.csv` and `report.png` (train vs validation CER per job: the
gap is the overfitting). Jobs that failed (no metrics.json) are listed as failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import yaml

COLUMNS = ["rank", "job", "overrides", "best_val_cer", "val_wer", "train_cer", "gap", "steps",
           "seconds"]  # fmt: skip


def collect(sweep_dir: Path) -> list[dict]:
    rows = []
    for job in sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()),
                      key=lambda p: int(p.name) if p.name.isdigit() else p.name):  # fmt: skip
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        row = {"job": job.name, "overrides": " ".join(overrides)}
        metrics_file = job / "metrics.json"
        if metrics_file.is_file():
            m = json.loads(metrics_file.read_text())
            best = m.get("best_val_cer", math.inf)
            train = m.get("train/cer")
            row |= {
                "best_val_cer": best,
                "val_wer": m.get("val/wer"),
                "train_cer": train,
                "gap": best - train if train is not None and math.isfinite(best) else None,
                "steps": m.get("steps"),
                "seconds": m.get("seconds"),
            }
        else:
            row |= {"best_val_cer": math.inf, "failed": True}
        rows.append(row)
    # show what differs between jobs; what all jobs share is printed once above the table
    shared = set.intersection(*(set(r["overrides"].split()) for r in rows)) if rows else set()
    for r in rows:
        r["overrides"] = " ".join(_short(o) for o in r["overrides"].split() if o not in shared)
        r["shared"] = " ".join(sorted(shared))
    rows.sort(key=lambda r: (r["best_val_cer"] is None, r["best_val_cer"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _short(override: str) -> str:
    """key=0.00025785250039038417 -> key=0.000258 (sweepers print full precision)."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.3g}" if "." in value or "e" in value else override
    except ValueError:
        return override


def fmt(v: object) -> str:
    if isinstance(v, float):
        return "inf (failed)" if math.isinf(v) else f"{100 * v:.2f}%" if v <= 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def write_markdown(rows: list[dict], path: Path, sweep_dir: Path) -> None:
    lines = [f"# Sweep report: {sweep_dir}", "", f"All jobs: `{rows[0]['shared']}`", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]  # fmt: skip
    for r in rows:
        cells = [
            fmt(r.get(c)) if c not in ("steps", "seconds") else str(r.get(c, "")) for c in COLUMNS
        ]
        lines.append("| " + " | ".join(cells) + " |")
    results = sweep_dir / "optimization_results.yaml"
    if results.is_file():
        best = yaml.safe_load(results.read_text())
        lines += ["", "Optuna best parameters:", "", "```yaml", yaml.safe_dump(best).strip(), "```"]
    path.write_text("\n".join(lines) + "\n")


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("train_cer") is not None and math.isfinite(r["best_val_cer"])]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(done) + 2), 4))
    x = range(len(done))
    ax.bar([i - 0.2 for i in x], [100 * r["train_cer"] for r in done], 0.4, label="train CER")
    ax.bar([i + 0.2 for i in x], [100 * r["best_val_cer"] for r in done], 0.4, label="val CER")
    ax.set_xticks(list(x), [f"job {r['job']}" for r in done], rotation=45, ha="right")
    ax.set_ylabel("CER (%)")
    ax.set_title("train vs validation CER per job (ranked by val CER)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="multirun/<date>/<time>")
    parser.add_argument("--out", type=Path, default=None, help="default: the sweep folder")
    args = parser.parse_args()
    if not args.sweep_dir.is_dir():
        raise SystemExit(
            f"{args.sweep_dir}: no such sweep folder (expected multirun/<date>/<time>)"
        )
    rows = collect(args.sweep_dir)
    if not rows:
        raise SystemExit(f"{args.sweep_dir}: no job folders with .hydra/ inside")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    write_markdown(rows, out / "report.md", args.sweep_dir)
    write_csv(rows, out / "report.csv")
    write_plot(rows, out / "report.png")
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'report.png'}")


if __name__ == "__main__":
    main()
