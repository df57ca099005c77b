"""Focus-schedule planner: which F focus distances to sweep for a lens and a depth range (no ROS).

Model (thin lens, :mod:`ddfs_ros.optics`).  In inverse depth ``u = 1/d`` (dioptres) the
blur diameter of frame i is affine on each side of its focus ``u_i``:
``c_i(u) = A_i |u - u_i|`` px, with ``A_i = f^2 s_i / (N (s_i - f) p)`` px per dioptre
at the processing resolution; we round off the kink with a one-pixel floor,
``c_i = sqrt(A_i^2 (u - u_i)^2 + c0^2)`` (a pixel cannot show less blur than itself).
Depth from focus/defocus reads depth from how the blurs of *different* frames relate
(the cost volume compares deblurred frames): for a pair (i, j) the blur difference
``c_i(u) - c_j(u)`` changes with depth at about ``A_i + A_j`` px per dioptre for depths
*between* the two focus distances and hardly at all beyond both (it is nearly constant
there), and it is readable only while both blurs are small enough for texture to
survive and for the cost volume to model (it clamps blur at ``max_coc_px``).  So each
pair contributes Fisher information
``(dc_i/du - dc_j/du)^2 w(c_i) w(c_j) / sigma^2`` with ``w(c) = exp(-(c / c_use)^2)`` and
``c_use`` the usable blur (default: the cost volume's clamp at the processing width), and
the expected relative depth error is ``sigma_u / u = 1 / (u sqrt(I(u)))``.  Two frames at
one focus distance add nothing, as in the real problem.

The planner minimises the mean of that relative error (the AbsRel the evaluation
reports) over depths uniform in the requested range (``weighting='depth'``, the
default; or uniform in dioptres), over the focus dioptres ``u_i`` constrained to the
range, with L-BFGS-B from several starts (uniform in dioptres, its bin centres, uniform
in depth), and keeps the best.  What comes out: frames spread so that every depth of the
range lies within the usable blur of at least one or two frames, pulled inward from the
range ends (a frame focused exactly at an end wastes half its depth of field outside the
range) and denser where a dioptre is worth least in relative depth (far).

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
#: Blur measurement noise (px) in the error model; scales the error, not the plan.
DEFAULT_SIGMA_PX = 0.25
#: Least blur diameter (px) a pixel shows, which rounds off |u - u_i| at the focus.
PIXEL_FLOOR_PX = 1.0
#: Least separation of two planned frames, in px of blur: closer frames are nearly one frame.
MIN_SEPARATION_PX = 0.5


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
        sigma_px: blur noise (px) of the error model.
    """

    near_m: float
    far_m: float
    lens: LensModel
    width_px: int
    processing_width_px: int = DEFAULT_PROCESSING_WIDTH
    usable_blur_px: Optional[float] = None
    weighting: str = 'depth'
    sigma_px: float = DEFAULT_SIGMA_PX

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

    Returns the mean over the range (float), or with ``per_depth`` the pair
    (depths m, relative error per depth).
    """
    # one focus distance twice is one measurement (DESIGN.md: such a stack adds nothing)
    focus = np.unique(np.asarray(focus_m, dtype=np.float64).ravel())
    u, wts = problem.grid(n)
    lens = problem.lens
    # blur (px at processing width) of every depth sample in every frame: F x n
    f = lens.focal_length_m
    A = f * f * focus / (lens.f_number * (focus - f) * lens.pixel_pitch_m) * problem.scale   # px / dioptre
    du = u[None, :] - 1.0 / focus[:, None]                                                   # F x n
    c = np.sqrt((A[:, None] * du) ** 2 + PIXEL_FLOOR_PX ** 2)
    dc = A[:, None] ** 2 * du / c                                  # d c_i / d u, px per dioptre
    w = np.exp(-(c / problem.c_use) ** 2)
    iu, ju = np.triu_indices(focus.size, 1)
    info = np.sum((dc[iu] - dc[ju]) ** 2 * w[iu] * w[ju], axis=0) / problem.sigma_px ** 2
    rel = 1.0 / (u * np.sqrt(info + 1e-12))
    if per_depth:
        return 1.0 / u, rel
    return float(np.sum(wts * rel))


def plan_schedule(problem: PlanProblem, frames: int) -> Plan:
    """The F focus distances (m, near to far) that minimise :func:`expected_relative_error`."""
    if frames < 2:
        raise ValueError(f'a focal stack needs at least 2 frames, got {frames}')
    u_far, u_near = 1.0 / problem.far_m, 1.0 / problem.near_m
    span = u_near - u_far
    starts = [
        1.0 / focus_schedule(problem.near_m, problem.far_m, frames, 'dioptre'),
        u_far + span * (np.arange(frames) + 0.5) / frames,
        1.0 / focus_schedule(problem.near_m, problem.far_m, frames, 'depth'),
    ]

    lens = problem.lens
    f = lens.focal_length_m
    a_px = f * f / (lens.f_number * lens.pixel_pitch_m) * problem.scale     # px per dioptre (s >> f)
    # Frames closer than MIN_SEPARATION_PX of blur are redundant (and at equality the
    # pair's information and its gradient vanish, a trap for the optimiser): keep apart.
    min_gap = MIN_SEPARATION_PX / a_px / span

    def objective(x: np.ndarray) -> float:
        # optimise in normalised dioptres (0 = far end, 1 = near end): well-scaled for L-BFGS-B
        err = expected_relative_error(1.0 / (u_far + span * x), problem, n=128)
        gaps = np.diff(np.sort(x))
        return err * (1.0 + 100.0 * float(np.sum(np.maximum(min_gap - gaps, 0.0) ** 2)) / min_gap ** 2)

    best_x, best_val = None, np.inf
    for u0 in starts:
        x0 = np.clip((u0 - u_far) / span, 0.0, 1.0)
        res = minimize(objective, x0, method='L-BFGS-B', bounds=[(0.0, 1.0)] * frames,
                       options={'maxiter': 200})
        if res.fun < best_val:
            best_x, best_val = res.x, float(res.fun)
    focus = np.sort(1.0 / (u_far + span * np.asarray(best_x)))
    plan = Plan(focus_m=focus, expected_rel_error=expected_relative_error(focus, problem))
    plan.compared = compare_schedules(problem, frames, focus)
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
         usable_blur_px: Optional[float] = None, weighting: str = 'depth') -> Plan:
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
