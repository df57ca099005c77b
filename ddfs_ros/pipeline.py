"""FocalStack -> depth, uncertainty and the all-in-focus image: the ROS-free core the inference node wraps.

The same object serves the node, ``ddfs-eval offline`` and the benchmarks, so what is
scored offline is exactly what the robot runs.  Steps (each timed):

1. ``validate``: :meth:`FocalStack.validate` (raises :class:`StackError`), plus the
   engine's constraints (F for a fixed-F DFV engine).
2. ``resize``: frames to the processing size on the engine device (area averaging when
   shrinking), see :func:`processing_geometry`.  The scale factor is the same on both
   axes, so blur disks stay round and the pixel pitch becomes ``p / scale``:

   - dynamic-size engine (manifest ``dynamic_size``): width ``min(processing_width, W)``
     (never upsampled beyond the input) rounded down to ``size_multiple``, height by
     the aspect ratio; the few rows or columns up to the next multiple are
     reflect-padded and cropped off the output again.  An aperture-only stack (one
     focus distance, e.g. an f/2.8 + f/8 pair) runs at ``pair_processing_width``
     instead, by default the input width: its only cue is how much more the wide
     aperture blurs, about a pixel at the camera's resolution over much of a scene,
     and a downscale to 256 px makes that sub-pixel (measured on the validation
     pairs of ``real_dfd``, ``ddfs-bag pairs``: the median oracle beaten on 36.8 % of
     pixels at 645 px against 29.5 % at 256 px, AbsRel 0.406 against 0.424);
   - fixed-size engine (He x We): the largest centred crop of the input with the
     engine's aspect ratio is resized to He x We.  Outside the crop, depth and
     uncertainty are NaN (a 640 x 480 stack on a 128 x 128 engine gives depth in the
     central 480 x 480).  Squashing the frame into the engine's shape would turn the
     blur disks into ellipses the cost volume does not model.

3. ``cost_volume`` (ddfs, dfv_cv): :class:`~ddfs_ros.cost_volume.CostVolume` on the
   engine device, ``max_coc_px`` = the manifest's value (given at
   ``train_processing_width``, else the engine width) scaled to the processing width
   (DESIGN.md section 3), hypotheses of ``hypothesis_mode``.  DFV engines get the
   frames sorted near to far instead.
4. ``infer``: the engine (any backend).
5. ``upsample``: depth and uncertainty back to the input size with
   :func:`ddfs_ros.refine.upsample` (``joint_bilateral`` by default, guided by the
   reference frame at full resolution; ``guided``; ``bilinear``), then the all-in-focus
   composite when asked for (:func:`ddfs_ros.refine.all_in_focus`).
6. ``post``: the sanity mask: NaN where depth is not finite or lies outside the
   hypothesis range (DFV: the focus range), or where the uncertainty exceeds
   ``max_uncertainty`` (m) or ``max_relative_uncertainty`` x depth.  Each count is reported.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as Fnn

from . import refine
from .align import align_focal_stack, check_align_mode
from .cost_volume import CostVolume
from .focus_bins import extrapolated_focus
from .focus_volume import focus_volume
from .network_inputs import frame_inputs_of
from .optics import (FOCUS_SPAN_MARGIN, FOCUS_SPAN_MIN_RELATIVE, LensModel, depth_hypotheses,
                     hypotheses_from_focus_span, scale_hypotheses_to_focus)
from .stack import FocalStack, StackError

#: Default of ``max_relative_uncertainty``: a pixel whose depth std exceeds half its
#: depth is not a measurement (a flat distribution over 0.1..3 m has std/depth ~0.54).
DEFAULT_MAX_RELATIVE_UNCERTAINTY = 0.5
#: Slack on the hypothesis-range test (a soft-argmin cannot leave the range; only
#: resampling at edges can, by a hair).
RANGE_TOLERANCE = 1e-3

HypothesisMode = Union[str, Sequence[float]]
#: Default ``processing_width`` (px) for dynamic-size engines: the width the shipped
#: engines are trained at (DESIGN.md section 3 gives max_coc_px at 256 px).
DEFAULT_PROCESSING_WIDTH = 256
#: Default ``pair_processing_width``: 0 = an aperture-only stack runs at the input width.
DEFAULT_PAIR_PROCESSING_WIDTH = 0
#: Default upsampling method (chosen by measurement, bench/RESULTS.md).
DEFAULT_UPSAMPLE = 'joint_bilateral'


@dataclass(frozen=True)
class ProcessingGeometry:
    """Where the network's pixels come from in the input frame.

    The input crop ``[y0:y0+crop_h, x0:x0+crop_w]`` is resized by ``scale`` (the same on
    both axes, up to rounding the resized size to whole pixels) to ``height`` x ``width``
    (the content), then padded at the bottom/right by reflection to
    ``padded_height`` x ``padded_width`` (what the engine is fed).
    """

    y0: int
    x0: int
    crop_h: int
    crop_w: int
    height: int
    width: int
    padded_height: int
    padded_width: int

    @property
    def scale(self) -> float:
        """Processing px per input px (the horizontal factor; the vertical differs by < 0.5 px)."""
        return self.width / float(self.crop_w)

    def is_cropped(self, H: int, W: int) -> bool:
        """True when the crop leaves part of an H x W input out."""
        return (self.crop_h, self.crop_w) != (H, W)


def _area_resize(frames: np.ndarray, width: int, height: int, channels: int = 3) -> np.ndarray:
    """F x H x W x C float32 frames (C = 1 or 3) -> F x ``channels`` x height x width by area averaging.

    Gray frames are repeated to ``channels`` after the resize (cheaper than before).
    """
    import cv2
    F = frames.shape[0]
    out = np.empty((F, channels, height, width), dtype=np.float32)
    for i in range(F):
        r = cv2.resize(frames[i], (width, height), interpolation=cv2.INTER_AREA)
        out[i] = r.reshape(height, width, -1).transpose(2, 0, 1)     # broadcasts a gray frame to C
    return out


def _round_to(v: float, m: int) -> int:
    return max(m, int(round(v / m)) * m)


def processing_geometry(H: int, W: int, manifest, processing_width: Optional[int],
                        scale: float = 1.0) -> ProcessingGeometry:
    """Processing size for an H x W input on this engine (see the module docstring, step 2).

    ``scale`` (0 < scale <= 1, dynamic-size engines only) shrinks the processing width
    further: a scale view of an ensemble (:mod:`ddfs_ros.ensemble`) runs at ``scale`` x
    ``min(processing_width, W)`` px.
    """
    if not 0.0 < float(scale) <= 1.0:
        raise ValueError(f'scale must be in (0, 1], got {scale}')
    if manifest.dynamic_size:
        m = int(manifest.size_multiple)
        target = min(int(processing_width or DEFAULT_PROCESSING_WIDTH), W)   # never upsample beyond the input
        target = int(round(target * float(scale)))
        w = max(m, target // m * m)
        h = max(1, int(round(H * w / float(W))))
        return ProcessingGeometry(0, 0, H, W, h, w, -(-h // m) * m, w)
    if float(scale) != 1.0:
        raise ValueError(f'a fixed-size engine ({manifest.name}) runs at its own size: scale must be 1, got {scale}')
    He, We = manifest.height, manifest.width
    # largest centred crop with the engine's aspect ratio
    if H * We > W * He:          # input taller than the engine: crop rows
        ch, cw = min(H, int(round(W * He / float(We)))), W
    else:
        ch, cw = H, min(W, int(round(H * We / float(He))))
    return ProcessingGeometry((H - ch) // 2, (W - cw) // 2, ch, cw, He, We, He, We)


@dataclass
class DepthResult:
    """Depth of one stack.

    Attributes:
        depth: H x W float32 metres along the optical axis, NaN where masked.
        uncertainty: H x W float32 metres (std of the per-pixel distribution; not masked).
        hypotheses: the D depth hypotheses used (m), or the sorted focus distances (DFV).
        timings: milliseconds per stage: validate, resize, cost_volume, infer, upsample, post, total.
        n_out_of_range: pixels masked for non-finite or out-of-range depth.
        n_uncertain: pixels masked by the uncertainty threshold (not already out of range).
        reference_index: index (in the input stack's order) of the reference frame.
        backend: engine backend that produced it.
        all_in_focus: H x W x C float32 in [0, 1] (C as the input), when asked for.
        geometry: the processing geometry used.
        alignment: per-frame :class:`~ddfs_ros.align.Similarity` (input order after any
            sorting) when ``align='similarity'``, else empty.
    """

    depth: np.ndarray
    uncertainty: np.ndarray
    hypotheses: np.ndarray
    timings: dict = field(default_factory=dict)
    n_out_of_range: int = 0
    n_uncertain: int = 0
    reference_index: int = 0
    backend: str = ''
    all_in_focus: Optional[np.ndarray] = None
    geometry: Optional[ProcessingGeometry] = None
    alignment: list = field(default_factory=list)

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
        processing_width: width (px) the cost volume and network run at, for a
            dynamic-size engine (height by the aspect ratio; never above the input
            width).  Fixed-size engines always run at their own size.
        pair_processing_width: the same for aperture-only stacks (every frame at one
            focus distance); 0 = the input width (see step 2 above).
        upsample: ``'joint_bilateral'`` | ``'guided'`` | ``'bilinear'`` (see :mod:`ddfs_ros.refine`).
        align: ``'off'`` | ``'similarity'``: warp every frame onto the reference before the
            cost volume (:mod:`ddfs_ros.align`); depth is NaN where a frame did not see.
    """

    def __init__(self, engine, hypothesis_mode: HypothesisMode = 'fixed', reference: str = 'farthest',
                 max_uncertainty: Optional[float] = None,
                 max_relative_uncertainty: Optional[float] = DEFAULT_MAX_RELATIVE_UNCERTAINTY,
                 cost_volume: Optional[CostVolume] = None,
                 processing_width: int = DEFAULT_PROCESSING_WIDTH, upsample: str = DEFAULT_UPSAMPLE,
                 align: str = 'off', pair_processing_width: int = DEFAULT_PAIR_PROCESSING_WIDTH) -> None:
        self.align = check_align_mode(align)
        if upsample not in refine.UPSAMPLE_METHODS:
            raise ValueError(f'upsample must be one of {refine.UPSAMPLE_METHODS}, got {upsample!r}')
        if int(processing_width) < 8:
            raise ValueError(f'processing_width must be >= 8 px, got {processing_width}')
        self.processing_width = int(processing_width)
        self.pair_processing_width = pair_processing_width
        self.upsample = upsample
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

    @property
    def pair_processing_width(self) -> int:
        """Width (px) aperture-only stacks run at; 0 = the input width."""
        return self._pair_processing_width

    @pair_processing_width.setter
    def pair_processing_width(self, value: int) -> None:
        if int(value) != 0 and int(value) < 8:
            raise ValueError(f'pair_processing_width must be 0 (the input width) or >= 8 px, got {value}')
        self._pair_processing_width = int(value)

    # -- helpers ----------------------------------------------------------------------
    def _cost_volume(self, device: torch.device, width_px: int) -> CostVolume:
        if self._cv is None or self._cv_device != device:
            self._cv = CostVolume(device=device)
            self._cv_device = device
        self._cv.max_coc_px = self.max_coc_px(width_px)
        return self._cv

    def max_coc_px(self, width_px: int) -> Optional[float]:
        """Blur clamp (px) at a processing width: the manifest's, scaled with width (section 3)."""
        m = self.manifest
        if m.max_coc_px is None:
            return None            # CostVolume's default, already scaled with width
        return float(m.max_coc_px) * float(width_px) / float(m.coc_reference_width)

    def geometry(self, height: int, width: int, aperture_only: bool = False, scale: float = 1.0
                 ) -> ProcessingGeometry:
        """The processing geometry of an input of this size (``aperture_only``: of an
        aperture-only stack, at ``pair_processing_width``), ``scale`` x that width."""
        if aperture_only:
            return processing_geometry(height, width, self.manifest, self.pair_processing_width or width, scale)
        return processing_geometry(height, width, self.manifest, self.processing_width, scale)

    def hypotheses_for(self, focus_m: np.ndarray) -> np.ndarray:
        """The D depth hypotheses (m, ascending) for a stack with these focus distances."""
        m = self.manifest
        if self.hypothesis_mode == 'fixed':
            return m.train_hypotheses()
        if self.hypothesis_mode == 'from_focus':
            if m.hypotheses.get('mode') == 'focus_span':
                # the engine learned hypotheses spread around each stack's own focus range
                h = m.hypotheses
                return hypotheses_from_focus_span(focus_m, int(m.num_hypotheses),
                                                  float(h.get('margin', FOCUS_SPAN_MARGIN)),
                                                  float(h.get('min_relative', FOCUS_SPAN_MIN_RELATIVE)))
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
        M = self.manifest.max_frames
        if M is not None and stack.num_frames > M:
            raise StackError('frame_count_mismatch',
                             f'engine {self.manifest.name} takes at most {M} frames, the stack has {stack.num_frames}')

    @staticmethod
    def _sync(device: torch.device) -> None:
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    # -- the run ------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, stack: FocalStack, all_in_focus: bool = False, scale: float = 1.0) -> DepthResult:
        """Depth and uncertainty of ``stack`` at its own size (see the module docstring).

        Args:
            all_in_focus: also compose the all-in-focus image (``result.all_in_focus``).
            scale: run at this fraction (0, 1] of the processing width (a scale view of an
                ensemble; dynamic-size engines only); the output is still at the input size.
        """
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
        g = self.geometry(H, W, stack.aperture_only, scale)
        device = self.engine.device
        t1 = time.perf_counter()
        timings['validate'] = (t1 - t0) * 1e3

        # Stack alignment (align: off | similarity) warps the frames onto the reference
        # before anything is resized; align_valid is None when off.
        stack, align_valid, align_params = align_focal_stack(stack, ref, self.align)
        shrink = g.height * g.width < g.crop_h * g.crop_w
        if device.type == 'cpu' and shrink:
            # OpenCV's area resampling per frame, before the channels move first: ~8x faster
            # than permuting, copying and area-pooling the full-size stack in torch (VGA)
            frames = torch.from_numpy(_area_resize(stack.frames[:, g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w],
                                                   g.width, g.height, 3))
        else:
            frames = torch.from_numpy(np.ascontiguousarray(stack.as_rgb())).to(device)   # F H W 3
            frames = frames.permute(0, 3, 1, 2)                                            # F 3 H W
            frames = frames[:, :, g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w].contiguous()
            if (g.crop_h, g.crop_w) != (g.height, g.width):
                frames = Fnn.interpolate(frames, size=(g.height, g.width), mode='area' if shrink else 'bilinear',
                                         **({} if shrink else {'align_corners': False}))
                frames = frames.clamp_(0.0, 1.0)
        if (g.padded_height, g.padded_width) != (g.height, g.width):
            # reflection keeps the texture statistics at the border; the rows are cropped off the output
            frames = Fnn.pad(frames, (0, g.padded_width - g.width, 0, g.padded_height - g.height), mode='reflect')
        pitch = stack.lens.pixel_pitch_m / g.scale          # same factor on both axes: round blur disks
        lens = LensModel(stack.lens.focal_length_m, stack.lens.f_number, pitch)
        self._sync(device)
        t2 = time.perf_counter()
        timings['resize'] = (t2 - t1) * 1e3

        if m.uses_cost_volume:
            hyp = self.hypotheses_for(stack.focus_m)
            cv = self._cost_volume(device, g.width)(frames, stack.focus_m, stack.per_frame_f_numbers(),
                                                    lens.focal_length_m, lens.pixel_pitch_m, hyp)
            inputs = {'image': frames[ref:ref + 1],
                      'cost_volume': cv[None],
                      'depths': torch.as_tensor(hyp, dtype=torch.float32, device=device)[None]}
            if 'focus_volume' in m.inputs:
                inputs['focus_volume'] = focus_volume(frames, stack.focus_m, stack.per_frame_f_numbers(),
                                                      lens.focal_length_m, lens.pixel_pitch_m, hyp,
                                                      modes=m.focus_volume_modes)[None]
            if 'frames' in m.inputs:
                inputs.update({k: v[None] for k, v in frame_inputs_of(frames, stack.focus_m, hyp).items()})
            lo, hi = float(hyp.min()), float(hyp.max())
        else:
            focus_t = torch.as_tensor(stack.focus_m, dtype=torch.float32, device=device)[None]
            inputs = {'stack': frames[None], 'focus': focus_t}
            # the depths the engine can output: the focus distances and any bins past the sweep
            hyp = extrapolated_focus(focus_t.double(), m.extrapolate_bins)[0].cpu().numpy()
            lo, hi = float(hyp.min()), float(hyp.max())
        self._sync(device)
        t3 = time.perf_counter()
        timings['cost_volume'] = (t3 - t2) * 1e3

        depth_t, unc_t = self.engine.infer(inputs)
        self._sync(depth_t.device)
        t4 = time.perf_counter()
        timings['infer'] = (t4 - t3) * 1e3

        Hp, Wp = g.padded_height, g.padded_width
        out = torch.cat([depth_t.reshape(1, Hp, Wp), unc_t.reshape(1, Hp, Wp)], dim=0).float().cpu()
        out = out[:, :g.height, :g.width]
        guide = None
        if self.upsample != 'bilinear' and (g.crop_h, g.crop_w) != (g.height, g.width):
            ref_full = torch.from_numpy(stack.frames[ref, g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w])
            guide = refine.to_gray(ref_full.float())
        out = refine.upsample(out, (g.crop_h, g.crop_w), self.upsample, guide).numpy()
        if g.is_cropped(H, W):
            full = np.full((2, H, W), np.nan, dtype=np.float32)
            full[:, g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w] = out
            out = full
        depth = np.ascontiguousarray(out[0], dtype=np.float32)
        unc = np.ascontiguousarray(out[1], dtype=np.float32)
        aif = None
        if all_in_focus:
            # composed from the unmasked depth: a masked pixel still needs a best frame
            aif = refine.all_in_focus(stack.frames, depth, stack.focus_m, stack.per_frame_f_numbers(),
                                      stack.lens.focal_length_m, stack.lens.pixel_pitch_m)
        t5 = time.perf_counter()
        timings['upsample'] = (t5 - t4) * 1e3

        bad_range, bad_unc = sanity_mask(depth, unc, lo, hi, self.max_uncertainty, self.max_relative_uncertainty)
        depth[bad_range | bad_unc] = np.nan
        if align_valid is not None:
            depth[~align_valid] = np.nan        # a pixel some frame did not see (REP 117 NaN)
        t6 = time.perf_counter()
        timings['post'] = (t6 - t5) * 1e3
        timings['total'] = (t6 - t0) * 1e3
        return DepthResult(depth=depth, uncertainty=unc, hypotheses=np.asarray(hyp, dtype=np.float64),
                           timings=timings, n_out_of_range=int(bad_range.sum()), n_uncertain=int(bad_unc.sum()),
                           reference_index=ref_in, backend=self.engine.backend_name, all_in_focus=aif, geometry=g,
                           alignment=align_params)

    def warm_up(self, num_frames: Optional[int] = None, runs: int = 2, scales: Sequence[float] = (1.0,)) -> float:
        """Run a synthetic stack through every stage (allocations, filter cache, autotuning),
        at each of ``scales`` (an ensemble's scale views).

        Returns the last run's total milliseconds (summed over the scales).
        """
        m = self.manifest
        F = m.num_frames or num_frames or 5
        lo, hi = m.train_focus_range or (0.3, 1.5)
        focus = np.geomspace(lo, hi, F)
        rng = np.random.default_rng(0)
        H, W = m.height, m.width
        if m.dynamic_size:
            # a 4:3 camera wider than the processing size: allocations, the filter cache at
            # the processing size, and the upsampling / all-in-focus kernels (numba compiles
            # or loads them on first use: seconds the first real stack must not pay)
            W = max(self.processing_width, m.size_multiple) + 2 * m.size_multiple
            H = max(m.size_multiple, W * 3 // 4)
        frames = rng.random((F, H, W, 3), dtype=np.float32)
        stack = FocalStack(frames, focus, LensModel(min(0.01, lo / 4), 2.0, 10e-6))
        total = 0.0
        for _ in range(runs):
            total = sum(self.run(stack, all_in_focus=True, scale=s).timings['total'] for s in scales)
        return total
