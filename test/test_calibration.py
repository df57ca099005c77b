"""Focus calibration: rendered bags with a known non-linear raw -> dioptre curve."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from ddfs_ros.calibration import (CalibrationError, FocusPeak, SimulatedFocusMotor, fit_calibration, focus_peak,
                                  load_calibration_pairs)
from ddfs_ros.cameras.v4l2 import FocusCalibration
from ddfs_ros.eval import calibrate_cli

DISTANCES = [0.12, 0.17, 0.25, 0.4, 0.7, 1.2]
RAWS = np.arange(0, 256, 8)


@pytest.fixture(scope='module')
def cal_bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('cal') / 'bag'
    n = calibrate_cli.write_calibration_bag(path, DISTANCES, RAWS, SimulatedFocusMotor())
    assert n == len(DISTANCES) * RAWS.size
    return path


def test_recovers_known_curve_within_2_percent(cal_bag, tmp_path):
    out = tmp_path / 'calib.yaml'
    assert calibrate_cli.main(['focus', str(cal_bag), '--out', str(out)]) == 0
    assert (tmp_path / 'calib.png').stat().st_size > 1000
    pairs = load_calibration_pairs(out)
    cal = FocusCalibration(pairs[:, 0], pairs[:, 1])      # what the V4L2 camera will use
    motor = SimulatedFocusMotor()
    raws = np.linspace(pairs[0, 0], pairs[-1, 0], 64)
    rel = cal.distance_for_raw(raws) / motor.distance_m(raws) - 1.0
    assert np.abs(rel).max() < 0.02
    lo, hi = cal.distance_range
    assert lo < 0.125 and hi > 1.1                          # the calibrated range spans the targets


def test_bag_from_another_writer_sqlite_mono8(tmp_path):
    """A bag written directly with rosbags (sqlite3, mono8, other namespace, extra joint names)."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from ddfs_ros.optics import LensModel
    from ddfs_ros.render import render_focal_stack
    from ddfs_ros.scenes import named_texture
    ts = get_typestore(Stores.ROS2_JAZZY)
    T = ts.types
    motor = SimulatedFocusMotor()
    lens = LensModel(0.008, 2.0, 5e-6)
    rgb = named_texture('astronaut', 48)
    raws = np.arange(0, 256, 16)
    path = tmp_path / 'other'
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.SQLITE3) as w:
        ci = w.add_connection('/rig/cam/calibration/image', 'sensor_msgs/msg/Image', typestore=ts)
        cl = w.add_connection('/rig/cam/calibration/lens_state', 'sensor_msgs/msg/JointState', typestore=ts)
        t = 10 ** 18
        for d in (0.15, 0.3, 0.6):
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', RuntimeWarning)
                frames = render_focal_stack(rgb, np.full((48, 48), d, np.float32), motor.distance_m(raws), lens)
            for raw, fr in zip(raws, frames):
                t += 10 ** 7
                hdr = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=t // 10 ** 9,
                                                                                     nanosec=t % 10 ** 9),
                                               frame_id='cam')
                gray = np.round(fr.mean(axis=2) * 255).astype(np.uint8)
                img = T['sensor_msgs/msg/Image'](header=hdr, height=48, width=48, encoding='mono8', is_bigendian=0,
                                                 step=48, data=gray.reshape(-1))
                js = T['sensor_msgs/msg/JointState'](header=hdr, name=['target_distance', 'zoom', 'focus_raw'],
                                                     position=np.array([d, 1.0, float(raw)]),
                                                     velocity=np.zeros(0), effort=np.zeros(0))
                # lens state first, then the image: pairing is by stamp, not by order
                w.write(cl, t, ts.serialize_cdr(js, 'sensor_msgs/msg/JointState'))
                w.write(ci, t + 5, ts.serialize_cdr(img, 'sensor_msgs/msg/Image'))
    frames = list(calibrate_cli.read_calibration_bag(path))
    assert len(frames) == 3 * raws.size
    assert frames[0].image.shape == (48, 48, 1) and frames[0].focus_raw == 0.0
    fit = calibrate_cli.calibrate_bag(path)
    assert len(fit.peaks) == 3 and len(fit.coeffs) == 2      # K = 3: a line, one residual dof
    grid = np.arange(0, 256, 0.25)
    for p in fit.peaks:      # a line through 3 points of a curved lens: check the peaks, not the line
        true_raw = grid[np.argmin(np.abs(motor.distance_m(grid) - p.target_m))]
        assert abs(p.raw - true_raw) < 4.0          # a quarter of the 16-unit raw step


def _peak(target: float, raw: float) -> FocusPeak:
    return FocusPeak(target, raw, 3.0, np.zeros(0), np.zeros(0))


def test_too_few_distances():
    with pytest.raises(CalibrationError, match='at least 3'):
        fit_calibration([_peak(0.2, 10), _peak(0.5, 100)])


def test_non_monotonic():
    with pytest.raises(CalibrationError, match='not monotonic'):
        fit_calibration([_peak(0.2, 10), _peak(0.5, 100), _peak(0.3, 150), _peak(1.0, 200)])


def test_never_sharp_and_peak_at_sweep_end():
    raws = np.arange(0, 100, 10.0)
    with pytest.raises(CalibrationError, match='never sharp'):
        focus_peak(raws, 1.0 + 0.01 * np.sin(raws), 0.5)
    with pytest.raises(CalibrationError, match='end of the sweep'):
        focus_peak(raws, 1.0 + raws, 0.5)


def test_peak_is_sub_step():
    raws = np.arange(0, 100, 10.0)
    scores = 1.0 + 5.0 * np.exp(-((raws - 43.0) / 12.0) ** 2)
    assert focus_peak(raws, scores).raw == pytest.approx(43.0, abs=1.0)


def test_cli_reports_error_exit_code(tmp_path, capsys):
    path = tmp_path / 'few'
    calibrate_cli.write_calibration_bag(path, [0.2, 0.5], np.arange(0, 256, 32), size=(32, 32))
    assert calibrate_cli.main(['focus', str(path), '--out', str(tmp_path / 'c.yaml')]) == 2
    assert 'at least 3' in capsys.readouterr().err


def test_ddfs_bag_calibration_then_ddfs_calibrate(tmp_path):
    from ddfs_ros.eval import bag_cli
    bag = tmp_path / 'sim_cal'
    assert bag_cli.main(['calibration', str(bag), '--distances', '0.15,0.3,0.6,1.0', '--raw', '0:255:16',
                         '--size', '48x40', '--encoding', 'mono8']) == 0
    frames = list(calibrate_cli.read_calibration_bag(bag))
    assert len(frames) == 4 * 16 and frames[0].image.shape == (40, 48, 1)
    fit = calibrate_cli.calibrate_bag(bag)
    assert sorted(p.target_m for p in fit.peaks) == [0.15, 0.3, 0.6, 1.0]
    assert bag_cli.main(['calibration', str(bag)]) == 2                    # exists: refused
    assert bag_cli.main(['calibration', str(tmp_path / 'x'), '--raw', '10:5:1']) == 2
