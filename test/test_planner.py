"""Focus-schedule planner: model, optimisation, snapping, CLI."""
from __future__ import annotations

import numpy as np
import pytest

from ddfs_ros import plan_cli
from ddfs_ros.cameras.v4l2 import FocusCalibration
from ddfs_ros.optics import LensModel
from ddfs_ros.planner import PlanProblem, expected_relative_error, plan, snap_to_calibration

LENS = LensModel(0.025, 2.0, 3e-6)


def test_plan_beats_uniform_schedules_in_its_model():
    p = plan(0.4, 3.0, 5, LENS, 1920)
    assert p.focus_m.size == 5 and np.all(np.diff(p.focus_m) > 0)
    # the end frames bracket the range: a depth at either end lies between two frames
    assert p.focus_m[0] == pytest.approx(0.4) and p.focus_m[-1] == pytest.approx(3.0)
    c = p.compared
    assert c['planned'] <= c['dioptre'] and c['planned'] < c['depth']
    # a gain under MIN_MODEL_GAIN is not worth departing from dioptre spacing (measured)
    from ddfs_ros.optics import focus_schedule
    from ddfs_ros.planner import MIN_MODEL_GAIN
    assert np.allclose(p.focus_m, focus_schedule(0.4, 3.0, 5, 'dioptre')) or \
        c['planned'] <= (1 - MIN_MODEL_GAIN) * c['dioptre']


@pytest.mark.parametrize('near,far,frames,lens,width', [
    (0.4, 3.0, 5, LensModel(0.025, 2.0, 45e-6), 128),       # bench/real_camera.py plan
    (0.2, 1.0, 3, LensModel(0.004, 2.0, 3e-6), 640),        # a webcam
    (0.5, 10.0, 8, LensModel(0.05, 1.4, 3e-6), 1920),       # a fast lens, long range
    (1.0, 1.5, 4, LensModel(0.05, 8.0, 5e-6), 1280),        # a slow lens, short range
])
def test_plan_never_worse_than_dioptre_spacing(near, far, frames, lens, width):
    p = plan(near, far, frames, lens, width)
    assert p.compared['planned'] <= p.compared['dioptre'] * (1 + 1e-9)
    assert p.focus_m[0] == pytest.approx(near) and p.focus_m[-1] == pytest.approx(far)


def test_model_ranks_the_measured_schedules():
    """On the bench lens, the old planner's schedule (ends pulled in, frames piled far) and
    uniform-in-depth spacing measured worse than uniform in dioptres; the model agrees."""
    from ddfs_ros.optics import focus_schedule
    prob = PlanProblem(0.4, 3.0, LensModel(0.025, 2.0, 45e-6), 128, 128)
    e = lambda s: expected_relative_error(s, prob)
    dioptre = e(focus_schedule(0.4, 3.0, 5, 'dioptre'))
    assert dioptre < e([0.40, 0.78, 1.26, 1.46, 3.00]) and dioptre < e(focus_schedule(0.4, 3.0, 5, 'depth'))


def test_unbracketed_depths_cost_error():
    prob = PlanProblem(0.4, 3.0, LENS, 1920)
    d, rel = expected_relative_error([0.6, 1.0, 2.0], prob, per_depth=True)
    inside = (d >= 0.6) & (d <= 2.0)
    assert rel[d < 0.45].min() > rel[inside].max()            # nearer than the nearest frame


def test_repeated_frames_add_nothing():
    prob = PlanProblem(0.4, 3.0, LENS, 1920)
    two = expected_relative_error([0.5, 2.0], prob)
    assert expected_relative_error([0.5, 2.0, 2.0], prob) == pytest.approx(two, rel=1e-9)
    assert expected_relative_error([0.5, 1.0, 2.0], prob) < two


def test_too_much_blur_needs_more_frames():
    # a fast lens: blur grows quickly, so a 2-frame sweep leaves depths unreadable
    fast = LensModel(0.05, 1.4, 3e-6)
    e2 = plan(0.4, 3.0, 2, fast, 1920).expected_rel_error
    e6 = plan(0.4, 3.0, 6, fast, 1920).expected_rel_error
    assert e6 < 0.5 * e2


def test_snap_to_calibration():
    cal = FocusCalibration.from_pairs([[0, 0.1], [100, 0.5], [255, 5.0]])
    raw, dist = snap_to_calibration([0.3, 1.0], cal)
    assert np.all(raw == np.round(raw))
    assert np.allclose(cal.distance_for_raw(raw), dist)
    with pytest.raises(ValueError, match='repeated raw'):
        snap_to_calibration([1.0, 1.0001], cal)
    p = plan(0.4, 3.0, 4, LENS, 1920, calibration=cal, raw_step=1.0)
    assert p.raw is not None and p.raw.size == 4 and np.allclose(cal.distance_for_raw(p.raw), p.focus_m)
    with pytest.raises(ValueError, match='outside the calibrated'):
        plan(6.0, 9.0, 3, LENS, 1920, calibration=cal)


def test_bad_input():
    with pytest.raises(ValueError):
        PlanProblem(3.0, 0.4, LENS, 1920)
    with pytest.raises(ValueError):
        plan(0.4, 3.0, 1, LENS, 1920)


def test_cli(tmp_path, capsys):
    assert plan_cli.main(['--near', '0.4', '--far', '3.0', '--frames', '5', '--focal-length', '0.025',
                          '--f-number', '2.0', '--pixel-pitch', '3e-6', '--width', '1920']) == 0
    out = capsys.readouterr().out
    assert 'focus_distances: [' in out and 'uniform in dioptres' in out
    cal = tmp_path / 'cal.yaml'
    cal.write_text('/**/capture_node:\n  ros__parameters:\n    calibration: [0, 0.1, 100, 0.5, 255, 5.0]\n')
    assert plan_cli.main(['--near', '0.4', '--far', '3.0', '--frames', '3', '--focal-length', '0.025',
                          '--f-number', '2.0', '--pixel-pitch', '3e-6', '--width', '1920',
                          '--calibration', str(cal)]) == 0
    assert '  raw' in capsys.readouterr().out
    assert plan_cli.main(['--near', '3', '--far', '0.4', '--focal-length', '0.025', '--f-number', '2',
                          '--pixel-pitch', '3e-6']) == 2
