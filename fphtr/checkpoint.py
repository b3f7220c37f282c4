"""The one way to load a trained model: checkpoint -> (model, tokenizer, config).

A checkpoint written by training holds the model weights (`state_dict`, keys prefixed
`model.`), the run's resolved config and the vocabulary (`fphtr` entry). It is read with
torch's weights-only unpickler, so a checkpoint from a stranger cannot execute code.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fphtr.data.tokenizer import SPECIALS, Tokenizer
from fphtr.model.fphtr import FPHTR, build_model


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not an fphtr model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means: refuse this file
        raise CheckpointError(
            f"checkpoint {path} could not be loaded safely ({type(e).__name__}: {e}). "
            "Only checkpoints written by fphtr training (weights, config, vocabulary) are accepted."
        ) from e
    if not isinstance(ckpt, dict) or "fphtr" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} is not an fphtr checkpoint (no config and vocabulary inside); "
            "use a .ckpt file from an fphtr run's checkpoints/ folder"
        )
    return ckpt


def model_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The FPHTR weights of a training checkpoint, without the `model.` prefix."""
    prefix = "model."
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_model(path: str | Path) -> tuple[FPHTR, Tokenizer, dict[str, Any]]:
    """Checkpoint -> (model in eval mode, tokenizer, resolved config as a dict)."""
    ckpt = read_checkpoint(path)
    config = ckpt["fphtr"]["config"]
    tokenizer = Tokenizer.from_dict(ckpt["fphtr"]["tokenizer"])
    model = build_model(config, len(tokenizer), load_pretrained=False)
    try:
        model.load_state_dict(model_weights(ckpt))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its own config: {e}") from e
    return model.eval(), tokenizer, config


def transfer_tokenizer(path: str | Path, tokenizer: Tokenizer) -> tuple[Tokenizer, list[str]]:
    """The vocabulary of the checkpoint at `path`, extended with the characters of
    `tokenizer` it lacks (such as "\\n" when a line model starts a page model). Every
    character the source model knew keeps its id. Returns (tokenizer, characters added)."""
    merged = Tokenizer.from_dict(read_checkpoint(path)["fphtr"]["tokenizer"])
    added = merged.extend(tokenizer.chars)
    return merged, added


# weights with one row per vocabulary id
VOCAB_ROWS = (
    "decoder.embed.weight", "decoder.classifier.weight", "decoder.classifier.bias",
    "ctc.classifier.weight", "ctc.classifier.bias",
)  # fmt: skip


def init_from_checkpoint(model: FPHTR, path: str | Path, tokenizer: Tokenizer) -> None:
    """Initialise `model` (whose vocabulary is `tokenizer`) from another run's weights
    (e.g. a line model for pages).

    The vocabulary must come from `transfer_tokenizer`: the source's characters first, so
    their embedding and output rows are copied as learned; rows of new characters stay
    freshly initialised. Rows are copied by id, so any other vocabulary is refused. Not
    resuming: optimiser, schedule and step start anew."""
    ckpt = read_checkpoint(path)
    source = Tokenizer.from_dict(ckpt["fphtr"]["tokenizer"])
    if tokenizer.chars[: len(source.chars)] != source.chars:
        at = next(
            (i for i, c in enumerate(source.chars) if i >= len(tokenizer.chars)
             or tokenizer.chars[i] != c), len(source.chars)
        )  # fmt: skip
        mine = repr(tokenizer.chars[at]) if at < len(tokenizer.chars) else "nothing"
        raise CheckpointError(
            f"{path}: this model's vocabulary does not start with the source's "
            f"{len(source.chars)} characters (id {at + len(SPECIALS)} is "
            f"{source.chars[at]!r} there, {mine} here), so its embedding and output rows "
            "would be copied to the wrong characters; build the vocabulary with "
            "transfer_tokenizer"
        )
    n_old = len(source)
    state = model.state_dict()
    for key, value in model_weights(ckpt).items():
        if key.startswith("ctc.") and model.ctc is None:
            continue  # a CTC-trained source starts a model without the head (e.g. pages)
        if key not in state:
            raise CheckpointError(f"{path}: weight {key} has no place in this model")
        if key in VOCAB_ROWS:
            state[key][:n_old] = value  # rows of known characters; new rows stay fresh
        elif state[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, this model needs "
                f"{tuple(state[key].shape)}; encoder and decoder settings must match the source"
            )
        else:
            state[key] = value
    model.load_state_dict(state)


def rng_states() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python RNG states, as plain types and tensors
    that torch's weights-only loader accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the states of `rng_states()`."""
    torch.set_rng_state(states["torch"])
    keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
