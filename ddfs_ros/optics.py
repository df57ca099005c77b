"""Thin-lens optics: circle of confusion, lens model, depth hypotheses, focus schedules.

Units: metres everywhere; pixels only in names ending in ``_px``.

The circle of confusion (blur-disk *diameter*) of an object at depth ``d`` seen by a
lens of focal length ``f`` and f-number ``N`` focused at object distance ``s`` is::

    c(d) = f**2 * |d - s| / (d * N * (s - f))        [metres, on the sensor]
    c_px = c / p                                       [pixels, p = pixel pitch m/px]

Scaling ``d, s, f`` and ``p`` by the same factor ``k`` leaves ``c_px`` unchanged
(the DDFS scale augmentation relies on this).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

#: Default clamp of the circle of confusion, in pixels, for a 256 px wide image.
DEFAULT_MAX_COC_PX_AT_256 = 10.0


#: Blur-spot shapes the renderer draws (the keys of :data:`ddfs_ros.psf.PSF_SHAPES`), named
#: here, without torch, for command-line choices and node parameters.
PSF_SHAPE_NAMES = ('disk', 'disk_otf', 'gaussian')


def default_max_coc_px(width_px: int) -> float:
    """Largest circle of confusion (px) the cost volume deblurs, scaled with image width."""
    return DEFAULT_MAX_COC_PX_AT_256 * float(width_px) / 256.0


def coc_m(depth_m, focus_m, focal_length_m, f_number):
    """Circle-of-confusion diameter on the sensor, metres.

    All arguments broadcast (numpy arrays or floats).  ``focus_m`` must exceed the
    focal length (a real image is formed only then).
    """
    d = np.asarray(depth_m, dtype=np.float64)
    s = np.asarray(focus_m, dtype=np.float64)
    f = np.asarray(focal_length_m, dtype=np.float64)
    n = np.asarray(f_number, dtype=np.float64)
    return f * f * np.abs(d - s) / (d * n * (s - f))


def coc_px(depth_m, focus_m, focal_length_m, f_number, pixel_pitch_m, max_coc_px: float | None = None):
    """Circle-of-confusion diameter in pixels of the published image, optionally clamped."""
    c = coc_m(depth_m, focus_m, focal_length_m, f_number) / np.asarray(pixel_pitch_m, dtype=np.float64)
    if max_coc_px is not None:
        c = np.minimum(c, max_coc_px)
    return c


@dataclass(frozen=True)
class LensModel:
    """A thin lens plus the sensor sampling of the published image.

    Attributes:
        focal_length_m: focal length f (m).
        f_number: N (dimensionless), the default for frames that do not give their own.
        pixel_pitch_m: p, metres per pixel of the image *as published* (after any resize).
    """

    focal_length_m: float
    f_number: float
    pixel_pitch_m: float

    def __post_init__(self) -> None:
        for name in ('focal_length_m', 'f_number', 'pixel_pitch_m'):
            v = getattr(self, name)
            if v is None or not math.isfinite(float(v)) or float(v) <= 0.0:
                raise ValueError(f'LensModel.{name} must be a finite positive number, got {v!r}')

    @classmethod
    def from_camera_info(cls, fx_px: float, pixel_pitch_m: float, f_number: float,
                         focal_length_m: float | None = None) -> 'LensModel':
        """Lens from CameraInfo: ``f = K[0] * p`` unless the focal length is given."""
        f = float(focal_length_m) if focal_length_m else float(fx_px) * float(pixel_pitch_m)
        return cls(focal_length_m=f, f_number=float(f_number), pixel_pitch_m=float(pixel_pitch_m))

    def with_blur_scale(self, scale: float) -> 'LensModel':
        """The same lens with every blur ``scale`` times larger in pixels (the pitch divided by
        it): a camera whose true blur differs from what its nominal values say."""
        return self if scale == 1.0 else replace(self, pixel_pitch_m=self.pixel_pitch_m / float(scale))

    def coc_px(self, depth_m, focus_m, f_number=None, max_coc_px: float | None = None):
        """Blur diameter in pixels for objects at ``depth_m`` with the lens focused at ``focus_m``."""
        n = self.f_number if f_number is None else f_number
        return coc_px(depth_m, focus_m, self.focal_length_m, n, self.pixel_pitch_m, max_coc_px)

    def scaled(self, k: float) -> 'LensModel':
        """The lens of a scene scaled by ``k`` (f and pitch times k, N unchanged)."""
        return LensModel(self.focal_length_m * k, self.f_number, self.pixel_pitch_m * k)


def depth_hypotheses(d_min: float = 0.1, d_max: float = 3.0, count: int = 64,
                     spacing: str = 'depth') -> np.ndarray:
    """Depth hypotheses d_1..d_D (m), ascending.

    ``spacing='depth'`` is uniform in depth (the DDFS default), ``'inverse'`` uniform in
    inverse depth (dioptres), denser near the camera.
    """
    if not (0 < d_min < d_max) or count < 2:
        raise ValueError(f'need 0 < d_min < d_max and count >= 2, got {d_min}, {d_max}, {count}')
    if spacing == 'depth':
        return np.linspace(d_min, d_max, count)
    if spacing in ('inverse', 'dioptre', 'diopter'):
        return 1.0 / np.linspace(1.0 / d_min, 1.0 / d_max, count)
    raise ValueError(f"spacing must be 'depth' or 'inverse', got {spacing!r}")


def focus_schedule(near_m: float, far_m: float, count: int, spacing: str = 'dioptre') -> np.ndarray:
    """Focus distances (m) from near to far, uniform in depth or in dioptres."""
    if count == 1:
        return np.array([near_m], dtype=np.float64)
    if not (0 < near_m < far_m):
        raise ValueError(f'need 0 < near < far, got {near_m}, {far_m}')
    if spacing == 'depth':
        return np.linspace(near_m, far_m, count)
    if spacing in ('dioptre', 'diopter', 'inverse'):
        return 1.0 / np.linspace(1.0 / near_m, 1.0 / far_m, count)
    raise ValueError(f"spacing must be 'depth' or 'dioptre', got {spacing!r}")


def scale_hypotheses_to_focus(train_depths: np.ndarray, train_focus_range: Sequence[float],
                              focus_m: np.ndarray) -> np.ndarray:
    """``from_focus`` hypothesis range: the training hypotheses times k.

    k maps the geometric centre of the training focus range onto the geometric centre
    of this stack's focus range.  By the scale identity this is the same as shrinking
    the scene by k, so the hypothesis spacing the network learned is kept.
    """
    lo, hi = float(train_focus_range[0]), float(train_focus_range[1])
    f = np.asarray(focus_m, dtype=np.float64)
    k = math.sqrt(float(f.min()) * float(f.max())) / math.sqrt(lo * hi)
    return np.asarray(train_depths, dtype=np.float64) * k


#: Half-width of the ``focus_span`` hypothesis range, as a multiple of the dioptric span
#: of the focus distances (0.75: the focus range widened by a quarter of it on each side).
FOCUS_SPAN_MARGIN = 0.75
#: Least half-width, as a fraction of the centre's dioptres: keeps the range open for a
#: stack that varies only the aperture (one focus distance) or barely the focus.
FOCUS_SPAN_MIN_RELATIVE = 0.6


def hypotheses_from_focus_span(focus_m, count: int, margin: float = FOCUS_SPAN_MARGIN,
                               min_relative: float = FOCUS_SPAN_MIN_RELATIVE) -> np.ndarray:
    """``focus_span`` hypotheses: D depths (m, ascending) uniform in dioptres around the focus range.

    With ``u`` = 1 / focus distance, centre ``u_c`` and span ``u_near - u_far``, the
    hypotheses cover ``u_c +- h`` with ``h = max(margin * span, min_relative * u_c)``
    (never below 5 % of ``u_c``).  The range depends only on the focus schedule, so a
    network trained on it works at any metric scale (the scale identity of DESIGN.md
    section 3), and its dioptric spacing is where the thin-lens blur is linear.
    """
    u = 1.0 / np.asarray(focus_m, dtype=np.float64).ravel()
    if u.size == 0 or not np.all(np.isfinite(u)) or np.any(u <= 0):
        raise ValueError(f'focus distances must be finite and > 0, got {focus_m}')
    u_c = 0.5 * (u.max() + u.min())
    h = max(margin * (u.max() - u.min()), min_relative * u_c)
    u_lo = max(u_c - h, 0.05 * u_c)
    u_hi = u_c + h
    return 1.0 / np.linspace(u_hi, u_lo, int(count))
