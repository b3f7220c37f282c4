"""Kill a CPU training run partway (SIGKILL, SIGTERM), resume it with `ckpt_path=last`, and
compare with an uninterrupted run of the same length: same steps, same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from .conftest import TINY

# 2 epochs of 2 steps (the shortest run with a checkpoint to resume from and a later
# mid-epoch moment to interrupt); short decoding keeps each validation cheap
ARGS = [
    *(a for a in TINY if not a.startswith(("logger=", "trainer.max_steps", "trainer.max_epochs"))),
    "dataset.train_size=4",
    "dataset.val_size=2",
    "data_format.batch_size=2",
    "trainer.max_epochs=2",
    "trainer.max_steps=-1",
    "run_test=false",
    "data_format.max_target_len=20",
    "callbacks.train_cer_samples=0",
    "logger=csv",
]
STEPS = 4


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    env.pop("WANDB_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "fphtr.train", *ARGS, f"hydra.run.dir={run_dir}", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True, env=env, cwd=run_dir.parent,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"training ended before {path.name} was written:\n{proc.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {path} after {timeout} s")
        time.sleep(0.02)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> subprocess.Popen:
    """The uninterrupted run, started once and running alongside the killed ones."""
    run_dir = tmp_path_factory.mktemp("resume") / "uninterrupted"
    run_dir.parent.mkdir(exist_ok=True)
    proc = start(run_dir)
    proc.run_dir = run_dir
    yield proc
    if proc.poll() is None:
        proc.kill()


def uninterrupted(reference: subprocess.Popen) -> dict:
    if reference.returncode is None:
        code, _, err = finish(reference)
        assert code == 0, err[-3000:]
    return metrics(reference.run_dir)


def assert_same_run(resumed: dict, reference: dict) -> None:
    assert resumed["steps"] == reference["steps"] == STEPS
    for key in ("val/loss", "val/cer", "val/wer", "best_val_cer"):
        assert resumed[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-7), key


def test_sigkill_after_an_epoch_checkpoint_then_resume_equals_uninterrupted(reference, tmp_path):
    run_dir = tmp_path / "killed"
    proc = start(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for(last, proc)  # written at the end of epoch 0 (atomically)
    proc.send_signal(signal.SIGKILL)
    assert finish(proc)[0] == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(last, weights_only=True)["global_step"] < STEPS

    code, out, err = finish(start(run_dir, "ckpt_path=last"))
    assert code == 0, err[-3000:]
    assert f"steps            {STEPS}" in out
    assert_same_run(metrics(run_dir), uninterrupted(reference))
    # the resumed run logs next to the interrupted run's CSV log, never over it
    assert (run_dir / "csv" / "resumed-step2" / "metrics.csv").is_file()


def test_sigterm_saves_a_checkpoint_and_resume_continues_the_same_wandb_run(reference, tmp_path):
    run_dir = tmp_path / "preempted"
    proc = start(run_dir, "logger=wandb", "logger.offline=true")
    wait_for(run_dir / "checkpoints" / "best-step2.ckpt", proc)  # end of epoch 0
    proc.send_signal(signal.SIGTERM)  # lands during epoch 1 (mid-epoch) or right after
    code, _, err = finish(proc)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert "Stopped by SIGTERM. Resume with: fphtr-train hydra.run.dir=" in err
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 2 <= saved["global_step"] < STEPS and saved["wandb_run_id"]

    code, _, err = finish(start(run_dir, "logger=wandb", "logger.offline=true", "ckpt_path=last"))
    assert code == 0, err[-3000:]
    assert_same_run(metrics(run_dir), uninterrupted(reference))
    # both processes wrote to the one W&B run stored in the checkpoint
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {saved["wandb_run_id"]}


def test_ckpt_path_last_without_a_checkpoint_starts_fresh_and_says_how_to_resume(tmp_path, caplog):
    from fphtr.train import resolve_ckpt_path

    assert resolve_ckpt_path("last", tmp_path) is None  # a requeued job's first start
    assert "hydra.run.dir=<old run dir> ckpt_path=last" in caplog.text
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert resolve_ckpt_path("last", tmp_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert resolve_ckpt_path(None, tmp_path) is None
