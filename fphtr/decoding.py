"""Turning image memory into token sequences: greedy and beam search, cached or not.

All decoders return token ids (B, L), L <= max_len, in which each row ends with EOS (then
PAD) or stops at `max_len`; `Tokenizer.decode` turns them into text.

- `greedy(..., use_cache=True)` (the default) runs the decoder one token at a time: the
  self-attention keys/values of past tokens are kept in a cache and the cross-attention
  keys/values of the image memory are computed once, so each step costs O(1) projections.
- `greedy(..., use_cache=False)` is the honest O(T^2) reference, as torch's stock
  `nn.TransformerDecoder` would run it: every step re-runs the whole decoder (including
  the memory projections) on the whole prefix. The cached path must equal it token for
  token; it also serves as the baseline in scripts/benchmark.py.
- `beam_search` keeps `beam_width` hypotheses per image, ranks the finished ones by summed
  log probability / length**length_penalty, and reorders the cache as beams move.
  `beam_width=1` gives the greedy result.

Batches stop per sample: a sample that emitted EOS (or reached its own length limit)
continues with PAD, and the "who is done" check (the loop's one host sync) runs every
`sync_every` steps, not every step. At that check finished samples leave the batch
(`compact=True`, the default): their rows are dropped from the token buffer, the cache and
the projected memory, so a batch costs per step only what its unfinished samples cost.
Dropping rows never changes the other rows' tokens (tests/test_decoding_speed.py).

A row's length limit is `max_len`, or lower with `max_lens`: `length_limits` derives one
from the image alone (its size in pixels, see `data_format.max_chars_per_cell`), never
from a reference, so an evaluation stays honest while an untrained page model stops at a
length its image could plausibly hold instead of running to `max_len`.

Decoding assumes an eval-mode model (no dropout). On the CPU the step loop runs with one
intra-op thread: its tensors are tiny (one token per sample), so a second thread only adds
synchronisation, and on a shared, busy machine every parallel region can wait a whole
scheduler time slice for the other thread (measured: 20x slower with 2 threads). It also
runs in float32 whatever the autocast around it (bf16-mixed validation): torch's CPU
attention kernel for one bf16 query over a long memory is ~3.4x slower than for float32
(a 32-page batch on Zen 4: 161 ms per step in float32, 546 ms under bf16 autocast,
scripts/bench_step_precision.py, docs/benchmarks.md);
the encoder keeps the autocast's precision. On GPUs the loop keeps the autocast.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from fphtr.data.tokenizer import EOS, PAD, SOS, Tokenizer
from fphtr.model.decoder import Decoder
from fphtr.model.fphtr import FPHTR

CPU_DECODE_THREADS = 1  # intra-op threads of the CPU step loop (see the module docstring)
# finished rows leave the batch once they are at least this share of it (each compaction
# copies the live rows' cache, about the cost of one step)
COMPACT_SHARE = 1 / 8
ENCODE_CHUNK = 8  # images encoded at once: bounds the encoder's activations for big batches
CELL = 32  # px; max_chars_per_cell counts cells of CELL x CELL px at REFERENCE_SCALE
REFERENCE_SCALE = 0.5


@contextmanager
def _step_loop(memory: torch.Tensor) -> Iterator[torch.Tensor]:
    """Run the token-by-token loop over `memory`; yields the memory in the loop's precision.
    On the CPU: CPU_DECODE_THREADS threads, no autocast, float32 memory (see the module
    docstring); elsewhere unchanged."""
    if memory.device.type != "cpu":
        yield memory
        return
    before = torch.get_num_threads()
    change = before > CPU_DECODE_THREADS
    if change:
        torch.set_num_threads(CPU_DECODE_THREADS)
    try:
        with torch.autocast("cpu", enabled=False):
            yield memory.float()
    finally:
        if change:
            torch.set_num_threads(before)


class IncrementalDecoder:
    """One-token-at-a-time inference of a `Decoder` with cached keys and values.

    It runs the decoder's own layers (`Decoder.forward` with a cache), so teacher forcing and
    decoding share one implementation: each step feeds one token at its position and the
    layers append their keys/values to the cache. Cross-attention keys/values of the memory
    are projected once here, and shared by the `repeat` rows (beams) of an image.

    `reorder(rows)` makes row i continue the hypothesis of row rows[i] (beam search).
    """

    def __init__(
        self,
        decoder: Decoder,
        memory: torch.Tensor,  # (N, S, d)
        padding: torch.Tensor,  # (N, S) True where padded
        max_len: int,
        repeat: int = 1,  # rows per memory entry (beams); memory is projected only once
    ):
        self.dec = decoder
        mem_kv = decoder.memory_kv(memory)  # per layer (N, nh, S, hd), computed once
        if repeat > 1:  # every beam of an image reads the same projected memory
            mem_kv = [(k.repeat_interleave(repeat, 0), v.repeat_interleave(repeat, 0))
                      for k, v in mem_kv]  # fmt: skip
            padding = padding.repeat_interleave(repeat, 0)
        self.mem_kv, self.padding = mem_kv, padding
        self.cache = decoder.new_cache(memory.shape[0] * repeat, max_len, memory)
        self.pos = 0  # position of the next token

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (rows,) at position `pos` -> logits (rows, vocab) for the next token."""
        logits = self.dec(tokens[:, None], self.mem_kv, self.padding, self.cache, self.pos)
        self.pos += 1
        return logits[:, -1]

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with the given rows only (finished samples leave the batch); only the
        filled part of the cache is copied."""
        t = self.pos
        self.mem_kv = [(k[rows], v[rows]) for k, v in self.mem_kv]
        self.padding = self.padding[rows]
        for c in self.cache:
            k, v = (
                c.k.new_empty((len(rows), *c.k.shape[1:])),
                c.v.new_empty((len(rows), *c.v.shape[1:])),
            )
            k[:, :, :t], v[:, :, :t] = c.k[rows, :, :t], c.v[rows, :, :t]
            c.k, c.v = k, v

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]; only the filled part of the cache is copied."""
        t = self.pos
        for c in self.cache:
            c.k[:, :, :t] = c.k[rows, :, :t]
            c.v[:, :, :t] = c.v[rows, :, :t]


def _full_step(dec: Decoder, memory: torch.Tensor, padding: torch.Tensor, prefix: torch.Tensor):
    """Next-token logits by re-running the whole decoder on the whole prefix, memory
    projections included (what a stock transformer decoder does each step)."""
    return dec(prefix, dec.memory_kv(memory), padding)[:, -1]


def _limits(max_lens: torch.Tensor | None, b: int, max_len: int, dev) -> torch.Tensor:
    if max_lens is None:
        return torch.full((b,), max_len, dtype=torch.long, device=dev)
    return max_lens.to(dev, torch.long).clamp(1, max_len)


@torch.no_grad()
def greedy(
    model: FPHTR,
    memory: torch.Tensor,  # (B, S, d)
    padding: torch.Tensor,  # (B, S) True where padded
    max_len: int,
    use_cache: bool = True,
    sync_every: int = 8,
    max_lens: torch.Tensor | None = None,  # (B,) per-sample limits <= max_len
    compact: bool = True,
) -> torch.Tensor:
    """Most likely token at every step -> ids (B, L), L <= max_len."""
    b, dev = memory.shape[0], memory.device
    out = torch.full((b, max_len), PAD, dtype=torch.long, device=dev)
    tokens = torch.full((b, max_len + 1), PAD, dtype=torch.long, device=dev)
    tokens[:, 0] = SOS
    limit = _limits(max_lens, b, max_len, dev)
    rows = torch.arange(b, device=dev)  # the sample each live row decodes
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    steps = 0
    with _step_loop(memory) as memory:
        inc = IncrementalDecoder(model.decoder, memory, padding, max_len) if use_cache else None
        for t in range(max_len):
            if inc is not None:
                logits = inc.step(tokens[:, t])
            else:
                logits = _full_step(model.decoder, memory, padding, tokens[:, : t + 1])
            nxt = logits.argmax(-1).masked_fill(done, PAD)  # finished samples emit PAD
            tokens[:, t + 1] = nxt
            done |= (nxt == EOS) | (limit <= t + 1)
            steps = t + 1
            if steps % sync_every:
                continue
            finished = int(done.sum())  # the host sync
            if finished == len(rows):
                break
            if compact and finished > 0 and finished >= COMPACT_SHARE * len(rows):
                gone, keep = done.nonzero()[:, 0], (~done).nonzero()[:, 0]
                out[rows[gone], :steps] = tokens[gone, 1 : steps + 1]
                tokens, done, limit, rows = tokens[keep], done[keep], limit[keep], rows[keep]
                if inc is not None:
                    inc.keep(keep)
                else:
                    memory, padding = memory[keep], padding[keep]
    out[rows, :steps] = tokens[:, 1 : steps + 1]
    return out[:, :steps]


@torch.no_grad()
def beam_search(
    model: FPHTR,
    memory: torch.Tensor,  # (B, S, d)
    padding: torch.Tensor,  # (B, S)
    max_len: int,
    beam_width: int = 4,
    length_penalty: float = 1.0,
    sync_every: int = 8,
    use_cache: bool = True,
    max_lens: torch.Tensor | None = None,  # (B,) per-image limits <= max_len
    compact: bool = True,
) -> torch.Tensor:
    """Keep the `beam_width` best prefixes per image (summed log probabilities); return,
    per image, the hypothesis with the best score / length**length_penalty -> (B, L).
    `use_cache=False` re-runs the decoder on every prefix each step (the reference).
    Images whose beams have all finished leave the batch (`compact`)."""
    b, k, dev = memory.shape[0], beam_width, memory.device
    out = torch.full((b, max_len), PAD, dtype=torch.long, device=dev)
    tokens = torch.full((b * k, max_len + 1), PAD, dtype=torch.long, device=dev)
    tokens[:, 0] = SOS
    # only the first beam is live at the start, so the K copies do not all win
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    lengths = torch.zeros(b, k, device=dev)  # tokens up to and including EOS
    done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    limit = _limits(max_lens, b, max_len, dev)[:, None]  # (B, 1)
    images = torch.arange(b, device=dev)  # the image each live group of K rows decodes
    steps = 0

    def finish(idx: torch.Tensor) -> None:  # write the best hypothesis of images idx
        normalised = scores[idx] / lengths[idx].clamp(min=1).pow(length_penalty)
        best = normalised.argmax(-1)  # first (highest raw score) among equals
        rows = idx * k + best
        out[images[idx], :steps] = tokens[rows, 1 : steps + 1]

    with _step_loop(memory) as memory:
        inc = IncrementalDecoder(model.decoder, memory, padding, max_len, k) if use_cache else None
        if inc is None:  # the reference runs every beam's whole prefix: one memory per row
            memory, padding = memory.repeat_interleave(k, 0), padding.repeat_interleave(k, 0)
        for t in range(max_len):
            n = len(images)
            if inc is not None:
                logits = inc.step(tokens[:, t])
            else:
                logits = _full_step(model.decoder, memory, padding, tokens[:, : t + 1])
            logp = logits.float().log_softmax(-1).view(n, k, -1)  # (N, K, V)
            vocab = logp.shape[-1]
            # a finished beam can only continue with PAD, at no cost
            pad_only = torch.full_like(logp[0, 0], float("-inf"))
            pad_only[PAD] = 0.0
            logp = torch.where(done[..., None], pad_only, logp)
            cand = (scores[..., None] + logp).view(n, k * vocab)
            scores, flat = cand.topk(k, dim=-1)  # (N, K), best first
            beam, tok = flat // vocab, flat % vocab
            if k > 1:  # with one beam every row extends itself
                rows = (torch.arange(n, device=dev)[:, None] * k + beam).view(-1)
                tokens = tokens[rows]
                if inc is not None:
                    inc.reorder(rows)
            tokens[:, t + 1] = tok.view(-1)
            prev_done = done.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~prev_done).float()
            done = prev_done | (tok == EOS) | (limit <= t + 1)
            steps = t + 1
            if steps % sync_every:
                continue
            over = done.all(-1)  # (N,) every beam of the image finished
            finished = int(over.sum())  # the host sync
            if finished == n:
                break
            if compact and finished > 0 and finished >= COMPACT_SHARE * n:
                gone, keep = over.nonzero()[:, 0], (~over).nonzero()[:, 0]
                finish(gone)
                rows = (keep[:, None] * k + torch.arange(k, device=dev)).view(-1)
                tokens, scores, lengths = tokens[rows], scores[keep], lengths[keep]
                done, limit, images = done[keep], limit[keep], images[keep]
                if inc is not None:
                    inc.keep(rows)
                else:
                    memory, padding = memory[rows], padding[rows]
    finish(torch.arange(len(images), device=dev))
    return out[:, :steps]


def length_limits(
    sizes: torch.Tensor,  # (B, 2) valid (h, w) of each prepared image
    max_len: int,
    fmt: dict[str, Any],
) -> torch.Tensor | None:
    """Per-image decoding limits from the image's size alone (None: `max_len` for all).

    `fmt` is the data format: `max_chars_per_cell` characters per cell of 32 x 32 px at
    scale 0.5 (so at scale 0.25 a 32 px cell counts as 4 cells), plus one for EOS, at most
    `max_len`. An image that touches the max_height x max_width frame may have been shrunk
    into it (its writing smaller than `scale` says), so it keeps the full `max_len`."""
    density = fmt.get("max_chars_per_cell")
    if not density:
        return None
    h, w = sizes[:, 0].long(), sizes[:, 1].long()
    cells = ((h + CELL - 1) // CELL) * ((w + CELL - 1) // CELL)
    per_cell = density * (REFERENCE_SCALE / fmt["scale"]) ** 2
    limits = (cells.double() * per_cell).ceil().long() + 1
    framed = (h >= fmt["max_height"]) | (w >= fmt["max_width"])
    return torch.where(framed, max_len, limits).clamp(max=max_len)


def encode(model: FPHTR, images: torch.Tensor, sizes: torch.Tensor):
    """The image memory of a batch, encoded ENCODE_CHUNK images at a time (a large evaluation
    batch of pages would otherwise hold all their activations at once)."""
    parts = [model.encode(images[i : i + ENCODE_CHUNK], sizes[i : i + ENCODE_CHUNK])
             for i in range(0, len(images), ENCODE_CHUNK)]  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    return torch.cat([m for m, _ in parts]), torch.cat([p for _, p in parts])


def decode(
    model: FPHTR,
    images: torch.Tensor,
    sizes: torch.Tensor,
    max_len: int,
    beam_width: int = 1,
    length_penalty: float = 1.0,
    max_lens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Images -> token ids with the configured strategy (beam_width 1 = greedy)."""
    memory, padding = encode(model, images, sizes)
    if beam_width <= 1:
        return greedy(model, memory, padding, max_len, max_lens=max_lens)
    return beam_search(model, memory, padding, max_len, beam_width, length_penalty,
                       max_lens=max_lens)  # fmt: skip


def transcribe(
    model: FPHTR,
    tokenizer: Tokenizer,
    images: torch.Tensor,
    sizes: torch.Tensor,
    decoding: dict[str, Any],
    fmt: dict[str, Any],
) -> list[str]:
    """A padded batch -> its transcriptions: the one decoding path of validation, test,
    fphtr-eval and fphtr-predict. `decoding` holds beam_width, length_penalty and max_len
    (resolved), `fmt` the data format (for `length_limits`)."""
    max_len = decoding["max_len"] or fmt["max_target_len"]
    ids = decode(
        model, images, sizes, max_len, decoding["beam_width"], decoding["length_penalty"],
        length_limits(sizes, max_len, fmt),
    )  # fmt: skip
    return [tokenizer.decode(row) for row in ids.tolist()]
