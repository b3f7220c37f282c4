"""Hostile input: each case ends in a clear message (or a defined result), never a crash,
a hang, an out-of-memory or code execution."""

from __future__ import annotations

import io
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fphtr.checkpoint import CheckpointError, load_model, read_checkpoint
from fphtr.config import ConfigError
from fphtr.data.datamodule import build_datamodule, collate
from fphtr.data.geometry import MAX_INPUT_PIXELS, ImageError, load_image
from fphtr.data.tokenizer import UNK
from fphtr.lit_module import HTRModule
from fphtr.model.fphtr import build_model
from fphtr.predict import transcribe
from fphtr.train import TrainingStopped, train

from .conftest import TINY, compose_train

FAST = ["run_test=false", "callbacks.train_cer_samples=0", "data_format.max_target_len=10"]


@pytest.fixture(scope="module")
def tiny_model():
    """An untrained tiny model with the synthetic vocabulary: enough to push input through."""
    config = OmegaConf.to_container(compose_train([*TINY, *FAST]), resolve=True, enum_to_str=True)
    datamodule = build_datamodule(config)
    model = build_model(config, len(datamodule.tokenizer), load_pretrained=False).eval()
    return model, datamodule.tokenizer, config


# --- images ---------------------------------------------------------------------------------
def png_header_only_bomb(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of width x height, all white, written row by row (a few MB of
    memory, well under a second) — its compressed size is ~50 KB for 20000 x 20000."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + b"\xff" * ((width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))  # fmt: skip


def test_20000_by_20000_png_is_refused_from_its_header_without_decoding(tmp_path):
    path = tmp_path / "huge.png"
    png_header_only_bomb(path, 20000, 20000)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    started = time.monotonic()
    with pytest.raises(ImageError, match=f"exceeds the limit of {MAX_INPUT_PIXELS:,} pixels"):
        load_image(path)
    assert time.monotonic() - started < 1.0
    # decoding would need 400 MB (8-bit) to 1.6 GB (RGBA); peak memory stays where it was
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000


def test_image_just_over_the_bound_is_refused_by_our_own_check(tmp_path):
    path = tmp_path / "big.png"
    png_header_only_bomb(path, 10001, 10000)  # 100,010,000 pixels: PIL alone would warn only
    with pytest.raises(ImageError, match=r"10001x10000 pixels exceeds the limit of 100,000,000"):
        load_image(path)


def test_truncated_png_and_text_named_png_and_empty_file(tmp_path):
    whole = io.BytesIO()
    Image.new("L", (300, 120), 255).save(whole, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"truncated.png: not a readable image"):
        load_image(truncated)
    with pytest.raises(ImageError, match=r"notes.png: not a readable image"):
        load_image(text)
    with pytest.raises(ImageError, match=r"empty.png: empty file \(0 bytes\)"):
        load_image(empty)


def test_prediction_names_each_bad_file_and_transcribes_a_1_pixel_image(tmp_path, tiny_model):
    model, tokenizer, config = tiny_model
    pixel = tmp_path / "pixel.png"
    Image.new("L", (1, 1), 0).save(pixel)
    text = tmp_path / "text.png"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    decoding = {"max_len": 5, "beam_width": 1, "length_penalty": 1.0}
    results = list(transcribe([pixel, text, empty], model, tokenizer, config, decoding))
    assert results[0].error is None and isinstance(results[0].text, str)
    assert "text.png: not a readable image" in results[1].error
    assert "empty.png: empty file" in results[2].error


# --- labels ---------------------------------------------------------------------------------
def test_characters_outside_the_vocabulary_are_unk_and_count_as_errors(tiny_model):
    model, tokenizer, config = tiny_model
    assert tokenizer.unknown_chars("ok €漢") == {"€", "漢"}
    image = torch.zeros(1, 20, 60)
    batch = collate(tokenizer)([(image, "ok €漢", "a"), (image, "ok", "b")])
    assert (batch.tokens[0] == UNK).sum() == 2
    module = HTRModule(model, tokenizer, config)
    assert torch.isfinite(module._loss(batch))  # trains on them, as <unk>
    rates = module.rates["val"]
    rates.update(["ok x€漢"], ["ok x"])  # the model can never write them: 2 errors of 6
    assert rates.compute()["cer"].item() == pytest.approx(2 / 6)


# --- checkpoints ----------------------------------------------------------------------------
class Exploit:
    """Pickles into a call of os.system: what a malicious checkpoint does on load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_executes_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": Exploit(marker)}, "fphtr": {}}, evil)
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        read_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_model(evil)
    cfg = compose_train([*TINY, *FAST, f"ckpt_path={evil}"], tmp_path / "resume")
    with pytest.raises(CheckpointError):  # refused before Lightning opens it
        train(cfg)
    cfg = compose_train([*TINY, *FAST, f"model.init_from={evil}"], tmp_path / "init")
    with pytest.raises(CheckpointError):
        train(cfg)
    assert not marker.exists()
    # control: the file really is malicious (an unrestricted load runs the command)
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_checkpoint_of_another_model_is_refused_clearly(tmp_path):
    from torchvision.models import resnet18

    resnet = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), resnet)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "epoch": 3}, plain)
    for path in (resnet, plain):
        with pytest.raises(CheckpointError, match="is not an fphtr checkpoint"):
            load_model(path)
    cfg = compose_train([*TINY, *FAST, f"ckpt_path={resnet}"], tmp_path / "run")
    with pytest.raises(CheckpointError, match="is not an fphtr checkpoint"):
        train(cfg)


# --- runs -----------------------------------------------------------------------------------
def test_output_directory_that_is_not_writable_stops_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = compose_train([*TINY, *FAST], blocker / "run")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"output directory .*a-file/run is not writable"):
        train(cfg)
    assert time.monotonic() - started < 5  # before any data or model is built


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_directory_stops_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="is not writable"):
        train(compose_train([*TINY, *FAST], run))


def test_nan_loss_stops_with_step_and_samples_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    losses = HTRModule._losses

    def poisoned(self, batch, noise=False):  # diverges at step 2, the first of epoch 1
        values = losses(self, batch, noise)
        if noise and self.global_step >= 2:
            values["loss"] = values["loss"] * float("nan")
        return values

    monkeypatch.setattr(HTRModule, "_losses", poisoned)
    run = tmp_path / "run"
    overrides = [*TINY, *FAST, "dataset.train_size=4", "dataset.val_size=2",
                 "data_format.batch_size=2", "trainer.max_epochs=2", "trainer.max_steps=-1"]  # fmt: skip
    with pytest.raises(TrainingStopped) as stopped:
        train(compose_train(overrides, run))
    message = str(stopped.value)
    assert "non-finite training loss nan at step 2" in message
    assert "samples ['synthetic-train-1-" in message and str(run / "checkpoints" / "last.ckpt")
    model, _, _ = load_model(run / "checkpoints" / "last.ckpt")  # the step-2 weights, intact
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (run / "metrics.json").exists()


def test_wandb_api_key_never_lands_in_run_files_or_output(tmp_path):
    key = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, like a real key
    run = tmp_path / "run"
    args = [a for a in TINY if not a.startswith(("logger=", "dataset.", "data_format.batch"))]
    env = dict(os.environ, WANDB_API_KEY=key, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    out = subprocess.run(
        [sys.executable, "-m", "fphtr.train", *args, *FAST, "logger=wandb", "logger.offline=true",
         "dataset.train_size=2", "dataset.val_size=2", "data_format.batch_size=2",
         "trainer.max_steps=1", f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ckpt" for p in files) and any(p.suffix == ".wandb" for p in files)
    assert any(p.name == "config.yaml" for p in files) and any(p.suffix == ".log" for p in files)
    leaks = [p for p in files if key.encode() in p.read_bytes()]
    assert not leaks and key not in out.stdout + out.stderr
