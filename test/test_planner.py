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
    assert 0.4 - 1e-9 <= p.focus_m[0] and p.focus_m[-1] <= 3.0 + 1e-9
    c = p.compared
    assert c['planned'] < c['dioptre'] and c['planned'] < c['depth']


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
