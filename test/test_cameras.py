"""Focus cameras: v4l2 calibration and faults (no camera needed), the simulated camera's optics."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from ddfs_ros.cameras import CameraError, make_camera
from ddfs_ros.cameras.simulated import SimulatedCamera
from ddfs_ros.cameras.v4l2 import FocusCalibration, V4L2Camera


def test_calibration_is_piecewise_linear_in_dioptres():
    cal = FocusCalibration.from_pairs([[0, 0.1], [100, 0.5], [255, 2.0]])
    np.testing.assert_allclose(cal.distance_for_raw([0, 100, 255]), [0.1, 0.5, 2.0])
    # half way in raw between 0 and 100 is half way in dioptres between 10 and 2
    assert cal.distance_for_raw(50) == pytest.approx(1.0 / 6.0)
    assert cal.raw_for_distance(1.0 / 6.0) == pytest.approx(50.0)
    d = np.geomspace(0.1, 2.0, 17)
    np.testing.assert_allclose(cal.distance_for_raw(cal.raw_for_distance(d)), d, rtol=1e-12)
    assert cal.distance_for_raw(-10) == pytest.approx(0.1) and cal.distance_for_raw(999) == pytest.approx(2.0)


def test_calibration_decreasing_in_raw_and_infinity():
    cal = FocusCalibration.from_pairs([[0, np.inf], [40, 1.0], [80, 0.25]])
    assert cal.distance_for_raw(20) == pytest.approx(2.0)     # 0.5 dioptre
    assert cal.raw_for_distance(0.5) == pytest.approx(40.0 + 40.0 / 3.0)    # 2 D: a third of 1..4 D
    assert np.isinf(cal.distance_for_raw(0))


@pytest.mark.parametrize('pairs', [[[0, 0.1]], [[0, 0.1], [10, 0.5], [20, 0.3]], [[0, 0.1], [0, 0.2]],
                                   [[0, -1.0], [10, 1.0]]])
def test_bad_calibrations_are_refused(pairs):
    with pytest.raises(ValueError):
        FocusCalibration.from_pairs(pairs)


def test_missing_device_gives_a_clear_error_after_backoff_retries():
    cam = V4L2Camera('/dev/video_does_not_exist_42', retries=3, backoff_s=0.02, backoff_max_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(CameraError) as e:
        cam.capture_sweep([0.2, 0.5])
    msg = str(e.value)
    assert '/dev/video_does_not_exist_42' in msg and 'missing' in msg and '3 attempts' in msg
    assert cam.failures == 3
    assert time.monotonic() - t0 >= 0.02 + 0.04 - 0.005         # 0.02 then 0.04 s back-off


def test_device_without_focus_control_is_refused_with_no_partial_sweep(tmp_path):
    """A real OpenCV capture (a video file) that cannot move focus: clear error, no frames."""
    path = str(tmp_path / 'clip.avi')
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, (32, 24))
    if not writer.isOpened():
        pytest.skip('this OpenCV build cannot write MJPG/AVI')
    for i in range(12):
        writer.write(np.full((24, 32, 3), 20 * i, np.uint8))
    writer.release()
    cam = V4L2Camera(path, width=32, height=24, retries=2, backoff_s=0.01,
                     capture_factory=lambda dev, api: cv2.VideoCapture(dev))
    with pytest.raises(CameraError, match='rejected focus control'):
        cam.capture_sweep([0.2, 0.5, 1.0])
    assert cam.cap is None       # released after the failure; reopened on the next attempt


def test_make_camera_rejects_unknown_backend():
    with pytest.raises(ValueError):
        make_camera('gphoto')


def _sharpness(frame: np.ndarray) -> float:
    gray = frame.mean(axis=2).astype(np.float64)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def test_simulated_plane_is_sharpest_where_focused():
    cam = SimulatedCamera('plane', 64, 64, focal_length_m=0.01, f_number=1.4, pixel_pitch_m=20e-6,
                          plane_depth_m=0.6, noise=None)
    focus = np.array([0.25, 0.4, 0.6, 1.0, 2.5])
    sweep = cam.capture_sweep(focus)
    assert sweep.frames.shape == (5, 64, 64, 3) and sweep.frames.dtype == np.float32
    assert 0.0 <= sweep.frames.min() and sweep.frames.max() <= 1.0
    np.testing.assert_array_equal(sweep.focus_m, focus)
    np.testing.assert_allclose(sweep.depth_gt, 0.6)
    sharp = [_sharpness(f) for f in sweep.frames]
    assert int(np.argmax(sharp)) == 2, sharp


def test_simulated_band_limited_disk_softens_a_sub_pixel_defocus():
    kw = dict(focal_length_m=0.01, f_number=1.4, pixel_pitch_m=20e-6, plane_depth_m=0.6, noise=None)
    # focused 1 % behind the plane: a blur radius of ~0.04 px, a delta for the pixel-area disk
    focus = np.array([0.6 * 1.01, 2.5])
    disk = SimulatedCamera('plane', 64, 64, **kw).capture_sweep(focus).frames
    otf = SimulatedCamera('plane', 64, 64, psf='disk_otf', **kw).capture_sweep(focus).frames
    assert _sharpness(otf[0]) < _sharpness(disk[0])
    with pytest.raises(ValueError, match='psf'):
        SimulatedCamera('plane', 64, 64, psf='airy', **kw)


def test_simulated_noise_is_fresh_each_sweep_and_seeded():
    kw = dict(scene='plane', width=32, height=32, focal_length_m=0.01, f_number=2.0, pixel_pitch_m=20e-6,
              noise={'full_well': 500.0, 'read_noise': 2.0})
    a = SimulatedCamera(seed=3, **kw)
    s1, s2 = a.capture_sweep([0.3, 0.9]), a.capture_sweep([0.3, 0.9])
    assert not np.array_equal(s1.frames, s2.frames)
    assert np.abs(s1.frames - s2.frames).mean() < 0.05
    b = SimulatedCamera(seed=3, **kw)
    np.testing.assert_array_equal(b.capture_sweep([0.3, 0.9]).frames, s1.frames)


def test_simulated_motorcycle_scene():
    pytest.importorskip('ddfs_ros.scenes')
    cam = SimulatedCamera('motorcycle', 64, 48, noise=None)
    lo, hi = cam.depth_percentiles()
    assert 1.5 < lo < hi < 6.0          # Middlebury motorcycle: about 2.2 to 4.5 m
    sweep = cam.capture_sweep(np.geomspace(lo, hi, 3))
    assert sweep.frames.shape == (3, 48, 64, 3) and sweep.depth_gt.shape == (48, 64)


class _FakeFocusCapture:
    """A VideoCapture stand-in with a focus control that rounds to even raw values."""

    def __init__(self) -> None:
        self.focus = None
        self.reads = 0

    def isOpened(self) -> bool:
        return True

    def set(self, prop, value) -> bool:
        if prop == cv2.CAP_PROP_FOCUS:
            self.focus = 2 * (int(value) // 2)
        return True

    def get(self, prop) -> float:
        return float(self.focus) if prop == cv2.CAP_PROP_FOCUS else 0.0

    def grab(self) -> bool:
        return True

    def read(self):
        self.reads += 1
        return True, np.full((24, 32, 3), self.focus, np.uint8)

    def release(self) -> None:
        pass


def test_v4l2_capture_raw_reports_the_value_the_driver_set():
    fake = _FakeFocusCapture()
    cam = V4L2Camera('fake', width=32, height=24, settle_frames=2, capture_factory=lambda dev, api: fake)
    got = cam.capture_raw(37)
    assert got.focus_raw == 36.0 and got.frame.shape == (24, 32, 3)
    assert got.frame[0, 0, 0] == pytest.approx(36 / 255.0)       # the frame read after the focus was set


def test_raw_capture_unsupported_and_simulated_curve():
    from ddfs_ros.calibration import SimulatedFocusMotor, centre_focus_score
    cam = SimulatedCamera('plane', 64, 64, focal_length_m=0.008, f_number=2.0, pixel_pitch_m=5e-6)
    with pytest.raises(CameraError, match='target distance'):
        cam.capture_raw(100.0)
    raws = np.arange(0, 256, 8)
    scores = [centre_focus_score(cam.capture_raw(r, 0.3).frame) for r in raws]
    # sharpest where the simulated motor focuses at the target
    best = raws[int(np.argmax(scores))]
    assert abs(float(SimulatedFocusMotor().distance_m(best)) - 0.3) < 0.03
