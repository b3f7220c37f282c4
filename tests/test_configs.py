"""Every option of every config group composes, validates and builds; bad input is named."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from fphtr.config import ConfigError, validate
from fphtr.data.datamodule import build_datamodule
from fphtr.model.fphtr import build_model

from .conftest import CONF_DIR, REPO, TINY, compose_train
from .data.conftest import aachen_dir, session_fixture

GROUPS = ["encoder", "decoder", "data_format", "dataset", "augmentation", "precision",
          "trainer", "logger"]  # fmt: skip


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


CASES = [(g, o) for g in GROUPS for o in options(g)] + [
    ("experiment", o) for o in options("experiment")
]


@pytest.fixture(scope="module")
def iam(tmp_path_factory):
    return session_fixture(tmp_path_factory)


@pytest.mark.parametrize("group,option", CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_option_composes_and_builds(group, option, tmp_path, request):
    overrides = [*TINY, f"{group}={option}"]
    if group == "decoder":
        overrides.remove("decoder=small")
    if group == "experiment":
        overrides.remove("~experiment")
    cfg = compose_train(overrides, tmp_path)
    # an experiment may set bigger sizes: keep the tiny ones so that building stays fast
    for key in (k.split("=")[0] for k in TINY if "." in k.split("=")[0]):
        OmegaConf.update(cfg, key, OmegaConf.select(compose_train(TINY), key), merge=False)
    if cfg.dataset.name == "iam":  # IAM presets are built on the generated IAM fixture
        info = request.getfixturevalue("iam")
        for key, value in (("root", info.root), ("split", "aachen"),
                           ("split_dir", str(aachen_dir(info))),
                           ("cache_dir", str(tmp_path / "cache"))):  # fmt: skip
            OmegaConf.update(cfg, f"dataset.{key}", value, merge=False)
    if cfg.model.require_init_from:  # only checked here; weights are not loaded
        cfg.model.init_from = str(tmp_path / "line.ckpt")
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    dm = build_datamodule(config)
    model = build_model(config, len(dm.tokenizer))
    batch = next(iter(dm.val_dataloader()))
    assert model(batch.images, batch.sizes, batch.tokens[:, :-1]).shape[0] == len(batch.texts)


def test_the_issue_example_composes():
    cfg = compose_train(
        [
            "encoder=resnet34",
            "data_format=line",
            "augmentation.synthetic_proba=0.4",
            "precision=bf16-mixed",
            "trainer.max_epochs=3",
        ]  # fmt: skip
    )
    validate(cfg)
    assert cfg.encoder.name.value == "resnet34"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_epochs == 3
    assert cfg.augmentation.synthetic_proba == 0.4


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException) as e:
        compose_train(["optim.lrr=1e-3"])
    assert "lrr" in str(e.value.__cause__ or e.value)


def test_wrong_type_is_named():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_train(["decoder.num_layers=six"])
    assert "num_layers" in str(e.value) + str(e.value.__cause__)


def test_bad_enum_lists_allowed_values():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_train(["encoder.name=resnet50"])
    text = str(e.value) + str(e.value.__cause__)
    assert "resnet18" in text and "resnet34" in text


def test_unknown_group_option_lists_available_ones():
    with pytest.raises(Exception) as e:
        compose_train(["encoder=resnet50"])
    assert "resnet18" in str(e.value) and "resnet34" in str(e.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("decoder.dropout=1.5", "decoder.dropout"),
        ("decoder.nhead=7", "decoder.nhead"),
        ("data_format.scale=0", "data_format.scale"),
        ("augmentation.synthetic_proba=2", "augmentation.synthetic_proba"),
        ("optim.lr=-1", "optim.lr"),
        ("dataset.min_lines=5", "dataset.min_lines"),
        ("dataset.val_writers=[kalm]", "dataset.val_writers"),
        ("dataset.train_writers=[caveat,kalam]", "dataset.train_writers"),
        ("dataset.line_width=[800,500]", "dataset.line_width"),
        ("data_format.eval_batch_size=0", "data_format.eval_batch_size"),
        ("data_format.max_chars_per_cell=0", "data_format.max_chars_per_cell"),
    ],
)
def test_impossible_values_are_rejected_before_work(override, key):
    cfg = compose_train([override, "dataset.max_lines=3"] if "lines" in override else [override])
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_cli_typo_fails_fast_with_a_clear_message(tmp_path: Path):
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "fphtr.train", "optim.lrr=1e-3", f"hydra.run.dir={tmp_path}/r"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    assert "lrr" in out.stderr and "not in" in out.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_experiment_from_lines_without_init_from_is_refused_before_work(tmp_path):
    from fphtr.train import train

    cfg = compose_train(["experiment=iam_forms_from_lines", "dataset.root=/x"], tmp_path / "r")
    with pytest.raises(ConfigError, match=r"model\.init_from"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"model\.init_from"):
        train(cfg)  # before any data is read or folder written
    assert not (tmp_path / "r").exists()
    validate(compose_train(["experiment=iam_forms_from_lines", "dataset.root=/x",
                            "model.init_from=/runs/lines/best.ckpt"]))  # fmt: skip


@pytest.mark.parametrize("native, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_precision_auto_is_bf16_only_where_it_is_native(monkeypatch, native, expected):
    # emulated bf16 (a CPU without AVX512-BF16/AMX) made the quick start 20x slower
    monkeypatch.setattr("fphtr.config.native_bf16", lambda accelerator: native)
    cfg = compose_train([])  # the quick start asks for precision=auto
    assert cfg.trainer.precision == "auto"
    validate(cfg)
    assert cfg.trainer.precision == expected
    cfg = compose_train(["precision=bf16-mixed"])  # an explicit choice is kept
    validate(cfg)
    assert cfg.trainer.precision == "bf16-mixed"


def test_every_run_of_the_page_study_composes_and_validates(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("page_study", REPO / "scripts/page_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    plan = study.runs(tmp_path, Path("/x"), Path("/s"), 200, [])
    assert list(plan)[:2] == ["0-lines", "1-baseline"] and list(plan)[-1] == "8-combined"
    cfgs = {name: compose_train(overrides) for name, overrides in plan.items()}
    for name, cfg in cfgs.items():
        validate(cfg)
        assert cfg.dataset.name == "iam" and cfg.dataset.root == "/x", name
        if name != "0-lines":
            assert cfg.trainer.max_steps == 200 and cfg.data_format.name.value == "form", name
    assert cfgs["0-lines"].data_format.name.value == "line"
    baseline = cfgs["1-baseline"]
    assert baseline.augmentation.synthetic_proba == 0 and baseline.optim.tf_noise == 0
    assert baseline.encoder.dropout == 0 and not baseline.callbacks.curriculum
    assert cfgs["3-from-lines"].model.init_from == str(tmp_path / "0-lines/checkpoints/last.ckpt")
    # augmentation=paper would reset synthetic_proba, but dotted keys apply after groups
    combined = cfgs["8-combined"]
    assert combined.augmentation.name == "paper" and combined.augmentation.synthetic_proba == 0.5
    assert combined.callbacks.curriculum_lines_every == round(0.8 * 200 / 11)
    # the sweep around the combination searches exactly the keys the script leaves free
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        swept = compose("train", overrides=study.sweep_overrides(plan, 4), return_hydra_config=True)
    assert tuple(swept.hydra.sweeper.params) == study.SEARCHED
    assert swept.hydra.sweeper.n_trials == 4 and swept.model.init_from == combined.model.init_from
    assert all(OmegaConf.select(swept, key) is not None for key in study.SEARCHED)
