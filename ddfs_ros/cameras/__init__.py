"""Focus-sweep camera backends: ``simulated`` (renderer) and ``v4l2`` (OpenCV)."""
from __future__ import annotations

from .base import CameraError, FocusCamera, RawFrame, Sweep

__all__ = ['CameraError', 'FocusCamera', 'RawFrame', 'Sweep', 'make_camera']


def make_camera(backend: str, **kwargs) -> FocusCamera:
    """``make_camera('simulated', ...)`` or ``make_camera('v4l2', ...)`` (lazy imports)."""
    if backend == 'simulated':
        from .simulated import SimulatedCamera
        return SimulatedCamera(**kwargs)
    if backend == 'v4l2':
        from .v4l2 import V4L2Camera
        return V4L2Camera(**kwargs)
    raise ValueError(f"camera backend must be 'simulated' or 'v4l2', got {backend!r}")
