"""Focus-schedule planner: which F focus distances to sweep for a lens and a depth range (no ROS).

Model (thin lens, :mod:`ddfs_ros.optics`).  In inverse depth ``u = 1/d`` (dioptres) the
blur diameter of frame i is affine on each side of its focus ``u_i``:
``c_i(u) = A_i |u - u_i|`` px, with ``A_i = f^2 s_i / (N (s_i - f) p)`` px per dioptre
at the processing resolution; we round off the kink with a one-pixel floor,
``c_i = sqrt(A_i^2 (u - u_i)^2 + c0^2)`` (a pixel cannot show less blur than itself).

Depth from focus/defocus locates a depth between the two frames that bracket it (the
focus measure's peak is interpolated between neighbouring frames; the cost volume
compares each depth hypothesis with the frames around it).  For a depth ``u`` between
neighbours ``k`` and ``k+1`` the blur difference ``c_k(u) - c_{k+1}(u)`` changes at
``g = |dc_k/du - dc_{k+1}/du|`` px per dioptre (about ``A_k + A_{k+1}``, less where both
blurs are under a pixel: two frames closer than their depth of field tell little
apart).  Each blur is read with an error that grows with the blur itself,
``e(c) = kappa c exp((c / c_use)^2 / 2)`` px: a defocused texture loses contrast in
proportion to its blur, and past the usable blur ``c_use`` (default: the cost volume's
clamp at the processing width) it is gone.  So ``sigma_u = sqrt(e(c_k)^2 + e(c_{k+1})^2)
/ g`` dioptres, which grows with the dioptre gap between the neighbours: spreading the
frames evenly in blur keeps every depth near a sharp frame.  Depths outside the
frames' span are not bracketed; their estimate clamps to the end frame, an error of
their distance to it (added in quadrature).  The expected relative depth error (the
AbsRel the evaluation reports) is ``sigma_u / u``.

Why this model and not the one before it (every pair of frames contributing Fisher
information ``(dc_i/du - dc_j/du)^2 w(c_i) w(c_j)`` at a constant blur noise): there,
the blur difference of a pair changes at ``A_i + A_j`` anywhere between the two frames
*however far apart they are*, and the noise did not grow with blur until the usable
blur, so wide gaps cost nothing; with depths weighted uniformly in metres and the error
relative, it piled frames at the far end and pulled the end frames inward, leaving the
near range unbracketed.  Measured on rendered scenes it lost to plain uniform-in-dioptre
spacing (README, "Using a real camera").

The planner minimises the mean relative error over depths uniform in dioptres
(``weighting='dioptre'``, the default: blur is linear in dioptres, and the rendered and
real scenes place objects so; or uniform in metres) over the focus dioptres of the
interior frames; the two end frames sit on the range ends, so both ends are bracketed.
L-BFGS-B from uniform-in-dioptre and uniform-in-depth starts.  Uniform-in-dioptre spacing
is returned unless the optimum beats it by :data:`MIN_MODEL_GAIN` in the model: for the
usual lenses the optimum is uniform in dioptres shifted a little toward the far end (a
dioptre there is worth more relative depth), 0-7 % better in the model, and measured that
small a gain did not hold up (README).  So the planner's job is mostly the range ends and
the snapping to a calibration; it departs from dioptre spacing where blur is far from
linear in dioptres or the usable blur runs out between frames.

With a calibration, the plan is snapped to the raw focus values the lens can actually
take (:func:`snap_to_calibration`), and the distances reported are those of the snapped
raw values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy.optimize import minimize

from .optics import LensModel, default_max_coc_px, focus_schedule

#: Default processing width (px) the blur is evaluated at (the cost volume's reference width).
DEFAULT_PROCESSING_WIDTH = 256
#: Least blur diameter (px) a pixel shows, which rounds off |u - u_i| at the focus.
PIXEL_FLOOR_PX = 1.0
#: Blur read-out error per px of blur (``kappa`` of the model); scales the error, not the plan.
BLUR_NOISE_FRACTION = 0.25
#: Least model gain over uniform-in-dioptre spacing (fraction of its error) for which the
#: planner departs from it.  Measured (README, bench/real_camera.py plan, 8 scenes): a
#: schedule 2.7 % better in the model was better for the focus measure and one engine and
#: worse for two; gains that small are inside the model's own error.
MIN_MODEL_GAIN = 0.10


@dataclass
class Plan:
    """A planned focus schedule.

    Attributes:
        focus_m: F focus distances (m), near to far.
        expected_rel_error: the model's mean relative depth error over the range (dimensionless).
        raw: F raw focus values when snapped to a calibration, else None.
        compared: {'planned' | 'dioptre' | 'depth': expected_rel_error} for the same lens and range.
    """

    focus_m: np.ndarray
    expected_rel_error: float
    raw: Optional[np.ndarray] = None
    compared: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PlanProblem:
    """Lens and range of a planning problem.

    Attributes:
        near_m, far_m: depth range the robot cares about (m).
        lens: focal length (m), f-number, pixel pitch (m/px) of the *published* frame.
        width_px: published frame width (px).
        processing_width_px: width the cost volume runs at (blur is scaled to it).
        usable_blur_px: blur diameter (px at processing width) where a frame's weight
            falls to 1/e; default the cost volume's clamp ``default_max_coc_px``.
        weighting: 'depth' (depths uniform in metres) or 'dioptre'.
        blur_noise_fraction: blur read-out error per px of blur (``kappa``); scales the error.
    """

    near_m: float
    far_m: float
    lens: LensModel
    width_px: int
    processing_width_px: int = DEFAULT_PROCESSING_WIDTH
    usable_blur_px: Optional[float] = None
    weighting: str = 'dioptre'
    blur_noise_fraction: float = BLUR_NOISE_FRACTION

    def __post_init__(self) -> None:
        if not (0 < self.near_m < self.far_m):
            raise ValueError(f'need 0 < near < far, got near={self.near_m}, far={self.far_m}')
        if self.near_m <= self.lens.focal_length_m:
            raise ValueError(f'near ({self.near_m} m) must exceed the focal length ({self.lens.focal_length_m} m)')
        if self.weighting not in ('depth', 'dioptre'):
            raise ValueError(f"weighting must be 'depth' or 'dioptre', got {self.weighting!r}")

    @property
    def scale(self) -> float:
        """Processing px per published px."""
        return min(self.processing_width_px, self.width_px) / float(self.width_px)

    @property
    def c_use(self) -> float:
        return float(self.usable_blur_px or default_max_coc_px(min(self.processing_width_px, self.width_px)))

    def grid(self, n: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(depth samples u in dioptres, weights summing to 1)."""
        if self.weighting == 'depth':
            d = np.linspace(self.near_m, self.far_m, n)
            return 1.0 / d, np.full(n, 1.0 / n)
        return np.linspace(1.0 / self.far_m, 1.0 / self.near_m, n), np.full(n, 1.0 / n)


def expected_relative_error(focus_m: Sequence[float], problem: PlanProblem, n: int = 256,
                            per_depth: bool = False):
    """Model relative depth error of a schedule (see the module docstring).

    Args:
        focus_m: F focus distances (m), any order; repeats count once.
        problem: lens and range.
        n: depth samples over the range.
        per_depth: return the per-depth error instead of the mean.

    Returns:
        The mean over the range (float, dimensionless), or with ``per_depth`` the pair
        (depths m, relative error per depth), both of length ``n``.
    """
    # one focus distance twice is one measurement (DESIGN.md: such a stack adds nothing)
    us = np.sort(1.0 / np.unique(np.asarray(focus_m, dtype=np.float64).ravel()))[::-1]   # dioptres, near first
    u, wts = problem.grid(n)
    if us.size < 2:
        rel = np.abs(u - us[0]) / u if us.size else np.full_like(u, np.inf)
        return (1.0 / u, rel) if per_depth else float(np.sum(wts * rel))
    lens = problem.lens
    f = lens.focal_length_m
    s = 1.0 / us
    A = f * f * s / (lens.f_number * (s - f) * lens.pixel_pitch_m) * problem.scale       # px / dioptre
    du = u[None, :] - us[:, None]                                                        # F x n
    c = np.sqrt((A[:, None] * du) ** 2 + PIXEL_FLOOR_PX ** 2)                            # blur, px
    dc = A[:, None] ** 2 * du / c                                                        # d c / d u, px/D
    e = problem.blur_noise_fraction * c * np.exp(0.5 * np.minimum(c / problem.c_use, 12.0) ** 2)  # read-out error, px
    # the bracketing neighbours k, k+1 (us[k] >= u >= us[k+1]); outside the span, the end pair
    k = np.clip(np.searchsorted(-us, -u, side='right') - 1, 0, us.size - 2)
    j = np.arange(u.size)
    g = np.abs(dc[k, j] - dc[k + 1, j])
    sigma_u = np.sqrt(e[k, j] ** 2 + e[k + 1, j] ** 2) / np.maximum(g, 1e-12)
    outside = np.maximum(u - us[0], 0.0) + np.maximum(us[-1] - u, 0.0)                  # unbracketed, D
    rel = np.sqrt(sigma_u ** 2 + outside ** 2) / u
    if per_depth:
        return 1.0 / u, rel
    return float(np.sum(wts * rel))


def plan_schedule(problem: PlanProblem, frames: int) -> Plan:
    """The F focus distances (m, near to far) that minimise :func:`expected_relative_error`.

    The end frames are the range ends (bracketing); the F - 2 interior ones are optimised.
    """
    if frames < 2:
        raise ValueError(f'a focal stack needs at least 2 frames, got {frames}')
    u_far, u_near = 1.0 / problem.far_m, 1.0 / problem.near_m
    span = u_near - u_far
    dioptre = focus_schedule(problem.near_m, problem.far_m, frames, 'dioptre')

    def to_focus(x: np.ndarray) -> np.ndarray:
        # normalised dioptres (0 = far end, 1 = near end): well-scaled for L-BFGS-B
        xs = np.concatenate([[0.0], np.sort(np.clip(x, 0.0, 1.0)), [1.0]])
        return np.sort(1.0 / (u_far + span * xs))

    best_focus, best_val = dioptre, expected_relative_error(dioptre, problem, n=128)
    if frames > 2:
        starts = [(1.0 / focus_schedule(problem.near_m, problem.far_m, frames, sp) - u_far) / span
                  for sp in ('dioptre', 'depth')]
        for x0 in starts:
            x0 = np.sort(x0)[1:-1]
            res = minimize(lambda x: expected_relative_error(to_focus(x), problem, n=128), x0,
                           method='L-BFGS-B', bounds=[(0.0, 1.0)] * (frames - 2), options={'maxiter': 200})
            cand = to_focus(res.x)
            if np.unique(np.round(cand, 9)).size == frames and float(res.fun) < best_val:
                best_focus, best_val = cand, float(res.fun)
    # depart from uniform-in-dioptre spacing only for a clear model gain (MIN_MODEL_GAIN),
    # judged on the full evaluation grid
    if expected_relative_error(best_focus, problem) > (1.0 - MIN_MODEL_GAIN) * expected_relative_error(dioptre,
                                                                                                      problem):
        best_focus = dioptre
    plan = Plan(focus_m=best_focus, expected_rel_error=expected_relative_error(best_focus, problem))
    plan.compared = compare_schedules(problem, frames, best_focus)
    return plan


def compare_schedules(problem: PlanProblem, frames: int, planned_m: Sequence[float]) -> dict:
    """Model error of the planned schedule next to uniform-in-dioptre and uniform-in-depth ones."""
    return {'planned': expected_relative_error(planned_m, problem),
            'dioptre': expected_relative_error(focus_schedule(problem.near_m, problem.far_m, frames, 'dioptre'),
                                               problem),
            'depth': expected_relative_error(focus_schedule(problem.near_m, problem.far_m, frames, 'depth'),
                                             problem)}


def snap_to_calibration(focus_m: Sequence[float], calibration, raw_step: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Snap focus distances to raw focus values the lens can take.

    Args:
        focus_m: planned distances (m).
        calibration: an object with ``raw_for_distance`` and ``distance_for_raw``
            (e.g. :class:`ddfs_ros.cameras.v4l2.FocusCalibration`).
        raw_step: the control's step (raw units).

    Returns:
        (raw values, the distances (m) those raw values focus at), in the input order.

    Raises:
        ValueError: two planned distances snap to one raw value (the calibrated range
            or the control's resolution is too coarse for that many frames).
    """
    raw = np.round(np.asarray(calibration.raw_for_distance(np.asarray(focus_m, dtype=np.float64))) / raw_step)
    raw = raw * raw_step
    if np.unique(raw).size != raw.size:
        raise ValueError(f'planned focus distances {np.round(focus_m, 3).tolist()} m snap to repeated raw values '
                         f'{raw.tolist()}: fewer frames, or a finer focus control / wider calibrated range')
    return raw, np.asarray(calibration.distance_for_raw(raw), dtype=np.float64)


def plan(near_m: float, far_m: float, frames: int, lens: LensModel, width_px: int,
         processing_width_px: int = DEFAULT_PROCESSING_WIDTH, calibration=None, raw_step: float = 1.0,
         usable_blur_px: Optional[float] = None, weighting: str = 'dioptre') -> Plan:
    """Plan a schedule (and snap it to ``calibration`` when given); see :func:`plan_schedule`.

    With a calibration the range is first clipped to the calibrated distances.
    """
    if calibration is not None:
        lo, hi = calibration.distance_range
        near_c, far_c = max(near_m, lo), min(far_m, hi)
        if not near_c < far_c:
            raise ValueError(f'range {near_m}-{far_m} m lies outside the calibrated {lo:.3f}-{hi:.3f} m')
        near_m, far_m = near_c, far_c
    problem = PlanProblem(near_m, far_m, lens, int(width_px), int(processing_width_px), usable_blur_px, weighting)
    result = plan_schedule(problem, int(frames))
    if calibration is not None:
        raw, dist = snap_to_calibration(result.focus_m, calibration, raw_step)
        result = Plan(focus_m=dist, expected_rel_error=expected_relative_error(dist, problem), raw=raw,
                      compared=compare_schedules(problem, int(frames), dist))
    return result
