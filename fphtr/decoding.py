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

Batches stop per sample: a sample that emitted EOS continues with PAD at no cost, and the
"everyone is done" check (a host sync) runs every `sync_every` steps, not every step.

Decoding assumes an eval-mode model (no dropout). On the CPU the step loop runs with one
intra-op thread: its tensors are tiny (one token per sample), so a second thread only adds
synchronisation, and on a shared, busy machine every parallel region can wait a whole
scheduler time slice for the other thread (measured: 20x slower with 2 threads).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from fphtr.data.tokenizer import EOS, PAD, SOS
from fphtr.model.decoder import Decoder
from fphtr.model.fphtr import FPHTR

CPU_DECODE_THREADS = 1  # intra-op threads of the CPU step loop (see the module docstring)


@contextmanager
def _step_threads(device: torch.device) -> Iterator[None]:
    """Run the token-by-token loop with CPU_DECODE_THREADS threads on the CPU."""
    before = torch.get_num_threads()
    change = device.type == "cpu" and before > CPU_DECODE_THREADS
    if change:
        torch.set_num_threads(CPU_DECODE_THREADS)
    try:
        yield
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


@torch.no_grad()
def greedy(
    model: FPHTR,
    memory: torch.Tensor,  # (B, S, d)
    padding: torch.Tensor,  # (B, S) True where padded
    max_len: int,
    use_cache: bool = True,
    sync_every: int = 8,
) -> torch.Tensor:
    """Most likely token at every step -> ids (B, L), L <= max_len."""
    b, dev = memory.shape[0], memory.device
    tokens = torch.full((b, max_len + 1), PAD, dtype=torch.long, device=dev)
    tokens[:, 0] = SOS
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    steps = 0
    with _step_threads(dev):
        inc = IncrementalDecoder(model.decoder, memory, padding, max_len) if use_cache else None
        for t in range(max_len):
            if inc is not None:
                logits = inc.step(tokens[:, t])
            else:
                logits = _full_step(model.decoder, memory, padding, tokens[:, : t + 1])
            nxt = logits.argmax(-1).masked_fill(done, PAD)  # finished samples emit PAD
            tokens[:, t + 1] = nxt
            done |= nxt == EOS
            steps = t + 1
            if steps % sync_every == 0 and bool(done.all()):
                break
    return tokens[:, 1 : steps + 1]


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
) -> torch.Tensor:
    """Keep the `beam_width` best prefixes per image (summed log probabilities); return,
    per image, the hypothesis with the best score / length**length_penalty -> (B, L).
    `use_cache=False` re-runs the decoder on every prefix each step (the reference)."""
    b, k, dev = memory.shape[0], beam_width, memory.device
    tokens = torch.full((b * k, max_len + 1), PAD, dtype=torch.long, device=dev)
    tokens[:, 0] = SOS
    # only the first beam is live at the start, so the K copies do not all win
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    lengths = torch.zeros(b, k, device=dev)  # tokens up to and including EOS
    done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    offsets = (torch.arange(b, device=dev) * k)[:, None]  # (B, 1) first row of each image
    steps = 0
    with _step_threads(dev):
        inc = IncrementalDecoder(model.decoder, memory, padding, max_len, k) if use_cache else None
        if inc is None:  # the reference runs every beam's whole prefix: one memory per row
            memory, padding = memory.repeat_interleave(k, 0), padding.repeat_interleave(k, 0)
        for t in range(max_len):
            if inc is not None:
                logits = inc.step(tokens[:, t])
            else:
                logits = _full_step(model.decoder, memory, padding, tokens[:, : t + 1])
            logp = logits.float().log_softmax(-1).view(b, k, -1)  # (B, K, V)
            vocab = logp.shape[-1]
            # a finished beam can only continue with PAD, at no cost
            pad_only = torch.full_like(logp[0, 0], float("-inf"))
            pad_only[PAD] = 0.0
            logp = torch.where(done[..., None], pad_only, logp)
            cand = (scores[..., None] + logp).view(b, k * vocab)
            scores, flat = cand.topk(k, dim=-1)  # (B, K), best first
            beam, tok = flat // vocab, flat % vocab
            if k > 1:  # with one beam every row extends itself
                rows = (offsets + beam).view(-1)  # the row each new beam extends
                tokens = tokens[rows]
                if inc is not None:
                    inc.reorder(rows)
            tokens[:, t + 1] = tok.view(-1)
            prev_done = done.gather(1, beam)
            lengths = lengths.gather(1, beam) + (~prev_done).float()
            done = prev_done | (tok == EOS)
            steps = t + 1
            if steps % sync_every == 0 and bool(done.all()):
                break
    normalised = scores / lengths.clamp(min=1).pow(length_penalty)
    best = normalised.argmax(-1)  # (B,) first (highest raw score) among equals
    return tokens.view(b, k, -1)[torch.arange(b, device=dev), best, 1 : steps + 1]


def decode(
    model: FPHTR,
    images: torch.Tensor,
    sizes: torch.Tensor,
    max_len: int,
    beam_width: int = 1,
    length_penalty: float = 1.0,
) -> torch.Tensor:
    """Images -> token ids with the configured strategy (beam_width 1 = greedy)."""
    memory, padding = model.encode(images, sizes)
    if beam_width <= 1:
        return greedy(model, memory, padding, max_len)
    return beam_search(model, memory, padding, max_len, beam_width, length_penalty)
