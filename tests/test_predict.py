"""fphtr-predict: every image mode and format, folders and globs, outputs, error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from fphtr.checkpoint import CheckpointError
from fphtr.data.synthetic import SyntheticHandwriting
from fphtr.predict import UsageError, escape, find_images, predict

from .conftest import CONF_DIR

FAST = ["decoding.max_len=12"]  # an untrained model never stops early; keep it short


def compose_predict(overrides: list[str]):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return compose("predict", overrides=[*FAST, *overrides])


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "fphtr.predict", *FAST, *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="module")
def page() -> np.ndarray:
    """A handwritten line as a uint8 grayscale array (paper 255)."""
    return SyntheticHandwriting("val", size=1, kind="line", seed=3, scale=0.4)[0].image


def save_modes(page: np.ndarray, folder: Path) -> dict[str, Path]:
    """The page in every PIL mode users have, as PNG, JPEG and TIFF."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = Image.fromarray(page)
    rgba = grey.convert("RGBA")
    rgba.putalpha(255)
    images = {
        "L": grey,
        "RGB": grey.convert("RGB"),
        "RGBA": rgba,
        "I;16": Image.fromarray(page.astype(np.uint16) * 257),  # 16-bit, full range
        "1": grey.point(lambda v: 255 if v > 160 else 0).convert("1"),
        "P": grey.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
    }
    paths = {}
    for mode, img in images.items():
        assert img.mode == mode
        name = mode.replace(";", "")
        for fmt in ("png", "tiff"):
            paths[f"{name}.{fmt}"] = folder / f"{name}.{fmt}"
            img.save(paths[f"{name}.{fmt}"])
        if mode in ("L", "RGB"):
            paths[f"{name}.jpg"] = folder / f"{name}.jpg"
            img.save(paths[f"{name}.jpg"], quality=92)
    return paths


def parse(stdout: str) -> dict[str, str]:
    lines = [line.split("\t") for line in stdout.splitlines()]
    assert all(len(parts) == 2 for parts in lines), stdout
    return dict(lines)


def test_every_image_mode_and_format_is_transcribed(tiny_run, page, tmp_path, capsys):
    paths = save_modes(page, tmp_path / "in")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_predict([f"checkpoint={ckpt}", f"input={tmp_path / 'in'}", "batch_size=32"])
    assert predict(cfg) == 0
    out = parse(capsys.readouterr().out)
    assert set(out) == {str(p) for p in paths.values()}
    # the lossless encodings of one page are the same grayscale image, hence the same text
    same = [paths[n] for n in ("L.png", "L.tiff", "RGB.png", "RGBA.png", "RGBA.tiff", "I16.png",
                               "I16.tiff")]  # fmt: skip
    assert len({out[str(p)] for p in same}) == 1


def test_any_size_is_brought_into_the_checkpoint_frame(tiny_run, tmp_path, capsys):
    # a huge and a tiny image: prepared with the checkpoint's scale and max frame
    Image.new("L", (6000, 900), 255).save(tmp_path / "huge.png")
    Image.new("L", (3, 2), 0).save(tmp_path / "tiny.png")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_predict([f"checkpoint={ckpt}", f"input={tmp_path}", "scale=2.0"])
    assert predict(cfg) == 0
    assert len(parse(capsys.readouterr().out)) == 2


def test_folder_of_20_with_a_corrupt_file(tiny_run, page, tmp_path):
    """Acceptance: 19 transcribed, the corrupt one named on stderr, exit code non-zero."""
    folder = tmp_path / "mixed"
    paths = list(save_modes(page, folder).values())  # 14 files
    for i, (w, h) in enumerate([(200, 60), (900, 120), (64, 64), (1500, 200)]):
        Image.fromarray(page).resize((w, h)).save(folder / f"resized{i}.png")
    Image.fromarray(page).rotate(90, expand=True).save(folder / "portrait.jpeg")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    (folder / "notes.txt").write_text("not an image, not taken from a folder")
    assert len(paths) == 14 and len(find_images(str(folder))) == 20

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    out = run_cli(
        [
            f"checkpoint={ckpt}",
            f"input={folder}",
            f"output_json={tmp_path / 'out.json'}",
            f"output_dir={tmp_path / 'txt'}",
        ],  # fmt: skip
        tmp_path,
    )
    assert out.returncode == 1, out.stderr
    transcribed = parse(out.stdout)
    assert len(transcribed) == 19 and str(folder / "corrupt.png") not in transcribed
    assert str(folder / "corrupt.png") in out.stderr and "Traceback" not in out.stderr
    assert "19 of 20 images transcribed, 1 could not be read" in out.stderr
    records = json.loads((tmp_path / "out.json").read_text())
    assert len(records) == 20 and sum(r["text"] is None for r in records) == 1
    txt = {p.name for p in (tmp_path / "txt").glob("*.txt")}
    assert len(txt) == 19 and {"L.png.txt", "L.tiff.txt", "L.jpg.txt", "portrait.txt"} <= txt
    assert not list(tmp_path.glob("outputs")) and not list(tmp_path.glob("*.log"))


def test_glob_input_and_txt_outputs_keep_folders_apart(tiny_run, page, tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(page).save(tmp_path / sub / "scan.png")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_predict([f"checkpoint={ckpt}", f"input={tmp_path}/*/scan.png",
                           f"output_dir={tmp_path / 'txt'}", "decoding.beam_width=2"])  # fmt: skip
    assert predict(cfg) == 0
    out = parse(capsys.readouterr().out)
    assert len(out) == 2
    for sub in ("a", "b"):
        text = (tmp_path / "txt" / sub / "scan.txt").read_text()
        assert escape(text.removesuffix("\n")) == out[str(tmp_path / sub / "scan.png")]


def test_line_breaks_are_escaped_on_stdout():
    assert escape("first line\nsecond\tline \\ end") == "first line\\nsecond\\tline \\\\ end"


def test_missing_checkpoint_is_one_clear_line(tmp_path, page):
    Image.fromarray(page).save(tmp_path / "a.png")
    out = run_cli([f"checkpoint={tmp_path / 'nope.ckpt'}", f"input={tmp_path / 'a.png'}"], tmp_path)
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        == f"fphtr-predict: error: checkpoint {tmp_path / 'nope.ckpt'} does not exist"
    )
    assert out.stdout == ""


def test_a_checkpoint_that_is_not_fphtr_is_refused(tmp_path, page):
    Image.fromarray(page).save(tmp_path / "a.png")
    plain = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="not an fphtr checkpoint"):
        predict(compose_predict([f"checkpoint={plain}", f"input={tmp_path / 'a.png'}"]))
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(100))
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        predict(compose_predict([f"checkpoint={junk}", f"input={tmp_path / 'a.png'}"]))


def test_usage_errors(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    with pytest.raises(UsageError, match="checkpoint=... is required"):
        predict(compose_predict([f"input={tmp_path}"]))
    with pytest.raises(UsageError, match="no such file or folder"):
        predict(compose_predict([f"checkpoint={ckpt}", f"input={tmp_path / 'missing'}"]))
    with pytest.raises(UsageError, match="no image files"):
        predict(compose_predict([f"checkpoint={ckpt}", f"input={tmp_path}"]))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            predict(compose_predict([f"checkpoint={ckpt}", f"input={tmp_path}", "device=cuda"]))


def _mixed_folder(page: np.ndarray, folder: Path) -> list[Path]:
    """Lines and page-sized images of different sizes, names not in size order."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(900, 120), (200, 60), (1400, 900), (640, 80), (300, 300), (1100, 700), (420, 90)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(page).resize((w, h)).save(paths[-1])
    return paths


def test_bucketing_and_workers_keep_input_order_and_batch_one_results(tiny_run, page, tmp_path,
                                                                      capsys):  # fmt: skip
    paths = _mixed_folder(page, tmp_path / "in")
    (tmp_path / "in" / "img3b.png").write_bytes(b"not a png")  # an unreadable one in between
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    outs = {}
    for opts in (["batch_size=1", "bucket=false", "num_workers=0"],  # today's one-by-one
                 ["batch_size=1", "bucket=true", "num_workers=2"],
                 ["batch_size=3", "bucket=true", "num_workers=2"],
                 ["batch_size=3", "bucket=false", "num_workers=0"]):  # fmt: skip
        cfg = compose_predict([f"checkpoint={ckpt}", f"input={tmp_path / 'in'}", *opts])
        assert predict(cfg) == 1  # one file could not be read
        captured = capsys.readouterr()
        outs[tuple(opts)] = captured.out
        assert "skipped" in captured.err and "img3b.png" in captured.err
        listed = [line.split("\t")[0] for line in captured.out.splitlines()]
        assert listed == [str(p) for p in sorted(paths)]  # input (sorted folder) order
    one = list(outs.values())
    assert one[0] == one[1]  # bucketing and workers change nothing at batch size 1


def test_plan_batches_groups_similar_sizes(page, tmp_path):
    from fphtr.predict import plan_batches

    paths = _mixed_folder(page, tmp_path)
    batches = plan_batches(paths, 2, True, 1.0, 4000, 4000)
    assert sorted(i for b in batches for i in b) == list(range(len(paths)))
    assert batches[0] == [2, 5]  # the two pages first, largest first
    assert plan_batches(paths, 3, False, 1.0, 4000, 4000) == [[0, 1, 2], [3, 4, 5], [6]]


def _run_on_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """fphtr-predict with stderr on a pseudo-terminal: (exit code, stdout, terminal output)."""
    import pty
    import threading

    master, slave = pty.openpty()
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline", TERM="xterm",
               COLUMNS="120")  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "fphtr.predict", *FAST, *args],
        stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=cwd,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stdout, _ = proc.communicate(timeout=300)
    reader.join(timeout=10)
    os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode(errors="replace")


def test_progress_bar_goes_to_a_terminal_stderr_never_to_stdout(tiny_run, page, tmp_path):
    paths = _mixed_folder(page, tmp_path / "in")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    args = [f"checkpoint={ckpt}", f"input={tmp_path / 'in'}", "batch_size=2"]
    code, stdout, terminal = _run_on_a_terminal(args, tmp_path)
    assert code == 0
    assert "img/s" in terminal and f"{len(paths)}/{len(paths)}" in terminal
    assert [line.split("\t")[0] for line in stdout.splitlines()] == [str(p) for p in sorted(paths)]
    assert "img/s" not in stdout and "\x1b" not in stdout
    # progress=false: no bar, even on a terminal
    code, stdout_off, terminal = _run_on_a_terminal([*args, "progress=false"], tmp_path)
    assert code == 0 and stdout_off == stdout and "img/s" not in terminal
    # not a terminal (a pipe, a file): no bar at all
    out = run_cli([f"checkpoint={ckpt}", f"input={tmp_path / 'in'}"], tmp_path)
    assert out.returncode == 0 and "img/s" not in out.stderr and out.stderr == ""
