"""V4L2 focus-sweep camera through OpenCV's ``VideoCapture``.

- Autofocus off (``CAP_PROP_AUTOFOCUS = 0``), then per frame the focus control
  (``CAP_PROP_FOCUS``, the UVC ``focus_absolute`` raw value) is set and
  ``settle_frames`` frames are discarded while the lens moves.
- Raw focus values map to distances through a calibration table, piecewise linear in
  dioptres (1 / distance), the quantity a voice-coil lens is roughly linear in.  The
  camera reports the distance of the raw value it actually set (read back from the
  driver where it answers), never the distance it was asked for.
- A missing or unplugged device, a rejected focus control or a failed read raise
  :class:`CameraError`; :meth:`capture_sweep` retries with exponential back-off
  (closing and reopening the device) and never returns a partial sweep.
- Quiet when the device is gone (issue 12, item 5): one open attempt at a time (a lock
  around sweep and close); after a sweep gives up, further sweeps fail at once without
  touching the device until the back-off (doubling up to ``backoff_max_s``) has passed;
  retry messages go to the ``logger`` given (the node passes its throttled ROS logger);
  OpenCV's own log level is lowered to errors, so its per-attempt warnings are gone.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TypeVar

import cv2
import numpy as np

from ..optics import LensModel
from .base import CameraError, FocusCamera, RawFrame, Sweep

T = TypeVar('T')

log = logging.getLogger(__name__)


def quiet_opencv() -> None:
    """OpenCV logs a WARN per failed open (from its own threads, outside ROS logging); the
    camera reports failures itself, so only OpenCV errors are kept.  Process-wide."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:                 # builds without cv2.utils.logging
        if hasattr(cv2, 'setLogLevel'):
            cv2.setLogLevel(2)             # 2 = error in OpenCV's numbering


@dataclass
class FocusCalibration:
    """Raw focus value <-> focus distance, piecewise linear in dioptres.

    Args:
        raw: K raw control values (any order, distinct).
        distance_m: K focus distances (m) measured at those values; ``inf`` = focused at infinity.
    """

    raw: np.ndarray
    distance_m: np.ndarray

    def __post_init__(self) -> None:
        raw = np.asarray(self.raw, dtype=np.float64)
        dist = np.asarray(self.distance_m, dtype=np.float64)
        if raw.ndim != 1 or raw.shape != dist.shape or raw.size < 2:
            raise ValueError('focus calibration needs >= 2 (raw, distance) pairs of equal length')
        if np.any(~np.isfinite(raw)) or np.any(np.isnan(dist)) or np.any(dist <= 0):
            raise ValueError(f'focus calibration distances must be > 0 (inf allowed), got {dist.tolist()}')
        dioptre = 1.0 / dist
        order = np.argsort(raw)
        raw, dioptre = raw[order], dioptre[order]
        step = np.diff(dioptre)
        if np.any(np.diff(raw) == 0) or not (np.all(step > 0) or np.all(step < 0)):
            raise ValueError('focus calibration must be strictly monotonic: one distance per raw value')
        with np.errstate(divide='ignore'):
            self.raw, self.distance_m, self._dioptre = raw, 1.0 / dioptre, dioptre

    @classmethod
    def from_pairs(cls, pairs: Sequence[Sequence[float]]) -> 'FocusCalibration':
        """From ``[[raw, distance_m], ...]`` (the YAML form)."""
        arr = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
        return cls(arr[:, 0], arr[:, 1])

    @property
    def distance_range(self) -> tuple[float, float]:
        return float(self.distance_m.min()), float(self.distance_m.max())

    def distance_for_raw(self, raw) -> np.ndarray:
        """Focus distance (m) of raw value(s); clamped to the calibrated range."""
        dioptre = np.interp(np.asarray(raw, dtype=np.float64), self.raw, self._dioptre)
        with np.errstate(divide='ignore'):
            return 1.0 / dioptre

    def raw_for_distance(self, distance_m) -> np.ndarray:
        """Raw value(s) (float) that focus at ``distance_m``; clamped to the calibrated range."""
        dioptre = 1.0 / np.asarray(distance_m, dtype=np.float64)
        order = np.argsort(self._dioptre)
        return np.interp(dioptre, self._dioptre[order], self.raw[order])


class V4L2Camera(FocusCamera):
    """A UVC/V4L2 camera with a focus control, through OpenCV.

    Args:
        device: ``/dev/videoN`` path or index.
        width, height: requested frame size; frames are resized to it if the driver differs.
        calibration: :class:`FocusCalibration` or ``[[raw, distance_m], ...]``.
        focal_length_m, f_number, pixel_pitch_m: the lens (pitch in m/px at ``width``).
        settle_frames: frames discarded after each focus change.
        retries: sweep attempts before :class:`CameraError` reaches the caller.
        backoff_s, backoff_max_s: first and largest wait between attempts (doubling).
        capture_factory: ``(device, api) -> VideoCapture``; OpenCV's by default.
        logger: anything with ``warning(str)`` for retry messages; this module's logger by default.
        clock: monotonic time source (s), for the reopen hold-off (tests pass a fake).
    """

    def __init__(self, device: str | int = '/dev/video0', width: int = 640, height: int = 480,
                 calibration=((0, 0.1), (255, 2.0)), focal_length_m: float = 0.004, f_number: float = 2.0,
                 pixel_pitch_m: float = 3e-6, settle_frames: int = 3, retries: int = 3, backoff_s: float = 0.5,
                 backoff_max_s: float = 8.0, capture_factory: Optional[Callable] = None, logger=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.width, self.height = int(width), int(height)
        self.lens = LensModel(focal_length_m, f_number, pixel_pitch_m)
        self.calibration = calibration if isinstance(calibration, FocusCalibration) \
            else FocusCalibration.from_pairs(calibration)
        self.settle_frames = int(settle_frames)
        self.retries = max(1, int(retries))
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.capture_factory = capture_factory or cv2.VideoCapture
        self.cap = None
        self.failures = 0
        self.log = logger if logger is not None else log
        self._clock = clock
        self._lock = threading.Lock()          # one open/sweep/close at a time
        self._hold_until = 0.0                 # no device access before this (monotonic s)
        self._hold_s = self.backoff_s          # current hold-off after a failed sweep (s)
        self._last_error: Optional[str] = None
        quiet_opencv()

    def _device_arg(self):
        if isinstance(self.device, int) or (isinstance(self.device, str) and self.device.isdigit()):
            return int(self.device)
        return str(self.device)

    def open(self) -> None:
        if self.cap is not None:
            return
        cap = self.capture_factory(self._device_arg(), cv2.CAP_V4L2)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            raise CameraError(f'cannot open camera {self.device}: device missing, unplugged or busy')
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)      # fewer stale frames after a focus change
        if not cap.set(cv2.CAP_PROP_AUTOFOCUS, 0):
            self.log.warning(f'camera {self.device} did not accept autofocus=0; focus control may fight the '
                             'autofocus')
        self.cap = cap

    def close(self) -> None:
        with self._lock:
            self._release()

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _read(self) -> np.ndarray:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            raise CameraError(f'camera {self.device} stopped delivering frames (unplugged?)')
        return frame

    def _set_focus(self, distance_m: float) -> float:
        """Set the focus control for ``distance_m``; returns the distance of the value actually set."""
        raw = int(round(float(self.calibration.raw_for_distance(distance_m))))
        got = self._set_raw(raw, f' (for {distance_m:.3f} m)')
        return float(self.calibration.distance_for_raw(got))

    def _set_raw(self, raw: int, why: str = '') -> float:
        """Set the focus control to ``raw``; returns the raw value the driver reports having set."""
        if not self.cap.set(cv2.CAP_PROP_FOCUS, int(raw)):
            raise CameraError(f'camera {self.device} rejected focus control value {int(raw)}{why}: no manual '
                              'focus on this device?')
        got = self.cap.get(cv2.CAP_PROP_FOCUS)
        if got is not None and np.isfinite(got) and got >= 0:
            return float(got)    # the driver may round to its own step: report what it has
        return float(raw)

    def _settled_frame(self) -> np.ndarray:
        """Discard ``settle_frames`` frames (the lens is moving), then one H x W x C float32 frame."""
        for _ in range(self.settle_frames):
            if not self.cap.grab():
                raise CameraError(f'camera {self.device} stopped delivering frames (unplugged?)')
        bgr = self._read()
        if bgr.shape[:2] != (self.height, self.width):
            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 else bgr[..., None]
        return rgb.astype(np.float32) / 255.0

    def _sweep_once(self, focus_m: np.ndarray) -> Sweep:
        self.open()
        frames, actual = [], []
        for s in focus_m:
            actual.append(self._set_focus(float(s)))
            frames.append(self._settled_frame())
        return Sweep(frames=np.stack(frames), focus_m=np.asarray(actual, dtype=np.float64))

    def _raw_once(self, focus_raw: float) -> RawFrame:
        self.open()
        got = self._set_raw(int(round(float(focus_raw))))
        return RawFrame(self._settled_frame(), got)

    def capture_raw(self, focus_raw: float, target_m: Optional[float] = None) -> RawFrame:
        """One frame at raw focus value ``focus_raw`` (``target_m`` unused: the target is real);
        retried and held off like :meth:`capture_sweep`."""
        return self._attempt(lambda: self._raw_once(focus_raw))

    def capture_sweep(self, focus_m, f_numbers=None) -> Sweep:
        """One full sweep, retried with back-off; :class:`CameraError` after ``retries`` attempts.

        After a sweep gives up, calls during the hold-off raise :class:`CameraError` at
        once, without opening the device (the caller's timer keeps ticking; the device
        is tried again when the hold-off is over).
        """
        focus = np.asarray(focus_m, dtype=np.float64)
        return self._attempt(lambda: self._sweep_once(focus))

    def _attempt(self, once: Callable[[], T]) -> T:
        """``once()`` with retries, back-off and the hold-off after a failure (see :meth:`capture_sweep`)."""
        with self._lock:
            now = self._clock()
            if now < self._hold_until:
                raise CameraError(f'{self._last_error} (next attempt in {self._hold_until - now:.1f} s)')
            wait = self.backoff_s
            last: Optional[Exception] = None
            for attempt in range(1, self.retries + 1):
                try:
                    result = once()
                    self._hold_s = self.backoff_s
                    return result
                except (CameraError, cv2.error) as e:
                    last = e
                    self.failures += 1
                    self._release()
                    if attempt < self.retries:
                        self.log.warning(f'camera {self.device}: {e}; retry {attempt}/{self.retries - 1} in '
                                         f'{wait:.2f} s')
                        time.sleep(wait)
                        wait = min(wait * 2.0, self.backoff_max_s)
            self._last_error = f'{last} (gave up after {self.retries} attempts)'
            self._hold_until = self._clock() + self._hold_s
            self._hold_s = min(self._hold_s * 2.0, self.backoff_max_s)
            raise CameraError(self._last_error)
