"""DDFS network (Fujimura et al., IJCV 2024): cost volume + reference image -> depth.

Structure (DESIGN.md section 7):

* input: the reference RGB frame (normalised in the graph) concatenated with the
  D-channel normalised cost volume;
* MVDepthNet-style encoder: 5 stages, each ``conv k + BN + ReLU`` then a stride-2
  ``conv k + BN + ReLU``; paper size 128/256/512/512/512 channels, kernels 7/5/3/3/3;
* decoder: bilinear x2 + conv per stage with skip connections (the pre-stride
  features of the encoder stage at that scale);
* from 1/8 scale on, a depth-probability volume (softmax over the D hypotheses) is
  predicted and refined by **adaptive cost aggregation**: each pixel becomes a
  convex combination of the probabilities at 9 positions -- a dilated 3x3 grid plus
  learned offsets (centre offset fixed at 0), softmax weights -- sampled with
  ``grid_sample`` (ONNX GridSample, opset >= 16).  The refined probabilities of a
  scale are upsampled and fed to the next one; outputs at 1/8, 1/4, 1/2 and 1;
* depth = sum_j P_j d_j (soft argmin over the ``depths`` input, metres),
  uncertainty = sqrt(sum_j P_j (d_j - depth)^2).

Because the hypotheses enter only through the soft argmin, the same weights give
metric depth for any hypothesis range (the ``from_focus`` mode of the node).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import ImageNormalise, conv_bn_relu, expectation, resize2d, scaled_channels

PAPER_CHANNELS = (128, 256, 512, 512, 512)
PAPER_KERNELS = (7, 5, 3, 3, 3)


class AdaptiveAggregation(nn.Module):
    """Adaptive cost aggregation of a probability volume (B x D x H x W).

    9 sample positions per pixel: ``p + dilation * g_k + delta_k(p)`` with g_k the 3x3
    grid, delta_k predicted from the decoder features (zero for the centre), weights
    w_k = softmax_k(conv(features)).  All 9 samples are taken by one ``grid_sample``
    call on a grid 9 times as wide, which exports to a single ONNX GridSample.
    """

    def __init__(self, feat_ch: int, dilation: int = 2) -> None:
        super().__init__()
        self.dilation = int(dilation)
        self.offset = nn.Conv2d(feat_ch, 16, 3, 1, 1)   # 8 non-centre points x (dx, dy)
        self.weight = nn.Conv2d(feat_ch, 9, 3, 1, 1)
        # Start as the plain dilated grid with uniform weights.
        for conv in (self.offset, self.weight):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        grid = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        self.register_buffer('grid', torch.tensor(grid, dtype=torch.float32) * self.dilation,
                             persistent=False)                       # 9 x 2 (dy, dx), px

    def forward(self, prob: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        B, D, H, W = prob.shape
        off = self.offset(feat).reshape(B, 8, 2, H, W)
        zero = torch.zeros_like(off[:, :1])
        off = torch.cat([off[:, :4], zero, off[:, 4:]], dim=1)      # B x 9 x 2 x H x W, centre = 0
        ys = torch.arange(H, dtype=prob.dtype, device=prob.device).view(1, 1, H, 1)
        xs = torch.arange(W, dtype=prob.dtype, device=prob.device).view(1, 1, 1, W)
        py = ys + self.grid[:, 0].view(1, 9, 1, 1) + off[:, :, 1]   # B x 9 x H x W
        px = xs + self.grid[:, 1].view(1, 9, 1, 1) + off[:, :, 0]
        # align_corners=False: pixel centre i sits at (2i + 1) / size - 1.
        gx = (2.0 * px + 1.0) / W - 1.0
        gy = (2.0 * py + 1.0) / H - 1.0
        grid = torch.stack([gx, gy], dim=-1)                          # B x 9 x H x W x 2
        grid = grid.permute(0, 2, 1, 3, 4).reshape(B, H, 9 * W, 2)
        samples = F.grid_sample(prob, grid, mode='bilinear', padding_mode='border', align_corners=False)
        samples = samples.reshape(B, D, H, 9, W)
        w = torch.softmax(self.weight(feat), dim=1)                   # B x 9 x H x W
        w = w.permute(0, 2, 1, 3).reshape(B, 1, H, 9, W)
        return (samples * w).sum(dim=3)


class DDFSNet(nn.Module):
    """DDFS: ``forward(image B x 3 x H x W, cost_volume B x D x H x W, depths B x D)``.

    Eval mode returns ``(depth, uncertainty)``, both B x 1 x H x W metres.  Training
    mode returns a dict with those plus ``'multi'``: the depths at 1/8, 1/4, 1/2, 1
    (coarse to fine, each at its own scale).

    Args:
        num_hypotheses: D.
        width: channel multiplier (1.0 = paper size).
        kernels: encoder kernel sizes per stage.
        dilation: grid spacing of the adaptive aggregation (px at each scale).
    """

    family = 'ddfs'

    def __init__(self, num_hypotheses: int = 32, width: float = 1.0,
                 kernels: Sequence[int] = PAPER_KERNELS, dilation: int = 2) -> None:
        super().__init__()
        D = int(num_hypotheses)
        self.num_hypotheses = D
        self.width = float(width)
        c = scaled_channels(PAPER_CHANNELS, width)
        self.norm = ImageNormalise()
        self.conv = nn.ModuleList()
        self.down = nn.ModuleList()
        cin = 3 + D
        for ch, k in zip(c, kernels):
            self.conv.append(conv_bn_relu(cin, ch, k))
            self.down.append(conv_bn_relu(ch, ch, k, stride=2))
            cin = ch
        # Decoder channels at 1/16, 1/8, 1/4, 1/2, 1 (MVDepthNet: 512, 512, 256, 128, 64).
        dec = [c[4], c[3], c[2], c[1], max(4, c[0] // 2)]
        skips = [c[4], c[3], c[2], c[1], c[0]]
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        self.heads = nn.ModuleList()
        self.aggs = nn.ModuleList()
        prev = c[4]
        for i, (ch, sk) in enumerate(zip(dec, skips)):
            extra = D if i >= 2 else 0          # refined probabilities of the coarser scale
            self.up.append(conv_bn_relu(prev, ch, 3))
            self.fuse.append(conv_bn_relu(ch + sk + extra, ch, 3))
            if i >= 1:                          # outputs from 1/8 on
                self.heads.append(nn.Conv2d(ch, D, 3, 1, 1))
                self.aggs.append(AdaptiveAggregation(ch, dilation))
            prev = ch

    def forward(self, image: torch.Tensor, cost_volume: torch.Tensor, depths: torch.Tensor):
        x = torch.cat([self.norm(image), cost_volume], dim=1)
        skips = []
        for conv, down in zip(self.conv, self.down):
            x = conv(x)
            skips.append(x)
            x = down(x)
        skips = skips[::-1]                     # 1/16, 1/8, 1/4, 1/2, 1
        prob = None
        probs = []
        for i, (up, fuse, skip) in enumerate(zip(self.up, self.fuse, skips)):
            size = skip.shape[-2:]
            x = up(resize2d(x, size))
            parts = [x, skip]
            if prob is not None:
                prob = resize2d(prob, size)
                parts.append(prob)
            x = fuse(torch.cat(parts, dim=1))
            if i >= 1:
                logits = self.heads[i - 1](x)
                prob = self.aggs[i - 1](torch.softmax(logits, dim=1), x)
                probs.append(prob)
        depth, unc = expectation(probs[-1], depths)
        if not self.training:
            return depth, unc
        multi = [expectation(p, depths)[0] for p in probs]
        return {'depth': depth, 'uncertainty': unc, 'multi': multi, 'prob': probs[-1]}
