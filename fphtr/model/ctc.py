"""CTC head on the encoder's feature map: an auxiliary loss and a cheap greedy reading.

Hybrid CTC/attention training (as in speech recognition, and several HTR systems) adds
`w * CTC` to the decoder's loss. CTC asks every column of the feature map to name the
characters under it, so the encoder learns to see characters long before an attention
decoder from scratch has learned where to look; the decoder then reads a memory that
already says what is written.

CTC needs at least as many frames as characters (more where letters repeat). A stride-32
line of 256 px has 8 columns for ~20 characters, so each column is split into
`frames_per_column` frames (a learned linear expansion, as CTC-based non-autoregressive
translation upsamples its source states): 8 columns x 4 frames = 32 frames. The head reads
the very features the decoder's memory is made of (before the 2D positions), so its
gradient shapes that memory; no finer, costlier feature map is needed.

Rows are averaged over the valid height first: for words and lines that is one line of
text. On a page the rows hold different lines, so a page is no CTC sequence: the head is
for words and lines (config validation refuses it for forms); pages get its benefit
through a line model used as `model.init_from`.

The blank is the tokenizer's PAD id, so the head's output rows are the vocabulary's ids and
transfer between models like the decoder's classifier rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fphtr.data.tokenizer import EOS, PAD

BLANK = PAD


class CTCHead(nn.Module):
    def __init__(self, d_model: int, vocab_size: int, frames_per_column: int = 4):
        super().__init__()
        self.k = frames_per_column
        self.expand = nn.Linear(d_model, frames_per_column * d_model)
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, vocab_size)

    def forward(self, f: torch.Tensor, padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f (B, d, h, w) features, padded (B, h, w) True where padded ->
        logits (B, w*k, V) and valid frame counts (B,)."""
        b, d, h, w = f.shape
        valid = (~padded).to(f.dtype)  # (B, h, w)
        rows = valid[:, :, 0].sum(1).clamp(min=1)  # (B,) valid rows
        x = (f * valid[:, None]).sum(2) / rows[:, None, None]  # (B, d, w) mean of valid rows
        x = self.expand(x.transpose(1, 2)).view(b, w * self.k, d)  # (B, w*k, d)
        logits = self.classifier(F.gelu(self.norm(x)))
        lengths = (~padded[:, 0, :]).sum(1) * self.k  # (B,) valid columns * k
        return logits, lengths


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V), frame counts (B,), tokens (B, L) = [SOS, chars..., EOS, PAD...] ->
    mean CTC loss per target character (a sample that cannot be aligned adds zero)."""
    targets = tokens[:, 1:]  # chars, then EOS, then PAD
    target_lengths = ((targets != PAD) & (targets != EOS)).sum(1)
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
    return F.ctc_loss(
        log_probs, targets, lengths, target_lengths,
        blank=BLANK, reduction="mean", zero_infinity=True,
    )  # fmt: skip


def ctc_greedy(logits: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best class per frame, repeats merged, blanks removed -> token ids per sample."""
    best = logits.argmax(-1).tolist()  # (B, T)
    out = []
    for row, n in zip(best, lengths.tolist(), strict=True):
        ids, prev = [], BLANK
        for i in row[:n]:
            if i != prev and i != BLANK:
                ids.append(i)
            prev = i
        out.append(ids)
    return out
