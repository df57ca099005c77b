"""Building blocks shared by the DDFS, DFV and dfv_cv networks.

All blocks are export-friendly: static shapes, no in-place writes on the graph, no
hard-coded device, only ops with ONNX (opset 17) and TensorRT equivalents.  3D volumes
are B x C x A x h x w with A the frame (DFV) or hypothesis (dfv_cv) axis.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

#: ImageNet statistics; images are normalised inside the graph (CONTRACTS.md).
RGB_MEAN = (0.485, 0.456, 0.406)
RGB_STD = (0.229, 0.224, 0.225)


def scaled_channels(base: Sequence[int], width: float, minimum: int = 4) -> list[int]:
    """Channel counts of the paper-size network times the width multiplier."""
    return [max(minimum, int(round(c * width))) for c in base]


class ImageNormalise(nn.Module):
    """(x - mean) / std on B x 3 x H x W RGB in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('mean', torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(RGB_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=False))


def conv3d_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=False))


class ResBlock2d(nn.Module):
    """Basic residual block (3x3, 3x3) with a strided 1x1 projection when needed."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.proj is None else self.proj(x)
        return F.relu(self.body(x) + skip)


class ResBlock3d(nn.Module):
    """Residual 3x3x3 block."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm3d(ch), nn.ReLU(inplace=False),
            nn.Conv3d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm3d(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + x)


def resize2d(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of the last two axes of a 4D tensor (align_corners=False)."""
    return F.interpolate(x, size=(int(size[0]), int(size[1])), mode='bilinear', align_corners=False)


def resize_volume(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of B x C x A x h x w to A x size, keeping A.

    With the scale of A equal to one, trilinear (align_corners=False) interpolation is
    exactly bilinear per slice, so this runs as a 2D resize of B x (C*A) x h x w, which
    every ONNX runtime and TensorRT support (5D linear Resize is patchier).
    """
    B, C, A, h, w = x.shape
    y = resize2d(x.reshape(B, C * A, h, w), size)
    return y.reshape(B, C, A, int(size[0]), int(size[1]))


class PyramidPool2d(nn.Module):
    """PSPNet/PSMNet-style spatial pyramid pooling: average pools at ``bins`` x ``bins``, upsampled, fused."""

    def __init__(self, ch: int, bins: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        branch = max(4, ch // 4)
        self.branches = nn.ModuleList(conv_bn_relu(ch, branch, 1) for _ in self.bins)
        self.fuse = conv_bn_relu(ch + branch * len(self.bins), ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        outs = [x]
        for b, conv in zip(self.bins, self.branches):
            kb = (max(1, h // b), max(1, w // b))
            p = F.avg_pool2d(x, kernel_size=kb, stride=kb)
            outs.append(resize2d(conv(p), (h, w)))
        return self.fuse(torch.cat(outs, dim=1))


class PyramidPool3d(nn.Module):
    """3D pyramid pooling of DFV: spatial average pools per slice of the A axis, upsampled, fused."""

    def __init__(self, ch: int, bins: Sequence[int] = (1, 2)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(conv3d_bn_relu(ch, ch, 1) for _ in self.bins)
        self.fuse = conv3d_bn_relu(ch * (1 + len(self.bins)), ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, h, w = int(x.shape[2]), int(x.shape[3]), int(x.shape[4])
        outs = [x]
        for b, conv in zip(self.bins, self.branches):
            kb = (1, max(1, h // b), max(1, w // b))
            p = F.avg_pool3d(x, kernel_size=kb, stride=kb)
            outs.append(resize_volume(conv(p), (h, w)))
        return self.fuse(torch.cat(outs, dim=1))


def differential(vol: torch.Tensor) -> torch.Tensor:
    """DFV's differential volume along axis 2: slice i becomes v_i - v_{i+1}; the last is kept."""
    return torch.cat([vol[:, :, :-1] - vol[:, :, 1:], vol[:, :, -1:]], dim=2)


def expectation(prob: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``values`` (B x A) under ``prob`` (B x A x H x W).

    Returns depth and uncertainty, both B x 1 x H x W (the units of ``values``).
    """
    v = values.reshape(values.shape[0], values.shape[1], 1, 1)
    mean = (prob * v).sum(dim=1, keepdim=True)
    var = (prob * (v - mean) ** 2).sum(dim=1, keepdim=True)
    return mean, torch.sqrt(var.clamp_min(1e-12))


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))
