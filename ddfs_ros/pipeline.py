"""FocalStack -> depth and uncertainty: the ROS-free core the inference node wraps.

The same object serves the node, ``ddfs-eval offline`` and the benchmarks, so what is
scored offline is exactly what the robot runs.  Steps (each timed):

1. ``validate``: :meth:`FocalStack.validate` (raises :class:`StackError`), plus the
   engine's constraints (F for a fixed-F DFV engine).
2. ``resize``: frames to the engine's H x W on the engine device (area averaging
   when shrinking).  The pixel pitch follows the *width*: ``p_new = p * w_old / w_new``
   (a non-square resize makes pixels non-square; the cost volume models round
   blur disks at the horizontal pitch).
3. ``cost_volume`` (ddfs, dfv_cv): :class:`~ddfs_ros.cost_volume.CostVolume` on the
   engine device with the manifest's ``max_coc_px`` (given at the engine width) and
   the depth hypotheses of ``hypothesis_mode``.  DFV engines get the frames sorted
   near to far instead.
4. ``infer``: the engine (any backend).
5. ``post``: depth and uncertainty back to the input size (bilinear), then the
   sanity mask: NaN where depth is not finite or lies outside the hypothesis range
   (DFV: the focus range), or where the uncertainty exceeds ``max_uncertainty`` (m)
   or ``max_relative_uncertainty`` x depth.  Each count is reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as Fnn

from .cost_volume import CostVolume
from .optics import LensModel, depth_hypotheses, scale_hypotheses_to_focus
from .stack import FocalStack, StackError

#: Default of ``max_relative_uncertainty``: a pixel whose depth std exceeds half its
#: depth is not a measurement (a flat distribution over 0.1..3 m has std/depth ~0.54).
DEFAULT_MAX_RELATIVE_UNCERTAINTY = 0.5
#: Slack on the hypothesis-range test (a soft-argmin cannot leave the range; only
#: resampling at edges can, by a hair).
RANGE_TOLERANCE = 1e-3

HypothesisMode = Union[str, Sequence[float]]


@dataclass
class DepthResult:
    """Depth of one stack.

    Attributes:
        depth: H x W float32 metres along the optical axis, NaN where masked.
        uncertainty: H x W float32 metres (std of the per-pixel distribution; not masked).
        hypotheses: the D depth hypotheses used (m), or the sorted focus distances (DFV).
        timings: milliseconds per stage: validate, resize, cost_volume, infer, post, total.
        n_out_of_range: pixels masked for non-finite or out-of-range depth.
        n_uncertain: pixels masked by the uncertainty threshold (not already out of range).
        reference_index: index (in the input stack's order) of the reference frame.
        backend: engine backend that produced it.
    """

    depth: np.ndarray
    uncertainty: np.ndarray
    hypotheses: np.ndarray
    timings: dict = field(default_factory=dict)
    n_out_of_range: int = 0
    n_uncertain: int = 0
    reference_index: int = 0
    backend: str = ''

    @property
    def valid_fraction(self) -> float:
        return float(np.isfinite(self.depth).mean())

    @property
    def depth_range(self) -> tuple[float, float]:
        return float(self.hypotheses.min()), float(self.hypotheses.max())


def sanity_mask(depth: np.ndarray, unc: np.ndarray, lo: float, hi: float,
                max_uncertainty: Optional[float] = None,
                max_relative_uncertainty: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixels to blank (REP 117 NaN), as two disjoint H x W masks.

    Returns:
        (bad_range: depth not finite or outside [lo, hi] (small tolerance),
         bad_unc: uncertainty not finite, > ``max_uncertainty`` m, or >
         ``max_relative_uncertainty`` x depth, among the pixels not already in bad_range).
    """
    tol = RANGE_TOLERANCE * (hi - lo)
    with np.errstate(invalid='ignore'):
        bad_range = ~np.isfinite(depth) | (depth < lo - tol) | (depth > hi + tol)
        bad_unc = ~np.isfinite(unc)
        if max_uncertainty:
            bad_unc |= unc > max_uncertainty
        if max_relative_uncertainty:
            bad_unc |= unc > max_relative_uncertainty * np.abs(depth)
    return bad_range, bad_unc & ~bad_range


class DepthPipeline:
    """Stack in, depth out, on one engine.

    Args:
        engine: a loaded :class:`~ddfs_ros.engines.Engine`.
        hypothesis_mode: ``'fixed'`` (the training hypotheses), ``'from_focus'`` (the
            training hypotheses scaled so the stack's focus range sits where the training
            focus range sat; DESIGN.md section 4) or ``[d_min, d_max]`` metres.
        reference: reference frame for the network, ``'farthest'`` (default) or ``'nearest'``.
        max_uncertainty: absolute threshold (m); ``None`` = off.
        max_relative_uncertainty: threshold on uncertainty / depth; ``None`` or 0 = off.
        cost_volume: an existing :class:`CostVolume` (to share its filter cache).
    """

    def __init__(self, engine, hypothesis_mode: HypothesisMode = 'fixed', reference: str = 'farthest',
                 max_uncertainty: Optional[float] = None,
                 max_relative_uncertainty: Optional[float] = DEFAULT_MAX_RELATIVE_UNCERTAINTY,
                 cost_volume: Optional[CostVolume] = None) -> None:
        self.engine = engine
        self.manifest = engine.manifest
        if isinstance(hypothesis_mode, str):
            if hypothesis_mode not in ('fixed', 'from_focus'):
                raise ValueError(f"hypothesis_mode must be 'fixed', 'from_focus' or [d_min, d_max], "
                                 f'got {hypothesis_mode!r}')
        else:
            lo, hi = (float(x) for x in hypothesis_mode)
            if not (0 < lo < hi):
                raise ValueError(f'hypothesis range must be 0 < d_min < d_max, got {hypothesis_mode}')
            hypothesis_mode = [lo, hi]
        if self.manifest.uses_cost_volume and hypothesis_mode == 'from_focus' \
                and not self.manifest.train_focus_range:
            raise ValueError(f'engine {self.manifest.name} has no train_focus_range: use fixed or [d_min, d_max]')
        self.hypothesis_mode = hypothesis_mode
        self.reference = reference
        self.max_uncertainty = max_uncertainty if max_uncertainty else None
        self.max_relative_uncertainty = max_relative_uncertainty if max_relative_uncertainty else None
        self._cv = cost_volume
        self._cv_device: Optional[torch.device] = None

    # -- helpers ----------------------------------------------------------------------
    def _cost_volume(self, device: torch.device) -> CostVolume:
        if self._cv is None or self._cv_device != device:
            self._cv = CostVolume(device=device, max_coc_px=self.manifest.max_coc_px)
            self._cv_device = device
        return self._cv

    def hypotheses_for(self, focus_m: np.ndarray) -> np.ndarray:
        """The D depth hypotheses (m, ascending) for a stack with these focus distances."""
        m = self.manifest
        if self.hypothesis_mode == 'fixed':
            return m.train_hypotheses()
        if self.hypothesis_mode == 'from_focus':
            return scale_hypotheses_to_focus(m.train_hypotheses(), m.train_focus_range, focus_m)
        lo, hi = self.hypothesis_mode
        return depth_hypotheses(lo, hi, int(m.num_hypotheses), m.hypotheses.get('spacing', 'depth'))

    def check(self, stack: FocalStack) -> None:
        """Raise :class:`StackError` for a stack this engine cannot take."""
        stack.validate()
        F = self.manifest.num_frames
        if F is not None and stack.num_frames != F:
            raise StackError('frame_count_mismatch',
                             f'engine {self.manifest.name} takes exactly {F} frames, the stack has '
                             f'{stack.num_frames}')

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    # -- the run ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, stack: FocalStack) -> DepthResult:
        """Depth and uncertainty of ``stack`` at its own size (see the module docstring)."""
        t0 = time.perf_counter()
        timings = {}
        self.check(stack)
        m = self.manifest
        which = self.reference if self.reference else m.reference_frame
        ref_in = stack.reference_index(which)
        if m.family == 'dfv':
            stack = stack.sorted()          # DFV learned near -> far
        ref = stack.reference_index(which)
        H, W = stack.height, stack.width
        He, We = m.height, m.width
        device = self.engine.device
        t1 = time.perf_counter()
        timings['validate'] = (t1 - t0) * 1e3

        frames = torch.from_numpy(np.ascontiguousarray(stack.as_rgb())).to(device)   # F H W 3
        frames = frames.permute(0, 3, 1, 2).contiguous()                               # F 3 H W
        if (H, W) != (He, We):
            frames = Fnn.interpolate(frames, size=(He, We), mode='area' if He * We < H * W else 'bilinear',
                                     **({} if He * We < H * W else {'align_corners': False}))
            frames = frames.clamp_(0.0, 1.0)
        pitch = stack.lens.pixel_pitch_m * W / float(We)
        lens = LensModel(stack.lens.focal_length_m, stack.lens.f_number, pitch)
        self._sync(device)
        t2 = time.perf_counter()
        timings['resize'] = (t2 - t1) * 1e3

        if m.uses_cost_volume:
            hyp = self.hypotheses_for(stack.focus_m)
            cv = self._cost_volume(device)(frames, stack.focus_m, stack.per_frame_f_numbers(),
                                           lens.focal_length_m, lens.pixel_pitch_m, hyp)
            inputs = {'image': frames[ref:ref + 1],
                      'cost_volume': cv[None],
                      'depths': torch.as_tensor(hyp, dtype=torch.float32, device=device)[None]}
            lo, hi = float(hyp.min()), float(hyp.max())
        else:
            hyp = stack.focus_m.copy()
            inputs = {'stack': frames[None],
                      'focus': torch.as_tensor(stack.focus_m, dtype=torch.float32, device=device)[None]}
            lo, hi = stack.focus_range
        self._sync(device)
        t3 = time.perf_counter()
        timings['cost_volume'] = (t3 - t2) * 1e3

        depth_t, unc_t = self.engine.infer(inputs)
        self._sync(depth_t.device)
        t4 = time.perf_counter()
        timings['infer'] = (t4 - t3) * 1e3

        out = torch.cat([depth_t.reshape(1, 1, He, We), unc_t.reshape(1, 1, He, We)], dim=1).float()
        if (H, W) != (He, We):
            out = Fnn.interpolate(out, size=(H, W), mode='bilinear', align_corners=False)
        out = out[0].cpu().numpy()
        depth = np.ascontiguousarray(out[0], dtype=np.float32)
        unc = np.ascontiguousarray(out[1], dtype=np.float32)
        bad_range, bad_unc = sanity_mask(depth, unc, lo, hi, self.max_uncertainty, self.max_relative_uncertainty)
        depth[bad_range | bad_unc] = np.nan
        t5 = time.perf_counter()
        timings['post'] = (t5 - t4) * 1e3
        timings['total'] = (t5 - t0) * 1e3
        return DepthResult(depth=depth, uncertainty=unc, hypotheses=np.asarray(hyp, dtype=np.float64),
                           timings=timings, n_out_of_range=int(bad_range.sum()), n_uncertain=int(bad_unc.sum()),
                           reference_index=ref_in, backend=self.engine.backend_name)

    def warm_up(self, num_frames: Optional[int] = None, runs: int = 2) -> float:
        """Run a synthetic stack through every stage (allocations, filter cache, autotuning).

        Returns the last run's total milliseconds.
        """
        m = self.manifest
        F = m.num_frames or num_frames or 5
        lo, hi = m.train_focus_range or (0.3, 1.5)
        focus = np.geomspace(lo, hi, F)
        rng = np.random.default_rng(0)
        frames = rng.random((F, m.height, m.width, 3), dtype=np.float32)
        stack = FocalStack(frames, focus, LensModel(min(0.01, lo / 4), 2.0, 10e-6))
        total = 0.0
        for _ in range(runs):
            total = self.run(stack).timings['total']
        return total
