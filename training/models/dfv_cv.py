"""dfv_cv: DFV's differential volume and 3D decoder run along the DDFS cost volume's hypotheses.

DESIGN.md section 7 ("a DFV network with a cost-volume preprocessor", our hybrid):
per hypothesis j and scale s the volume slice is [encoder features of the reference
frame, the cost slice C_j average-pooled to scale s]; the differential is taken
between neighbouring hypotheses (slice j - slice j+1, the last kept); DFV's 3D decoder
gives a cost per hypothesis, softmax over D, depth = sum_j P_j d_j and uncertainty
the standard deviation, as for DDFS.

Decision: the reference features are the same for every j, so after differencing they
vanish except in the last slice; we therefore also append the un-differenced pooled
cost as one extra channel (``keep_raw_cost``), so that the decoder sees both the
cost and its change along the hypotheses.  ``use_diff=False`` gives the plain volume.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .blocks import differential, expectation, resize2d
from .dfv import StackEncoder, VolumeDecoder3d

SCALES = (4, 8, 16, 32)


class DFVCostVolumeNet(nn.Module):
    """``forward(image B x 3 x H x W, cost_volume B x D x H x W, depths B x D)``.

    Eval mode returns ``(depth, uncertainty)`` B x 1 x H x W metres; training mode a dict
    with ``'multi'`` (full-resolution depths of the 4 scales, coarse to fine).
    """

    family = 'dfv_cv'

    def __init__(self, num_hypotheses: int = 32, width: float = 1.0, use_diff: bool = True,
                 keep_raw_cost: bool = True) -> None:
        super().__init__()
        self.num_hypotheses = int(num_hypotheses)
        self.width = float(width)
        self.use_diff = bool(use_diff)
        self.keep_raw_cost = bool(keep_raw_cost)
        self.encoder = StackEncoder(width)
        extra = 1 + (1 if keep_raw_cost else 0)
        self.decoder = VolumeDecoder3d([c + extra for c in self.encoder.out_channels], width)

    def forward(self, image: torch.Tensor, cost_volume: torch.Tensor, depths: torch.Tensor):
        B, D, H, W = cost_volume.shape
        if H % SCALES[-1] or W % SCALES[-1]:
            raise ValueError(f'dfv_cv needs H and W divisible by {SCALES[-1]}, got {H} x {W}')
        feats = self.encoder(image)
        vols = []
        for f, s in zip(feats, SCALES):
            h, w = f.shape[-2:]
            cost = F.avg_pool2d(cost_volume, kernel_size=s, stride=s).unsqueeze(1)     # B x 1 x D x h x w
            v = torch.cat([f.unsqueeze(2).expand(B, f.shape[1], D, h, w), cost], dim=1)
            if self.use_diff:
                v = differential(v)
            if self.keep_raw_cost:
                v = torch.cat([v, cost], dim=1)
            vols.append(v)
        costs = self.decoder(vols)
        outs = [expectation(torch.softmax(resize2d(c, (H, W)), dim=1), depths) for c in costs]
        depth, unc = outs[-1]
        if not self.training:
            return depth, unc
        return {'depth': depth, 'uncertainty': unc, 'multi': [o[0] for o in outs]}
