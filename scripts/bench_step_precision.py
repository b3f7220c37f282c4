"""Cost of one cached decoding step by precision, batch size and threads (CPU).

Why the CPU step loop of fphtr.decoding runs in float32 even under bf16-mixed: this prints
ms per step of `IncrementalDecoder.step` (the paper's decoder, 6 layers, d_model 260) for a
batch of memories of `--memory` positions, in float32 and under bf16 autocast, with 1 and
with all intra-op threads. Untrained weights: the cost of a step does not depend on them.

    python scripts/bench_step_precision.py --memory 2400 --batches 1,8,32   # page memories
    python scripts/bench_step_precision.py --memory 64 --batches 1,32       # line memories
"""

from __future__ import annotations

import argparse
import time

import torch

from fphtr.decoding import IncrementalDecoder
from fphtr.model.decoder import Decoder


def ms_per_step(decoder: Decoder, batch: int, memory: int, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    mem = torch.randn(batch, memory, decoder.d_model)
    pad = torch.zeros(batch, memory, dtype=torch.bool)
    tokens = torch.full((batch,), 4)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        inc = IncrementalDecoder(decoder, mem, pad, steps + 8)
        for _ in range(4):  # warm-up (oneDNN primitive creation)
            inc.step(tokens)
        start = time.perf_counter()
        for _ in range(steps):
            inc.step(tokens)
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory", type=int, default=2400, help="memory positions per sample")
    parser.add_argument("--batches", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per setting")
    args = parser.parse_args()
    decoder = Decoder(100).eval()  # the paper's decoder: d_model 260, 6 layers, 4 heads
    all_threads = torch.get_num_threads()
    print(f"memory {args.memory} positions; ms per step (per sample-token in brackets)")
    print("| threads | batch | float32 | bf16 autocast | bf16 / float32 |")
    print("|---:|---:|---:|---:|---:|")
    for threads in sorted({1, all_threads}):
        torch.set_num_threads(threads)
        for batch in (int(b) for b in args.batches.split(",")):
            fp32 = ms_per_step(decoder, batch, args.memory, False, args.steps)
            bf16 = ms_per_step(decoder, batch, args.memory, True, args.steps)
            print(f"| {threads} | {batch} | {fp32:.1f} ({fp32 / batch:.2f}) | "
                  f"{bf16:.1f} ({bf16 / batch:.2f}) | {bf16 / fp32:.2f}x |", flush=True)  # fmt: skip
    torch.set_num_threads(all_threads)


if __name__ == "__main__":
    main()
