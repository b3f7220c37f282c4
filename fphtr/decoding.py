"""Turning image memory into token sequences: greedy and beam search, cached or not.

All decoders return token ids (B, L) that end with EOS (then PAD) or stop at `max_len`;
`Tokenizer.decode` turns them into text.

- `greedy(..., use_cache=True)` runs the decoder one token at a time with cached
  self-attention keys/values and cross-attention memory projections computed once: O(T).
- `greedy(..., use_cache=False)` re-runs the decoder on the whole prefix each step: O(T^2).
  It exists as the reference the cached path must equal, and for benchmarks.
- `beam_search` keeps `beam_width` hypotheses per image, scores them by summed log
  probability divided by length**length_penalty, and reorders the cache as beams move.
The finished check (`all samples emitted EOS`) is a host sync, done every `sync_every`
steps rather than every step.
"""

from __future__ import annotations

import torch

from fphtr.data.tokenizer import EOS, PAD, SOS
from fphtr.model.fphtr import FPHTR


@torch.no_grad()
def greedy(
    model: FPHTR,
    memory: torch.Tensor,  # (B, S, d)
    padding: torch.Tensor,  # (B, S) True where padded
    max_len: int,
    use_cache: bool = True,
    sync_every: int = 8,
) -> torch.Tensor:
    dec = model.decoder
    b = memory.shape[0]
    mem_kv = dec.memory_kv(memory)
    cache = dec.new_cache(b, max_len + 1, memory) if use_cache else None
    tokens = torch.full((b, 1), SOS, dtype=torch.long, device=memory.device)
    done = torch.zeros(b, dtype=torch.bool, device=memory.device)
    for t in range(max_len):
        if use_cache:
            logits = dec(tokens[:, -1:], mem_kv, padding, cache, pos=t)  # (B, 1, V)
        else:
            logits = dec(tokens, mem_kv, padding)[:, -1:]  # whole prefix every step
        nxt = logits[:, -1].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if (t + 1) % sync_every == 0 and bool(done.all()):
            break
    return tokens[:, 1:]


@torch.no_grad()
def beam_search(
    model: FPHTR,
    memory: torch.Tensor,  # (B, S, d)
    padding: torch.Tensor,  # (B, S)
    max_len: int,
    beam_width: int = 4,
    length_penalty: float = 1.0,
    sync_every: int = 8,
) -> torch.Tensor:
    dec = model.decoder
    b, k = memory.shape[0], beam_width
    dev = memory.device
    memory = memory.repeat_interleave(k, dim=0)  # (B*K, S, d)
    padding = padding.repeat_interleave(k, dim=0)
    mem_kv = dec.memory_kv(memory)
    cache = dec.new_cache(b * k, max_len + 1, memory)
    tokens = torch.full((b * k, 1), SOS, dtype=torch.long, device=dev)
    # only the first beam is live at the start, so the K copies do not all win
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0
    lengths = torch.zeros(b, k, device=dev)
    done = torch.zeros(b, k, dtype=torch.bool, device=dev)
    offsets = (torch.arange(b, device=dev) * k)[:, None]  # (B, 1)
    for t in range(max_len):
        logp = dec(tokens[:, -1:], mem_kv, padding, cache, pos=t)[:, -1].float()
        logp = logp.log_softmax(-1).view(b, k, -1)  # (B, K, V)
        vocab = logp.shape[-1]
        # a finished beam can only continue with PAD, at no cost
        pad_only = torch.full_like(logp[0, 0], float("-inf"))
        pad_only[PAD] = 0.0
        logp = torch.where(done[..., None], pad_only, logp)
        cand = (scores[..., None] + logp).view(b, k * vocab)
        scores, flat = cand.topk(k, dim=-1)  # (B, K)
        beam, tok = flat // vocab, flat % vocab
        src = (offsets + beam).view(-1)  # rows of the previous step each new beam extends
        tokens = torch.cat([tokens[src], tok.view(-1, 1)], dim=1)
        for c in cache:
            c.k[:] = c.k[src]
            c.v[:] = c.v[src]
        prev_done = done.gather(1, beam)
        lengths = lengths.gather(1, beam) + (~prev_done).float()
        done = prev_done | (tok == EOS)
        if (t + 1) % sync_every == 0 and bool(done.all()):
            break
    normalised = scores / lengths.clamp(min=1).pow(length_penalty)
    best = normalised.argmax(-1)  # (B,)
    return tokens.view(b, k, -1)[torch.arange(b, device=dev), best, 1:]


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
