"""Line -> page transfer: `model.init_from` keeps the line model's learned output rows and
extends the vocabulary (e.g. with "\\n"); it is not a resume."""

import pytest
import torch
from omegaconf import OmegaConf

from fphtr.checkpoint import CheckpointError, init_from_checkpoint, transfer_tokenizer
from fphtr.data.datamodule import build_datamodule
from fphtr.data.tokenizer import Tokenizer
from fphtr.model.fphtr import build_model
from fphtr.train import train

from .conftest import TINY, compose_train


def line_checkpoint(tmp_path, config: dict) -> tuple[str, Tokenizer, dict]:
    """A line model whose vocabulary lacks "\\n" (as an IAM line model's does)."""
    chars = "".join(sorted(set(build_datamodule(config).tokenizer.chars) - {"\n"}))
    tok = Tokenizer(chars)
    torch.manual_seed(1)
    model = build_model(config, len(tok))
    path = tmp_path / "line.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "fphtr": {"config": config, "tokenizer": tok.to_dict()}},
               path)  # fmt: skip
    return str(path), tok, model.state_dict()


def test_line_checkpoint_initialises_a_form_model_with_rows_intact(tmp_path):
    line_cfg = OmegaConf.to_container(compose_train(TINY, tmp_path), resolve=True,
                                      enum_to_str=True)  # fmt: skip
    path, line_tok, line_state = line_checkpoint(tmp_path, line_cfg)
    form_cfg = OmegaConf.to_container(compose_train([*TINY, "data_format=form"], tmp_path),
                                      resolve=True, enum_to_str=True)  # fmt: skip
    dm = build_datamodule(form_cfg)
    tok, added = transfer_tokenizer(path, dm.tokenizer)
    assert added == ["\n"] and tok.chars[: len(line_tok.chars)] == line_tok.chars
    model = build_model(form_cfg, len(tok))
    fresh_newline_row = model.decoder.classifier.weight[tok.encode("\n")[1]].clone()
    init_from_checkpoint(model, path, tok)
    state = model.state_dict()
    n = len(line_tok)
    for key in ("decoder.embed.weight", "decoder.classifier.weight", "decoder.classifier.bias"):
        assert torch.equal(state[key][:n], line_state[key])  # learned rows kept, same ids
        assert state[key].shape[0] == n + 1  # one new row for "\n"
    assert torch.equal(state["decoder.classifier.weight"][n], fresh_newline_row)
    assert torch.equal(state["encoder.proj.weight"], line_state["encoder.proj.weight"])


def test_init_from_trains_a_new_run(tmp_path):
    line_cfg = OmegaConf.to_container(compose_train(TINY, tmp_path), resolve=True,
                                      enum_to_str=True)  # fmt: skip
    path, _, _ = line_checkpoint(tmp_path, line_cfg)
    metrics = train(compose_train([*TINY, "data_format=form", f"model.init_from={path}",
                                   "run_test=false"], tmp_path / "form"))  # fmt: skip
    assert metrics["steps"] == 2  # a fresh run: step counter starts at 0
    ckpt = torch.load(metrics["last_checkpoint"], map_location="cpu", weights_only=True)
    assert "\n" in ckpt["fphtr"]["tokenizer"]["chars"]


def test_a_vocabulary_not_starting_with_the_source_s_characters_is_refused(tmp_path):
    """Rows are copied by id: a vocabulary that does not start with the source's characters
    (not from `transfer_tokenizer`) would give learned rows to the wrong characters."""
    cfg = OmegaConf.to_container(compose_train(TINY, tmp_path), resolve=True, enum_to_str=True)
    path, line_tok, line_state = line_checkpoint(tmp_path, cfg)
    model = build_model(cfg, len(line_tok) + 1)
    fresh = model.state_dict()["decoder.embed.weight"].clone()
    shifted = Tokenizer(["\t", *line_tok.chars])  # "\t" sorts first: every id moves by one
    with pytest.raises(CheckpointError, match="vocabulary") as e:
        init_from_checkpoint(model, path, shifted)
    assert repr(line_tok.chars[0]) in str(e.value) and "transfer_tokenizer" in str(e.value)
    assert torch.equal(model.state_dict()["decoder.embed.weight"], fresh)  # nothing copied
    init_from_checkpoint(model, path, transfer_tokenizer(path, shifted)[0])  # the right way
