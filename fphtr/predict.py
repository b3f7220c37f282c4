"""fphtr-predict: transcribe your own images with a trained checkpoint.

    fphtr-predict checkpoint=run/checkpoints/best-step900.ckpt input=scans/
    fphtr-predict checkpoint=model.ckpt input='scans/*.tif' output_json=out.json decoding.beam_width=4

A Hydra app on conf/predict.yaml. The checkpoint brings its own config and vocabulary, so
the data format (scale, frame, output length) and model settings are never repeated here.
Every image goes through the training geometry (fphtr.data.geometry): any PIL mode becomes
8-bit grayscale, it is resized by the data format's `scale` (relative to a ~300 dpi scan;
override with `scale=`) and shrunk into the data format's frame if larger.

Images are read and prepared in DataLoader worker processes (`num_workers`) and decoded in
batches of `batch_size`; with `bucket=true` (the default) each batch holds images of similar
size (sorted by prepared area, largest first, within windows of BUCKET_WINDOW batches), so
a small line is not padded to a page's canvas nor kept waiting for a page's decoding.
Results are still written in input order. A progress bar (images/s, ETA) goes to standard
error when it is a terminal (`progress=false` turns it off).

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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from fphtr.checkpoint import CheckpointError, load_model
from fphtr.data.geometry import (
    ImageError,
    image_size,
    load_image,
    pad_batch,
    prepare,
    prepared_size,
    to_tensor,
)
from fphtr.data.tokenizer import Tokenizer
from fphtr.decoding import transcribe as decode_batch
from fphtr.model.fphtr import FPHTR

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
# files taken from a folder (a glob takes whatever it matches)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp",
                  ".pbm", ".pgm", ".ppm", ".pnm"}  # fmt: skip
BUCKET_WINDOW = 64  # batches sorted together: output keeps flowing, memory stays bounded


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
    bucket: bool = True  # batch images of similar size together (output order is kept)
    num_workers: int = 2  # processes that read and prepare images (0: the main process)
    progress: bool = True  # progress bar on stderr, only when stderr is a terminal
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


class ImageFiles(Dataset):
    """Image files read and prepared with the training geometry, in a DataLoader worker:
    item i -> (i, tensor (1, h, w) or None, error message or None)."""

    def __init__(self, paths: Sequence[Path], scale: float, max_height: int, max_width: int):
        self.paths, self.scale = list(paths), scale
        self.max_height, self.max_width = max_height, max_width

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.paths[i]
        try:
            array = prepare(load_image(path), self.scale, self.max_height, self.max_width)
            return i, to_tensor(array), None
        except (ImageError, OSError, ValueError) as e:  # e.g. a PIL mode it cannot convert
            return i, None, str(e) if isinstance(e, ImageError) else f"{path}: {e}"


@dataclass
class ImageBatch:
    indices: list[int]  # input positions of the readable images, in canvas order
    images: torch.Tensor | None  # (B, 1, H, W) padded canvas, None if nothing was readable
    sizes: torch.Tensor | None  # (B, 2)
    errors: dict[int, str]  # input position -> message, for unreadable files


def collate_images(items: list, multiple: tuple[int, int] = (32, 32)) -> ImageBatch:
    good = [(i, t) for i, t, e in items if e is None]
    errors = {i: e for i, _, e in items if e is not None}
    if not good:
        return ImageBatch([], None, None, errors)
    canvas, sizes = pad_batch([t for _, t in good], multiple)
    return ImageBatch([i for i, _ in good], canvas, sizes, errors)


def plan_batches(
    paths: Sequence[Path],
    batch_size: int,
    bucket: bool,
    scale: float,
    max_height: int,
    max_width: int,
) -> list[list[int]]:
    """Input positions grouped into batches: consecutive ones, or (bucket) within each
    window of BUCKET_WINDOW batches sorted by prepared area, largest first (sizes come from
    the file headers; an unreadable header sorts last and fails when it is read)."""
    order = list(range(len(paths)))
    if bucket:
        window = BUCKET_WINDOW * batch_size

        def area(i: int) -> int:
            size = image_size(paths[i])
            if size is None:
                return 0
            h, w = prepared_size(*size, scale, max_height, max_width)
            return h * w

        areas = {i: area(i) for i in order}
        order = [i for s in range(0, len(order), window)
                 for i in sorted(order[s : s + window], key=lambda i: (-areas[i], i))]  # fmt: skip
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def transcribe(
    paths: Sequence[Path],
    model: FPHTR,
    tokenizer: Tokenizer,
    config: dict[str, Any],
    decoding: dict[str, Any],
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    scale: float | None = None,
    bucket: bool = True,
    num_workers: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Result]:
    """Transcribe image files; yields Results in input order (an unreadable file gives a
    Result with `error`). `on_batch(n)` is called after each batch of n files."""
    fmt = config["data_format"]
    scale = fmt["scale"] if scale is None else scale
    frame = (fmt["max_height"], fmt["max_width"])
    batches = plan_batches(paths, batch_size, bucket, scale, *frame)
    multiple = tuple(fmt.get("canvas_multiple", (32, 32)))
    loader = DataLoader(
        ImageFiles(paths, scale, *frame), batch_sampler=batches, num_workers=num_workers,
        collate_fn=partial(collate_images, multiple=multiple),
    )  # fmt: skip
    pending: dict[int, Result] = {}
    ready = 0  # the next input position to yield
    for batch in loader:
        for i, message in batch.errors.items():
            pending[i] = Result(paths[i], error=message)
        if batch.indices:
            with torch.inference_mode():
                texts = decode_batch(model, tokenizer, batch.images.to(device),
                                     batch.sizes.to(device), decoding, fmt)  # fmt: skip
            for i, text in zip(batch.indices, texts, strict=True):
                pending[i] = Result(paths[i], text=text)
        if on_batch is not None:
            on_batch(len(batch.indices) + len(batch.errors))
        while ready in pending:
            yield pending.pop(ready)
            ready += 1


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f} img/s" if task.speed else "- img/s")


@contextmanager
def progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (images/s, ETA), only if enabled and stderr is a
    terminal; yields the function that advances it. Standard output is never touched."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    bar = Progress(
        TextColumn("transcribing"), BarColumn(), MofNCompleteColumn(), _Rate(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(file=sys.stderr), redirect_stdout=False, transient=False,
    )  # fmt: skip
    with bar:
        task = bar.add_task("transcribing", total=total)
        yield lambda n: bar.advance(task, n)


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
    if cfg.num_workers < 0:
        raise UsageError(f"num_workers={cfg.num_workers} is not allowed: expected >= 0")
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
    with progress_bar(len(paths), cfg.progress) as advance:
        for r in transcribe(paths, model, tokenizer, config, settings, cfg.batch_size, device,
                            cfg.scale, cfg.bucket, cfg.num_workers, advance):  # fmt: skip
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
