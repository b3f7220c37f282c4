"""Write a small fake IAM in IAM's exact layout (see fphtr/data/iam_fixture.py).

python scripts/make_iam_fixture.py --out /tmp/iam-fixture --forms 6
fphtr-data dataset=iam dataset.root=/tmp/iam-fixture --formats all
"""

from __future__ import annotations

import argparse

from fphtr.data.iam_fixture import OFFICIAL_DIR, inject_broken, make_iam_fixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--forms", type=int, default=6, help="number of forms (>= 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="page resolution relative to IAM's 300 dpi (1.0: 2479x3542 pages)",
    )
    parser.add_argument(
        "--lines",
        type=int,
        nargs=2,
        default=(3, 6),
        metavar=("MIN", "MAX"),
        help="handwritten lines per form",
    )
    parser.add_argument(
        "--held-out-fonts",
        nargs="+",
        default=(),
        metavar="FONT",
        help="fonts that write only the validation and test forms (new hands at evaluation, "
        "e.g. kalam shadows-into-light)",
    )
    parser.add_argument(
        "--held-out-texts",
        action="store_true",
        help="validation and test forms copy held-out corpus sentences, never a training text",
    )
    parser.add_argument(
        "--single-forms-dir",
        action="store_true",
        help="put all form scans in forms/ instead of formsA-D/E-H/I-Z",
    )
    parser.add_argument(
        "--broken",
        action="store_true",
        help="damage it in known places (missing/empty/unreadable images, "
        "malformed ascii records, unknown ids in split lists)",
    )
    args = parser.parse_args()
    if args.broken and args.forms < 6:
        parser.error("--broken needs --forms 6 or more (it damages three training forms)")
    info = make_iam_fixture(
        args.out,
        forms=args.forms,
        seed=args.seed,
        scale=args.scale,
        lines_per_form=tuple(args.lines),
        single_forms_dir=args.single_forms_dir,
        overwrite=True,
        held_out_fonts=args.held_out_fonts,
        held_out_texts=args.held_out_texts,
    )
    n_lines = sum(len(f.lines) for f in info.forms)
    n_words = sum(len(ln.words) for f in info.forms for ln in f.lines)
    print(f"wrote {len(info.forms)} forms, {n_lines} lines, {n_words} words to {args.out}")
    print(f"  RWTH Aachen-style lists: {args.out}/splits/aachen/*.uttlist")
    print(f"  official task lists:     {args.out}/{OFFICIAL_DIR}/*.txt")
    if args.broken:
        for what, item in inject_broken(args.out).items():
            print(f"  broken: {what}: {item}")


if __name__ == "__main__":
    main()
