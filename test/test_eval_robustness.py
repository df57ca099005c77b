"""Scoring under optics unlike our renderer's (ddfs_ros.eval.robustness)."""
from __future__ import annotations

import numpy as np
import pytest

from ddfs_ros.eval import cli
from ddfs_ros.eval.robustness import VARIANTS, gather_render, render_variant, robustness_table
from ddfs_ros.optics import LensModel, coc_px
from ddfs_ros.psf import disk_psfs
from ddfs_ros.render import render_focal_stack, srgb_to_linear

LENS = LensModel(0.025, 2.0, 21e-6)


def _texture(size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.clip(0.5 + 0.25 * rng.standard_normal((size, size, 3)), 0, 1).astype(np.float32)


def _sharpness(frames: np.ndarray) -> float:
    return float(np.abs(np.diff(frames[..., 1:-1, :], axis=-2)).mean())


def test_gather_render_of_a_plane_is_the_disk_blur_of_its_depth():
    import cv2
    import torch
    rgb, depth = _texture(), np.full((48, 48), 2.0, np.float32)
    out = gather_render(rgb, depth, [1.2], LENS)[0]
    r = float(coc_px(2.0, 1.2, LENS.focal_length_m, LENS.f_number, LENS.pixel_pitch_m)) / 2.0
    assert r > 1.0
    lin = srgb_to_linear(torch.as_tensor(rgb)).numpy()
    want = cv2.filter2D(lin, -1, disk_psfs([r])[0].astype(np.float32), borderType=cv2.BORDER_REFLECT)
    assert np.abs(out - want).max() < 1e-5
    # ... and agrees with our layered renderer away from the border
    ours = srgb_to_linear(torch.as_tensor(render_focal_stack(rgb, depth, [1.2], LENS)[0])).numpy()
    assert np.abs(out - ours)[8:-8, 8:-8].mean() < 0.01


def test_variants_change_the_optics_but_not_the_lens_the_node_is_told():
    rgb = _texture()
    depth = np.tile(np.linspace(1.5, 3.0, 48, dtype=np.float32), (48, 1))
    focus = np.array([1.6, 2.1, 2.9])
    stacks = {v: render_variant(v, rgb, depth, focus, LENS, noise=None) for v in VARIANTS}
    for s in stacks.values():
        assert s.lens == LENS and s.frames.shape == (3, 48, 48, 3)
        assert np.isfinite(s.frames).all() and s.frames.min() >= 0 and s.frames.max() <= 1
    # more true blur than told: softer frames; less: sharper
    assert _sharpness(stacks['blur_x1.25'].frames) < _sharpness(stacks['reference'].frames) \
        < _sharpness(stacks['blur_x0.8'].frames)
    for v in ('gaussian_psf', 'disk_otf', 'srgb_blur', 'gather', 'exposure', 'soft_scene'):
        assert not np.array_equal(stacks[v].frames, stacks['reference'].frames), v
    # a soft scene: the band-limited render of a softer image, every frame softer
    soft, otf = stacks['soft_scene'].frames, stacks['disk_otf'].frames
    assert all(_sharpness(a[None]) < 0.9 * _sharpness(b[None]) for a, b in zip(soft, otf))
    # exposure: each frame's mean brightness moves by its own gain, the blur stays
    ratio = stacks['exposure'].frames.mean((1, 2, 3)) / stacks['reference'].frames.mean((1, 2, 3))
    assert np.all(np.abs(ratio - 1) < 0.05) and np.ptp(ratio) > 0.005
    assert abs(_sharpness(stacks['exposure'].frames) / _sharpness(stacks['reference'].frames) - 1) < 0.1
    with pytest.raises(ValueError):
        render_variant('nope', rgb, depth, focus, LENS)


def test_table_reports_the_change_against_the_reference_method():
    scores = {'reference': {'net': [0.05, 0.07], 'fm': [0.1, 0.1]}, 'gather': {'net': [0.09], 'fm': [0.12]}}
    table = robustness_table(scores, 'fm')
    assert '| reference | 0.0600 (-40 %) | 0.1000 |' in table
    assert '| gather | 0.0900 (-25 %) | 0.1200 |' in table


def test_robustness_command_on_procedural_scenes(cost_argmin_engines, capsys):
    rc = cli.main(['robustness', '--engine', str(cost_argmin_engines['dynamic']), '--source', 'procedural',
                   '--scenes', '1', '--size', '64', '--variant', 'reference', '--variant', 'blur_x0.8',
                   '--backend', 'onnxruntime'])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith('| reference') or line.startswith('| blur_x0.8')]
    assert len(rows) == 2
    for line in rows:       # a finite AbsRel for the engine and for the focus measure
        cells = [c.strip().split()[0] for c in line.strip('|').split('|')[1:]]
        assert all(np.isfinite(float(c)) for c in cells)
    assert cli.main(['robustness', '--variant', 'nope']) == 2


def test_a_source_scores_the_same_alone_as_beside_others():
    from ddfs_ros.eval.offline import baseline_predict
    from ddfs_ros.eval.robustness import robustness_scores

    fm = {'fm': lambda s: baseline_predict(s)[0]}
    both = robustness_scores(fm, ['procedural', 'procedural_thin'], 'val', 2, ['disk_otf'], size=64)['disk_otf']['fm']
    alone = [robustness_scores(fm, [s], 'val', 2, ['disk_otf'], size=64)['disk_otf']['fm']
             for s in ('procedural', 'procedural_thin')]
    assert both == alone[0] + alone[1]
    assert len(set(both)) == 4


def test_thin_procedural_source_adds_fine_geometry_to_the_crisp_scenes():
    from ddfs_ros.eval.robustness import scenes_of
    edges = lambda d: int((np.abs(np.diff(d, axis=1)) > 0.02 * d[:, 1:]).sum())
    crisp = list(scenes_of('procedural_crisp', 'val', 3, size=96))
    thin = list(scenes_of('procedural_thin', 'val', 3, size=96))
    assert len(thin) == 3
    assert sum(edges(t[1]) for t in thin) > sum(edges(c[1]) for c in crisp)
