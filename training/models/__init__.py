"""The three network families and a factory keyed by family name."""
from __future__ import annotations

import torch.nn as nn

from .blocks import count_parameters
from .ddfs import DDFSNet
from .dfv import DFVNet
from .dfv_cv import DFVCostVolumeNet

FAMILIES = ('ddfs', 'dfv', 'dfv_cv')


def build_model(family: str, *, width: float = 1.0, num_hypotheses: int = 32, num_frames: int = 5,
                use_diff: bool = True, **kwargs) -> nn.Module:
    """A fresh network of ``family`` ('ddfs', 'dfv' or 'dfv_cv')."""
    if family == 'ddfs':
        return DDFSNet(num_hypotheses=num_hypotheses, width=width, **kwargs)
    if family == 'dfv':
        return DFVNet(num_frames=num_frames, width=width, use_diff=use_diff, **kwargs)
    if family == 'dfv_cv':
        return DFVCostVolumeNet(num_hypotheses=num_hypotheses, width=width, use_diff=use_diff, **kwargs)
    raise ValueError(f'unknown model family {family!r}; expected one of {FAMILIES}')


__all__ = ['DDFSNet', 'DFVNet', 'DFVCostVolumeNet', 'build_model', 'count_parameters', 'FAMILIES']
