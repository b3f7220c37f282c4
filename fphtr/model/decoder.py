"""Transformer decoder with incremental decoding (cached keys/values).

Pre-norm layers written out plainly so that the cache is explicit:
- self-attention keys/values of past tokens are kept in a preallocated buffer;
- cross-attention keys/values of the image memory are computed once per image.
Teacher forcing and step-by-step decoding run the same code with the same positions:
the token at index t always gets positional encoding t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fphtr.model.encoder import positional_encoding_1d


@dataclass
class LayerCache:
    k: torch.Tensor  # (B, nh, max_len, hd)
    v: torch.Tensor  # (B, nh, max_len, hd)


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.nhead = nhead
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_qkv = nn.Linear(d_model, 3 * d_model)
        self.self_out = nn.Linear(d_model, d_model)
        self.cross_q = nn.Linear(d_model, d_model)
        self.cross_kv = nn.Linear(d_model, 2 * d_model)
        self.cross_out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, nh, T, hd)
        b, t, d = x.shape
        return x.view(b, t, self.nhead, d // self.nhead).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:  # (B, nh, T, hd) -> (B, T, d)
        b, nh, t, hd = x.shape
        return x.transpose(1, 2).reshape(b, t, nh * hd)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, S, d) -> cross-attention keys and values, each (B, nh, S, hd)."""
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, d)
        mem_kv: tuple[torch.Tensor, torch.Tensor],
        mem_attn_mask: torch.Tensor,  # (B, 1, 1, S) True = may attend
        cache: LayerCache | None = None,
        pos: int = 0,
    ) -> torch.Tensor:
        drop = self.dropout.p if self.training else 0.0
        q, k, v = (self._heads(t) for t in self.self_qkv(self.norm1(x)).chunk(3, dim=-1))
        if cache is None:  # teacher forcing: the whole sequence, causal
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:  # incremental: write this step's keys/values, attend to everything so far
            t = x.shape[1]
            # a causal block is only right-aligned with the cache when it starts at 0
            assert t == 1 or pos == 0, "feed one token at a time after the first block"
            cache.k[:, :, pos : pos + t] = k
            cache.v[:, :, pos : pos + t] = v
            k, v = cache.k[:, :, : pos + t], cache.v[:, :, : pos + t]
            a = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=t > 1)
        x = x + self.dropout(self.self_out(self._merge(a)))

        q = self._heads(self.cross_q(self.norm2(x)))
        a = F.scaled_dot_product_attention(q, *mem_kv, attn_mask=mem_attn_mask, dropout_p=drop)
        x = x + self.dropout(self.cross_out(self._merge(a)))
        return x + self.dropout(self.ff(self.norm3(x)))


class Decoder(nn.Module):
    """Token embedding + 1D sinusoidal positions -> N layers -> classifier over the vocabulary."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 260,
        num_layers: int = 6,
        nhead: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.embed = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, nhead, dim_feedforward, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values for every layer, computed once per image batch."""
        return [layer.memory_kv(memory) for layer in self.layers]

    def new_cache(self, batch: int, max_len: int, like: torch.Tensor) -> list[LayerCache]:
        shape = (batch, self.nhead, max_len, self.d_model // self.nhead)
        return [LayerCache(like.new_zeros(shape), like.new_zeros(shape)) for _ in self.layers]

    def forward(
        self,
        tokens: torch.Tensor,  # (B, T) token ids
        mem_kv: list[tuple[torch.Tensor, torch.Tensor]],
        mem_padding_mask: torch.Tensor,  # (B, S) True where the image is padding
        cache: list[LayerCache] | None = None,
        pos: int = 0,  # position of tokens[:, 0] in the sequence
    ) -> torch.Tensor:
        """-> logits (B, T, vocab)."""
        t = tokens.shape[1]
        # unscaled N(0, 1) embeddings: the same magnitude as the sinusoidal positions, so
        # neither drowns the other (scaling by sqrt(d) would hide positions 16x)
        x = self.embed(tokens)
        x = self.dropout(x + positional_encoding_1d(t, self.d_model, x.device, offset=pos))
        attn_mask = ~mem_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        for i, layer in enumerate(self.layers):
            x = layer(x, mem_kv[i], attn_mask, None if cache is None else cache[i], pos)
        return self.classifier(self.norm(x))
