"""Two or more engines on one stack, their depths combined in dioptres (no ROS).

An ensemble manifest (``engines/NAME.json`` with ``"family": "ensemble"``) names member
manifests next to it and a combination rule::

    {"name": "ens_s", "family": "ensemble", "members": ["ddfs_s.json", "dfv_s.json"],
     "combine": "inverse_variance"}

:func:`load_ensemble_engine` loads every member with :func:`~ddfs_ros.engines.load_engine`
(their own manifests, sha256 checks and backends); :class:`EnsemblePipeline` runs one
:class:`~ddfs_ros.pipeline.DepthPipeline` per member and combines their raw outputs with
:func:`combine_inverse_variance`, then applies the sanity mask once.  A stack that some
member cannot take (e.g. F != 5 for ``dfv_s``) is answered by the members that can; the
result's ``backend`` names the members used.

``views`` (optional, default ``["identity"]``; ``engines/ens_tta_s.json`` lists all four)
is test-time augmentation: every member also runs on the stack mirrored left-right
(``hflip``), upside down (``vflip``) or both (``hvflip``), its outputs mirrored back, and
all runs are combined as one.  Defocus has no handedness (DESIGN.md's thin-lens blur is a
disk, symmetric under both mirrors), so a mirrored stack is another valid input whose
network errors are partly independent of the original's; each view costs one more run
of every member.

``scales`` (optional, default ``[1.0]``; ``engines/experimental/ddfs_ms_s.json`` lists
``[1.0, 0.75, 0.5]``)
are scale views: every member also runs at that fraction of its processing width (the
pipeline's area downscale with the pixel pitch scaled to match, so the thin-lens blur of
each hypothesis is the same in metres and smaller in pixels; the output upsampled back),
and all runs are combined as one.  A coarser view sees more of the scene per network
receptive field (weakly textured regions get a depth from further away), a finer one the
edges and small blur; the inverse-variance combination lets each pixel take the view that
is sure of it.  A view at scale s costs about s^2 of a full run.  Measured (session 12,
training/README.md): it helps on every validation source (most on scenes soft in
themselves) and hurts on ``motorcycle_sweep`` (on its textured pixels), and the members'
uncertainties do not tell the two apart, so no shipped engine uses it.

``sigma_scales`` (optional, one positive number per member, default all 1; ``engines/ens_s.json``
gives ``dfv_s`` 1.28) multiplies that member's uncertainty before the combination.  The
members' uncertainties are not on one scale: measured on validation (session 19,
training/README.md), the median of sigma / |error| in dioptres is 4.85 for ``ddfs_s`` and 3.79
for ``dfv_s``, so plain inverse variance gives ``dfv_s`` more weight than its errors earn;
a scale of 4.85 / 3.79 puts both on ``ddfs_s``'s (the first member's scale stays 1, so
the combined uncertainty keeps the meaning the sanity mask was set for).

Why dioptres: every member outputs the expectation of a distribution over hypotheses
spaced in dioptres, and its uncertainty (m) is that distribution's spread, so the
members' errors are closest to Gaussian there.  The depth is the inverse-variance
weighted mean of the members' inverse depths; the uncertainty is the spread of the
mixture (each member's variance plus its disagreement with the mean), so two members
that disagree give a large uncertainty even when each is confident.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .engines.manifest import EngineError, ImageSize, read_manifest_json
from .pipeline import DEFAULT_MAX_RELATIVE_UNCERTAINTY, DepthPipeline, DepthResult, sanity_mask
from .stack import FocalStack, StackError

#: Value of ``family`` that marks an ensemble manifest.
ENSEMBLE_FAMILY = 'ensemble'
#: Combination rules (``combine`` in the manifest).
COMBINE_RULES = ('inverse_variance',)
#: Test-time views: the frame axes (of F x H x W x C) each one mirrors.
VIEWS = {'identity': (), 'hflip': (2,), 'vflip': (1,), 'hvflip': (1, 2)}
#: A member's dioptre spread is floored at this fraction of its inverse depth, so that a
#: member reporting ~0 uncertainty cannot take the whole weight.
MIN_RELATIVE_SPREAD = 1e-3
#: Smallest scale view: below it the blur of most hypotheses is under a pixel.
MIN_SCALE = 0.25


def combine_inverse_variance(depths: Sequence[np.ndarray], uncertainties: Sequence[np.ndarray]
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-variance mean in dioptres and the mixture's spread.

    Args:
        depths: K arrays H x W (m); NaN or <= 0 where a member has no depth.
        uncertainties: K arrays H x W (m), each member's standard deviation.

    Returns:
        (depth H x W float32 m, uncertainty H x W float32 m); NaN where no member has a depth.
    """
    d = np.stack([np.asarray(x, dtype=np.float64) for x in depths])
    s = np.stack([np.asarray(x, dtype=np.float64) for x in uncertainties])
    with np.errstate(invalid='ignore', divide='ignore'):
        ok = np.isfinite(d) & (d > 0) & np.isfinite(s)
        u = np.where(ok, 1.0 / d, 0.0)                                   # dioptres
        su = np.maximum(np.abs(s) * u * u, MIN_RELATIVE_SPREAD * u)      # d(1/d) = dd / d^2
        w = np.where(ok, 1.0 / np.where(ok, su, 1.0) ** 2, 0.0)
        wsum = w.sum(axis=0)
        w = w / np.where(wsum > 0, wsum, 1.0)
        mean_u = (w * u).sum(axis=0)
        var_u = (w * (su * su + (u - mean_u) ** 2)).sum(axis=0)
        good = wsum > 0
        depth = np.where(good, 1.0 / np.where(good, mean_u, 1.0), np.nan)
        unc = np.where(good, np.sqrt(var_u) * depth * depth, np.nan)
    return depth.astype(np.float32), unc.astype(np.float32)


@dataclass
class EnsembleManifest(ImageSize):
    """A checked ensemble manifest; member paths resolved next to the JSON file."""

    path: Path
    name: str
    members: list[Path]
    combine: str
    views: list[str] = field(default_factory=lambda: ['identity'])
    scales: list[float] = field(default_factory=lambda: [1.0])
    #: One factor per member on its uncertainty before the combination (calibration; the
    #: loader fills one per member, 1 where the manifest gives none).
    sigma_scales: list[float] = field(default_factory=list)
    raw: dict = field(repr=False, default_factory=dict)
    family: str = ENSEMBLE_FAMILY
    #: Filled in by :func:`load_ensemble_engine` from the members (all dynamic = dynamic).
    dynamic_size: bool = True
    image_size: tuple[int, int] = (0, 0)


def is_ensemble_manifest(path: str | Path) -> bool:
    """True if ``path`` is a readable JSON object with ``"family": "ensemble"``."""
    try:
        return read_manifest_json(Path(path)).get('family') == ENSEMBLE_FAMILY
    except EngineError:
        return False


def load_ensemble_manifest(path: str | Path) -> EnsembleManifest:
    """Read and check an ensemble manifest (members must exist and not be ensembles themselves).

    Raises:
        EngineError: unreadable JSON, fewer than two runs per stack (members x views x
            scales), a missing or nested member, an unknown combination rule or view, views
            that repeat or do not start with ``identity``, scales that repeat, do not start
            with 1 or leave [MIN_SCALE, 1], ``sigma_scales`` not one finite positive number per member.
    """
    path = Path(path)
    raw = read_manifest_json(path)
    if raw.get('family') != ENSEMBLE_FAMILY:
        raise EngineError(f'{path} is not an ensemble manifest (family {ENSEMBLE_FAMILY!r})')
    views = raw.get('views', ['identity'])
    if not isinstance(views, list) or not views or any(v not in VIEWS for v in views):
        raise EngineError(f'ensemble manifest {path}: "views" must list some of {sorted(VIEWS)}, got {views!r}')
    if views[0] != 'identity' or len(set(views)) != len(views):
        # the first run gives the result its reference frame, geometry and alignment
        raise EngineError(f'ensemble manifest {path}: "views" must start with "identity" and not repeat, '
                          f'got {views!r}')
    scales = raw.get('scales', [1.0])
    if (not isinstance(scales, list) or not scales
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in scales)):
        raise EngineError(f'ensemble manifest {path}: "scales" must list numbers, got {scales!r}')
    scales = [float(x) for x in scales]
    if scales[0] != 1.0 or len(set(scales)) != len(scales) or any(not MIN_SCALE <= x <= 1.0 for x in scales):
        raise EngineError(f'ensemble manifest {path}: "scales" must start with 1, not repeat and lie in '
                          f'[{MIN_SCALE}, 1], got {scales!r}')
    members = raw.get('members')
    if not isinstance(members, list) or not members or len(members) * len(views) * len(scales) < 2:
        raise EngineError(f'ensemble manifest {path}: "members" must list at least two engine manifests '
                          f'(or one with two or more "views" or "scales")')
    paths = [path.parent / str(m) for m in members]
    for p in paths:
        if not p.is_file():
            raise EngineError(f'ensemble manifest {path}: member {p} does not exist')
        if is_ensemble_manifest(p):
            raise EngineError(f'ensemble manifest {path}: member {p} is an ensemble (not supported)')
    sigma_scales = raw.get('sigma_scales', [1.0] * len(members))
    if (not isinstance(sigma_scales, list) or len(sigma_scales) != len(members)
            or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not np.isfinite(x) or x <= 0
                   for x in sigma_scales)):
        raise EngineError(f'ensemble manifest {path}: "sigma_scales" must give one finite positive number per '
                          f'member ({len(members)}), got {sigma_scales!r}')
    combine = str(raw.get('combine', COMBINE_RULES[0]))
    if combine not in COMBINE_RULES:
        raise EngineError(f'ensemble manifest {path}: unknown combine {combine!r} (one of {COMBINE_RULES})')
    return EnsembleManifest(path=path, name=str(raw.get('name') or path.stem), members=paths, combine=combine,
                            views=[str(v) for v in views], scales=scales,
                            sigma_scales=[float(x) for x in sigma_scales], raw=raw)


class EnsembleEngine:
    """The loaded members of an ensemble (each a :class:`~ddfs_ros.engines.Engine`).

    Offers what the node reads of an engine: ``manifest``, ``backend_name``,
    ``description`` and ``device`` (the first member's).
    """

    def __init__(self, manifest: EnsembleManifest, members: list) -> None:
        self.manifest = manifest
        self.members = members
        self.device = members[0].device
        manifest.dynamic_size = all(m.manifest.dynamic_size for m in members)
        if not manifest.dynamic_size:
            sizes = {tuple(m.manifest.image_size) for m in members}
            if len(sizes) != 1:
                raise EngineError(f'ensemble {manifest.name}: fixed-size members disagree on the size {sizes}')
            manifest.image_size = sizes.pop()
            if manifest.scales != [1.0]:
                raise EngineError(f'ensemble {manifest.name}: scale views need dynamic-size members')

    @property
    def backend_name(self) -> str:
        return '+'.join(m.backend_name for m in self.members)

    @property
    def description(self) -> str:
        return '; '.join(f'{m.manifest.name}: {m.description}' for m in self.members)


def load_ensemble_engine(path: str | Path, **load_options: Any) -> EnsembleEngine:
    """Load an ensemble manifest and every member with ``load_engine(member, **load_options)``."""
    from .engines import load_engine
    manifest = load_ensemble_manifest(path)
    return EnsembleEngine(manifest, [load_engine(p, **load_options) for p in manifest.members])


def mirrored(stack: FocalStack, view: str) -> FocalStack:
    """``stack`` seen in one of :data:`VIEWS` (frames mirrored; focus, lens and stamp kept)."""
    axes = VIEWS[view]
    if not axes:
        return stack
    return dataclasses.replace(stack, frames=np.ascontiguousarray(np.flip(stack.frames, axes)))


def mirror_result(result: DepthResult, view: str) -> DepthResult:
    """A result of :func:`mirrored` ``(stack, view)`` mirrored back onto the stack's pixels
    (depth, uncertainty and all-in-focus H x W [x C]; the view is its own inverse)."""
    axes = tuple(a - 1 for a in VIEWS[view])          # F x H x W x C axes -> H x W [x C]
    back = {k: np.ascontiguousarray(np.flip(getattr(result, k), axes))
            for k in ('depth', 'uncertainty', 'all_in_focus') if getattr(result, k) is not None}
    return dataclasses.replace(result, **back)


class EnsemblePipeline:
    """A :class:`~ddfs_ros.pipeline.DepthPipeline` per member, run on every view and scale, one combined result.

    Takes the same arguments (and defaults) as ``DepthPipeline``; the settings the node changes at run
    time (``hypothesis_mode``, ``reference``, ``processing_width``, ``pair_processing_width``, ``upsample``,
    ``align``) reach every member, the uncertainty thresholds apply once, to the
    combined depth.
    """

    _MEMBER_SETTINGS = ('hypothesis_mode', 'reference', 'processing_width', 'pair_processing_width', 'upsample',
                        'align')

    def __init__(self, engine: EnsembleEngine, hypothesis_mode='fixed', reference: str = 'farthest',
                 max_uncertainty: Optional[float] = None,
                 max_relative_uncertainty: Optional[float] = DEFAULT_MAX_RELATIVE_UNCERTAINTY,
                 **member_options: Any) -> None:
        self.engine = engine
        self.manifest = engine.manifest
        self.members = [DepthPipeline(m, hypothesis_mode=hypothesis_mode, reference=reference,
                                      max_uncertainty=None, max_relative_uncertainty=None, **member_options)
                        for m in engine.members]
        self.max_uncertainty = max_uncertainty if max_uncertainty else None
        self.max_relative_uncertainty = max_relative_uncertainty if max_relative_uncertainty else None

    def __getattr__(self, name: str):
        if name in EnsemblePipeline._MEMBER_SETTINGS:
            return getattr(self.__dict__['members'][0], name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value) -> None:
        if name in EnsemblePipeline._MEMBER_SETTINGS:
            for m in self.members:
                setattr(m, name, value)
        else:
            super().__setattr__(name, value)

    def usable(self, stack: FocalStack) -> list[DepthPipeline]:
        """The members that take this stack.

        Raises:
            StackError: none does (the first member's reason).
        """
        ok, first = [], None
        for m in self.members:
            try:
                m.check(stack)
                ok.append(m)
            except StackError as e:
                first = first or e
        if not ok:
            raise first
        return ok

    def check(self, stack: FocalStack) -> None:
        """Raise :class:`StackError` if no member can take ``stack``."""
        self.usable(stack)

    def run(self, stack: FocalStack, all_in_focus: bool = False) -> DepthResult:
        """Every usable member on ``stack``, combined; see :class:`DepthPipeline.run`."""
        t0 = time.perf_counter()
        members = self.usable(stack)
        aligned = self.align != 'off'
        results, sigmas = [], []           # sigmas: each run's uncertainty times its member's sigma_scale
        for i, m in enumerate(members):
            c = self.manifest.sigma_scales[self.members.index(m)]
            for k, scale in enumerate(self.manifest.scales):
                for j, view in enumerate(self.manifest.views):
                    r = m.run(mirrored(stack, view), all_in_focus=all_in_focus and aligned and i == j == k == 0,
                              scale=scale)
                    results.append(r if view == 'identity' else mirror_result(r, view))
                    sigmas.append(results[-1].uncertainty * c)
        t1 = time.perf_counter()
        depth, unc = combine_inverse_variance([r.depth for r in results], sigmas)
        hyp = np.unique(np.concatenate([r.hypotheses for r in results]))
        lo, hi = float(hyp.min()), float(hyp.max())
        aif = None
        if all_in_focus:
            if aligned:
                # the aligned frames live inside the member's run: its composite (at its own depth)
                aif = results[0].all_in_focus
            else:
                from . import refine
                filled = np.where(np.isfinite(depth), depth, np.float32(0.5 * (lo + hi)))
                aif = refine.all_in_focus(stack.frames, filled, stack.focus_m, stack.per_frame_f_numbers(),
                                          stack.lens.focal_length_m, stack.lens.pixel_pitch_m)
        bad_range, bad_unc = sanity_mask(depth, unc, lo, hi, self.max_uncertainty, self.max_relative_uncertainty)
        depth[bad_range | bad_unc] = np.nan
        t2 = time.perf_counter()
        timings: dict = {}
        for r in results:
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        timings['combine'] = (t2 - t1) * 1e3
        timings['total'] = (t2 - t0) * 1e3
        first = results[0]
        runs = len(self.manifest.views) * len(self.manifest.scales)
        return DepthResult(depth=depth, uncertainty=unc, hypotheses=hyp, timings=timings,
                           n_out_of_range=int(bad_range.sum()), n_uncertain=int(bad_unc.sum()),
                           reference_index=first.reference_index,
                           backend='+'.join(f'{m.manifest.name}:{r.backend}'
                                            for m, r in zip(members, results[::runs])),
                           all_in_focus=aif, geometry=first.geometry, alignment=first.alignment)

    def warm_up(self, num_frames: Optional[int] = None, runs: int = 2) -> float:
        """Warm every member up; returns the sum of their last runs' milliseconds."""
        return float(sum(m.warm_up(num_frames, runs, self.manifest.scales) for m in self.members))


def make_pipeline(engine, **options: Any):
    """``DepthPipeline(engine, **options)``, or an :class:`EnsemblePipeline` for an ensemble engine."""
    if isinstance(engine, EnsembleEngine):
        return EnsemblePipeline(engine, **options)
    return DepthPipeline(engine, **options)
