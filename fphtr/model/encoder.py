"""Image encoder: ResNet trunk -> 1x1 projection -> 2D positional encoding -> flat memory."""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn

from fphtr.data.geometry import STRIDE


def positional_encoding_1d(length: int, dim: int, device=None, offset: int = 0) -> torch.Tensor:
    """Sinusoidal encoding (length, dim) for positions offset..offset+length-1 (any length)."""
    pos = torch.arange(offset, offset + length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


def positional_encoding_2d(height: int, width: int, dim: int, device=None) -> torch.Tensor:
    """(dim, height, width): first half of the channels encode y, second half x.

    Computed for the feature map at hand, so there is no grid cap for large pages."""
    half = dim // 2
    pe_y = positional_encoding_1d(height, half, device)  # (H, half)
    pe_x = positional_encoding_1d(width, half, device)  # (W, half)
    return torch.cat(
        [
            pe_y.T[:, :, None].expand(half, height, width),
            pe_x.T[:, None, :].expand(half, height, width),
        ]
    )


class Encoder(nn.Module):
    """ResNet-18/34 trunk on 1-channel images (avgpool and fc removed, stride 32).

    `last_stride=16` keeps layer4 at layer3's resolution (its first block does not
    downsample): 4x the memory cells, for ~1.7x the trunk's arithmetic."""

    def __init__(
        self,
        name: str = "resnet18",
        d_model: int = 260,
        dropout: float = 0.1,
        pretrained_path: str | None = None,
        last_stride: int = STRIDE,
    ):
        super().__init__()
        if last_stride not in (STRIDE, STRIDE // 2):
            raise ValueError(f"last_stride must be {STRIDE} or {STRIDE // 2}, got {last_stride}")
        resnet = getattr(torchvision.models, name)(weights=None)
        if pretrained_path:
            # ImageNet weights from a local file (nothing is downloaded).
            state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
            resnet.load_state_dict(state)
        if last_stride == STRIDE // 2:  # same weights, no downsampling in layer4
            block = resnet.layer4[0]
            block.conv1.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.stride = last_stride
        conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():  # grey input: sum the RGB filters so pretrained ones still respond
            conv1.weight.copy_(resnet.conv1.weight.sum(dim=1, keepdim=True))
        self.trunk = nn.Sequential(
            conv1, resnet.bn1, resnet.relu, resnet.maxpool,
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )  # fmt: skip
        # channels-last convolutions are 1.3-2x faster on CPU (and under GPU mixed precision)
        self.trunk.to(memory_format=torch.channels_last)
        channels = resnet.fc.in_features  # 512 for resnet18/34
        self.proj = nn.Conv2d(channels, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout)
        self.d_model = d_model

    def features(
        self, images: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, H, W), sizes (B, 2) valid (h, w) -> feature map (B, d, h, w) with
        h = H/stride, w = W/stride (no positions yet), padding (B, h, w) True where padded."""
        x = images.contiguous(memory_format=torch.channels_last)
        f = self.proj(self.trunk(x)).contiguous()  # (B, d, h, w)
        _, _, h, w = f.shape
        s = self.stride
        valid_h = (sizes[:, 0].to(f.device) + s - 1) // s  # (B,)
        valid_w = (sizes[:, 1].to(f.device) + s - 1) // s
        rows = torch.arange(h, device=f.device)[None, :, None]  # (1, h, 1)
        cols = torch.arange(w, device=f.device)[None, None, :]  # (1, 1, w)
        padded = (rows >= valid_h[:, None, None]) | (cols >= valid_w[:, None, None])
        return f, padded

    def memory(self, f: torch.Tensor, padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature map (B, d, h, w) -> memory (B, h*w, d) with 2D positions, mask (B, h*w)."""
        _, d, h, w = f.shape
        f = f + positional_encoding_2d(h, w, d, f.device).to(f.dtype)
        return self.dropout(f.flatten(2).transpose(1, 2)), padded.flatten(1)

    def forward(
        self, images: torch.Tensor, sizes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 1, H, W), sizes (B, 2) valid (h, w) ->
        memory (B, S, d) with S = H/stride * W/stride, padding mask (B, S) True where padded."""
        return self.memory(*self.features(images, sizes))
