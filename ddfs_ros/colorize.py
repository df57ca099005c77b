"""Fixed colour maps for depth and uncertainty images (ROS-free).

A *fixed* range (the engine's hypothesis range, not each image's min/max) keeps one
colour meaning one distance from frame to frame, which is what a person watching
rviz2 expects.  Invalid (NaN) pixels are black.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

#: OpenCV's Turbo map: perceptually smooth, near = red, far = blue after inversion below.
DEPTH_COLORMAP = cv2.COLORMAP_TURBO
UNCERTAINTY_COLORMAP = cv2.COLORMAP_INFERNO


def colorize(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
             colormap: int = DEPTH_COLORMAP, invert: bool = True) -> np.ndarray:
    """H x W float (metres) -> H x W x 3 uint8 BGR.

    Args:
        values: H x W array; NaN/inf pixels come out black.
        vmin, vmax: value range mapped onto the colour map; default the finite min/max.
        colormap: an OpenCV ``COLORMAP_*`` constant.
        invert: map ``vmin`` to the top of the map (near = warm colours for depth).
    """
    v = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(v)
    if vmin is None or vmax is None:
        if finite.any():
            lo, hi = float(v[finite].min()), float(v[finite].max())
        else:
            lo, hi = 0.0, 1.0
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    span = max(float(vmax) - float(vmin), 1e-12)
    t = np.clip((np.where(finite, v, vmin) - float(vmin)) / span, 0.0, 1.0)
    if invert:
        t = 1.0 - t
    bgr = cv2.applyColorMap(np.round(t * 255.0).astype(np.uint8), colormap)
    bgr[~finite] = 0
    return bgr


def colorize_depth(depth_m: np.ndarray, d_min: Optional[float] = None, d_max: Optional[float] = None) -> np.ndarray:
    """Depth (m) to BGR with the Turbo map, near = red, far = blue."""
    return colorize(depth_m, d_min, d_max, DEPTH_COLORMAP, invert=True)


def colorize_uncertainty(unc_m: np.ndarray, vmax: Optional[float] = None) -> np.ndarray:
    """Uncertainty (m) to BGR with the Inferno map, 0 = black-purple, ``vmax`` = yellow."""
    return colorize(unc_m, 0.0, vmax, UNCERTAINTY_COLORMAP, invert=False)
