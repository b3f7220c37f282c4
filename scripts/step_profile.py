#!/usr/bin/env python
"""Where one training step's time goes, for any training config: rendering/loading per
sample, step time (forward, backward, AdamW) and torch.profiler's top operators.

    python scripts/step_profile.py                                  # the quick start config
    python scripts/step_profile.py data_format=line ~experiment     # any fphtr-train overrides
    python scripts/step_profile.py --steps 20 --top 15 precision=32-true

The config is composed exactly as `fphtr-train` composes it. Batches come from the training
DataLoader; every distinct batch shape is run once untimed first (bf16 CPU kernels are
compiled per shape). Threads follow torch's default (set OMP_NUM_THREADS to change them).
The last lines time `opt.step()` alone for each AdamW implementation (for-loop, foreach,
fused). Results for the quick start are written down in docs/quickstart.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from fphtr.config import register_configs, validate  # noqa: E402
from fphtr.data.datamodule import build_datamodule  # noqa: E402
from fphtr.lit_module import HTRModule, build_optimizer  # noqa: E402
from fphtr.model.fphtr import build_model  # noqa: E402

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("overrides", nargs="*", help="fphtr-train overrides")
    args = parser.parse_args()

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=args.overrides)
    with open_dict(cfg):
        cfg.output_dir = "."  # normally set by Hydra's run directory; unused here
    validate(cfg)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    dm = build_datamodule(config)
    dm.setup("fit")
    train = dm.train  # the training dataset, augmentation included

    t = time.perf_counter()
    for i in range(64):
        train[i]
    per_sample = (time.perf_counter() - t) / 64

    it = iter(dm.train_dataloader())
    batches = [next(it) for _ in range(args.steps + 5)]
    module = HTRModule(build_model(config, len(dm.tokenizer)), dm.tokenizer, config)
    module.train()
    precision = config["trainer"]["precision"]
    opt, _ = build_optimizer(module.parameters(), config["optim"], 1000, precision)
    bf16 = "bf16" in str(config["trainer"]["precision"])
    clip = config["trainer"]["gradient_clip_val"]

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = module._loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()

    seen: set[tuple[int, ...]] = set()
    first = []  # the first step of a shape pays kernel compilation (and torch.compile)
    for b in batches:  # untimed: one step per distinct shape
        if tuple(b.images.shape) not in seen:
            seen.add(tuple(b.images.shape))
            t = time.perf_counter()
            step(b)
            first.append(time.perf_counter() - t)
    times = []
    for b in batches[5:]:
        t = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[:5]:
            step(b)

    shapes = sorted({tuple(b.images.shape[2:]) for b in batches})
    print(f"torch threads        {torch.get_num_threads()}")
    print(
        f"precision            {precision}, optimiser {type(opt).__name__} "
        f"fused={opt.defaults.get('fused')}"
    )
    print(f"batch                {config['data_format']['batch_size']}, canvases {shapes}")
    print(f"render/load          {per_sample * 1000:.1f} ms per sample (main process)")
    print(f"first step per shape {', '.join(f'{t:.1f} s' for t in first)}")
    print(f"step (median of {len(times)})  {statistics.median(times) * 1000:.0f} ms")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    # opt.step() alone, per AdamW implementation, on this model's parameters and gradients
    params = [p for p in module.parameters() if p.grad is not None]
    for name, kwargs in [("for-loop", {"foreach": False}), ("foreach", {"foreach": True}),
                         ("fused", {"fused": True})]:  # fmt: skip
        adamw = torch.optim.AdamW(params, lr=1e-4, **kwargs)
        for _ in range(3):
            adamw.step()
        t = time.perf_counter()
        for _ in range(20):
            adamw.step()
        print(f"AdamW {name:9s} {(time.perf_counter() - t) / 20 * 1000:6.1f} ms per step")


if __name__ == "__main__":
    main()
