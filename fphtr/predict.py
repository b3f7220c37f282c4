"""fphtr-predict: transcribe your own images with a trained checkpoint.

    fphtr-predict checkpoint=run/checkpoints/best-step900.ckpt input=scans/
    fphtr-predict checkpoint=model.ckpt input='scans/*.tif' output_json=out.json decoding.beam_width=4

A Hydra app on conf/predict.yaml. The checkpoint brings its own config and vocabulary, so
the data format (scale, frame, output length) and model settings are never repeated here.
Every image goes through the training geometry (fphtr.data.geometry): any PIL mode becomes
8-bit grayscale, it is resized by the data format's `scale` (relative to a ~300 dpi scan;
override with `scale=`) and shrunk into the data format's frame if larger.

Standard output gets one line per image: `path<TAB>text`, with backslash, tab and line break
escaped as `\\\\`, `\\t` and `\\n`, so a form stays on one line and the output can be read
back unambiguously. Messages go to standard error. Exit code: 0 all images transcribed,
1 some images could not be read (each is named on stderr, the others are transcribed),
2 nothing could be done (no checkpoint, no input, bad option).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from fphtr.checkpoint import CheckpointError, load_model
from fphtr.data.geometry import ImageError, load_image, pad_batch, prepare, to_tensor
from fphtr.data.tokenizer import Tokenizer
from fphtr.decoding import decode
from fphtr.model.fphtr import FPHTR

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# files taken from a folder (a glob takes whatever it matches)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                  ".pbm", ".pgm", ".ppm", ".pnm"}  # fmt: skip


@dataclass
class DecodingOverrides:
    """Unset (null) keys keep the checkpoint's `decoding` settings."""

    beam_width: int | None = None  # 1 = greedy
    length_penalty: float | None = None
    max_len: int | None = None  # default: the checkpoint's decoding.max_len or max_target_len


@dataclass
class PredictConfig:
    checkpoint: str = MISSING  # a .ckpt written by fphtr-train
    input: str = MISSING  # an image file, a folder of images, or a glob ('scans/**/*.png')
    output_json: str | None = None  # also write [{"path", "text"} | {"path", "error"}, ...]
    output_dir: str | None = None  # also write one .txt per image (real line breaks)
    batch_size: int = 8
    device: str = "cpu"  # cpu, cuda, cuda:1 ...
    scale: float | None = None  # resize factor; default: the checkpoint's data_format.scale
    decoding: DecodingOverrides = field(default_factory=DecodingOverrides)


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


class UsageError(ValueError):
    """A problem with the command line: reported in one line, exit code 2."""


def decoding_settings(config: dict[str, Any], overrides: DictConfig | dict) -> dict[str, Any]:
    """The checkpoint's decoding settings with the non-null overrides applied; max_len
    falls back to the data format's max_target_len, as in validation."""
    settings = dict(config["decoding"])
    settings.update({k: v for k, v in dict(overrides).items() if v is not None})
    if not settings["max_len"]:
        settings["max_len"] = config["data_format"]["max_target_len"]
    for key in ("beam_width", "max_len"):
        if settings[key] < 1:
            raise UsageError(f"decoding.{key}={settings[key]} is not allowed: expected >= 1")
    return settings


def find_images(spec: str) -> list[Path]:
    """An image file, the image files of a folder (by suffix, sorted), or a glob's matches."""
    path = Path(spec).expanduser()
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            raise UsageError(f"input={spec}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return sorted(found)
    if path.is_file():
        return [path]
    if glob.has_magic(spec):
        found = [Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True)]
        found = [p for p in found if p.is_file()]
        if not found:
            raise UsageError(f"input={spec}: the pattern matches no files")
        return sorted(found)
    raise UsageError(f"input={spec}: no such file or folder")


def escape(text: str) -> str:
    """One line per transcription: backslash, tab and line break written as \\\\, \\t, \\n."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


@dataclass
class Result:
    path: Path
    text: str | None = None
    error: str | None = None


def transcribe(
    paths: Sequence[Path],
    model: FPHTR,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    decoding: dict[str, Any],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    scale: float | None = None,
) -> Iterator[Result]:
    """Transcribe image files in order; an unreadable file yields a Result with `error`."""
    fmt = config["data_format"]
    scale = fmt["scale"] if scale is None else scale
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        results, images = [Result(p) for p in chunk], []
        for r in results:
            try:
                array = prepare(load_image(r.path), scale, fmt["max_height"], fmt["max_width"])
                images.append(to_tensor(array))
            except (ImageError, OSError, ValueError) as e:  # e.g. a PIL mode it cannot convert
                r.error = str(e) if isinstance(e, ImageError) else f"{r.path}: {e}"
        good = [r for r in results if r.error is None]
        if good:
            canvas, sizes = pad_batch(images, tuple(fmt.get("canvas_multiple", (32, 32))))
            with torch.inference_mode():
                ids = decode(
                    model, canvas.to(device), sizes.to(device), decoding["max_len"],
                    decoding["beam_width"], decoding["length_penalty"],
                )  # fmt: skip
            for r, row in zip(good, ids.tolist(), strict=True):
                r.text = tokenizer.decode(row)
        yield from results


def _txt_paths(paths: Sequence[Path], output_dir: Path) -> dict[Path, Path]:
    """<output_dir>/<folder relative to the inputs' common folder>/<stem>.txt, or
    <name>.txt (scan.png.txt) where two inputs share a stem (scan.png, scan.tif)."""
    root = Path(os.path.commonpath([p.resolve().parent for p in paths]))
    relative = {p: p.resolve().relative_to(root) for p in paths}
    stems = Counter(r.with_suffix("") for r in relative.values())
    return {
        p: output_dir / (r.with_suffix(".txt") if stems[r.with_suffix("")] == 1
                         else r.with_name(r.name + ".txt"))
        for p, r in relative.items()
    }  # fmt: skip


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"device={name}: {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device={name}: CUDA is not available on this machine; use device=cpu")
    return device


def predict(cfg: DictConfig) -> int:
    """Run a prediction job; returns the exit code (see the module docstring)."""
    for key in ("checkpoint", "input"):
        if OmegaConf.is_missing(cfg, key):
            raise UsageError(f"{key}=... is required (fphtr-predict checkpoint=PATH input=PATH)")
    if cfg.batch_size < 1:
        raise UsageError(f"batch_size={cfg.batch_size} is not allowed: expected >= 1")
    if cfg.scale is not None and cfg.scale <= 0:
        raise UsageError(f"scale={cfg.scale} is not allowed: expected > 0")
    device = _device(cfg.device)
    paths = find_images(cfg.input)
    try:
        model, tokenizer, config = load_model(cfg.checkpoint)
    except (KeyError, TypeError) as e:  # a config from an incompatible fphtr version
        raise CheckpointError(
            f"checkpoint {cfg.checkpoint} does not fit this fphtr version (config: {e!r})"
        ) from e
    model.to(device)
    settings = decoding_settings(config, cfg.decoding)
    txt = _txt_paths(paths, Path(cfg.output_dir)) if cfg.output_dir else {}

    results = []
    for r in transcribe(paths, model, tokenizer, config, settings, cfg.batch_size, device,
                        cfg.scale):  # fmt: skip
        results.append(r)
        if r.error is not None:
            print(f"fphtr-predict: skipped {r.error}", file=sys.stderr, flush=True)
            continue
        print(f"{r.path}\t{escape(r.text)}", flush=True)
        if r.path in txt:
            txt[r.path].parent.mkdir(parents=True, exist_ok=True)
            txt[r.path].write_text(r.text + "\n", encoding="utf-8")
    if cfg.output_json:
        records = [
            {"path": str(r.path), "text": r.text}
            if r.error is None
            else {"path": str(r.path), "text": None, "error": r.error}
            for r in results
        ]
        out = Path(cfg.output_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    failed = sum(r.error is not None for r in results)
    if failed:
        print(
            f"fphtr-predict: {len(results) - failed} of {len(results)} images transcribed, "
            f"{failed} could not be read",
            file=sys.stderr,
        )
        return 1
    return 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def _app(cfg: DictConfig) -> None:
    try:
        code = predict(cfg)
    except (UsageError, CheckpointError) as e:
        print(f"fphtr-predict: error: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


def main() -> None:
    """Console entry point `fphtr-predict`."""
    _app()


if __name__ == "__main__":
    main()
