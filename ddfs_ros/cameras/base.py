"""The focus-sweep camera interface the capture node drives (no ROS here).

A :class:`FocusCamera` turns a list of focus distances into one complete sweep: F
frames, the focus distances it actually set (which may differ from the asked ones:
a lens moves in steps), optionally per-frame f-numbers and, for simulated cameras,
the true depth.  A sweep is all or nothing: a camera that fails half way raises
:class:`CameraError` and returns no frames, so no half stack is ever published.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..optics import LensModel


class CameraError(RuntimeError):
    """The camera cannot deliver a sweep (device missing, unplugged, control rejected)."""


@dataclass
class Sweep:
    """One complete focus sweep.

    Attributes:
        frames: F x H x W x C float32 in [0, 1], RGB (C = 3) or gray (C = 1).
        focus_m: F focus distances actually set (m, object side), frame order.
        f_numbers: F per-frame f-numbers, or None (the lens default for all).
        depth_gt: H x W true depth (m) where known (simulation), else None.
    """

    frames: np.ndarray
    focus_m: np.ndarray
    f_numbers: Optional[np.ndarray] = None
    depth_gt: Optional[np.ndarray] = None


class RawFrame(NamedTuple):
    """One frame at a raw focus control value (focus calibration).

    Attributes:
        frame: H x W x C float32 in [0, 1], RGB (C = 3) or gray (C = 1).
        focus_raw: the raw focus value actually set (the driver may round to its own step).
    """

    frame: np.ndarray
    focus_raw: float


class FocusCamera(ABC):
    """A camera whose focus can be set per frame.

    Attributes:
        width, height: frame size (px) as published.
        lens: focal length, f-number and pixel pitch (m/px at ``width``).
    """

    width: int
    height: int
    lens: LensModel

    def open(self) -> None:
        """Acquire the device (no-op for simulated cameras)."""

    def close(self) -> None:
        """Release the device."""

    @abstractmethod
    def capture_sweep(self, focus_m: Sequence[float], f_numbers: Optional[Sequence[float]] = None) -> Sweep:
        """Capture one frame per focus distance; raises :class:`CameraError` (no partial sweeps)."""

    def capture_raw(self, focus_raw: float, target_m: Optional[float] = None) -> RawFrame:
        """One frame with the focus control at the raw value ``focus_raw`` (no calibration
        involved): what ``mode: calibrate`` records.

        Args:
            focus_raw: raw focus control value (device units, e.g. UVC ``focus_absolute``).
            target_m: distance (m) of the calibration target; only a simulated camera uses
                it (it renders the target there), a real target is where the user put it.

        Raises:
            CameraError: the camera has no raw focus control, or cannot deliver the frame.
        """
        raise CameraError(f'{type(self).__name__} has no raw focus control (mode: calibrate needs one)')

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the published frame; default the thin-lens pinhole f / p."""
        fx = self.lens.focal_length_m / self.lens.pixel_pitch_m
        return fx, fx, (self.width - 1) / 2.0, (self.height - 1) / 2.0

    def __enter__(self) -> 'FocusCamera':
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
