"""fphtr-eval: the validation metrics reproduced from a checkpoint, outputs, overrides."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jiwer
import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from fphtr.checkpoint import CheckpointError, load_model, read_checkpoint
from fphtr.data.datamodule import build_datamodule
from fphtr.data.tokenizer import EOS, Tokenizer
from fphtr.evaluate import eval_config, evaluate
from fphtr.lit_module import HTRModule
from fphtr.metrics import cer
from fphtr.predict import UsageError
from fphtr.train import train

from .conftest import CONF_DIR, REPO, VARIED, compose_train
from .data.conftest import session_fixture


def compose_eval(overrides: list[str], output_dir: Path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("eval", overrides=["progress=false", *overrides])
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
    return cfg


@pytest.fixture(scope="module")
def varied_run(varied_checkpoint, tmp_path_factory) -> Path:
    """A 1-step run started from `varied_checkpoint` at a negligible learning rate: the
    validation it logged is that of a model whose transcriptions differ per sample."""
    run = tmp_path_factory.mktemp("varied_run") / "run"
    train(compose_train([*VARIED, f"model.init_from={varied_checkpoint}", "optim.lr=1e-9",
                         "trainer.max_steps=1", "run_test=false", "dataset.val_size=5",
                         "data_format.batch_size=2", "callbacks.train_cer_samples=0"], run))  # fmt: skip
    return run


def test_cli_reproduces_the_validation_metrics(varied_run, tmp_path):
    """Acceptance: fphtr-eval split=val prints the CER/WER that validation logged, for a
    model whose transcriptions differ from sample to sample (a mix-up of samples, a double
    count or a dropped batch would change the numbers)."""
    logged = json.loads((varied_run / "metrics.json").read_text())
    out_dir = tmp_path / "eval"
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    # 1 step, validated after fit: last.ckpt holds the validated weights
    out = subprocess.run(
        [sys.executable, "-m", "fphtr.evaluate", f"checkpoint={logged['last_checkpoint']}",
         "split=val", "progress=false", f"hydra.run.dir={out_dir}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    printed = f"CER / WER   {100 * logged['val/cer']:.2f}% / {100 * logged['val/wer']:.2f}%"
    assert printed in out.stdout

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["cer"] == pytest.approx(logged["val/cer"], rel=1e-6)
    assert metrics["wer"] == pytest.approx(logged["val/wer"], rel=1e-6)
    assert metrics["samples"] == 5 and metrics["split"] == "val" and metrics["skipped"] == 0
    with open(out_dir / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"synthetic-val-0-{i}" for i in range(5)]
    assert all(set(r) == {"id", "reference", "hypothesis", "cer"} for r in rows)
    hyps = [r["hypothesis"] for r in rows]
    assert len(set(hyps)) == 5 and logged["val/cer"] < 0.5  # varied, mostly right
    assert (out_dir / "worst.png").stat().st_size > 0


class _Recording(HTRModule):
    """The training module, keeping every (reference, hypothesis) it scores."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[str, str]] = []

    def transcribe(self, batch):
        hyps = super().transcribe(batch)
        self.seen += list(zip(batch.texts, hyps, strict=True))
        return hyps


def test_validation_and_eval_cer_are_jiwer_s_on_the_decoded_strings(varied_checkpoint, tmp_path):
    """The real path, not `cer()` on strings: a batch through HTRModule's validation
    (ErrorRates) and through fphtr-eval, compared with jiwer on the decoded strings (every
    character kept). The model is made to end its words with a run of spaces (EOS banned,
    spaces favoured where it is unsure), the case jiwer's default transform does not charge."""
    ckpt = torch.load(varied_checkpoint, map_location="cpu", weights_only=True)
    space = Tokenizer.from_dict(ckpt["fphtr"]["tokenizer"]).encode(" ")[1]
    bias = ckpt["state_dict"]["model.decoder.classifier.bias"]
    bias[EOS] = -1e4
    bias[space] += 6.0
    path = tmp_path / "spaces.ckpt"
    torch.save(ckpt, path)

    model, tokenizer, config = load_model(path)
    config["dataset"]["val_size"] = 5
    config["decoding"]["max_len"] = 12
    dm = build_datamodule(config, splits=("val",))
    dm.tokenizer = tokenizer
    module = _Recording(model, tokenizer, config)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    logged = trainer.validate(module, datamodule=dm, verbose=False)[0]
    refs, hyps = zip(*module.seen, strict=True)
    assert len(refs) == 5 and any(h.endswith(" ") for h in hyps), hyps
    keep = jiwer.ReduceToListOfListOfChars()
    expected = jiwer.cer(list(refs), list(hyps), reference_transform=keep,
                         hypothesis_transform=keep)  # fmt: skip
    assert expected != pytest.approx(jiwer.cer(list(refs), list(hyps)))  # the case matters
    assert logged["val/cer"] == pytest.approx(expected)

    cfg = compose_eval([f"checkpoint={path}", "split=val", "+dataset.val_size=5",
                        "decoding.max_len=12", "worst=0"], tmp_path / "eval")  # fmt: skip
    metrics = evaluate(cfg)
    with open(tmp_path / "eval" / "predictions.csv", newline="", encoding="utf-8") as f:
        assert [r["hypothesis"] for r in csv.DictReader(f)] == list(hyps)
    assert metrics["cer"] == pytest.approx(expected)


def test_dataset_keys_and_group_options_override_the_checkpoint(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    quick = [f"checkpoint={ckpt}", "decoding.max_len=5", "worst=2"]
    # +dataset.KEY edits the checkpoint's own dataset config
    m = evaluate(compose_eval([*quick, "split=val", "+dataset.val_size=2"], tmp_path / "a"))
    assert m["samples"] == 2 and m["dataset"]["train_size"] == 8  # TINY's value is kept
    assert m["decoding"] == {"beam_width": 1, "length_penalty": 1.0, "max_len": 5}
    # a dataset= group option replaces it; test split by default
    cfg = compose_eval([*quick, "dataset=synthetic", "dataset.test_size=3"], tmp_path / "b")
    m = evaluate(cfg, dataset_choice="synthetic")
    assert m["samples"] == 3 and m["split"] == "test"
    text = (tmp_path / "b" / "predictions.csv").read_text(encoding="utf-8")
    assert [r["id"] for r in csv.DictReader(io.StringIO(text))] == [
        f"synthetic-test-0-{i}" for i in range(3)
    ]


def test_bad_checkpoint_and_bad_overrides_are_usage_errors(tiny_run, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(compose_eval([f"checkpoint={tmp_path / 'no.ckpt'}"], tmp_path))
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    with pytest.raises(UsageError, match="dataset.min_lines=0"):
        evaluate(compose_eval([f"checkpoint={ckpt}", "+dataset.min_lines=0"], tmp_path))
    with pytest.raises(UsageError, match="decoding.beam_width=0"):
        evaluate(compose_eval([f"checkpoint={ckpt}", "decoding.beam_width=0"], tmp_path))


def test_a_collection_with_only_test_pages_is_evaluated(tiny_run, tmp_path, tmp_path_factory):
    """A user's own transcribed pages in IAM layout, all in the test list: fphtr-eval builds
    only the split it evaluates, so empty train and validation lists are fine."""
    info = session_fixture(tmp_path_factory)
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.uttlist").write_text("")
    (lists / "validation.uttlist").write_text("")
    (lists / "test.uttlist").write_text("\n".join(f.id for f in info.forms) + "\n")
    ckpt = tiny_run / "checkpoints" / "last.ckpt"  # a line model
    cfg = compose_eval([f"checkpoint={ckpt}", "decoding.max_len=3", "worst=0", "dataset=iam",
                        f"dataset.root={info.root}", "dataset.split=aachen",
                        f"dataset.split_dir={lists}", f"dataset.cache_dir={tmp_path / 'c'}"],
                       tmp_path / "eval")  # fmt: skip
    m = evaluate(cfg, dataset_choice="iam")
    assert m["samples"] == sum(len(f.lines) for f in info.forms) and m["split"] == "test"


def test_an_unreadable_evaluation_image_is_left_out_and_reported(
    tiny_run, tmp_path, tmp_path_factory, capsys
):
    """A test image that only fails when decoded (truncated PNG) is scored by nobody: not
    replaced by the next sample (which would count that one twice), but left out and named
    in the summary and metrics.json, by fphtr-eval and by the training module's test."""
    info = session_fixture(tmp_path_factory)
    root = tmp_path / "iam"
    shutil.copytree(info.root, root, ignore=shutil.ignore_patterns("words", "forms?-?"))
    test_form = info.split_forms("aachen", "test")[0]
    broken = test_form.lines[1].id
    png = root / "lines" / test_form.id.split("-")[0] / test_form.id / f"{broken}.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    dataset = ["dataset=iam", f"dataset.root={root}", "dataset.split=aachen",
               f"dataset.split_dir={root / 'splits' / 'aachen'}", "dataset.cache=false"]  # fmt: skip
    cfg = compose_eval([f"checkpoint={ckpt}", "decoding.max_len=3", "worst=0", "batch_size=2",
                        *dataset], tmp_path / "eval")  # fmt: skip
    m = evaluate(cfg, dataset_choice="iam")
    with open(tmp_path / "eval" / "predictions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = [r["id"] for r in rows]
    expected = [ln.id for ln in test_form.lines if ln.id != broken]
    assert ids == expected and m["samples"] == len(expected)  # each readable one exactly once
    assert m["skipped"] == 1 and m["skipped_ids"] == [broken]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["skipped"] == 1 and saved["skipped_ids"] == [broken]
    assert f"skipped     1 unreadable: {broken}" in capsys.readouterr().out

    # the training module's test (and validation) path: the same sample left out, counted
    model, tokenizer, config = load_model(ckpt)
    config = eval_config(config, cfg, "iam")
    dm = build_datamodule(config, splits=("test",))
    dm.tokenizer = tokenizer
    module = HTRModule(model, tokenizer, config)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    out = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert out["test/skipped"] == 1 and module.rates["test"].skipped_ids == {broken}
    refs = [ln.text for ln in test_form.lines if ln.id != broken]
    assert out["test/cer"] == pytest.approx(cer(refs, [r["hypothesis"] for r in rows]))


def test_cer_by_lines_groups_pages_by_reference_lines_and_pools_edits(tmp_path):
    rows = [
        {"id": "a", "reference": "ab cd", "hypothesis": "ab cd"},  # 1 line, exact
        {"id": "b", "reference": "ab\ncd", "hypothesis": "ab\ncx"},  # 2 lines, 1 edit
        {"id": "c", "reference": "abcdef\ngh", "hypothesis": ""},  # 2 lines, 9 deletions
    ]
    path = tmp_path / "predictions.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "reference", "hypothesis", "cer"])
        writer.writeheader()
        writer.writerows({**r, "cer": 0} for r in rows)
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "cer_by_lines.py"), str(path)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    table = {line.split("|")[1].strip(): line for line in out.splitlines()[2:]}
    assert list(table) == ["1", "2", "all"]
    assert "| 1 | 1 | 0.00% |" in table["1"]
    # pooled over the group: (1 + 9) edits / (5 + 9) reference characters, "\n" counted
    assert f"| 2 | 2 | {100 * 10 / 14:.2f}% |" in table["2"]
    refs, hyps = [r["reference"] for r in rows], [r["hypothesis"] for r in rows]
    assert f"| all | 3 | {100 * cer(refs, hyps):.2f}% |" in table["all"]
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "cer_by_lines.py"),
                          str(tmp_path / "missing.csv")], capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "predictions.csv of a fphtr-eval run" in bad.stderr


@pytest.mark.parametrize("option", ["32-true", "bf16-mixed"])
def test_precision_is_overridable_on_the_command_line(tiny_run, tmp_path, option):
    """`fphtr-eval precision=X`: the name is also fphtr-train's config group, which Hydra
    matches first; the group's choice must reach the Trainer."""
    from fphtr.evaluate import _trainer

    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    cfg = compose_eval([f"checkpoint={ckpt}", f"precision={option}"], tmp_path)
    stored = read_checkpoint(ckpt)["fphtr"]["config"]
    assert _trainer(cfg, stored).precision == option
    default = _trainer(compose_eval([f"checkpoint={ckpt}"], tmp_path), stored)
    assert default.precision == stored["trainer"]["precision"]  # the checkpoint's
