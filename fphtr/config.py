"""Structured config schemas: every key, its type and its allowed values in one place.

The YAML files under conf/ fill these in; Hydra merges them onto the schemas, so an unknown
key or a wrongly typed value stops the run at composition, before any data is read.
`validate` adds the checks types cannot express (ranges and cross-field rules).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class EncoderName(Enum):
    resnet18 = "resnet18"
    resnet34 = "resnet34"


class DataFormatName(Enum):
    word = "word"
    line = "line"
    form = "form"


class Schedule(Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


class ScheduleClock(Enum):
    steps = "steps"
    time = "time"


class LoggerKind(Enum):
    wandb = "wandb"
    csv = "csv"
    none = "none"


@dataclass
class EncoderConfig:
    name: EncoderName = EncoderName.resnet18
    dropout: float = 0.1  # on the flattened memory
    dropout_ramp_steps: int = 0  # >0: dropout grows linearly from 0 over this many steps
    pretrained_path: str | None = None  # local torchvision ImageNet state dict; none = random
    last_stride: int = 32  # 16: layer4 does not downsample (4x the memory cells, finer CTC)


@dataclass
class DecoderConfig:
    d_model: int = 260
    num_layers: int = 6
    nhead: int = 4
    dim_feedforward: int = 1024
    dropout: float = 0.1
    dropout_ramp_steps: int = 0


@dataclass
class ModelConfig:
    # initialise weights from another run's checkpoint (e.g. a line model for pages);
    # unlike ckpt_path this starts a new run: fresh optimiser, step 0, vocabulary extended
    init_from: str | None = None
    # set by presets that only make sense from a trained model (iam_forms_from_lines):
    # validate refuses them without model.init_from instead of training from scratch
    require_init_from: bool = False
    # CTC head (present when optim.ctc_weight > 0): frames each feature-map column is split
    # into, so that a line has at least as many CTC frames as characters
    ctc_frames_per_column: int = 4


@dataclass
class DataFormatConfig:
    name: DataFormatName = DataFormatName.line
    scale: float = 0.5  # relative to a ~300 dpi scan; 0.5 ~ 150 dpi as in the paper
    max_height: int = 256  # images are shrunk (aspect kept) to fit this frame
    max_width: int = 2048
    max_target_len: int = 150  # longest transcription decoded, in characters
    # batch canvases are rounded up to these (height, width) multiples of 32; coarser
    # steps give fewer distinct shapes (CPU bf16 kernels are compiled once per shape)
    canvas_multiple: list[int] = field(default_factory=lambda: [32, 32])
    batch_size: int = 16
    # validation/test batches (null: batch_size); decoding costs per step, not per sample
    eval_batch_size: int | None = None
    # decode at most this many characters per 32x32 px cell of the image at scale 0.5
    # (fphtr.decoding.length_limits; from the image alone, never the reference); null: off
    max_chars_per_cell: float | None = None


@dataclass
class SyntheticDatasetConfig:
    name: str = "synthetic"
    train_size: int = 4096  # samples per training epoch (fresh ones every epoch)
    val_size: int = 256
    test_size: int = 256
    val_writers: list[str] = field(default_factory=lambda: ["kalam", "shadows-into-light"])
    train_writers: list[str] | None = None  # null = every writer not in val_writers
    min_lines: int = 1  # forms
    max_lines: int = 10
    min_words: int = 3  # lines and form lines
    max_words: int = 9
    # lines: fill a wrap width drawn from [low, high] px at scale 1 instead of taking
    # min_words..max_words words (similar widths pad less in a batch); null = word counts
    line_width: list[float] | None = None


class IAMSplit(Enum):
    auto = "auto"  # aachen if split_dir has the lists, else official if under root, else writers
    aachen = "aachen"  # RWTH Aachen form lists in split_dir (train/validation/test.uttlist)
    official = "official"  # IAM's largeWriterIndependentTextLineRecognitionTask lists
    writers = "writers"  # seeded writer-disjoint split, no files needed


@dataclass
class IAMDatasetConfig:
    """IAM as downloaded (see fphtr/data/iam.py and docs/iam.md)."""

    name: str = "iam"
    root: str = "???"  # folder holding xml/, formsA-D/..., lines/, words/, ascii/
    split: IAMSplit = IAMSplit.auto
    split_dir: str | None = None  # aachen: the .uttlist files; official: overrides root/<task>
    keep_err_lines: bool = True  # segmentation="err" lines: their image and text are fine
    keep_err_words: bool = False  # err words may be badly cropped
    form_margin: int = 50  # px (scan resolution) kept around the handwritten lines of a form
    cache: bool = True  # decoded, resized images on disk (decode 2479x3542 forms once)
    cache_dir: str | None = None  # default $XDG_CACHE_HOME/fphtr/images or ~/.cache/fphtr/images
    writers_seed: int = 0  # split=writers
    writers_fractions: list[float] = field(default_factory=lambda: [0.7, 0.1, 0.2])
    train_size: int | None = None  # use a seeded subset of at most this many (null: all)
    val_size: int | None = None
    test_size: int | None = None


@dataclass
class AugmentationConfig:
    name: str = "none"
    synthetic_proba: float = 0.0  # share of training samples replaced by synthetic ones
    scale_jitter: list[float] = field(default_factory=lambda: [1.0, 1.0])  # factor range
    rotate_limit: float = 0.0  # degrees; canvas grows, fill paper white
    rotate_p: float = 0.0
    shear_limit: float = 0.0  # degrees
    shear_p: float = 0.0
    perspective_scale: float = 0.0  # forms
    perspective_p: float = 0.0
    elastic_p: float = 0.0
    morphology_p: float = 0.0  # stroke dilation / erosion
    brightness_contrast: float = 0.0
    brightness_contrast_p: float = 0.0
    blur_p: float = 0.0
    noise_std: float = 0.0  # in 0..1 intensity units
    noise_p: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: Schedule = Schedule.constant  # decay after warmup
    min_lr_ratio: float = 0.05  # floor of the decay, relative to lr
    # what ends the decay: max_steps, or (time) whichever of max_steps and trainer.max_time
    # comes first, so that a run stopped by its time limit ends with its lr decayed (without
    # a max_time, time is the step clock)
    schedule_clock: ScheduleClock = ScheduleClock.steps
    label_smoothing: float = 0.1
    tf_noise: float = 0.0  # share of decoder input tokens replaced by random ones (training)
    # loss = (1 - w) * attention + w * CTC on the encoder (words, lines); 0 = the paper's
    # model (no CTC head), 1 = CTC only (encoder pre-training, the decoder learns nothing)
    ctc_weight: float = 0.0
    # the first this many steps train the encoder with CTC alone (w = 1, the decoder is not
    # run), then the joint loss: DAN's CTC pre-training of the encoder, in one run
    ctc_pretrain_steps: int = 0
    # torch's fused AdamW (one kernel over all parameters; 18 ms instead of 84 ms per
    # quick-start step on 2 CPU cores); precision=16-mixed uses the foreach kernels instead
    fused: bool = True


@dataclass
class DecodingConfig:
    beam_width: int = 1  # 1 = greedy
    length_penalty: float = 1.0  # beam score = log p / length ** length_penalty
    max_len: int | None = None  # default: data_format.max_target_len


@dataclass
class TrainerConfig:
    """A subset of lightning.pytorch.Trainer arguments, passed through unchanged."""

    accelerator: str = "cpu"
    devices: Any = 1
    strategy: str = "auto"
    num_nodes: int = 1
    # a Lightning precision, or "auto": bf16-mixed where the hardware has native bf16
    precision: str = "32-true"
    max_epochs: int = -1
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS"
    min_steps: int | None = None
    val_check_interval: Any = 1.0
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    deterministic: Any = False
    benchmark: bool | None = None
    enable_progress_bar: bool = True


@dataclass
class LoggerConfig:
    kind: LoggerKind = LoggerKind.csv
    project: str = "fphtr"
    entity: str | None = None
    group: str | None = None  # default: the experiment or sweep name
    offline: bool | None = None  # None: online only if a W&B API key is configured
    log_predictions: int = 8  # rows of the sample prediction table per validation


@dataclass
class CallbacksConfig:
    early_stopping_patience: int | None = None  # validations without val/cer improvement
    save_top_k: int = 1
    save_last: bool = True
    train_cer_samples: int = 32  # fixed training samples decoded at each validation
    curriculum: bool = False  # grow synthetic pages from min_lines to max_lines
    curriculum_lines_every: int = 500  # steps per extra line
    curriculum_final_synthetic_proba: float | None = None  # synthetic share once full pages


@dataclass
class TrainConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data_format: DataFormatConfig = field(default_factory=DataFormatConfig)
    dataset: Any = None  # checked by the schema of the chosen dataset group option
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    seed: int = 42
    num_workers: int = 2
    ckpt_path: str | None = None  # resume this run: a path, or "last"
    # torch.compile the encoder's ResNet trunk (the convolutions, ~40% of a CPU step); the
    # first step of every new canvas shape pays the compilation (see docs/quickstart.md)
    compile: bool = False
    run_test: bool = True
    task_name: str = "train"
    tags: list[str] = field(default_factory=list)
    output_dir: str = "${hydra:runtime.output_dir}"


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (called by every entry point)."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(group="encoder", name="encoder_schema", node=EncoderConfig)
    cs.store(group="decoder", name="decoder_schema", node=DecoderConfig)
    cs.store(group="data_format", name="data_format_schema", node=DataFormatConfig)
    cs.store(group="dataset", name="synthetic_schema", node=SyntheticDatasetConfig)
    cs.store(group="dataset", name="iam_schema", node=IAMDatasetConfig)
    cs.store(group="augmentation", name="augmentation_schema", node=AugmentationConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)


class ConfigError(ValueError):
    """A config value that is well typed but impossible; the message names the key."""


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def native_bf16(accelerator: str) -> bool:
    """Whether the accelerator computes in bf16 natively (so bf16-mixed pays off).

    A CPU without AVX512-BF16/AMX (most laptops, AMD EPYC/Ryzen before Zen 4) emulates bf16:
    the quick-start step takes 17 s there instead of 0.8 s in fp32 (docs/quickstart.md)."""
    import torch  # here, so that composing a config stays cheap

    if accelerator in ("gpu", "cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if accelerator == "cpu":  # oneDNN's check: avx512_core_bf16, AMX or avx2_vnni_2
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed where the accelerator has native bf16, else 32-true."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if native_bf16(accelerator) else "32-true"


def validate(cfg: DictConfig) -> None:
    """Range and cross-field checks, run before any data is loaded or model built."""
    for key in ("encoder.dropout", "decoder.dropout", "optim.label_smoothing", "optim.tf_noise",
                "optim.ctc_weight", "augmentation.synthetic_proba"):  # fmt: skip
        v = OmegaConf.select(cfg, key)
        _check(0.0 <= v < 1.0 if "dropout" in key else 0.0 <= v <= 1.0, key, v, "a value in [0, 1]")
    d = cfg.decoder
    _check(d.d_model % 4 == 0, "decoder.d_model", d.d_model, "a multiple of 4 (2D positions)")
    _check(d.d_model % d.nhead == 0, "decoder.nhead", d.nhead, f"a divisor of d_model={d.d_model}")
    for key in ("decoder.num_layers", "decoder.nhead", "decoder.dim_feedforward",
                "data_format.max_height", "data_format.max_width", "data_format.max_target_len",
                "data_format.batch_size", "decoding.beam_width"):  # fmt: skip
        v = OmegaConf.select(cfg, key)
        _check(v >= 1, key, v, "a positive integer")
    _check(cfg.data_format.scale > 0, "data_format.scale", cfg.data_format.scale, "> 0")
    ebs, mcc = cfg.data_format.eval_batch_size, cfg.data_format.max_chars_per_cell
    _check(ebs is None or ebs >= 1, "data_format.eval_batch_size", ebs,
           "null (batch_size) or a positive integer")  # fmt: skip
    _check(mcc is None or mcc > 0, "data_format.max_chars_per_cell", mcc, "null (off) or > 0")
    _check(cfg.encoder.last_stride in (16, 32), "encoder.last_stride", cfg.encoder.last_stride,
           "32 (the paper's ResNet) or 16 (layer4 without downsampling)")  # fmt: skip
    clock = str(getattr(cfg.optim.schedule_clock, "value", cfg.optim.schedule_clock))
    if clock == "time" and cfg.trainer.max_time is None:  # e.g. the quick start, trained longer
        logging.getLogger(__name__).info(
            "optim.schedule_clock=time without trainer.max_time: the decay ends at max_steps"
        )
    pre = cfg.optim.ctc_pretrain_steps
    _check(pre == 0 or (pre > 0 and cfg.optim.ctc_weight > 0), "optim.ctc_pretrain_steps", pre,
           "0, or a positive step count together with optim.ctc_weight > 0 (the CTC head)")  # fmt: skip
    if cfg.optim.ctc_weight > 0:
        k = cfg.model.ctc_frames_per_column
        _check(k >= 1, "model.ctc_frames_per_column", k, "a positive integer")
        fmt = str(getattr(cfg.data_format.name, "value", cfg.data_format.name))
        if fmt == "form":  # e.g. the quick start's CTC setting with data_format=form
            logging.getLogger(__name__).warning(
                "optim.ctc_weight=%s set to 0 for data_format=form: a page is no single CTC "
                "sequence (train the CTC head on lines, then start pages from that model "
                "with model.init_from)", cfg.optim.ctc_weight,
            )  # fmt: skip
            cfg.optim.ctc_weight = 0.0
            cfg.optim.ctc_pretrain_steps = 0
    if cfg.trainer.precision == "auto":  # resolved here, so the saved config says which
        cfg.trainer.precision = resolve_precision("auto", cfg.trainer.accelerator)
        logging.getLogger(__name__).info(
            "trainer.precision=auto -> %s on %s", cfg.trainer.precision, cfg.trainer.accelerator
        )
    cm = list(cfg.data_format.canvas_multiple)
    _check(len(cm) == 2 and all(m > 0 and m % 32 == 0 for m in cm), "data_format.canvas_multiple",
           cm, "[height, width], each a positive multiple of 32")  # fmt: skip
    _check(cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "> 0")
    _check(cfg.num_workers >= 0, "num_workers", cfg.num_workers, ">= 0")
    lo, hi = cfg.augmentation.scale_jitter
    _check(0 < lo <= hi, "augmentation.scale_jitter", [lo, hi], "[low, high] with 0 < low <= high")
    for key, v in cfg.augmentation.items():
        if key.endswith("_p"):
            _check(0.0 <= v <= 1.0, f"augmentation.{key}", v, "a probability in [0, 1]")
    if cfg.model.require_init_from and not cfg.model.init_from:
        raise ConfigError(
            "model.init_from is required by this experiment (it starts from a trained model, "
            "e.g. model.init_from=/runs/lines/checkpoints/best.ckpt); it would otherwise "
            "train from scratch"
        )
    if cfg.dataset is None:
        raise ConfigError("no dataset chosen: add dataset=synthetic or dataset=iam")
    if cfg.dataset.name == "synthetic":
        ds = cfg.dataset
        _check(1 <= ds.min_lines <= ds.max_lines, "dataset.min_lines", ds.min_lines,
               f"1 <= min_lines <= max_lines={ds.max_lines}")  # fmt: skip
        _check(1 <= ds.min_words <= ds.max_words, "dataset.min_words", ds.min_words,
               f"1 <= min_words <= max_words={ds.max_words}")  # fmt: skip
        from fphtr.data.synthetic import split_writers

        for split in ("train", "val"):  # the dataset's own check, before any work
            try:
                split_writers(
                    split, list(ds.val_writers), ds.train_writers and list(ds.train_writers)
                )
            except ValueError as e:
                raise ConfigError(f"dataset.{e}") from None
        lw = ds.line_width
        _check(lw is None or (len(lw) == 2 and 0 < lw[0] <= lw[1]), "dataset.line_width",
               None if lw is None else list(lw),
               "null or [low, high] px at scale 1 with 0 < low <= high")  # fmt: skip
    if cfg.dataset.name == "iam":
        ds = cfg.dataset
        fr = list(ds.writers_fractions)
        _check(len(fr) == 3 and min(fr) >= 0 and fr[0] > 0, "dataset.writers_fractions", fr,
               "[train, val, test] shares, non-negative, train > 0")  # fmt: skip
        _check(ds.form_margin >= 0, "dataset.form_margin", ds.form_margin, ">= 0")
        for key in ("train_size", "val_size", "test_size"):
            v = ds[key]
            _check(v is None or v >= 1, f"dataset.{key}", v, "null (all) or a positive integer")
        if str(getattr(ds.split, "value", ds.split)) == "aachen":
            _check(ds.split_dir is not None, "dataset.split_dir", ds.split_dir,
                   "a folder with train.uttlist, validation.uttlist, test.uttlist for "
                   "dataset.split=aachen")  # fmt: skip
