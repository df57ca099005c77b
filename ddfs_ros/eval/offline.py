"""Offline scoring: bag stacks through :class:`~ddfs_ros.pipeline.DepthPipeline`, no ROS.

The pipeline is the object the inference node wraps, built with the node's defaults
(``hypothesis_mode='from_focus'``, reference 'farthest', ``max_relative_uncertainty``
0.5), so ``ddfs-eval offline`` and ``ddfs-eval replay`` score the same depth maps.
Also runs the baselines of every table (DESIGN.md section 8): the classical focus measure
(:func:`ddfs_ros.baselines.focus_measure_depth`) and the median oracle (per stack, a
constant at the median of the valid ground truth: a model that does not beat it has
learned nothing about the scene's layout).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from ..stack import FocalStack, StackError
from .bags import BagStack, open_bag_info, read_bag
from .metrics import compute_metrics
from .report import GRID_STACKS, MethodRun, StackResult

LOG = logging.getLogger(__name__)

BASELINE_NAME = 'focus-measure (baseline)'
MEDIAN_ORACLE_NAME = 'median-oracle (baseline)'
#: ``--baseline`` choices -> row labels, in table order; the default is all of them.
BASELINES = {'focus-measure': BASELINE_NAME, 'median-oracle': MEDIAN_ORACLE_NAME}
DEFAULT_HYPOTHESIS_MODE = 'from_focus'   # the node's default (config/inference.yaml)


def parse_hypothesis_mode(text: str):
    """'fixed' | 'from_focus' | 'DMIN,DMAX' (metres) -> DepthPipeline's hypothesis_mode."""
    if text in ('fixed', 'from_focus'):
        return text
    try:
        lo, hi = (float(x) for x in text.split(','))
    except ValueError:
        raise ValueError(f"hypothesis mode must be fixed, from_focus or 'DMIN,DMAX', got {text!r}") from None
    return [lo, hi]


def load_pipeline(engine_path, backend: str = 'auto', hypothesis_mode=DEFAULT_HYPOTHESIS_MODE,
                  device: Optional[str] = None, max_relative_uncertainty: Optional[float] = None,
                  processing_width: Optional[int] = None):
    """A DepthPipeline on the engine, with the node's defaults.

    ``max_relative_uncertainty``: None keeps the node's default (0.5); 0 turns the
    uncertainty mask off (as the node parameter of the same name).  ``processing_width``
    (px): None keeps the node's default.
    """
    from ..engines import load_engine
    from ..ensemble import make_pipeline
    from ..pipeline import DEFAULT_MAX_RELATIVE_UNCERTAINTY
    engine = load_engine(engine_path, backend=backend, device=device)
    rel = DEFAULT_MAX_RELATIVE_UNCERTAINTY if max_relative_uncertainty is None else max_relative_uncertainty
    width = {} if processing_width is None else {'processing_width': int(processing_width)}
    return make_pipeline(engine, hypothesis_mode=hypothesis_mode, max_relative_uncertainty=rel or None, **width)


def method_names(engine_paths: Sequence) -> list[str]:
    """Row labels: the manifest names, made unique with the file path where two collide."""
    import json
    names = []
    for p in engine_paths:
        try:
            names.append(json.loads(Path(p).with_suffix('.json').read_text()).get('name') or Path(p).stem)
        except (OSError, ValueError):
            names.append(Path(p).stem)
    return [n if names.count(n) == 1 else f'{n} ({p})' for n, p in zip(names, engine_paths)]


def rejected(index: int, item: BagStack) -> StackResult:
    err = item.stack
    return StackResult(index=index, stamp_ns=item.stamp_ns, status='rejected', reason=err.reason,
                       message=str(err))


def score(index: int, item: BagStack, depth: np.ndarray, unc: Optional[np.ndarray], latency_ms: float,
          keep: bool) -> StackResult:
    """StackResult of one produced depth map (metrics against the bag's depth_gt, if any)."""
    m = compute_metrics(depth, item.depth_gt, unc)
    return StackResult(index=index, stamp_ns=item.stamp_ns, status='ok', metrics=m, latency_ms=latency_ms,
                       depth=depth if keep else None, uncertainty=unc if keep else None,
                       message=item.gt_error or '')


def grid_sample(item: BagStack, res: StackResult, label: str) -> dict:
    return {'frame': item.stack.frames[0], 'gt': item.depth_gt, 'depth': res.depth,
            'uncertainty': res.uncertainty, 'label': label}


def run_method(items: Iterable[BagStack], method: str, predict: Callable[..., tuple],
               backend: str = '', grid_stacks: int = GRID_STACKS, progress: bool = False,
               with_gt: bool = False):
    """Run ``predict(stack) -> (depth, uncertainty or None)`` over the stacks; returns (MethodRun, samples).

    With ``with_gt`` the predictor is called as ``predict(stack, depth_gt)`` (an oracle).

    Invalid stacks are recorded as 'rejected' with their reason; a StackError raised by
    the predictor (e.g. an engine that needs another frame count) likewise; any other
    exception is recorded as 'error' and the run goes on.
    """
    run = MethodRun(method=method, backend=backend)
    samples = []
    it = items
    if progress:
        from tqdm import tqdm
        it = tqdm(items, desc=method, unit='stack', leave=False)
    for i, item in enumerate(it):
        if not item.ok:
            run.results.append(rejected(i, item))
            continue
        t0 = time.perf_counter()
        try:
            depth, unc = predict(item.stack, item.depth_gt) if with_gt else predict(item.stack)
        except StackError as exc:
            run.results.append(StackResult(index=i, stamp_ns=item.stamp_ns, status='rejected',
                                           reason=exc.reason, message=str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - one failing stack must not end the evaluation
            LOG.exception('%s failed on stack %d', method, i)
            run.results.append(StackResult(index=i, stamp_ns=item.stamp_ns, status='error',
                                           reason=type(exc).__name__, message=str(exc)))
            continue
        latency = (time.perf_counter() - t0) * 1e3
        keep = len(samples) < grid_stacks
        res = score(i, item, depth, unc, latency, keep)
        run.results.append(res)
        if keep:
            samples.append(grid_sample(item, res, f'#{i} {item.stamp_ns / 1e9:.3f} s'))
            res.depth = res.uncertainty = None  # the sample keeps them
    return run, samples


def baseline_predict(stack: FocalStack) -> tuple:
    """The classical focus-measure depth (no uncertainty)."""
    from ..baselines import focus_measure_depth
    if np.unique(np.round(stack.focus_m, 9)).size != stack.num_frames:
        # an aperture-only (depth-from-defocus) stack: nothing for a focus measure to sweep over
        raise StackError('baseline_needs_focus_sweep', 'the focus-measure baseline needs a distinct focus '
                         f'distance per frame, got {stack.focus_m.tolist()} m')
    depth, _confidence = focus_measure_depth(stack.frames, stack.focus_m)
    return np.asarray(depth, dtype=np.float32), None


def median_oracle_predict(stack: FocalStack, depth_gt: Optional[np.ndarray]) -> tuple:
    """The median oracle: H x W float32 filled with the median (m) of the finite, positive
    ground truth of this stack (no uncertainty).  Raises StackError without ground truth."""
    gt = None if depth_gt is None else np.asarray(depth_gt, dtype=np.float64)
    if gt is not None:
        with np.errstate(invalid='ignore'):
            gt = gt[np.isfinite(gt) & (gt > 0)]
    if gt is None or gt.size == 0:
        raise StackError('oracle_needs_depth_gt', 'the median oracle needs focal_stack/depth_gt for this stamp')
    return np.full((stack.height, stack.width), np.median(gt), dtype=np.float32), None


def parse_baselines(baseline) -> list[str]:
    """``--baseline`` values -> baseline keys of :data:`BASELINES` in table order.

    ``True`` (or None/empty from a CLI that got no ``--baseline``) means all of them,
    ``False`` or ``['none']`` none; otherwise the names given.
    """
    if baseline is True or baseline is None or (not isinstance(baseline, bool) and len(baseline) == 0):
        return list(BASELINES)
    if baseline is False or list(baseline) == ['none']:
        return []
    names = list(dict.fromkeys(baseline))
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f'unknown baseline(s) {unknown}; choose from {list(BASELINES)} or none')
    return [n for n in BASELINES if n in names]


def evaluate_baselines(stacks: Callable[[], Iterable[BagStack]], baselines: Sequence[str],
                       grid_stacks: int = GRID_STACKS, progress: bool = False):
    """Run the named baselines (keys of :data:`BASELINES`) in this process; returns (runs, samples)."""
    runs, samples = [], {}
    for key in baselines:
        name = BASELINES[key]
        if key == 'median-oracle':
            run, smp = run_method(stacks(), name, median_oracle_predict, backend='numpy',
                                  grid_stacks=grid_stacks, progress=progress, with_gt=True)
        else:
            run, smp = run_method(stacks(), name, baseline_predict, backend='numpy',
                                  grid_stacks=grid_stacks, progress=progress)
        runs.append(run)
        samples[name] = smp
    return runs, samples


def pipeline_predict(pipeline) -> Callable[[FocalStack], tuple]:
    def predict(stack: FocalStack) -> tuple:
        r = pipeline.run(stack)
        return r.depth, r.uncertainty
    return predict


#: Bags up to this size on disk are read once and held in memory for all methods.
IN_MEMORY_BAG_BYTES = 256 * 1024 * 1024


def bag_stacks(bag, namespace: Optional[str] = None) -> Callable[[], Iterable[BagStack]]:
    """A factory of passes over the bag's stacks: a list held in memory for small bags,
    a fresh streaming read per pass for large ones."""
    info = open_bag_info(bag, namespace)
    p = Path(bag)
    size = sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) if p.is_dir() else p.stat().st_size
    if size <= IN_MEMORY_BAG_BYTES:
        items = list(read_bag(bag, info=info))
        for it in items:
            it.raw = {}          # the serialized bytes are only needed by the replay
        return lambda: items
    return lambda: read_bag(bag, info=info)


def evaluate_offline(bag, engines: Sequence = (), backend: str = 'auto', baseline=False,
                     namespace: Optional[str] = None, hypothesis_mode=DEFAULT_HYPOTHESIS_MODE,
                     device: Optional[str] = None, grid_stacks: int = GRID_STACKS, progress: bool = False,
                     max_relative_uncertainty: Optional[float] = None, processing_width: Optional[int] = None):
    """Score every engine (and the baselines) on every stack of ``bag``.

    ``baseline``: False or [] = none, True = all of :data:`BASELINES`, or a list of their keys.
    Returns ``(runs, samples)``: a :class:`MethodRun` per method and the grid samples
    per method.  The bag is re-read per method, so memory holds one stack at a time.
    """
    runs, samples = [], {}
    stacks = bag_stacks(bag, namespace)
    for name, path in zip(method_names(engines), engines):
        pipe = load_pipeline(path, backend, hypothesis_mode, device, max_relative_uncertainty, processing_width)
        run, smp = run_method(stacks(), name, pipeline_predict(pipe),
                              backend=pipe.engine.backend_name, grid_stacks=grid_stacks, progress=progress)
        runs.append(run)
        samples[name] = smp
    keys = list(BASELINES) if baseline is True else parse_baselines(baseline) if baseline else []
    if keys:
        b_runs, b_samples = evaluate_baselines(stacks, keys, grid_stacks, progress)
        runs += b_runs
        samples.update(b_samples)
    return runs, samples
