"""Depth metrics of the depth-from-focus literature (DESIGN.md section 8).

Every metric is computed per image on the *valid* pixels: ground truth finite and
> 0, prediction finite and > 0 (and inside an optional caller mask), then averaged
over images by :func:`aggregate`.  Units: depths in metres, so ``mse`` is m^2,
``rms``/``mae``/``avg_unc`` are m; ``absrel``, ``sqrel`` (m), ``log_rms`` follow
the usual definitions; ``delta1/2/3`` are percentages of pixels with
``max(pred/gt, gt/pred) < 1.25**k``.

``bumpiness`` follows the DFV evaluation code (fuy34/DFV, ``eval_FoD500.py``, after
the 4D light-field benchmark): the Frobenius norm of the Hessian of the error
``pred - gt`` from chained Scharr derivatives (``skimage.filters.scharr_v/_h``),
clipped at 0.05 per pixel, averaged over the valid pixels, times 100.  Invalid
pixels enter the derivative filters as a zero error so that one NaN does not
poison its neighbourhood (DFV sets them to 0 in the same way).

``coverage`` is the fraction of ground-truth-valid pixels that got a finite,
positive prediction (without ground truth: the fraction of all pixels).  ``avg_unc``
is the mean finite predicted uncertainty over the ground-truth-valid pixels (all
pixels without ground truth), whether or not the depth there survived the sanity mask.

Uncertainty (on the scored pixels, where the predicted uncertainty is finite too):
``unc_cal`` is the fraction (0..1) of pixels whose absolute error is at most the
predicted uncertainty (a Gaussian that is honest about its std gives about 0.68);
the sparsification curve ``spars_<x>`` is the AbsRel of the ``x`` % of pixels with the
lowest predicted *relative* uncertainty ``unc / depth`` (x = 10, 20, ..., 100), and
``spars_oracle_<x>`` the same with pixels ranked by their true relative error;
``ause`` (Ilg et al., ECCV 2018) is the area between the two curves, trapezoids over the
kept fraction 0.1..1.0 (AbsRel x fraction; 0 = the uncertainty ranks errors perfectly).

``beats_oracle_px`` is the % of ground-truth pixels where the prediction's absolute
error is strictly below that of the median oracle (a constant at the median of the
ground truth); pixels without a prediction count as not beating it.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

import numpy as np
from skimage import filters

from .boundary import BOUNDARY_KEYS, boundary_metrics

#: Metric keys in table order (lower is better except delta*, coverage, unc_cal, beats_oracle_px).
METRIC_KEYS = ('absrel', 'sqrel', 'mse', 'rms', 'log_rms', 'mae',
               'delta1', 'delta2', 'delta3', 'bumpiness', 'avg_unc', 'coverage',
               'unc_cal', 'ause', 'beats_oracle_px')
METRIC_KEYS = METRIC_KEYS + BOUNDARY_KEYS     # edge AbsRel, boundary F (ddfs_ros.eval.boundary)
#: Keys that still mean something without ground truth.
NO_GT_KEYS = ('coverage', 'avg_unc')

BUMPINESS_CLIP = 0.05

#: Uncertainty / oracle metrics, computed by :func:`compute_metrics` next to :data:`METRIC_KEYS`.
UNCERTAINTY_KEYS = ('unc_cal', 'ause', 'beats_oracle_px')
#: Kept fractions (%) of the sparsification curves.
SPARSIFICATION_PERCENTS = tuple(range(10, 101, 10))
#: Per-image curve points: ``spars_<x>`` (ranked by predicted unc/depth), ``spars_oracle_<x>`` (by true error).
SPARSIFICATION_KEYS = tuple(f'spars_{x}' for x in SPARSIFICATION_PERCENTS) + \
    tuple(f'spars_oracle_{x}' for x in SPARSIFICATION_PERCENTS)


def valid_mask(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """H x W bool: gt finite and > 0, pred finite and > 0, and ``mask`` where given."""
    with np.errstate(invalid='ignore'):
        m = np.isfinite(gt) & (gt > 0) & np.isfinite(pred) & (pred > 0)
    if mask is not None:
        m &= np.asarray(mask, dtype=bool)
    return m


def bumpiness_map(error: np.ndarray, clip: float = BUMPINESS_CLIP) -> np.ndarray:
    """Per-pixel clipped Frobenius norm of the Hessian of ``error`` (H x W, float64).

    Second derivatives are chained Scharr filters, as in the DFV evaluation code.
    """
    e = np.asarray(error, dtype=np.float64)
    dx = filters.scharr_v(e)
    dy = filters.scharr_h(e)
    dxx = filters.scharr_v(dx)
    dxy = filters.scharr_h(dx)
    dyy = filters.scharr_h(dy)
    dyx = filters.scharr_v(dy)
    norm = np.sqrt(dxx ** 2 + dxy ** 2 + dyy ** 2 + dyx ** 2)
    return np.clip(norm, 0.0, clip)


def _nan_metrics() -> dict:
    return {k: math.nan for k in METRIC_KEYS + SPARSIFICATION_KEYS}


def sparsification(abs_rel_err: np.ndarray, ranking: np.ndarray,
                   percents: Iterable[int] = SPARSIFICATION_PERCENTS) -> np.ndarray:
    """AbsRel of the most confident ``x`` % of pixels, for each ``x`` in ``percents``.

    Args:
        abs_rel_err: N per-pixel relative errors ``|pred - gt| / gt``.
        ranking: N confidence scores, lower = more confident (e.g. unc / depth, or the
            error itself for the oracle curve).  Ties keep the input order (stable sort).
    Returns:
        float64 array, one AbsRel per percentage (the ``ceil(x % * N)`` best pixels, at least one).
    """
    err = np.asarray(abs_rel_err, dtype=np.float64).ravel()
    order = np.argsort(np.asarray(ranking, dtype=np.float64).ravel(), kind='stable')
    csum = np.cumsum(err[order])
    n = err.size
    keep = [max(1, int(math.ceil(x / 100.0 * n - 1e-9))) for x in percents]
    return np.array([csum[k - 1] / k for k in keep])


def ause(curve: np.ndarray, oracle: np.ndarray, percents: Iterable[int] = SPARSIFICATION_PERCENTS) -> float:
    """Area between a sparsification curve and its oracle: trapezoids over the kept fraction (0..1)."""
    x = np.asarray(list(percents), dtype=np.float64) / 100.0
    d = np.asarray(curve, dtype=np.float64) - np.asarray(oracle, dtype=np.float64)
    return float(np.sum((d[1:] + d[:-1]) * np.diff(x)) / 2.0)


def compute_metrics(pred: np.ndarray, gt: Optional[np.ndarray], uncertainty: Optional[np.ndarray] = None,
                    mask: Optional[np.ndarray] = None) -> dict:
    """Metrics of one depth map.

    Args:
        pred: H x W predicted depth (m); NaN/inf/<= 0 = no prediction.
        gt: H x W ground-truth depth (m); NaN/inf/<= 0 = unknown.  ``None``: only
            ``coverage`` and ``avg_unc`` are computed, the rest are NaN.
        uncertainty: H x W predicted standard deviation (m), optional.
        mask: H x W bool, extra pixels to keep (e.g. a region of interest).

    Returns:
        dict with every key of :data:`METRIC_KEYS` and :data:`SPARSIFICATION_KEYS` (floats,
        NaN when undefined) plus ``n_valid`` (pixels scored).
    """
    pred = np.asarray(pred, dtype=np.float64)
    out = _nan_metrics()
    with np.errstate(invalid='ignore'):
        pred_ok = np.isfinite(pred) & (pred > 0)
    if gt is None:
        region = np.ones_like(pred_ok) if mask is None else np.asarray(mask, dtype=bool)
        out['coverage'] = float(pred_ok[region].mean()) if region.any() else math.nan
        if uncertainty is not None:
            u = np.asarray(uncertainty, dtype=np.float64)[region]
            u = u[np.isfinite(u)]
            out['avg_unc'] = float(u.mean()) if u.size else math.nan
        out['n_valid'] = 0
        return out

    gt = np.asarray(gt, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f'prediction {pred.shape} and ground truth {gt.shape} differ in shape')
    with np.errstate(invalid='ignore'):
        gt_ok = np.isfinite(gt) & (gt > 0)
    if mask is not None:
        gt_ok &= np.asarray(mask, dtype=bool)
    m = gt_ok & pred_ok
    n_gt = int(gt_ok.sum())
    if uncertainty is not None:
        # over every pixel with ground truth, masked predictions included: the network's own
        # statement of how sure it is does not depend on the sanity mask applied after it
        u = np.asarray(uncertainty, dtype=np.float64)[gt_ok]
        u = u[np.isfinite(u)]
        out['avg_unc'] = float(u.mean()) if u.size else math.nan
    out['coverage'] = float(m.sum() / n_gt) if n_gt else math.nan
    out['n_valid'] = int(m.sum())
    if n_gt:
        out['beats_oracle_px'] = 0.0     # until a predicted pixel beats the oracle (below)
    if not m.any():
        return out

    p, g = pred[m], gt[m]
    err = p - g
    out['mse'] = float(np.mean(err ** 2))
    out['rms'] = math.sqrt(out['mse'])
    out['log_rms'] = float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))
    out['absrel'] = float(np.mean(np.abs(err) / g))
    out['sqrel'] = float(np.mean(err ** 2 / g))
    out['mae'] = float(np.mean(np.abs(err)))
    ratio = np.maximum(p / g, g / p)
    for k in (1, 2, 3):
        out[f'delta{k}'] = float(np.mean(ratio < 1.25 ** k) * 100.0)
    full_err = np.where(m, pred - gt, 0.0)
    out['bumpiness'] = float(bumpiness_map(full_err)[m].mean() * 100.0)
    out.update(boundary_metrics(np.where(pred_ok, pred, np.nan), np.where(gt_ok, gt, np.nan), m))
    # the median oracle's error from the same ground truth; a masked pixel never beats it
    median_gt = float(np.median(gt[gt_ok]))
    out['beats_oracle_px'] = float(np.sum(np.abs(err) < np.abs(median_gt - g)) / n_gt * 100.0)
    if uncertainty is not None:
        u_all = np.asarray(uncertainty, dtype=np.float64)
        if u_all.shape != pred.shape:
            raise ValueError(f'uncertainty {u_all.shape} and prediction {pred.shape} differ in shape')
        u = u_all[m]
        with np.errstate(invalid='ignore'):
            u_ok = np.isfinite(u) & (u >= 0)
        if u_ok.any():
            rel = np.abs(err[u_ok]) / g[u_ok]
            out['unc_cal'] = float(np.mean(np.abs(err[u_ok]) <= u[u_ok]))
            curve = sparsification(rel, u[u_ok] / p[u_ok])
            oracle = sparsification(rel, rel)
            for x, c, o in zip(SPARSIFICATION_PERCENTS, curve, oracle):
                out[f'spars_{x}'] = float(c)
                out[f'spars_oracle_{x}'] = float(o)
            out['ause'] = ause(curve, oracle)
    return out


def aggregate(per_image: Iterable[Mapping[str, float]]) -> dict:
    """Average per-image metrics over images (NaN entries are skipped per key).

    Returns every key of :data:`METRIC_KEYS` and :data:`SPARSIFICATION_KEYS` (so the mean
    curves and the mean AUSE agree: AUSE is linear in the curves) plus ``n`` (images given) and
    ``n_scored`` (images with at least one valid pixel).
    """
    rows = list(per_image)
    out: dict = {'n': len(rows)}
    for k in METRIC_KEYS + SPARSIFICATION_KEYS:
        vals = np.array([r.get(k, math.nan) for r in rows], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        out[k] = float(vals.mean()) if vals.size else math.nan
    out['n_scored'] = int(sum(1 for r in rows if r.get('n_valid', 0) > 0))
    return out
