"""Depth-boundary metrics: is the depth sharp where the scene's depth jumps?

A *depth discontinuity* is a pair of 4-neighbours whose depths differ by more than
``EDGE_REL_THRESHOLD`` (5 %) relative to each other (|log d1 - log d2| > log 1.05); both
pixels of the pair are marked, so an ideal step is a 2-px line.

- ``edge_absrel``: AbsRel on the scored pixels within ``EDGE_RADIUS_PX`` (3 px) of a
  ground-truth discontinuity.
- ``boundary_f``: F-score of the predicted discontinuities against the ground truth's,
  with a ``BOUNDARY_TOL_PX`` (1 px) match tolerance, on the ground-truth-valid pixels
  (precision: predicted edge pixels within 1 px of a true one; recall: true edge
  pixels within 1 px of a predicted one).  A smeared edge marks a wide band (low
  precision) or, once the slope drops below 5 % per pixel, nothing (low recall).

Pure numpy + OpenCV; no ROS.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

#: Relative depth jump between 4-neighbours that counts as a discontinuity.
EDGE_REL_THRESHOLD = 0.05
#: ``edge_absrel`` scores pixels within this distance (px) of a true discontinuity.
EDGE_RADIUS_PX = 3
#: Match tolerance (px) of the boundary F-score.
BOUNDARY_TOL_PX = 1
#: Keys :func:`boundary_metrics` returns.
BOUNDARY_KEYS = ('edge_absrel', 'boundary_f')


def depth_discontinuities(depth: np.ndarray, rel_threshold: float = EDGE_REL_THRESHOLD) -> np.ndarray:
    """H x W bool: pixels on either side of a relative depth jump > ``rel_threshold``.

    Non-finite or non-positive depths never make an edge (a hole is not a boundary).
    """
    d = np.asarray(depth, dtype=np.float64)
    ok = np.isfinite(d) & (d > 0)
    logd = np.full(d.shape, np.nan)
    logd[ok] = np.log(d[ok])
    t = math.log1p(rel_threshold)
    with np.errstate(invalid='ignore'):
        jx = np.abs(np.diff(logd, axis=1)) > t        # NaN compares False
        jy = np.abs(np.diff(logd, axis=0)) > t
    e = np.zeros(d.shape, dtype=bool)
    e[:, 1:] |= jx
    e[:, :-1] |= jx
    e[1:, :] |= jy
    e[:-1, :] |= jy
    return e


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within ``radius`` px (a digital disk) of a True pixel of ``mask``."""
    m = np.asarray(mask, dtype=bool)
    if radius <= 0:
        return m
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(m.astype(np.uint8), k).astype(bool)


def edge_region(gt: np.ndarray, radius: int = EDGE_RADIUS_PX, rel_threshold: float = EDGE_REL_THRESHOLD) -> np.ndarray:
    """H x W bool: within ``radius`` px of a ground-truth depth discontinuity."""
    return dilate(depth_discontinuities(gt, rel_threshold), radius)


def boundary_scores(pred: np.ndarray, gt: np.ndarray, tol: int = BOUNDARY_TOL_PX,
                    rel_threshold: float = EDGE_REL_THRESHOLD) -> tuple[float, float, float]:
    """(precision, recall, F) of predicted depth discontinuities against the ground truth's.

    Both edge maps are restricted to the ground-truth-valid pixels.  NaN where undefined
    (no true edges: recall and F; no predicted edges: precision, with F = 0).
    """
    gt = np.asarray(gt, dtype=np.float64)
    region = np.isfinite(gt) & (gt > 0)
    eg = depth_discontinuities(gt, rel_threshold) & region
    ep = depth_discontinuities(pred, rel_threshold) & region
    ng, npred = int(eg.sum()), int(ep.sum())
    recall = float((eg & dilate(ep, tol)).sum() / ng) if ng else math.nan
    precision = float((ep & dilate(eg, tol)).sum() / npred) if npred else math.nan
    if not ng:
        return precision, recall, math.nan
    if not npred or precision + recall == 0:
        return precision, recall, 0.0
    return precision, recall, 2 * precision * recall / (precision + recall)


def boundary_metrics(pred: np.ndarray, gt: np.ndarray, scored: np.ndarray) -> dict:
    """``edge_absrel`` and ``boundary_f`` of one depth map.

    Args:
        pred, gt: H x W depth (m); NaN / <= 0 = none.
        scored: H x W bool, the pixels the other metrics score (both valid).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    near = scored & edge_region(gt)
    out = {'edge_absrel': float(np.mean(np.abs(pred[near] - gt[near]) / gt[near])) if near.any() else math.nan}
    out['boundary_f'] = boundary_scores(pred, gt)[2]
    return out
