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
from typing import Optional, Sequence

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

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels of the published frame; default the thin-lens pinhole f / p."""
        fx = self.lens.focal_length_m / self.lens.pixel_pitch_m
        return fx, fx, (self.width - 1) / 2.0, (self.height - 1) / 2.0

    def __enter__(self) -> 'FocusCamera':
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
