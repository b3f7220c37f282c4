#!/usr/bin/env python
"""Measure fphtr on this machine, side by side, in one run; write docs/benchmarks.md.

    python scripts/benchmark.py                      # the full run recorded in docs/benchmarks.md
    python scripts/benchmark.py --quick              # shorter sequences, fewer steps; prints only
    python scripts/benchmark.py --only decoding      # decoding, training, loader, memory, predict

Sections:
- decoding: cached vs full re-computation (the whole decoder, memory projections included,
  on the whole prefix every step, as a stock transformer decoder runs) at word, line and
  form lengths, greedy and beam search, with the paper's decoder (d_model 260, 6 layers,
  4 heads, ff 1024) at batch 1; tokens/s, the ratio and whether the outputs are identical.
  The decoder is untrained with EOS disabled, so every run decodes exactly the given length.
- training: samples/s of Lightning's training step (HTRModule + Trainer) and of a plain
  PyTorch loop (same model, loss, AdamW schedule, gradient clipping) over the same
  pre-built batches of the default config (line images, batch 16); alternating runs, the
  median step time of each; the difference is the framework's overhead.
- loader: the default training DataLoader (config num_workers) alone, and Lightning
  training fed by it, against the model's consumption measured above.
- memory: peak resident memory of one form training step (forward, backward, AdamW step)
  at batch 1 and the default scale, in a fresh process.
- predict: pages/s of `fphtr-predict` on a folder of 64 synthetic images (lines and pages
  mixed), today's code (BASELINE_REV, run from `git archive`) against the batched one at
  batch 1, 8, 32, bucketed or not, 0 or 2 workers (an untrained checkpoint; see the report).
- step: cached greedy vs full re-computation at form length with the machine's cores, the
  step's FLOP/s against torch.mm at its sizes, torch.compile of the step, batch scaling.

Environment: set NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline. The machine is described
in the output, including the load average: other processes on a shared machine slow
everything down, so the ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import fphtr.decoding as decoding  # noqa: E402
from fphtr.config import register_configs  # noqa: E402
from fphtr.data.datamodule import Batch, build_datamodule, collate  # noqa: E402
from fphtr.data.geometry import prepare, to_tensor  # noqa: E402
from fphtr.data.tokenizer import EOS  # noqa: E402
from fphtr.lit_module import HTRModule, build_optimizer  # noqa: E402
from fphtr.model.fphtr import FPHTR, build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
register_configs()


# --- the machine ----------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem_gb = round(kb / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    import lightning

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_gb,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "os": platform.platform(),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "load_start": os.getloadavg(),
    }


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(median wall seconds, median CPU seconds of this process, last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


# --- decoding -------------------------------------------------------------------------------
def _decode(model: FPHTR, mem, pad, tokens: int, beam: int, use_cache: bool) -> torch.Tensor:
    if beam == 1:
        return decoding.greedy(model, mem, pad, tokens, use_cache=use_cache)
    return decoding.beam_search(model, mem, pad, tokens, beam, use_cache=use_cache)


def bench_decoding(quick: bool) -> tuple[list[dict], list[dict]]:
    """Cached vs full re-computation at word/line/form lengths, greedy and beam 4."""
    torch.manual_seed(0)
    model = FPHTR(80).eval()  # the paper's decoder sizes (the encoder is not used here)
    with torch.no_grad():
        model.decoder.classifier.bias[EOS] = -1e4  # never stop: decode exactly `tokens`
    # (name, tokens, memory positions): word 128x~512 px -> 4x16 cells, line 192x2048 px ->
    # 6x64, a page of ~1000 cells (e.g. 1280x800 px at 150 dpi); a page has 500-700 chars
    cases = [("word", 16, 64), ("line", 100, 384), ("form", 200 if quick else 700, 1000)]
    beam = 4

    def memory(s: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(1)
        return torch.randn(1, s, 260), torch.zeros(1, s, dtype=torch.bool)

    # the thread policy: cached and full greedy at line length with 1 and with all threads
    mem, pad = memory(384)
    threads = []
    baseline_threads, best_full = 1, float("inf")
    for n in sorted({1, torch.get_num_threads()}):
        decoding.CPU_DECODE_THREADS = n
        row = {"threads": n}
        for name, cache in (("cached", True), ("full", False)):
            sec, _, _ = timed(
                lambda c=cache: decoding.greedy(model, mem, pad, 100, use_cache=c),
                1 if quick else 2,
            )
            row[name] = 100 / sec
        threads.append(row)
        print(
            f"threads {n}: cached {row['cached']:.0f} tok/s, full {row['full']:.0f} tok/s",
            flush=True,
        )
        if 1 / row["full"] < best_full:
            baseline_threads, best_full = n, 1 / row["full"]
    decoding.CPU_DECODE_THREADS = 1

    rows = []
    for name, tokens, positions in cases:
        mem, pad = memory(positions)
        for strategy in ("greedy", f"beam {beam}"):
            run = partial(_decode, model, mem, pad, tokens, beam if strategy != "greedy" else 1)
            cached_s, cached_cpu, cached = timed(partial(run, True), 3 if name != "form" else 2)
            decoding.CPU_DECODE_THREADS = baseline_threads  # the baseline at its best setting
            full_s, full_cpu, full = timed(partial(run, False), 1 if name == "form" or quick else 2)
            decoding.CPU_DECODE_THREADS = 1
            rows.append({
                "format": name, "tokens": tokens, "memory": positions, "strategy": strategy,
                "cached_tok_s": tokens / cached_s, "full_tok_s": tokens / full_s,
                "cached_s": cached_s, "full_s": full_s, "ratio": full_s / cached_s,
                "cached_cpu": cached_cpu, "full_cpu": full_cpu, "ratio_cpu": full_cpu / cached_cpu,
                "identical": bool(torch.equal(cached, full)), "full_threads": baseline_threads,
            })  # fmt: skip
            print(f"{name:5s} {strategy:7s} cached {cached_s:7.2f} s  full {full_s:7.2f} s  "
                  f"x{full_s / cached_s:5.1f}  identical {rows[-1]['identical']}", flush=True)  # fmt: skip
    return rows, threads


def _step_flops(model: FPHTR, memory: int, tokens: int) -> float:
    """Multiply-adds x 2 of one cached greedy step, averaged over `tokens` steps: every
    decoder linear layer on one token, self-attention over the prefix (mean length
    tokens/2), cross-attention over `memory` positions (scores and weighted sum)."""
    dec = model.decoder
    linear = sum(m.in_features * m.out_features for name, m in dec.named_modules()
                 if isinstance(m, torch.nn.Linear) and "cross_kv" not in name)  # fmt: skip
    d, layers = dec.d_model, len(dec.layers)
    attention = layers * 2 * d * (tokens / 2 + memory)
    return 2.0 * (linear + attention)


def _matmul_flops(m: int, k: int, n: int, threads: int, repeats: int = 50) -> float:
    """Measured FLOP/s of torch.mm (m x k) @ (k x n) with the given intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sec = (time.perf_counter() - start) / repeats
    torch.set_num_threads(before)
    return 2.0 * m * k * n / sec


def bench_step(quick: bool) -> dict[str, Any]:
    """Cached greedy vs full re-computation at form length, both with the machine's cores
    (cached: its step-loop thread setting and all threads; full: all threads), the step's
    achieved FLOP/s against torch.mm at the step's sizes, and torch.compile of the step."""
    torch.manual_seed(0)
    model = FPHTR(80).eval()
    with torch.no_grad():
        model.decoder.classifier.bias[EOS] = -1e4  # never stop: decode exactly `tokens`
    tokens, positions = (200, 1000) if quick else (700, 1000)
    torch.manual_seed(1)
    mem, pad = torch.randn(1, positions, 260), torch.zeros(1, positions, dtype=torch.bool)
    cores = torch.get_num_threads()
    out: dict[str, Any] = {"tokens": tokens, "memory": positions, "cores": cores}
    results = {}
    for name, threads, cache in (("cached_1", 1, True), (f"cached_{cores}", cores, True),
                                 (f"full_{cores}", cores, False)):  # fmt: skip
        decoding.CPU_DECODE_THREADS = threads
        sec, cpu, ids = timed(lambda c=cache: decoding.greedy(model, mem, pad, tokens,
                                                              use_cache=c), 1)  # fmt: skip
        out[f"{name}_s"], out[f"{name}_cpu"], results[name] = sec, cpu, ids
        print(f"step {name}: {sec:.2f} s wall, {cpu:.2f} s CPU", flush=True)
    decoding.CPU_DECODE_THREADS = 1
    cached = min(out["cached_1_s"], out[f"cached_{cores}_s"])
    out["ratio"] = out[f"full_{cores}_s"] / cached
    out["identical"] = all(torch.equal(results["cached_1"], r) for r in results.values())
    flops = _step_flops(model, positions, tokens)
    out["step_flops"] = flops
    out["achieved"] = flops * tokens / out["cached_1_s"]
    d, ff = model.decoder.d_model, model.decoder.layers[0].ff[0].out_features
    out["mm_step"] = _matmul_flops(1, d, ff, 1)  # one token through the feed-forward layer
    out["mm_batch32"] = _matmul_flops(32, d, ff, 1)  # 32 samples decoded together
    out["mm_large"] = _matmul_flops(1024, 1024, 1024, 1, 5)  # the core's arithmetic limit
    # torch.compile of the one-token step (dynamic shapes: one graph for every position)
    try:
        compiled = torch.compile(model.decoder, dynamic=True)
        original = decoding.IncrementalDecoder.step

        def step(self, tok):
            logits = compiled(tok[:, None], self.mem_kv, self.padding, self.cache, self.pos)
            self.pos += 1
            return logits[:, -1]

        decoding.IncrementalDecoder.step = step
        start = time.perf_counter()
        decoding.greedy(model, mem, pad, 16)  # under no_grad, as the timed run
        out["compile_s"] = time.perf_counter() - start
        sec, _, ids = timed(lambda: decoding.greedy(model, mem, pad, tokens), 1)
        out["compiled_s"], out["compiled_identical"] = (
            sec,
            bool(torch.equal(ids, results["cached_1"])),
        )
        decoding.IncrementalDecoder.step = original
        print(f"compiled step: {sec:.2f} s (compiling {out['compile_s']:.0f} s)", flush=True)
    except Exception as e:  # noqa: BLE001 - a missing compiler must not stop the benchmark
        out["compile_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        print(f"torch.compile failed: {out['compile_error']}", flush=True)
    # batch scaling of the cached step: per-sample cost at batch 1, 8, 32 (200 tokens)
    for b in (1, 8, 32):
        m, p = torch.randn(b, positions, 260), torch.zeros(b, positions, dtype=torch.bool)
        sec, _, _ = timed(lambda m=m, p=p: decoding.greedy(model, m, p, 200), 1)
        out[f"batch_{b}_ms"] = sec / 200 * 1e3
    return out


# --- training -------------------------------------------------------------------------------
def train_config(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["logger=none", *overrides])
    with open_dict(cfg):
        cfg.output_dir = "unused"
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def _listed(batches: list[Batch]) -> DataLoader:
    """The pre-built batches as a DataLoader (in the main process, as they are)."""
    return DataLoader(batches, batch_size=None, shuffle=False, collate_fn=lambda b: b)


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process) in seconds."""
    return time.perf_counter(), time.process_time()


def _intervals(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(points, points[1:], strict=False)]


class StepTimes(pl.Callback):
    """Clock readings at the start of every training batch and at the end of the last."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []
        self.end = (0.0, 0.0)

    def on_train_batch_start(self, *args: Any) -> None:
        self.points.append(_now())

    def on_train_batch_end(self, *args: Any) -> None:
        self.end = _now()

    def durations(self) -> list[tuple[float, float]]:
        return _intervals([*self.points, self.end])


def lightning_steps(config: dict, model: FPHTR, tokenizer, loader, steps: int) -> list:
    """(wall, CPU) seconds of each step of `HTRModule` trained by a Lightning Trainer."""
    module = HTRModule(model, tokenizer, config)
    timer = StepTimes()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, precision=config["trainer"]["precision"],
        max_steps=steps, max_epochs=-1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        num_sanity_val_steps=0, gradient_clip_val=config["trainer"]["gradient_clip_val"],
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return timer.durations()


def plain_steps(config: dict, model: FPHTR, tokenizer, loader, steps: int) -> list:
    """The same training written without a framework: same model, loss, AdamW schedule and
    gradient clipping; (wall, CPU) seconds of each step."""
    module = HTRModule(model, tokenizer, config)  # for its loss function only
    module.train()
    opt, sched = build_optimizer(
        model.parameters(), config["optim"], steps, config["trainer"]["precision"]
    )
    clip = config["trainer"]["gradient_clip_val"]
    points = []
    for step, batch in enumerate(loader):
        if step == steps:
            break
        points.append(_now())
        module._ramp_dropout(step)
        loss = module._loss(batch, noise=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    points.append(_now())
    return _intervals(points)


def _median(pairs: list[tuple[float, float]], i: int) -> float:
    return statistics.median(p[i] for p in pairs)


def bench_training(quick: bool, loader_too: bool) -> dict[str, Any]:
    """Lightning vs plain loop on the same batches; then the DataLoader's throughput."""
    # the defaults: line images, resnet18 + paper decoder, batch 16 (4 with --quick)
    config = train_config(["data_format.batch_size=4"] if quick else [])
    warmup, steps, rounds = (1, 2, 2) if quick else (1, 3, 4)
    dm = build_datamodule(config)
    torch.manual_seed(0)  # the shuffled order; Lightning fed by the loader sees it again
    it = iter(dm.train_dataloader())  # the real training pipeline
    batches = [next(it) for _ in range(warmup + steps)]
    del it
    bs = config["data_format"]["batch_size"]
    torch.manual_seed(0)
    initial = build_model(config, len(dm.tokenizer))
    default_threads = torch.get_num_threads()
    # One intra-op thread: the CPU time of a step is then the work done, whatever else
    # runs on the machine (with 2 threads, waiting for a descheduled thread counts too).
    torch.set_num_threads(1)
    # untimed pass over every batch first: the first use of each image shape builds its
    # convolution kernels and grows the allocator, which must not count against either loop
    plain_steps(config, copy.deepcopy(initial), dm.tokenizer, _listed(batches), len(batches))
    times: dict[str, list[tuple[float, float]]] = {"lightning": [], "plain": []}
    order = [("lightning", lightning_steps), ("plain", plain_steps)]
    for r in range(rounds):  # alternate, so a change of machine load hits both alike
        for name, fn in order if r % 2 == 0 else order[::-1]:
            d = fn(config, copy.deepcopy(initial), dm.tokenizer, _listed(batches), warmup + steps)
            times[name] += d[warmup:]
            print(f"{name:9s} round {r}: median {_median(d[warmup:], 0):.2f} s/step wall, "
                  f"{_median(d[warmup:], 1):.2f} s CPU", flush=True)  # fmt: skip
    torch.set_num_threads(default_threads)
    result = {
        "batch_size": bs,
        "image": list(batches[0].images.shape[-2:]),
        "steps": steps * rounds,
        "num_workers": config["num_workers"],
        "default_threads": default_threads,
    }
    for name in ("lightning", "plain"):
        result[f"{name}_wall"] = _median(times[name], 0)
        result[f"{name}_cpu"] = _median(times[name], 1)
    result["overhead_cpu"] = result["lightning_cpu"] / result["plain_cpu"] - 1
    result["overhead_wall"] = result["lightning_wall"] / result["plain_wall"] - 1
    if not loader_too:
        return result

    # the default DataLoader alone, then Lightning training fed by it (1 and default threads)
    n = 6 if quick else 20
    start = time.perf_counter()
    it = iter(dm.train_dataloader())
    first = next(it)
    result["loader_first_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    result["loader_samples_s"] = n * len(first.texts) / (time.perf_counter() - start)
    del it
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        d = lightning_steps(config, copy.deepcopy(initial), dm.tokenizer, dm.train_dataloader(),
                            warmup + steps)  # fmt: skip
        result[f"fed_wall_{threads}"] = _median(d[warmup:], 0)
        print(f"Lightning fed by the loader, {threads} threads: "
              f"{bs / result[f'fed_wall_{threads}']:.2f} samples/s", flush=True)  # fmt: skip
    torch.set_num_threads(default_threads)
    result["fed_wall"] = result["fed_wall_1"]
    print(f"loader alone {result['loader_samples_s']:.1f} samples/s", flush=True)
    return result


# --- predict --------------------------------------------------------------------------------
BASELINE_REV = "6df32db"  # fphtr-predict before batching/bucketing (fixed chunks, in order)


def _predict_checkpoint(path: Path, limits: bool, decoder: str, max_len: int) -> None:
    """An untrained checkpoint: ResNet-18 + the given decoder, pages at scale 0.3, at most
    max_len tokens. Untrained, it never emits EOS: each image decodes to its length limit
    (`max_chars_per_cell`, from its size, as a trained model stops at its text's end), or
    to max_len tokens without limits."""
    from fphtr.data.synthetic import charset
    from fphtr.data.tokenizer import Tokenizer

    config = train_config(["data_format=form", "data_format.scale=0.3", f"decoder={decoder}",
                           f"data_format.max_target_len={max_len}"])  # fmt: skip
    config["data_format"]["max_chars_per_cell"] = 2.0 if limits else None
    tokenizer = Tokenizer(charset())
    torch.manual_seed(0)
    model = build_model(config, len(tokenizer), load_pretrained=False).eval()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "fphtr": {"config": config,
                "tokenizer": tokenizer.to_dict()}}, path)  # fmt: skip


def _mixed_folder(folder: Path, n: int) -> None:
    """n synthetic images at ~300 dpi, half text lines, half pages of 1-10 lines, their
    names interleaved (a folder's sorted order mixes them)."""
    from PIL import Image

    from fphtr.data.synthetic import SyntheticHandwriting

    folder.mkdir(parents=True, exist_ok=True)
    lines = SyntheticHandwriting("val", "line", size=n // 2, seed=5, scale=1.0)
    pages = SyntheticHandwriting("val", "form", size=n - n // 2, seed=5, scale=1.0)
    for i in range(n):
        ds, kind = (lines, "line") if i % 2 == 0 else (pages, "page")
        Image.fromarray(ds[i // 2].image).save(folder / f"{i:03d}_{kind}.png")


def _run_predict(args: list[str], pythonpath: str | None = None) -> tuple[float, str]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "fphtr.predict", *args], capture_output=True,
                         text=True, env=env, cwd="/tmp", check=True)  # fmt: skip
    return time.perf_counter() - start, out.stdout


def bench_predict(quick: bool, decoder: str = "small", max_len: int = 200,
                  grid: bool = True) -> dict[str, Any]:  # fmt: skip
    """Pages/s of fphtr-predict over a mixed folder, every run a fresh `fphtr-predict`
    process (model loading included): today's code at BASELINE_REV, and the batched one at
    batch 1, 8, 32, bucketed or not, workers 0 or 2."""
    import tempfile

    n = 16 if quick else 64
    tmp = Path(tempfile.mkdtemp(prefix="fphtr-bench-predict-"))
    _mixed_folder(tmp / "images", n)
    for limits in (True, False):
        _predict_checkpoint(tmp / f"limits-{limits}.ckpt", limits, decoder, max_len)
    base = tmp / "baseline"
    base.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BASELINE_REV],
                             capture_output=True, check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)

    def args(limits: bool, *opts: str) -> list[str]:
        return [f"checkpoint={tmp / f'limits-{limits}.ckpt'}", f"input={tmp / 'images'}", *opts]

    rows = []
    secs, today = _run_predict(args(True, "batch_size=8"), str(base))
    rows.append({"code": f"today ({BASELINE_REV})", "batch": 8, "bucket": False, "workers": 0,
                 "seconds": secs})  # fmt: skip
    print(f"today, batch 8: {n / secs:.2f} pages/s", flush=True)
    configs = [(b, bucket, w) for b in (1, 8, 32) for bucket in (False, True) for w in (0, 2)]
    if not grid:  # the acceptance comparison only
        configs = [(8, False, 2), (8, True, 2), (32, True, 2)]
    for batch, bucket, workers in configs:
        secs, _ = _run_predict(args(True, f"batch_size={batch}", f"bucket={bucket}",
                                    f"num_workers={workers}"))  # fmt: skip
        rows.append({"code": "batched", "batch": batch, "bucket": bucket, "workers": workers,
                     "seconds": secs})  # fmt: skip
        print(f"batch {batch} bucket {bucket} workers {workers}: {n / secs:.2f} pages/s",
              flush=True)  # fmt: skip
    result = {"images": n, "rows": rows, "decoder": decoder, "max_len": max_len}
    if grid:  # identical transcriptions at batch size 1 (no length limits: today's work)
        _, old = _run_predict(args(False, "batch_size=1"), str(base))
        _, new = _run_predict(args(False, "batch_size=1", "bucket=true", "num_workers=2"))
        result["identical_batch1"] = old == new and bool(old)
    return result


# --- memory ---------------------------------------------------------------------------------
def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_probe() -> dict[str, Any]:
    """One form training step at batch 1 (run in a fresh process by bench_memory)."""
    from fphtr.data.synthetic import SyntheticHandwriting

    config = train_config(["data_format=form"])
    fmt = config["data_format"]
    dm = build_datamodule(config)
    page = SyntheticHandwriting("train", "form", size=1, seed=7, scale=fmt["scale"],
                                min_lines=10, max_lines=10)[0]  # fmt: skip
    image = to_tensor(prepare(page.image, 1.0, fmt["max_height"], fmt["max_width"]))
    batch = collate(dm.tokenizer)([(image, page.text, page.id)])  # as the DataLoader does
    model = build_model(config, len(dm.tokenizer))
    module = HTRModule(model, dm.tokenizer, config).train()
    opt, _ = build_optimizer(model.parameters(), config["optim"], 1, config["trainer"]["precision"])
    before = _rss_mb()
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loss = module._loss(batch, noise=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config["trainer"]["gradient_clip_val"])
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    h, w = batch.images.shape[-2:]
    return {
        "image": [int(h), int(w)],
        "chars": len(page.text),
        "lines": page.text.count("\n") + 1,
        "memory_positions": int(h // 32 * (w // 32)),
        "rss_before_mb": before,
        "peak_before_mb": peak_before,
        "peak_mb": peak,
        "step_mb": peak - before,
        "scale": fmt["scale"],
        "cuda_peak_mb": None,
    }


def bench_memory() -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-probe"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- report ---------------------------------------------------------------------------------
def report(
    m: dict,
    dec: tuple | None,
    train: dict | None,
    mem: dict | None,
    quick: bool,
    pred: dict | None = None,
    step: dict | None = None,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured with `python scripts/benchmark.py{' --quick' if quick else ''}` on "
        f"{m['date']}. Re-run it on your machine; the numbers below are this machine's.",
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m['cpu']}, {m['cores']} cores available, torch uses {m['torch_threads']} threads |",
        f"| memory | {m['memory_gb']} GB |",
        f"| GPU | {m['gpu'] or 'none (CPU only)'} |",
        f"| software | Python {m['python']}, torch {m['torch']}, Lightning {m['lightning']} |",
        f"| OS | {m['os']} |",
        f"| load average (1, 5, 15 min) | at start {', '.join(f'{x:.1f}' for x in m['load_start'])}; "
        f"at end {', '.join(f'{x:.1f}' for x in m['load_end'])} |",
        "",
        "The machine is shared: a load average above the core count means other processes "
        "took CPU time during the run. Absolute speeds vary with it; the ratios of numbers "
        "measured side by side are the meaningful part.",
    ]
    if dec:
        rows, threads = dec
        form = next(r for r in rows if r["format"] == "form" and r["strategy"] == "greedy")
        lines += [
            "",
            "## Decoding: cached vs full re-computation",
            "",
            "Paper-sized decoder (d_model 260, 6 layers, 4 heads, feed-forward 1024), batch 1, "
            "untrained with EOS disabled so every run decodes exactly the given number of tokens. "
            "*Cached*: `fphtr.decoding` (self-attention keys/values cached, memory projected "
            "once). *Full*: the whole decoder, memory projections included, re-run on the "
            "whole prefix at every step, as torch's stock `nn.TransformerDecoder` would "
            f"(run with {form['full_threads']} thread(s), its faster setting here; see below).",
            "",
            "Both run with one intra-op thread, so wall-clock and CPU time agree unless other "
            "processes take the core; the speed-up is given for both.",
            "",
            "| format | tokens | memory positions | strategy | cached tok/s | full tok/s | cached s | full s | speed-up (wall) | speed-up (CPU time) | identical output |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['format']} | {r['tokens']} | {r['memory']} | {r['strategy']} | "
                f"{r['cached_tok_s']:.0f} | {r['full_tok_s']:.1f} | {r['cached_s']:.2f} | "
                f"{r['full_s']:.2f} | **{r['ratio']:.1f}x** | {r['ratio_cpu']:.1f}x | "
                f"{'yes' if r['identical'] else 'NO'} |"
            )
        lines += [
            "",
            f"At form length ({form['tokens']} tokens, {form['memory']} memory positions) cached "
            f"greedy decoding is **{form['ratio']:.1f}x** faster than full re-computation "
            f"({form['ratio_cpu']:.1f}x in CPU time; acceptance: at least 20x), with identical "
            "output.",
            "",
            "Intra-op threads of the step loop (line length, greedy, tokens/s). One token per "
            "step makes tiny tensors; with 2 threads every parallel region can wait for the "
            "other thread to be scheduled, which on a busy shared machine costs a time slice. "
            "`fphtr.decoding` therefore runs the step loop on the CPU with one thread "
            "(`CPU_DECODE_THREADS`) and restores the setting afterwards.",
            "",
            "| threads | cached tok/s | full tok/s |",
            "|---:|---:|---:|",
            *[f"| {t['threads']} | {t['cached']:.0f} | {t['full']:.1f} |" for t in threads],
        ]
    if step:
        c = step["cores"]
        compiled = (
            f"{step['compiled_s']:.2f} s after {step['compile_s']:.0f} s of compiling "
            f"(identical tokens: {'yes' if step['compiled_identical'] else 'NO'})"
            if "compiled_s" in step
            else f"failed ({step.get('compile_error')})"
        )
        lines += [
            "",
            "## The decoding step: cached vs full at form length, FLOP/s, torch.compile",
            "",
            f"Paper-sized decoder, batch 1, {step['tokens']} tokens, {step['memory']} memory "
            f"positions, EOS disabled; one run each, both given the machine's {c} cores.",
            "",
            "| | wall s | CPU s |",
            "|---|---:|---:|",
            f"| cached, 1 step-loop thread (the default) | {step['cached_1_s']:.2f} | "
            f"{step['cached_1_cpu']:.2f} |",
            f"| cached, {c} threads | {step[f'cached_{c}_s']:.2f} | {step[f'cached_{c}_cpu']:.2f} |",
            f"| full re-computation, {c} threads | {step[f'full_{c}_s']:.2f} | "
            f"{step[f'full_{c}_cpu']:.2f} |",
            f"| cached, torch.compile of the step (dynamic shapes) | {compiled} | |",
            "",
            f"Cached greedy is **{step['ratio']:.1f}x** faster than full re-computation by wall "
            f"clock (goal: 30x), tokens identical: {'yes' if step['identical'] else 'NO'}.",
            "",
            f"One cached step is {step['step_flops'] / 1e6:.1f} MFLOP (linear layers on one "
            "token, self-attention over the mean prefix, cross-attention over the memory); "
            f"the step loop achieves **{step['achieved'] / 1e9:.2f} GFLOP/s** on one thread. "
            f"torch.mm on one thread at the step's sizes: {step['mm_step'] / 1e9:.2f} GFLOP/s "
            f"for one token (1x260 @ 260x1024), {step['mm_batch32'] / 1e9:.2f} GFLOP/s for "
            f"32 tokens (32x260 @ 260x1024), {step['mm_large'] / 1e9:.1f} GFLOP/s for "
            "1024^3 (the core's arithmetic limit).",
            "",
            "Per-step time of the cached loop by batch size (200 tokens, 1000 memory "
            f"positions): batch 1 {step['batch_1_ms']:.1f} ms, batch 8 {step['batch_8_ms']:.1f} "
            f"ms, batch 32 {step['batch_32_ms']:.1f} ms.",
        ]
    if pred:
        n = pred["images"]
        today = pred["rows"][0]
        best = max(pred["rows"][1:], key=lambda r: n / r["seconds"])
        lines += [
            "",
            "## fphtr-predict: batching, bucketing, workers",
            "",
            f"{n} synthetic images at ~300 dpi in one folder, half text lines and half pages "
            "of 1-10 lines, names interleaved. Every run is a fresh `fphtr-predict` process "
            "(model loading included), in the same run of this script. The checkpoint is "
            f"untrained (ResNet-18 + the {pred['decoder']} decoder, pages at scale 0.3, at "
            f"most {pred['max_len']} tokens; "
            "`data_format.max_chars_per_cell=2.0`): untrained, it never emits EOS, so each "
            "image decodes to its length limit from its size, as a trained model stops at the "
            "end of its text; *today* (fphtr-predict at "
            f"`{BASELINE_REV}`, fixed chunks in input order, no limits) decodes every image "
            f"to {pred['max_len']} tokens.",
            "",
            "| code | batch | bucketed | workers | s | pages/s | vs today |",
            "|---|---:|---|---:|---:|---:|---:|",
            *[
                f"| {r['code']} | {r['batch']} | {'yes' if r['bucket'] else 'no'} | "
                f"{r['workers']} | {r['seconds']:.1f} | {n / r['seconds']:.2f} | "
                f"{today['seconds'] / r['seconds']:.1f}x |"
                for r in pred["rows"]
            ],
            "",
            f"Best: batch {best['batch']}, {'bucketed' if best['bucket'] else 'unbucketed'}, "
            f"{best['workers']} workers, **{today['seconds'] / best['seconds']:.1f}x** today's "
            "pages/s.",
        ]
        if "identical_batch1" in pred:
            lines[-1] += (
                " At batch size 1 without length limits the transcriptions of today's code "
                "and of the batched code (bucketed, 2 workers) are "
                f"{'identical' if pred['identical_batch1'] else 'NOT identical'}."
            )
    if train:
        bs = train["batch_size"]
        lines += [
            "",
            "## Training throughput: Lightning vs a plain PyTorch loop",
            "",
            f"The default config (line images, ResNet-18 + paper decoder, batch {bs}, fp32; "
            f"first batch {train['image'][0]}x{train['image'][1]} px), the same pre-built "
            "batches and initial weights for both loops, after an untimed pass over all "
            f"batches; {train['steps']} measured steps each (plus one warm-up step per run), "
            "in alternating runs. The plain loop does the same work: the module's loss, AdamW "
            "with the same schedule, gradient clipping at the configured norm. Both run with "
            "one intra-op thread so that the **CPU time** of a step measures the work done; on "
            "this shared machine wall-clock times swing with other processes' load, so the "
            "overhead is taken from CPU time (wall clock shown for reference).",
            "",
            "| loop | median CPU s/step | median wall s/step | samples/s (wall) |",
            "|---|---:|---:|---:|",
            f"| Lightning (`HTRModule` + `Trainer`) | {train['lightning_cpu']:.3f} | "
            f"{train['lightning_wall']:.3f} | {bs / train['lightning_wall']:.2f} |",
            f"| plain PyTorch loop | {train['plain_cpu']:.3f} | {train['plain_wall']:.3f} | "
            f"{bs / train['plain_wall']:.2f} |",
            "",
            f"Lightning's overhead: **{100 * train['overhead_cpu']:+.1f}%** of the step's CPU "
            f"time (acceptance: at most 10%); by wall clock {100 * train['overhead_wall']:+.1f}%.",
        ]
        if "loader_samples_s" in train:
            consumption = bs / min(train["plain_wall"], train["fed_wall"])
            n = train["default_threads"]
            default_row = [] if n == 1 else [
                f"| Lightning training fed by the DataLoader, {n} threads (torch's default) | "
                f"{bs / train[f'fed_wall_{n}']:.2f} |"
            ]  # fmt: skip
            verdict = (
                "keeps up with" if train["loader_samples_s"] >= consumption else "is slower than"
            )
            lines += [
                "",
                "## Data loading vs model consumption",
                "",
                f"The default training DataLoader (synthetic line images rendered on the fly, "
                f"`num_workers={train['num_workers']}` worker processes, batch {bs}).",
                "",
                "| | samples/s |",
                "|---|---:|",
                f"| DataLoader alone (after the first batch, which took "
                f"{train['loader_first_s']:.1f} s) | {train['loader_samples_s']:.1f} |",
                f"| model consumption: plain training step, 1 thread, pre-built batches | "
                f"{bs / train['plain_wall']:.2f} |",
                f"| Lightning training fed by the DataLoader, 1 thread | "
                f"{bs / train['fed_wall_1']:.2f} |",
                *default_row,
                "",
                f"The loader {verdict} the model by a factor of "
                f"{train['loader_samples_s'] / consumption:.0f}: on this CPU training is "
                "compute bound, and the workers need only a small share of the cores they "
                "share with the training step.",
            ]
    if mem:
        lines += [
            "",
            "## Peak memory of a form training step",
            "",
            f"One synthetic page of {mem['lines']} lines ({mem['chars']} characters), "
            f"{mem['image'][0]}x{mem['image'][1]} px at the default scale {mem['scale']} "
            f"({mem['memory_positions']} memory positions), batch 1, fp32, ResNet-18 + paper "
            "decoder: forward, backward, AdamW step, in a fresh process.",
            "",
            "| | MB |",
            "|---|---:|",
            f"| resident before the step (Python, torch, model, data) | {mem['rss_before_mb']:.0f} |",
            f"| peak resident during the step | {mem['peak_mb']:.0f} |",
            f"| the step's own peak (activations, gradients, optimiser state) | {mem['step_mb']:.0f} |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs; prints the report")
    parser.add_argument("--only", default="decoding,training,loader,memory,predict,step",
                        help="comma-separated sections")  # fmt: skip
    parser.add_argument("--output", help="markdown file (default: docs/benchmarks.md, "
                        "or only printed with --quick)")  # fmt: skip
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--predict-decoder", default="small", help="decoder= of the predict "
                        "checkpoint (small: the grid in minutes; paper: the real cost)")  # fmt: skip
    parser.add_argument("--predict-max-len", type=int, default=200)
    parser.add_argument("--predict-focus", action="store_true",
                        help="predict: only today vs batch 8/32 with 2 workers")  # fmt: skip
    args = parser.parse_args()
    if args.memory_probe:
        print(json.dumps(memory_probe()))
        return
    sections = set(args.only.split(","))
    m = machine()
    dec = bench_decoding(args.quick) if "decoding" in sections else None
    train = None
    if sections & {"training", "loader"}:
        train = bench_training(args.quick, loader_too="loader" in sections)
    mem = bench_memory() if "memory" in sections else None
    pred = None
    if "predict" in sections:
        pred = bench_predict(args.quick, args.predict_decoder, args.predict_max_len,
                             not args.predict_focus)  # fmt: skip
    step = bench_step(args.quick) if "step" in sections else None
    m["load_end"] = os.getloadavg()
    text = report(m, dec, train, mem, args.quick, pred, step)
    print(text)
    output = args.output or (None if args.quick else str(REPO / "docs" / "benchmarks.md"))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text)
        print(f"written to {output}")


if __name__ == "__main__":
    main()
