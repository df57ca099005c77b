"""Training losses of the three families (DESIGN.md section 7).

Scale normalisation (our decision): with the DDFS scale augmentation a batch mixes
scenes k = 1..9 times larger; a loss in metres would let the largest k dominate, so
every per-sample error is divided by that sample's scale -- the farthest hypothesis
(``ddfs``/``dfv_cv``) or the farthest focus distance (``dfv``).  For a fixed scale this
is the papers' loss times a constant.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.blocks import resize2d

#: DFV's weights of the four scales, finest first.
DFV_WEIGHTS = (8 / 15, 4 / 15, 2 / 15, 1 / 15)
#: SmoothL1 transition in normalised units (beta); DFV's default 1.0 applies to metres
#: on FoD500 (0.1-1.5 m); 0.05 of the scene scale keeps the L1 regime where errors are visible.
DFV_BETA = 0.05


def _valid_range_mask(gt: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    lo = lo.view(-1, 1, 1, 1)
    hi = hi.view(-1, 1, 1, 1)
    return torch.isfinite(gt) & (gt >= lo) & (gt <= hi)


def ddfs_loss(multi: list[torch.Tensor], gt: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """Sum over scales of the masked L1 (upsampled prediction vs ground truth), scale-normalised.

    multi: depths B x 1 x h_s x w_s (any scales); gt: B x 1 x H x W (m); depths: B x D.
    Valid pixels: ground truth inside the hypothesis range.
    """
    scale = depths[:, -1].view(-1, 1, 1, 1)
    mask = _valid_range_mask(gt, depths[:, 0], depths[:, -1]).float()
    denom = mask.sum().clamp_min(1.0)
    g = torch.nan_to_num(gt) / scale
    total = gt.new_zeros(())
    for d in multi:
        d = resize2d(d, gt.shape[-2:]) if d.shape[-2:] != gt.shape[-2:] else d
        total = total + ((d / scale - g).abs() * mask).sum() / denom
    return total


def dfv_loss(multi: list[torch.Tensor], gt: torch.Tensor, focus: torch.Tensor) -> torch.Tensor:
    """DFV: SmoothL1 at four scales weighted 8/15, 4/15, 2/15, 1/15 (finest first).

    multi: full-resolution depths coarse to fine; focus: B x F sorted (m).  Valid pixels:
    ground truth inside the stack's focus range.
    """
    scale = focus[:, -1].view(-1, 1, 1, 1)
    mask = _valid_range_mask(gt, focus[:, 0], focus[:, -1])
    g = torch.nan_to_num(gt) / scale
    total = gt.new_zeros(())
    for w, d in zip(DFV_WEIGHTS, multi[::-1]):
        if mask.any():
            total = total + w * F.smooth_l1_loss((d / scale)[mask], g[mask], beta=DFV_BETA)
    return total
