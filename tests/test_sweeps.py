"""Optuna and grid sweeps on CPU, the sweep report, launcher configs, reproducibility."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from fphtr.train import train

from .conftest import CONF_DIR, REPO, TINY, compose_train

SWEEP_TINY = [a for a in TINY if not a.startswith(("logger=", "trainer.max_steps"))]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", NO_ALBUMENTATIONS_UPDATE="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=400, cwd=cwd, env=env)  # fmt: skip


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "multirun" / "sweep"
    out = run(
        [
            "-m",
            "fphtr.train",
            "-m",
            "--config-dir",
            str(REPO / "tests" / "configs"),
            "hparams_search=test_sweep",
            *SWEEP_TINY,
            "logger=wandb",
            f"hydra.sweep.dir={sweep_dir}",
        ],  # fmt: skip
        tmp,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


def test_optuna_sweep_survives_a_failing_trial(optuna_sweep):
    jobs = sorted(p for p in optuna_sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2"]  # one folder per trial
    finished = [p for p in jobs if (p / "metrics.json").is_file()]
    assert len(finished) == 2  # the trial with trainer.max_steps=-5 raised
    result = yaml.safe_load((optuna_sweep / "optimization_results.yaml").read_text())
    assert result["best_params"]["trainer.max_steps"] == 2
    best = min(json.loads((p / "metrics.json").read_text())["best_val_cer"] for p in finished)
    assert result["best_value"] == pytest.approx(best)


def test_each_sweep_job_is_its_own_wandb_run(optuna_sweep):
    for job in ("0", "1", "2"):  # the failed trial's run was finished too
        assert len(list((optuna_sweep / job / "wandb").glob("offline-run-*"))) == 1
    runs = list(optuna_sweep.glob("*/wandb/offline-run-*"))
    assert len({r.name.rsplit("-", 1)[1] for r in runs}) == 3  # three distinct run ids


def test_sweep_report_table_and_plot(optuna_sweep, tmp_path):
    out = run([str(REPO / "scripts" / "sweep_report.py"), str(optuna_sweep), "--out",
               str(tmp_path)], REPO)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"]
    assert float(rows[0]["best_val_cer"]) <= float(rows[1]["best_val_cer"])
    assert rows[2]["best_val_cer"] == "inf"  # the failed trial ranks last
    assert "| rank | job |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_multirun_one_folder_per_job(tmp_path):
    sweep_dir = tmp_path / "grid"
    out = run(
        ["-m", "fphtr.train", "-m", "optim.lr=1e-4,1e-3", *SWEEP_TINY,
         "trainer.max_steps=1", "logger=none", "run_test=false", f"hydra.sweep.dir={sweep_dir}"],
        tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    overrides = [yaml.safe_load((sweep_dir / j / ".hydra" / "overrides.yaml").read_text())
                 for j in ("0", "1")]  # fmt: skip
    assert "optim.lr=0.0001" in overrides[0] and "optim.lr=0.001" in overrides[1]
    assert all((sweep_dir / j / "metrics.json").is_file() for j in ("0", "1"))


@pytest.mark.parametrize("launcher,target", [
    ("local_parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])  # fmt: skip
def test_launcher_configs_compose(launcher, target):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}", "trainer.devices=2"],
                      return_hydra_config=True)  # fmt: skip
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.tasks_per_node == 2 and cfg.hydra.launcher.gpus_per_node == 2


def test_hparams_search_presets_compose():
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        for preset in (p.stem for p in (CONF_DIR / "hparams_search").glob("*.yaml")):
            cfg = compose("train", overrides=[f"hparams_search={preset}"],
                          return_hydra_config=True)  # fmt: skip
            assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
            assert cfg.hydra.sweeper.direction == "minimize" and cfg.hydra.sweeper.params


def test_same_seed_and_config_reproduce_validation_metrics(tmp_path):
    overrides = [*TINY, "trainer.deterministic=true", "run_test=false", "trainer.max_steps=3",
                 "augmentation=paper", "augmentation.synthetic_proba=0.5", "num_workers=2"]  # fmt: skip
    first = train(compose_train(overrides, tmp_path / "a"))
    second = train(compose_train(overrides, tmp_path / "b"))
    for key in ("val/loss", "val/cer", "val/wer", "train/cer"):
        assert first[key] == second[key], key
