#!/usr/bin/env python
"""The page overfitting study in miniature (docs/page_study.md, part 3), from one command:

    python scripts/page_study.py --out runs/page_study

1. a finite page set in IAM's exact layout (scripts/make_iam_fixture.py: 200 forms of 6-12
   lines, the validation and test forms in two held-out fonts with held-out texts), unless
   --root points at one (or at a real IAM: then give --split-dir with Aachen lists);
2. split lists keeping the first --train-forms training forms (a small set, so that the CPU
   budget covers many epochs, as long GPU trainings do on IAM's 747 forms);
3. a line model on those forms' lines (the quick start's recipe, for the transfer arm);
4. one page run per arm (`experiment=iam_pages_cpu` plus the arm's overrides), all at the
   same number of steps, one after the other;
5. scripts/sweep_report.py over the run folders: best val CER, train CER, the gap;
6. with --sweep-trials N (default 4; 0 skips it), a small Optuna sweep around the combined
   arm (`hparams_search=iam_pages_cpu`, same steps) into <out>/sweep, and its report.

A run folder that already holds metrics.json is kept (rerun after an interruption and only
the missing runs train); --only runs some arms. Every run is a plain fphtr-train command,
printed before it starts, with logger=csv and its own hydra.run.dir.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from fphtr.data.iam_fixture import make_iam_fixture

REPORT = Path(__file__).with_name("sweep_report.py")
TRAIN = ["fphtr-train", "logger=csv", "run_test=false"]
# the keys conf/hparams_search/iam_pages_cpu.yaml searches: the combination's fixed values
# for them step aside in the sweep
SEARCHED = ("optim.lr", "optim.tf_noise", "encoder.dropout", "decoder.dropout",
            "augmentation.synthetic_proba")  # fmt: skip


def arms(steps: int, line_ckpt: Path) -> dict[str, list[str]]:
    """Arm name -> fphtr-train overrides on top of experiment=iam_pages_cpu."""
    lines_every = max(1, round(0.8 * steps / 11))  # 1 line -> 12 lines over 80% of the run
    remedies = {
        "synthetic": ["augmentation.synthetic_proba=0.5"],
        "from-lines": [f"model.init_from={line_ckpt}"],
        "curriculum": ["callbacks.curriculum=true", f"callbacks.curriculum_lines_every={lines_every}"],
        "dropout": ["encoder.dropout=0.3", "decoder.dropout=0.2",
                    f"encoder.dropout_ramp_steps={steps // 2}",
                    f"decoder.dropout_ramp_steps={steps // 2}"],
        "tf-noise": ["optim.tf_noise=0.2"],
        "augmentation": ["augmentation=paper"],
    }  # fmt: skip
    combined = [o for r in remedies.values() for o in r]
    # augmentation=paper sets synthetic_proba=0: a group choice comes before dotted keys
    # whatever their order, so the combination keeps the synthetic share
    return {"baseline": [], **remedies, "combined": combined}


def runs(out: Path, root: Path, splits: Path, steps: int, extra: list[str]) -> dict[str, list[str]]:
    """Run folder name -> fphtr-train overrides: the line model, then one page run per arm."""
    data = [f"dataset.root={root}", "dataset.split=aachen", f"dataset.split_dir={splits}"]
    plan = {"0-lines": ["dataset=iam", *data]}  # the quick start's recipe, on the set's lines
    page = ["experiment=iam_pages_cpu", *data, f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}"]  # fmt: skip
    chosen = arms(steps, out / "0-lines" / "checkpoints" / "last.ckpt")
    for k, (name, overrides) in enumerate(chosen.items(), 1):
        plan[f"{k}-{name}"] = [*page, *overrides, *extra]
    return plan


def sweep_overrides(plan: dict[str, list[str]], trials: int) -> list[str]:
    """The Optuna sweep around the combined arm: its overrides less the searched keys."""
    combined = next(v for k, v in plan.items() if k.endswith("-combined"))
    fixed = [o for o in combined if o.split("=")[0] not in SEARCHED]
    return ["hparams_search=iam_pages_cpu", *fixed, f"hydra.sweeper.n_trials={trials}"]


def call(cmd: list[str], log: Path) -> None:
    """Print the command, run it with its output in `log`, stop the study if it fails."""
    print("$ " + shlex.join(cmd), flush=True)
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"failed (exit {code}): see {log}")


def run(cmd: list[str], folder: Path) -> None:
    if (folder / "metrics.json").is_file():
        print(f"# kept: {folder} (metrics.json exists)", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    call(cmd, folder.with_suffix(".log"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="study folder")
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="an IAM-layout folder (default: <out>/iam-mini, built if missing)",
    )
    parser.add_argument(
        "--split-dir",
        type=Path,
        default=None,
        help="Aachen lists of --root (default: <root>/splits/aachen)",
    )
    parser.add_argument("--train-forms", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200, help="page steps per arm")
    parser.add_argument("--only", nargs="+", default=None, help="arms to run (default: all)")
    parser.add_argument(
        "--sweep-trials", type=int, default=4, help="Optuna trials around the combination"
    )
    parser.add_argument("extra", nargs="*", help="overrides added to every page run")
    args = parser.parse_args()

    out = args.out.resolve()
    root = (args.root or out / "iam-mini").resolve()
    if args.root is None:
        print(f"# the page set: {root}", flush=True)
        make_iam_fixture(root, forms=200, seed=0, scale=1.0, lines_per_form=(6, 12),
                         held_out_fonts=("kalam", "shadows-into-light"), held_out_texts=True)  # fmt: skip
    lists = (args.split_dir or root / "splits" / "aachen").resolve()
    splits = out / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    missing = [n for n in ("train", "validation", "test") if not (lists / f"{n}.uttlist").is_file()]
    if missing:
        sys.exit(f"{lists} lacks {', '.join(missing)}.uttlist: point --root at an IAM-layout "
                 "folder, or --split-dir at its Aachen lists")  # fmt: skip
    train = (lists / "train.uttlist").read_text().split()
    if len(train) < args.train_forms:
        sys.exit(f"{lists}/train.uttlist has {len(train)} forms, fewer than --train-forms")
    (splits / "train.uttlist").write_text("\n".join(train[: args.train_forms]) + "\n")
    for name in ("validation.uttlist", "test.uttlist"):
        (splits / name).write_text((lists / name).read_text())

    plan = runs(out, root, splits, args.steps, args.extra)
    arm_of = {name: name.split("-", 1)[1] for name in plan}  # "3-from-lines" -> "from-lines"
    unknown = set(args.only or ()) - set(arm_of.values())
    if unknown:
        sys.exit(f"unknown arms {sorted(unknown)}; choose from {list(arm_of.values())[1:]}")
    for name, overrides in plan.items():
        if args.only and name != "0-lines" and arm_of[name] not in args.only:
            continue
        run([*TRAIN, *overrides, f"hydra.run.dir={out / name}"], out / name)
    subprocess.check_call([sys.executable, str(REPORT), str(out)], env=os.environ)
    if args.sweep_trials > 0:
        sweep = out / "sweep"
        if not (sweep / "optimization_results.yaml").is_file():
            sweep_cmd = [*TRAIN, "-m", *sweep_overrides(plan, args.sweep_trials)]
            call([*sweep_cmd, f"hydra.sweep.dir={sweep}"], out / "sweep.log")
        subprocess.check_call([sys.executable, str(REPORT), str(sweep)], env=os.environ)


if __name__ == "__main__":
    main()
