"""LightningModule: teacher-forced loss, optimiser and schedule, greedy validation, CER/WER."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.loggers import WandbLogger
from torch.nn.attention import SDPBackend, sdpa_kernel

from fphtr.checkpoint import rng_states, set_rng_states
from fphtr.data.datamodule import Batch
from fphtr.data.tokenizer import PAD, SPECIALS, Tokenizer
from fphtr.decoding import transcribe as decode_batch
from fphtr.metrics import ErrorRates, cer
from fphtr.model.ctc import ctc_greedy, ctc_loss
from fphtr.model.fphtr import FPHTR


def lr_factor(
    step: int, warmup: int, total: int, schedule: str, floor: float, time_share: float = 0.0
) -> float:
    """Learning-rate multiplier: linear warmup over `warmup` steps, then constant, or a
    linear or cosine decay to `floor` at step `total`.

    `time_share` > 0 is the share of the run's time budget used so far (schedule_clock=time):
    the decay then ends at the step the budget reaches at the pace so far,
    step / time_share, where that comes before `total`."""
    if step < warmup:
        return (step + 1) / warmup
    if time_share > 0:
        total = min(total, max(warmup + 1, round(step / min(1.0, time_share))))
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return floor + (1 - floor) * (1 - progress)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    optim: dict[str, Any],
    total_steps: int,
    precision: str = "32-true",
    time_share: Callable[[], float] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with the configured warmup and decay (the `optim` config section); `time_share`
    reports the share of the time budget used, for `optim.schedule_clock=time`.

    Fused if `optim.fused`, except under fp16 autocast: there gradients must be unscaled
    before they are clipped, which Lightning does only for unfused optimisers."""
    fused = optim.get("fused", False) and not str(precision).startswith("16")
    opt = torch.optim.AdamW(
        params,
        lr=optim["lr"],
        betas=tuple(optim["betas"]),
        weight_decay=optim["weight_decay"],
        **({"fused": True} if fused else {"foreach": True}),
    )

    def factor(step: int) -> float:  # the clock, if any, is read each time the scheduler asks
        return lr_factor(step, optim["warmup_steps"], total_steps, optim["schedule"],
                         optim["min_lr_ratio"], time_share() if time_share else 0.0)  # fmt: skip

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class HTRModule(pl.LightningModule):
    """Trains an `FPHTR` model. `config` is the run's resolved config as a plain dict; it is
    stored in every checkpoint together with the vocabulary (see fphtr.checkpoint)."""

    def __init__(
        self,
        model: FPHTR,
        tokenizer: Tokenizer,
        config: dict[str, Any],
        train_probe: Batch | None = None,
    ):
        super().__init__()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.optim = config["optim"]
        dec = config["decoding"]
        self.max_len = dec["max_len"] or config["data_format"]["max_target_len"]
        self.beam_width, self.length_penalty = dec["beam_width"], dec["length_penalty"]
        self.train_probe = train_probe  # fixed training samples, decoded to measure train/cer
        self.rates = torch.nn.ModuleDict({"val": ErrorRates(), "test": ErrorRates()})
        self.ctc_weight = self.optim.get("ctc_weight", 0.0)
        if config.get("compile"):  # in place: parameter names (checkpoints) stay the same
            self.model.encoder.trunk.compile()
        if model.ctc is not None:  # the CTC head's greedy reading, a cheap second metric
            self.ctc_rates = torch.nn.ModuleDict({"val": ErrorRates(), "test": ErrorRates()})
        self.examples: list[tuple[torch.Tensor, str, str, str]] = []  # for prediction tables
        self.n_examples = config["logger"]["log_predictions"]
        # final dropout rates, ramped up from 0 if *_dropout_ramp_steps > 0
        self._dropouts = [
            (config["encoder"], [self.model.encoder.dropout]),
            (config["decoder"], [m for m in self.model.decoder.modules()
                                 if isinstance(m, torch.nn.Dropout)]),
        ]  # fmt: skip

    # --- training -------------------------------------------------------------------------
    def _ramp_dropout(self, step: int) -> None:
        for part, modules in self._dropouts:
            ramp = part["dropout_ramp_steps"]
            p = part["dropout"] * (min(1.0, step / ramp) if ramp > 0 else 1.0)
            for m in modules:
                m.p = p

    def _noisy(self, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing noise: replace a share of the input characters by random ones."""
        rate = self.optim["tf_noise"]
        if rate <= 0:
            return tokens_in
        chars = tokens_in >= len(SPECIALS)
        flip = chars & (torch.rand(tokens_in.shape, device=tokens_in.device) < rate)
        rand = torch.randint_like(tokens_in, len(SPECIALS), len(self.tokenizer))
        return torch.where(flip, rand, tokens_in)

    def _ctc_weight(self) -> float:
        """w of the joint loss: 1 (CTC only) during the first optim.ctc_pretrain_steps."""
        pretrain = self.optim.get("ctc_pretrain_steps", 0)
        return 1.0 if self.training and self.global_step < pretrain else self.ctc_weight

    def _losses(self, batch: Batch, noise: bool = False) -> dict[str, torch.Tensor]:
        """{"loss": the training objective, "att": attention loss, "ctc": CTC loss (with
        a CTC head only)}; loss = (1 - w) * att + w * ctc with w = optim.ctc_weight."""
        tokens_in, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
        if noise:
            tokens_in = self._noisy(tokens_in)
        w = self._ctc_weight() if self.model.ctc is not None else 0.0
        if w >= 1.0:  # CTC only: the decoder would learn nothing, so it is not run
            ctc = ctc_loss(*self.model.ctc_logits(batch.images, batch.sizes), batch.tokens)
            return {"loss": ctc, "ctc": ctc}
        # On the CPU, torch's flash-attention kernel is slower than the plain math path at
        # these sizes (its backward: ~2 ms per call, 10% of a quick-start step).
        cpu = batch.images.device.type == "cpu"
        with sdpa_kernel([SDPBackend.MATH]) if cpu else contextlib.nullcontext():
            if self.model.ctc is None:
                logits = self.model(batch.images, batch.sizes, tokens_in)  # (B, T, V)
            else:
                logits, ctc_logits, ctc_lengths = self.model.forward_with_ctc(
                    batch.images, batch.sizes, tokens_in
                )
        att = F.cross_entropy(
            logits.transpose(1, 2).float(),
            targets,
            ignore_index=PAD,
            label_smoothing=self.optim["label_smoothing"],
        )
        if self.model.ctc is None:
            return {"loss": att, "att": att}
        ctc = ctc_loss(ctc_logits, ctc_lengths, batch.tokens)
        return {"loss": (1 - w) * att + w * ctc, "att": att, "ctc": ctc}

    def _loss(self, batch: Batch, noise: bool = False) -> torch.Tensor:
        return self._losses(batch, noise)["loss"]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self._ramp_dropout(self.global_step)
        losses = self._losses(batch, noise=True)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss {loss.item()} at step {self.global_step}, "
                f"samples {batch.ids}; the last good checkpoint is kept"
            )
        n = len(batch.texts)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if "ctc" in losses:
            self.log("train/loss_ctc", losses["ctc"], batch_size=n)
        if "ctc" in losses and "att" in losses:
            self.log("train/loss_att", losses["att"], batch_size=n)
        return loss

    def configure_optimizers(self) -> dict:
        total = max(1, int(self.trainer.estimated_stepping_batches))
        precision = self.config["trainer"]["precision"]
        opt, sched = build_optimizer(
            self.parameters(), self.optim, total, precision, self._time_share()
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _time_share(self) -> Callable[[], float] | None:
        """With optim.schedule_clock=time and a trainer.max_time: the share of it used so
        far, from Lightning's Timer (training time; restored on resume, so a resumed run
        keeps its place in the decay). None: the step clock."""
        if self.optim.get("schedule_clock", "steps") != "time":
            return None
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None or timer.time_remaining() is None:  # no max_time: max_steps ends it
            return None

        def share() -> float:
            elapsed = timer.time_elapsed()
            return elapsed / max(1e-9, elapsed + timer.time_remaining())

        return share

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning refuses to clip for a fused optimiser under any mixed precision, because
        # with fp16 the GradScaler would unscale inside step(). build_optimizer fuses only
        # where there is no scaler (bf16, fp32): the gradients are already true, clip them.
        fused = any(g.get("fused") for g in optimizer.param_groups)
        if fused and gradient_clip_val and (gradient_clip_algorithm or "norm") == "norm":
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # --- evaluation -----------------------------------------------------------------------
    def transcribe(self, batch: Batch) -> list[str]:
        # the one batched decoding path (fphtr-predict uses it too): finished samples
        # leave the batch, data_format.max_chars_per_cell limits lengths by image size
        settings = {"max_len": self.max_len, "beam_width": self.beam_width,
                    "length_penalty": self.length_penalty}  # fmt: skip
        return decode_batch(self.model, self.tokenizer, batch.images, batch.sizes, settings,
                            self.config["data_format"])  # fmt: skip

    def transcribe_ctc(self, batch: Batch) -> list[str]:
        """The CTC head's greedy reading (no decoder steps: one encoder pass)."""
        logits, lengths = self.model.ctc_logits(batch.images, batch.sizes)
        return [self.tokenizer.decode(ids) for ids in ctc_greedy(logits, lengths)]

    def _eval_step(self, batch: Batch, stage: str) -> None:
        # images that cannot be decoded are left out of the batch and counted, never replaced
        self.rates[stage].skip(batch.skipped)
        n = len(batch.texts)
        if n == 0:
            return
        self.log(f"{stage}/loss", self._loss(batch), batch_size=n, sync_dist=True)
        if self.model.ctc is not None:
            self.ctc_rates[stage].update(batch.texts, self.transcribe_ctc(batch))
        hyps = self.transcribe(batch)
        self.rates[stage].update(batch.texts, hyps)
        for i in range(min(n, self.n_examples - len(self.examples))):
            h, w = batch.sizes[i].tolist()
            image = batch.images[i, 0, :h, :w].detach().cpu()
            self.examples.append((image, batch.texts[i], hyps[i], batch.ids[i]))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_epoch_start(self) -> None:
        self.examples = []

    on_validation_epoch_start = on_test_epoch_start = _eval_epoch_start

    def _eval_epoch_end(self, stage: str) -> None:
        rates = self.rates[stage]
        result = rates.compute()  # totals summed over all processes before dividing
        rates.reset()
        self.log(f"{stage}/cer", result["cer"], prog_bar=True)
        self.log(f"{stage}/wer", result["wer"], prog_bar=stage == "val")
        self.log(f"{stage}/skipped", result["skipped"].float())  # unreadable, left out
        if self.model.ctc is not None:
            ctc_result = self.ctc_rates[stage].compute()
            self.ctc_rates[stage].reset()
            self.log(f"{stage}/cer_ctc", ctc_result["cer"], prog_bar=stage == "val")
        if stage == "val" and self.train_probe is not None:
            probe = self.train_probe.to(self.device)
            self.log("train/cer", cer(probe.texts, self.transcribe(probe)))

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    # --- checkpoints carry everything needed to use the model -----------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["fphtr"] = {"config": self.config, "tokenizer": self.tokenizer.to_dict()}
        # for an exact resume: dropout and teacher-forcing noise draw from the global RNGs
        # (this process's; under DDP every rank resumes from rank 0's states)
        checkpoint["rng_states"] = rng_states()
        for lg in self.loggers:  # the resumed run logs to the same W&B run
            if isinstance(lg, WandbLogger):
                checkpoint["wandb_run_id"] = lg.version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])
