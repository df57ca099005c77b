"""Where the error is: AbsRel per region of the scene, for engines and baselines (no ROS).

    ddfs-eval regions BAG [BAG ...] [--engine engines/ddfs_s.json ...] [--stacks N]

A single AbsRel hides *why* a method loses to another.  Two properties of a pixel
decide what a depth-from-focus method can know there:

- **where its depth lies against the sweep**: inside ``[nearest focus, farthest
  focus]``, nearer than the nearest focus, or beyond the farthest (there every frame
  is blurred more the further the pixel is from the sweep's end, and a method that
  interpolates between frames must extrapolate);
- **texture**: the focus cue is the local contrast a sharp frame has and a blurred one
  lacks.  Texture is the largest over the frames of the locally averaged absolute
  Laplacian of the luminance; the least textured ``LOW_TEXTURE_FRACTION`` of each
  stack's pixels are "low texture".

Every pixel with finite, positive ground truth is scored (depth the method did not
give, e.g. NaN from the sanity mask, counts as missing and is reported as coverage).
Methods run through :class:`~ddfs_ros.pipeline.DepthPipeline` with the node's defaults,
like ``ddfs-eval offline``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

#: Share of each stack's pixels (the least textured) called "low texture".
LOW_TEXTURE_FRACTION = 0.3
#: Box size (px) of the local average of |Laplacian| that measures texture.
TEXTURE_WINDOW = 9
REGIONS = ('all', 'inside sweep', 'nearer than the nearest focus', 'beyond the farthest focus',
           'low texture', 'textured')


def texture_map(frames: np.ndarray, window: int = TEXTURE_WINDOW) -> np.ndarray:
    """H x W texture: max over frames of the box-averaged |Laplacian| of the luminance.

    ``frames``: F x H x W x C (or F x H x W) float in [0, 1].
    """
    import cv2
    f = np.asarray(frames, dtype=np.float32)
    lum = f.mean(-1) if f.ndim == 4 else f
    out = None
    for img in lum:
        t = cv2.blur(np.abs(cv2.Laplacian(img, cv2.CV_32F, ksize=3)), (window, window))
        out = t if out is None else np.maximum(out, t)
    return out


def region_masks(focus_m: np.ndarray, frames: np.ndarray, gt: np.ndarray,
                 low_fraction: float = LOW_TEXTURE_FRACTION) -> dict:
    """Boolean H x W masks of :data:`REGIONS` (all restricted to finite, positive ``gt``)."""
    valid = np.isfinite(gt) & (gt > 0)
    g = np.where(valid, gt, np.nan)
    lo, hi = float(np.min(focus_m)), float(np.max(focus_m))
    tex = texture_map(frames)
    cut = np.quantile(tex[valid], low_fraction) if valid.any() else 0.0
    with np.errstate(invalid='ignore'):
        return {'all': valid, 'inside sweep': valid & (g >= lo) & (g <= hi),
                'nearer than the nearest focus': valid & (g < lo),
                'beyond the farthest focus': valid & (g > hi),
                'low texture': valid & (tex <= cut), 'textured': valid & (tex > cut)}


class RegionScore:
    """Pooled |d - g| / g sums and pixel counts per region, over stacks."""

    def __init__(self) -> None:
        self.err = {r: 0.0 for r in REGIONS}
        self.n = {r: 0 for r in REGIONS}
        self.missing = {r: 0 for r in REGIONS}

    def add(self, depth: np.ndarray, gt: np.ndarray, masks: dict) -> None:
        d = np.asarray(depth, dtype=np.float64)
        ok = np.isfinite(d) & (d > 0)
        with np.errstate(invalid='ignore', divide='ignore'):
            rel = np.abs(d - gt) / gt
        for r in REGIONS:
            m = masks[r]
            self.err[r] += float(rel[m & ok].sum())
            self.n[r] += int((m & ok).sum())
            self.missing[r] += int((m & ~ok).sum())

    def abs_rel(self, region: str) -> float:
        return self.err[region] / self.n[region] if self.n[region] else float('nan')

    def coverage(self, region: str) -> float:
        total = self.n[region] + self.missing[region]
        return self.n[region] / total if total else float('nan')


def score_regions(items, predict: Callable, low_fraction: float = LOW_TEXTURE_FRACTION,
                  masks: Optional[Sequence[dict]] = None) -> tuple[RegionScore, dict]:
    """(scores, pixel share of each region) of ``predict(stack) -> depth`` over bag items.

    ``masks``: the items' :func:`region_masks`, when already computed (they do not depend
    on the method, so a table of several methods computes them once).
    """
    if masks is None:
        masks = [region_masks(it.stack.focus_m, it.stack.frames, it.depth_gt, low_fraction) for it in items]
    score, pixels = RegionScore(), {r: 0 for r in REGIONS}
    for it, m in zip(items, masks):
        for r in REGIONS:
            pixels[r] += int(m[r].sum())
        score.add(predict(it.stack), np.asarray(it.depth_gt, dtype=np.float64), m)
    share = {r: pixels[r] / max(1, pixels['all']) for r in REGIONS}
    return score, share


def regions_table(bag, engines: Sequence[str], stacks: Optional[int] = None, backend: str = 'auto') -> str:
    """Markdown: one row per method, AbsRel per region (pixel shares in the header)."""
    from .bags import read_bag
    from .offline import BASELINE_NAME, MEDIAN_ORACLE_NAME, baseline_predict, load_pipeline, \
        median_oracle_predict, method_names, pipeline_predict
    items = [b for b in read_bag(bag) if b.ok and b.depth_gt is not None][:stacks]
    for it in items:
        it.raw = {}
    methods = []
    for name, path in zip(method_names(engines), engines):
        pred = pipeline_predict(load_pipeline(path, backend=backend))
        methods.append((name, lambda s, p=pred: p(s)[0]))
    if all(np.unique(np.round(it.stack.focus_m, 9)).size == it.stack.num_frames for it in items):
        methods.append((BASELINE_NAME, lambda s: baseline_predict(s)[0]))
    gt_of = {id(it.stack): it.depth_gt for it in items}
    methods.append((MEDIAN_ORACLE_NAME, lambda s: median_oracle_predict(s, gt_of[id(s)])[0]))
    masks = [region_masks(it.stack.focus_m, it.stack.frames, it.depth_gt) for it in items]
    rows, share = [], None
    for name, pred in methods:
        score, share = score_regions(items, pred, masks=masks)
        cells = [f'{score.abs_rel(r):.4f}' + ('' if score.coverage(r) > 0.999 else f' ({100 * score.coverage(r):.0f} %)')
                 for r in REGIONS]
        rows.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    head = '| method | ' + ' | '.join(f'{r} ({100 * share[r]:.0f} %)' for r in REGIONS) + ' |'
    return '\n'.join([f'`{bag}`, {len(items)} stacks: AbsRel per region (pixel share; coverage where < 100 %)', '',
                      head, '|---|' + '---|' * len(REGIONS)] + rows)

