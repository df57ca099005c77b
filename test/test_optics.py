"""Thin-lens optics: circle of confusion, lens model, hypotheses, schedules."""
import json
from pathlib import Path

import numpy as np
import pytest

from ddfs_ros.optics import (LensModel, coc_m, coc_px, default_max_coc_px, depth_hypotheses,
                             focus_schedule, scale_hypotheses_to_focus)

SPEC = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'spec_vectors'


def test_coc_zero_at_focus_and_monotone_away():
    f, n, s = 0.025, 2.0, 1.0
    assert coc_m(s, s, f, n) == pytest.approx(0.0, abs=1e-15)
    far = coc_m(np.linspace(1.0, 10.0, 50), s, f, n)
    near = coc_m(np.linspace(1.0, 0.1, 50), s, f, n)
    assert np.all(np.diff(far) > 0) and np.all(np.diff(near) > 0)


def test_coc_hand_computed():
    # f = 50 mm, N = 2, focused at 2 m, object at 4 m:
    # c = 0.05^2 * 2 / (4 * 2 * 1.95) = 0.005 / 15.6 = 3.2051282e-4 m; pitch 5 um -> 64.10 px
    assert coc_m(4.0, 2.0, 0.05, 2.0) == pytest.approx(3.2051282e-4, rel=1e-7)
    assert coc_px(4.0, 2.0, 0.05, 2.0, 5e-6) == pytest.approx(64.102564, rel=1e-7)
    assert coc_px(4.0, 2.0, 0.05, 2.0, 5e-6, max_coc_px=10.0) == 10.0


def test_coc_matches_independent_spec_vectors():
    path = SPEC / 'coc.json'
    if not path.exists():
        pytest.skip(f'spec vectors not found at {path}')
    spec = json.loads(path.read_text())['coc']
    got = coc_px(spec['d'], np.array(spec['focus']), spec['f'], spec['N'], spec['pitch'])
    np.testing.assert_allclose(got, spec['coc_px'], rtol=1e-5)


def test_scale_identity_on_coc():
    d, s, f, n, p = 1.3, 0.7, 0.0029, 1.4, 1.2e-5
    base = coc_px(d, s, f, n, p)
    for k in (1.5, 3.0, 9.0):
        assert coc_px(d * k, s * k, f * k, n, p * k) == pytest.approx(base, rel=1e-12)


def test_lens_from_camera_info_and_validation():
    lens = LensModel.from_camera_info(fx_px=1000.0, pixel_pitch_m=4e-6, f_number=2.8)
    assert lens.focal_length_m == pytest.approx(4e-3)
    assert LensModel.from_camera_info(1000.0, 4e-6, 2.8, focal_length_m=0.035).focal_length_m == 0.035
    assert lens.scaled(2.0).pixel_pitch_m == pytest.approx(8e-6)
    for bad in (float('nan'), 0.0, -1.0):
        with pytest.raises(ValueError):
            LensModel(0.01, bad, 1e-5)


def test_hypotheses_and_schedules():
    d = depth_hypotheses(0.1, 3.0, 64)
    assert d[0] == pytest.approx(0.1) and d[-1] == pytest.approx(3.0) and np.allclose(np.diff(d), np.diff(d)[0])
    inv = depth_hypotheses(0.1, 3.0, 16, 'inverse')
    assert np.allclose(np.diff(1.0 / inv), np.diff(1.0 / inv)[0]) and inv[0] == pytest.approx(0.1)
    s = focus_schedule(0.2, 2.0, 5, 'dioptre')
    assert np.allclose(np.diff(1.0 / s), np.diff(1.0 / s)[0]) and np.all(np.diff(s) > 0)
    assert np.allclose(focus_schedule(0.2, 2.0, 4, 'depth'), [0.2, 0.8, 1.4, 2.0])
    with pytest.raises(ValueError):
        depth_hypotheses(3.0, 0.1)
    assert default_max_coc_px(512) == pytest.approx(20.0)


def test_from_focus_hypotheses_follow_the_stack():
    train = depth_hypotheses(0.1, 3.0, 32)
    moved = scale_hypotheses_to_focus(train, (0.1, 1.5), np.array([1.0, 3.0, 15.0]))
    assert moved / train == pytest.approx(np.full(32, 10.0))
