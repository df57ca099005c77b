"""Focus calibration: raw focus control value -> focus distance, from frames of a planar target (no ROS).

The user puts a textured planar target at several measured distances and sweeps the
raw focus range at each.  Per distance, the raw value of best focus is the peak of a
focus measure (:func:`ddfs_ros.baselines.focus_measure`, sum-modified Laplacian) over
the centre of the image, refined below the raw step by a Gaussian fitted to the peak
(a parabola through the logarithm of the measure: the focus curve of a defocused
texture falls off roughly like a Gaussian in the blur, which is linear in raw locally).
A lens focused at ``s`` sharpens the target at ``d = s``, so the best-focus raw value at
target distance ``d`` is where the lens focuses at ``d``.

The model is a polynomial in raw for the focus in *dioptres* (1/m, where a voice-coil
lens is nearly linear), of degree ``min(3, K - 2)`` for K distances (so the residual
keeps at least one degree of freedom), lowered until it is strictly monotonic over the
calibrated raw range.  It is written as the ``calibration:`` table of
``config/camera.yaml`` (``[raw0, dist0_m, raw1, dist1_m, ...]``, which the V4L2 camera
interpolates piecewise linearly in dioptres) sampled densely enough that the table
reproduces the polynomial to well under the fit residual.

Errors (:class:`CalibrationError`) for fewer than :data:`MIN_DISTANCES` distances,
best-focus raw values that are not monotonic in distance, and a distance whose focus
curve has no clear peak inside the sweep (a target that is never sharp).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .baselines import _luminance, focus_measure

#: Fewest target distances the fit accepts.
MIN_DISTANCES = 3
#: Peak focus measure over the sweep's lowest, below which the target is "never sharp".
MIN_PEAK_CONTRAST = 1.15
#: Fraction of the image (each axis) around the centre the focus measure is taken over.
CENTRE_FRACTION = 0.5


class CalibrationError(ValueError):
    """The calibration data cannot give a focus table (the message says why and what to do)."""


def centre_focus_score(frame: np.ndarray, fraction: float = CENTRE_FRACTION, window: int = 9) -> float:
    """Mean sum-modified Laplacian over the centre ``fraction`` of an H x W (x C) image in [0, 1]."""
    gray = _luminance(np.asarray(frame, dtype=np.float32)[None])[0]
    H, W = gray.shape
    h, w = max(8, int(H * fraction)), max(8, int(W * fraction))
    y0, x0 = (H - h) // 2, (W - w) // 2
    return float(focus_measure(np.ascontiguousarray(gray[y0:y0 + h, x0:x0 + w]), 'sml', window).mean())


@dataclass
class FocusPeak:
    """Best focus of one target distance.

    Attributes:
        target_m: target distance (m).
        raw: raw value of best focus (sub-step).
        contrast: peak score / lowest score of the sweep.
        raws, scores: the sweep (sorted by raw) and its focus scores.
    """

    target_m: float
    raw: float
    contrast: float
    raws: np.ndarray
    scores: np.ndarray


def focus_peak(raws: Sequence[float], scores: Sequence[float], target_m: float = float('nan')) -> FocusPeak:
    """Sub-step raw value of the focus-score peak of one sweep.

    Args:
        raws: raw values (any order; repeated values are averaged).
        scores: focus score per raw value (higher = sharper).
        target_m: target distance (m), for the error messages.

    Raises:
        CalibrationError: fewer than 3 raw values, or no clear peak inside the sweep.
    """
    r = np.asarray(raws, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    ur, inv = np.unique(r, return_inverse=True)
    us = np.bincount(inv, weights=s) / np.bincount(inv)
    if ur.size < 3:
        raise CalibrationError(f'target at {target_m:.3f} m: only {ur.size} distinct raw values; sweep the '
                               'whole focus range (at least 3 values, better 20+)')
    k = int(np.argmax(us))
    contrast = float(us[k] / max(us.min(), 1e-12))
    if contrast < MIN_PEAK_CONTRAST:
        raise CalibrationError(f'target at {target_m:.3f} m is never sharp: focus score varies only '
                               f'{(contrast - 1) * 100:.1f} % over raw {ur[0]:g}..{ur[-1]:g} (needs a textured, '
                               'well-lit target filling the image centre, inside the lens focus range)')
    if k == 0 or k == ur.size - 1:
        raise CalibrationError(f'target at {target_m:.3f} m is sharpest at the end of the sweep (raw {ur[k]:g}): '
                               'it may be outside the lens focus range; move it or extend the raw sweep')
    # Gaussian through the peak: least-squares parabola of log(score) over the peak and
    # up to two neighbours each side that still lie in the upper half of the curve.
    base = us.min()
    lo, hi = k, k
    while lo > 0 and k - lo < 2 and us[lo - 1] - base > 0.5 * (us[k] - base):
        lo -= 1
    while hi < ur.size - 1 and hi - k < 2 and us[hi + 1] - base > 0.5 * (us[k] - base):
        hi += 1
    lo, hi = min(lo, k - 1), max(hi, k + 1)
    x = ur[lo:hi + 1]
    y = np.log(np.maximum(us[lo:hi + 1], 1e-12))
    a, b, _ = np.polyfit(x - ur[k], y, 2)
    peak = ur[k] - b / (2 * a) if a < 0 else ur[k]
    peak = float(np.clip(peak, ur[k - 1], ur[k + 1]))
    return FocusPeak(float(target_m), peak, contrast, ur, us)


@dataclass
class CalibrationFit:
    """A fitted focus calibration.

    Attributes:
        peaks: per target distance, the best-focus raw value (sorted by raw).
        coeffs: polynomial coefficients (highest first) of dioptres as a function of raw.
        residual_rms_d, residual_max_d: fit residual at the peaks (dioptres).
        raw_range: (min, max) raw value of the peaks (the calibrated range).
    """

    peaks: list
    coeffs: np.ndarray
    residual_rms_d: float
    residual_max_d: float
    raw_range: tuple
    table: list = field(default_factory=list)

    def dioptre(self, raw) -> np.ndarray:
        """Focus (dioptres) at raw value(s)."""
        return np.polyval(self.coeffs, np.asarray(raw, dtype=np.float64))

    def distance_m(self, raw) -> np.ndarray:
        """Focus distance (m) at raw value(s); inf at or beyond 0 dioptres."""
        d = self.dioptre(raw)
        with np.errstate(divide='ignore'):
            return np.where(d > 0, 1.0 / np.maximum(d, 1e-300), np.inf)

    def residuals_d(self) -> np.ndarray:
        return np.array([self.dioptre(p.raw) - 1.0 / p.target_m for p in self.peaks])


def _monotonic(coeffs: np.ndarray, lo: float, hi: float) -> bool:
    x = np.linspace(lo, hi, 512)
    d = np.diff(np.polyval(coeffs, x))
    return bool(np.all(d > 0) or np.all(d < 0))


def fit_calibration(peaks: Sequence[FocusPeak], degree: Optional[int] = None, table_points: int = 17) -> CalibrationFit:
    """Fit the monotonic raw -> dioptre model to per-distance best-focus raw values.

    Args:
        peaks: one :class:`FocusPeak` per target distance (distinct distances).
        degree: polynomial degree (default ``min(3, K - 2)``, at least 1).
        table_points: raw values at which the table is sampled (uniform over the calibrated range).

    Raises:
        CalibrationError: too few distances, repeated distances, non-monotonic data.
    """
    pk = sorted(peaks, key=lambda p: p.raw)
    K = len(pk)
    targets = np.array([p.target_m for p in pk])
    if K < MIN_DISTANCES:
        raise CalibrationError(f'{K} target distance(s); a calibration needs at least {MIN_DISTANCES} '
                               '(better 5-8 spread over the working range, in dioptres)')
    if np.unique(np.round(targets, 6)).size != K:
        raise CalibrationError(f'repeated target distances {np.round(targets, 4).tolist()} m: give each '
                               'placement its own target_distance')
    raw = np.array([p.raw for p in pk])
    dio = 1.0 / targets
    step = np.diff(dio)
    if not (np.all(step > 0) or np.all(step < 0)):
        pairs = ', '.join(f'{t:.3f} m -> raw {r:.1f}' for t, r in zip(targets, raw))
        raise CalibrationError(f'best-focus raw values are not monotonic in distance ({pairs}): a wrong '
                               'target_distance, a target that moved during its sweep, or a lens that '
                               'hunts (autofocus still on?)')
    deg = int(degree) if degree is not None else max(1, min(3, K - 2))
    while True:
        coeffs = np.polyfit(raw, dio, deg)
        if _monotonic(coeffs, raw[0], raw[-1]) or deg == 1:
            break
        deg -= 1
    res = np.polyval(coeffs, raw) - dio
    fit = CalibrationFit(pk, coeffs, float(np.sqrt(np.mean(res ** 2))), float(np.max(np.abs(res))),
                         (float(raw[0]), float(raw[-1])))
    grid = np.linspace(raw[0], raw[-1], int(table_points))
    fit.table = [[float(round(r, 3)), float(d)] for r, d in zip(grid, fit.distance_m(grid))]
    return fit


def peaks_from_samples(raws: Sequence[float], targets: Sequence[float], scores: Sequence[float]) -> list:
    """Group (raw, target distance, focus score) samples by target distance and find each peak."""
    r = np.asarray(raws, dtype=np.float64)
    t = np.round(np.asarray(targets, dtype=np.float64), 6)
    s = np.asarray(scores, dtype=np.float64)
    if not (r.size == t.size == s.size):
        raise ValueError('raws, targets and scores must have one value per frame')
    if np.any(~np.isfinite(t)) or np.any(t <= 0):
        raise CalibrationError(f'target distances must be finite and > 0 m, got {np.unique(t).tolist()}')
    return [focus_peak(r[t == d], s[t == d], float(d)) for d in np.unique(t)]


def write_calibration_yaml(fit: CalibrationFit, path, source: str = '') -> None:
    """Write the table as a ROS 2 parameter file for the capture node (``--params-file``).

    The ``calibration`` key is the flat list ``[raw0, dist0_m, ...]`` of ``config/camera.yaml``;
    ``inf`` (focused at infinity) is written as YAML ``.inf``.
    """
    flat = []
    for r, d in fit.table:
        flat += [f'{r:g}', '.inf' if not np.isfinite(d) else f'{d:.6g}']
    lines = [f'# ddfs-calibrate focus {source}'.rstrip(),
             f'# {len(fit.peaks)} target distances, raw {fit.raw_range[0]:.1f}..{fit.raw_range[1]:.1f}, '
             f'polynomial degree {len(fit.coeffs) - 1} in dioptres',
             f'# residual: rms {fit.residual_rms_d:.4f} D, max {fit.residual_max_d:.4f} D',
             '# per distance: ' + ', '.join(f'{p.target_m:.3f} m @ raw {p.raw:.2f}' for p in fit.peaks),
             '/**/capture_node:', '  ros__parameters:',
             '    calibration: [' + ', '.join(flat) + ']', '']
    Path(path).write_text('\n'.join(lines))


def load_calibration_pairs(path) -> np.ndarray:
    """K x 2 (raw, distance m) from a calibration YAML: ours, ``config/camera.yaml`` or ``calibration: [[r, d], ...]``."""
    import yaml
    doc = yaml.safe_load(Path(path).read_text()) or {}
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, dict) and 'ros__parameters' in v:
                doc = v['ros__parameters']
                break
    if not isinstance(doc, dict) or 'calibration' not in doc:
        raise CalibrationError(f'{path}: no calibration key')
    arr = np.asarray(doc['calibration'], dtype=np.float64)
    return arr.reshape(-1, 2)


def plot_calibration(fit: CalibrationFit, path) -> None:
    """PNG: best-focus points and the fit (dioptres vs raw), residuals below."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    raw = np.array([p.raw for p in fit.peaks])
    dio = np.array([1.0 / p.target_m for p in fit.peaks])
    grid = np.linspace(fit.raw_range[0], fit.raw_range[1], 200)
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(6, 6), sharex=True, gridspec_kw={'height_ratios': [3, 1]})
    ax.plot(grid, fit.dioptre(grid), '-', label=f'fit (degree {len(fit.coeffs) - 1})')
    tab = np.array(fit.table)
    with np.errstate(divide='ignore'):
        ax.plot(tab[:, 0], 1.0 / tab[:, 1], '+', color='gray', label='written table')
    ax.plot(raw, dio, 'o', label='best focus per target distance')
    ax.set_ylabel('focus (dioptres, 1/m)')
    ax.set_title(f'focus calibration: residual rms {fit.residual_rms_d:.4f} D')
    ax.legend()
    axr.axhline(0.0, color='gray', lw=0.5)
    axr.plot(raw, fit.residuals_d(), 'o')
    axr.set_xlabel('raw focus value')
    axr.set_ylabel('residual (D)')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class SimulatedFocusMotor:
    """A known, non-linear raw -> focus curve for simulated calibration data (and tests).

    ``dioptre(raw) = 1/far + (1/near - 1/far) * (exp(-k t) - exp(-k)) / (1 - exp(-k))``
    with ``t = raw / raw_max``: raw 0 focuses at ``near_m``, ``raw_max`` at ``far_m``, and
    ``k`` bends the curve (0 would be linear in dioptres).
    """

    near_m: float = 0.1
    far_m: float = 2.0
    raw_max: float = 255.0
    k: float = 1.5

    def dioptre(self, raw) -> np.ndarray:
        t = np.asarray(raw, dtype=np.float64) / self.raw_max
        shape = (np.exp(-self.k * t) - np.exp(-self.k)) / (1.0 - np.exp(-self.k))
        return 1.0 / self.far_m + (1.0 / self.near_m - 1.0 / self.far_m) * shape

    def distance_m(self, raw) -> np.ndarray:
        return 1.0 / self.dioptre(raw)
