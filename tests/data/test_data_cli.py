"""fphtr-data on the fixture: counts, skipped items with reasons, vocabulary, sizes, grid."""

from __future__ import annotations

from PIL import Image

from fphtr.data_cli import main

from .conftest import aachen_dir


def test_report_of_every_format_with_a_grid(broken_fixture, tmp_path, capsys):
    args = ["dataset=iam", f"dataset.root={broken_fixture.root}", "dataset.split=aachen",
            f"dataset.split_dir={aachen_dir(broken_fixture)}", f"dataset.cache_dir={tmp_path}/c",
            "augmentation.synthetic_proba=0.5", "--formats", "all", "--images", "8",
            "--grid", str(tmp_path / "grid.png")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    for fmt in ("word", "line", "form"):
        assert f"data_format={fmt}" in out
    assert "1 missing image" in out and "1 unreadable image (not a PNG)" in out
    assert "1 unknown id in split list" in out and "vocabulary from train:" in out
    assert "+ newline" in out and "lines per form" in out and "stitched from" in out
    assert Image.open(tmp_path / "grid.png").width > 100


def test_bad_root_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["dataset=iam", f"dataset.root={tmp_path}/none"]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "xml/a01-000u.xml" in err
    assert main(["dataset=iam", "dataset.rot=/x"]) == 2
    assert "rot" in capsys.readouterr().err
