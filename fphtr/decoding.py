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
import torch.nn.functional as F

from fphtr.data.tokenizer import EOS, PAD, SOS
from fphtr.model.decoder import Decoder
from fphtr.model.encoder import positional_encoding_1d
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

    It computes exactly `Decoder.forward` in eval mode (pre-norm layers, unscaled token
    embeddings plus sinusoidal positions, no dropout) but calls the layers' weights
    directly: at one token per step the work is small and Python module calls, per-step
    positional encodings and mask rebuilding would be a large share of it. Cross-attention
    keys/values of the memory are projected once here. tests/model/test_model.py and
    tests/test_decoding_speed.py check it against `Decoder.forward` on whole sequences.

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
        n, s, d = memory.shape
        self.n, self.repeat, self.rows = n, repeat, n * repeat
        self.nhead, self.d, self.head_dim = decoder.nhead, d, d // decoder.nhead
        # the memory's keys/values for every layer, each (N, nh, S, hd), computed once and
        # shared by the `repeat` rows of an image (they attend as `repeat` query positions)
        self.mem_kv = decoder.memory_kv(memory)
        # padded memory is never attended; no mask at all when nothing is padded
        mask = ~padding[:, None, None, :]  # (N, 1, 1, S)
        self.mem_mask = None if bool(mask.all()) else mask
        self.positions = positional_encoding_1d(max_len, d, memory.device)  # (max_len, d)
        shape = (self.rows, self.nhead, max_len, self.head_dim)
        self.k_cache = [memory.new_zeros(shape) for _ in decoder.layers]
        self.v_cache = [memory.new_zeros(shape) for _ in decoder.layers]
        self.pos = 0  # position of the next token

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (rows, d) -> (rows, nh, 1, hd)
        return x.view(self.rows, self.nhead, 1, self.head_dim)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (rows,) at position `pos` -> logits (rows, vocab) for the next token."""
        t, d, dec = self.pos, self.d, self.dec
        x = dec.embed(tokens) + self.positions[t]  # (rows, d)
        for i, layer in enumerate(dec.layers):
            n1, n2, n3 = layer.norm1, layer.norm2, layer.norm3
            h = F.layer_norm(x, (d,), n1.weight, n1.bias, n1.eps)
            q, k, v = F.linear(h, layer.self_qkv.weight, layer.self_qkv.bias).chunk(3, dim=-1)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[:, :, t] = k.view(self.rows, self.nhead, self.head_dim)
            vc[:, :, t] = v.view(self.rows, self.nhead, self.head_dim)
            a = F.scaled_dot_product_attention(self._heads(q), kc[:, :, : t + 1], vc[:, :, : t + 1])
            x = x + F.linear(a.view(self.rows, d), layer.self_out.weight, layer.self_out.bias)

            h = F.layer_norm(x, (d,), n2.weight, n2.bias, n2.eps)
            q = F.linear(h, layer.cross_q.weight, layer.cross_q.bias)
            q = q.view(self.n, self.repeat, self.nhead, self.head_dim).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, *self.mem_kv[i], attn_mask=self.mem_mask)
            a = a.transpose(1, 2).reshape(self.rows, d)  # (N, nh, R, hd) -> (rows, d)
            x = x + F.linear(a, layer.cross_out.weight, layer.cross_out.bias)

            h = F.layer_norm(x, (d,), n3.weight, n3.bias, n3.eps)
            up, act, _, down = layer.ff
            x = x + F.linear(act(F.linear(h, up.weight, up.bias)), down.weight, down.bias)
        self.pos += 1
        x = F.layer_norm(x, (d,), dec.norm.weight, dec.norm.bias, dec.norm.eps)
        return F.linear(x, dec.classifier.weight, dec.classifier.bias)

    def reorder(self, rows: torch.Tensor) -> None:
        """Row i continues from row rows[i]; only the filled part of the cache is copied."""
        t = self.pos
        for kc, vc in zip(self.k_cache, self.v_cache, strict=True):
            kc[:, :, :t] = kc[rows, :, :t]
            vc[:, :, :t] = vc[rows, :, :t]


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
