"""ResNet-18 with torchvision's / LVS's parameter names (no torchvision): width, blocks, layer4 stride as knobs.

The names are those of SSLalignment's `models_lvs/base_models.py` (`conv1` for images, `conv1_a` for the 1-channel
audio input, `bn1`, `layer{1..4}.{i}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}`), so the authors' released
`imgnet.*` / `audnet.*` weights load. With `norm="group"` the BatchNorms become GroupNorms under the same names
(no running statistics: a model whose output does not depend on the batch, for exact DDP parity tests).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(1, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (1x1 conv + norm when the shape changes)."""

    def __init__(self, inp: int, out: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), _norm(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + identity)


class ResNet(nn.Module):
    """A ResNet trunk (no pooling, no fc): (B, C_in, H, W) -> (B, 8*width, H/16, W/16) with the default strides
    (layer1..4 strides 1, 2, 2, 1: the authors' layer4 stride 1)."""

    def __init__(
        self,
        in_channels: int = 3,
        *,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
        strides: Sequence[int] = (1, 2, 2, 1),
        norm: str = "batch",
    ):
        super().__init__()
        first = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        # The authors' class holds both first convs; the one used names the modality.
        self.first_name = "conv1" if in_channels == 3 else "conv1_a"
        setattr(self, self.first_name, first)
        self.bn1 = _norm(norm, width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        inp = width
        for i, (w, s, n) in enumerate(zip(widths, strides, blocks), start=1):
            # A stage of 0 blocks is the identity (tiny test trunks with a small receptive field).
            layers = [BasicBlock(inp, w, s, norm)] + [BasicBlock(w, w, 1, norm) for _ in range(n - 1)] if n else []
            setattr(self, f"layer{i}", nn.Sequential(*layers))
            inp = w if n else inp
        self.out_channels = inp
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(getattr(self, self.first_name)(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
