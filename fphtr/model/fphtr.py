"""The full model: image -> memory (encoder) -> characters (decoder)."""

from __future__ import annotations

import torch
from torch import nn

from fphtr.model.ctc import CTCHead
from fphtr.model.decoder import Decoder
from fphtr.model.encoder import Encoder


class FPHTR(nn.Module):
    """Singh & Karayev (2021): ResNet encoder + transformer decoder over the flat 2D memory."""

    def __init__(
        self,
        vocab_size: int,
        encoder: str = "resnet18",
        d_model: int = 260,
        num_layers: int = 6,
        nhead: int = 4,
        dim_feedforward: int = 1024,
        encoder_dropout: float = 0.1,
        decoder_dropout: float = 0.1,
        pretrained_path: str | None = None,
        last_stride: int = 32,
        ctc_frames_per_column: int | None = None,  # None: no CTC head (the paper's model)
    ):
        super().__init__()
        self.encoder = Encoder(encoder, d_model, encoder_dropout, pretrained_path, last_stride)
        self.decoder = Decoder(
            vocab_size, d_model, num_layers, nhead, dim_feedforward, decoder_dropout
        )
        self.ctc = (
            CTCHead(d_model, vocab_size, ctc_frames_per_column) if ctc_frames_per_column else None
        )

    def encode(
        self, images: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(images, sizes)

    def forward(
        self, images: torch.Tensor, sizes: torch.Tensor, tokens_in: torch.Tensor
    ) -> torch.Tensor:
        """Teacher forcing: images (B, 1, H, W), tokens_in (B, T) = [SOS, c1..] -> (B, T, V)."""
        memory, padding = self.encode(images, sizes)
        return self.decoder(tokens_in, self.decoder.memory_kv(memory), padding)

    def forward_with_ctc(
        self, images: torch.Tensor, sizes: torch.Tensor, tokens_in: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Teacher forcing and the CTC head on one encoder pass ->
        decoder logits (B, T, V), CTC logits (B, F, V), CTC frame counts (B,)."""
        f, padded = self.encoder.features(images, sizes)
        memory, padding = self.encoder.memory(f, padded)
        logits = self.decoder(tokens_in, self.decoder.memory_kv(memory), padding)
        return (logits, *self.ctc(f, padded))

    def ctc_logits(
        self, images: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CTC head only (no decoder) -> logits (B, F, V), frame counts (B,)."""
        return self.ctc(*self.encoder.features(images, sizes))


def build_model(config: dict, vocab_size: int, load_pretrained: bool = True) -> FPHTR:
    """An FPHTR from the `encoder` and `decoder` sections of a resolved config.

    `load_pretrained=False` skips the ImageNet file (weights come from a checkpoint)."""
    enc, dec = config["encoder"], config["decoder"]
    return FPHTR(
        vocab_size,
        encoder=enc["name"],
        d_model=dec["d_model"],
        num_layers=dec["num_layers"],
        nhead=dec["nhead"],
        dim_feedforward=dec["dim_feedforward"],
        encoder_dropout=enc["dropout"],
        decoder_dropout=dec["dropout"],
        pretrained_path=enc["pretrained_path"] if load_pretrained else None,
        # .get: checkpoints written before these options existed have neither
        last_stride=enc.get("last_stride", 32),
        ctc_frames_per_column=config["model"].get("ctc_frames_per_column")
        if config.get("optim", {}).get("ctc_weight", 0) > 0
        else None,
    )
