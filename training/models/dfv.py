"""DFV network (Yang et al., CVPR 2022): focal stack -> differential focus volume -> depth.

Structure (DESIGN.md section 7):

* shared 2D residual encoder applied to every frame, 4 output scales 1/4, 1/8, 1/16,
  1/32, spatial pyramid pooling at the coarsest;
* per scale a focus volume B x C x F x h x w; the *differential* volume replaces
  frame i by ``feat_i - feat_{i+1}`` and keeps the last frame (``use_diff=False``
  gives the plain focus volume);
* 3D decoder from coarse to fine: residual 3x3x3 blocks, 3D pyramid pooling at the
  two coarsest levels, trilinear upsampling (F kept) between scales; each scale emits
  a 1-channel cost per frame;
* softmax over frames = focus probability p_i; depth = sum_i p_i s_i with s_i the
  ``focus`` input (metres), uncertainty = sqrt(sum_i p_i (s_i - depth)^2).

Frames must be sorted near -> far (the node sorts them).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from .blocks import (ImageNormalise, PyramidPool2d, PyramidPool3d, ResBlock2d, ResBlock3d,
                     conv3d_bn_relu, conv_bn_relu, differential, expectation, resize2d,
                     resize_volume, scaled_channels)

#: Paper-size encoder channels (stem, 1/4, 1/8, 1/16, 1/32) and 3D decoder channels per scale.
PAPER_ENCODER = (32, 64, 128, 128, 128)
PAPER_VOLUME = (32, 64, 64, 64)          # volume channels at 1/4, 1/8, 1/16, 1/32


class StackEncoder(nn.Module):
    """2D residual encoder: B x 3 x H x W -> features at 1/4, 1/8, 1/16, 1/32 (finest first)."""

    def __init__(self, width: float = 1.0, blocks_per_stage: int = 1) -> None:
        super().__init__()
        c = scaled_channels(PAPER_ENCODER, width)
        v = scaled_channels(PAPER_VOLUME, width)
        self.out_channels = v
        self.norm = ImageNormalise()
        self.stem = nn.Sequential(conv_bn_relu(3, c[0], 3, stride=2), conv_bn_relu(c[0], c[0], 3))
        self.stages = nn.ModuleList()
        cin = c[0]
        for ch in c[1:]:
            layers = [ResBlock2d(cin, ch, stride=2)] + [ResBlock2d(ch, ch) for _ in range(blocks_per_stage - 1)]
            self.stages.append(nn.Sequential(*layers))
            cin = ch
        self.spp = PyramidPool2d(c[4])
        self.outs = nn.ModuleList(nn.Conv2d(ch, vc, 3, 1, 1) for ch, vc in zip(c[1:], v))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(self.norm(x))
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == len(self.stages) - 1:
                x = self.spp(x)
            feats.append(x)
        return [out(f) for out, f in zip(self.outs, feats)]


class VolumeDecoder3d(nn.Module):
    """Coarse-to-fine 3D decoder over B x C_s x A x h_s x w_s volumes (finest first in the input list).

    Returns one cost per scale, B x A x h_s x w_s, coarsest first.
    """

    def __init__(self, in_channels: Sequence[int], width: float = 1.0) -> None:
        super().__init__()
        v = scaled_channels(PAPER_VOLUME, width)
        n = len(in_channels)
        self.entry = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.costs = nn.ModuleList()
        prev = 0
        for level in range(n - 1, -1, -1):      # coarsest first
            ch = v[level]
            self.entry.append(conv3d_bn_relu(in_channels[level] + prev, ch))
            layers: list[nn.Module] = [ResBlock3d(ch)]
            if level >= n - 2:                  # 3D pyramid pooling at the two coarsest levels
                layers.append(PyramidPool3d(ch))
            self.blocks.append(nn.Sequential(*layers))
            self.costs.append(nn.Conv3d(ch, 1, 3, 1, 1))
            prev = ch

    def forward(self, volumes: list[torch.Tensor]) -> list[torch.Tensor]:
        x = None
        costs = []
        for k, vol in enumerate(volumes[::-1]):
            if x is not None:
                x = resize_volume(x, vol.shape[-2:])
                vol = torch.cat([vol, x], dim=1)
            x = self.blocks[k](self.entry[k](vol))
            costs.append(self.costs[k](x)[:, 0])
        return costs


class DFVNet(nn.Module):
    """DFV: ``forward(stack B x F x 3 x H x W, focus B x F)``.

    Eval mode returns ``(depth, uncertainty)`` B x 1 x H x W (metres); training mode a
    dict with those plus ``'multi'``: full-resolution depths from the 1/32, 1/16, 1/8,
    1/4 costs (coarse to fine).
    """

    family = 'dfv'

    def __init__(self, num_frames: int = 5, width: float = 1.0, use_diff: bool = True) -> None:
        super().__init__()
        self.num_frames = int(num_frames)
        self.width = float(width)
        self.use_diff = bool(use_diff)
        self.encoder = StackEncoder(width)
        self.decoder = VolumeDecoder3d(self.encoder.out_channels, width)

    def forward(self, stack: torch.Tensor, focus: torch.Tensor):
        B, Fr, C, H, W = stack.shape
        feats = self.encoder(stack.reshape(B * Fr, C, H, W))
        vols = []
        for f in feats:
            v = f.reshape(B, Fr, f.shape[1], f.shape[2], f.shape[3]).permute(0, 2, 1, 3, 4)
            vols.append(differential(v) if self.use_diff else v)
        costs = self.decoder(vols)
        outs = [expectation(torch.softmax(resize2d(c, (H, W)), dim=1), focus) for c in costs]
        depth, unc = outs[-1]
        if not self.training:
            return depth, unc
        return {'depth': depth, 'uncertainty': unc, 'multi': [o[0] for o in outs]}
