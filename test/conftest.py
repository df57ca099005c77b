"""Shared pytest fixtures.

``tiny_engines``: UNTRAINED tiny networks of the three families (ddfs, dfv, dfv_cv) at
64 x 64 (D = 16 hypotheses uniform in depth 0.1..3.0 m; F = 5 frames for dfv), exported
like the shipped engines -- ONNX + ``torch.export`` program + manifest -- into a
session temp folder.  Returns ``{'ddfs': Path, 'dfv': Path, 'dfv_cv': Path}`` (the
manifest ``.json`` paths).  Built once per session (about 15 s on one core).
"""
from __future__ import annotations

from pathlib import Path

import pytest

TINY_SIZE = 64
TINY_D = 16
TINY_F = 5
TINY_HYPOTHESES = {'d_min': 0.1, 'd_max': 3.0, 'spacing': 'depth'}


def build_tiny_engines(folder: Path) -> dict:
    """Export untrained tiny ddfs/dfv/dfv_cv engines to ``folder``; returns manifest paths."""
    import torch

    from training.export import export_model
    from training.models import build_model

    out = {}
    for family, width in (('ddfs', 1 / 16), ('dfv', 1 / 8), ('dfv_cv', 1 / 8)):
        torch.manual_seed(0)
        model = build_model(family, width=width, num_hypotheses=TINY_D, num_frames=TINY_F)
        out[family] = export_model(
            model, family, folder / f'tiny_{family}.onnx', image_size=(TINY_SIZE, TINY_SIZE),
            num_hypotheses=TINY_D, num_frames=TINY_F, hypotheses=TINY_HYPOTHESES,
            train_focus_range=(0.3, 2.0), training={'note': 'untrained test fixture'},
            validation={}, name=f'tiny_{family}')
    return out


@pytest.fixture(scope='session')
def tiny_engines(tmp_path_factory) -> dict:
    return build_tiny_engines(tmp_path_factory.mktemp('tiny_engines'))


@pytest.fixture(scope='session')
def tiny_engine(tiny_engines) -> dict:
    """Alias of :func:`tiny_engines`."""
    return tiny_engines
