"""Classical depth from focus: the non-learned baseline every learned model must beat.

Per frame a focus measure says how sharp each pixel's neighbourhood is; the frame
where it peaks is the one focused on that pixel, and its focus distance is the depth.
A parabola through the peak and its two neighbours, in dioptres (where the blur of
the thin lens is linear), refines the peak between frames.

Focus measures (on the luminance, per frame, summed or averaged over a ``window``):
- ``'sml'``: sum-modified Laplacian (Nayar & Nakagawa 1994),
  ``|2I - I(x-1) - I(x+1)| + |2I - I(y-1) - I(y+1)|`` summed over the window;
- ``'lapvar'``: local variance of the Laplacian over the window (Pech-Pacheco et al. 2000).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

FOCUS_MEASURES = ('sml', 'lapvar')


def _luminance(frames: np.ndarray) -> np.ndarray:
    f = np.asarray(frames, dtype=np.float32)
    if f.ndim == 3:
        return f
    if f.ndim != 4:
        raise ValueError(f'frames must be F x H x W or F x H x W x C, got {f.shape}')
    if f.shape[3] == 1:
        return f[..., 0]
    if f.shape[3] == 3:
        return f @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return f.mean(axis=3)


def focus_measure(gray: np.ndarray, measure: str = 'sml', window: int = 9) -> np.ndarray:
    """Focus measure of one H x W float32 image (higher = sharper), H x W float32."""
    if measure == 'sml':
        kx = np.array([[-1.0, 2.0, -1.0]], dtype=np.float32)
        ml = np.abs(cv2.filter2D(gray, -1, kx, borderType=cv2.BORDER_REFLECT)) \
            + np.abs(cv2.filter2D(gray, -1, kx.T, borderType=cv2.BORDER_REFLECT))
        return cv2.boxFilter(ml, -1, (window, window), normalize=False, borderType=cv2.BORDER_REFLECT)
    if measure == 'lapvar':
        lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)
        mean = cv2.blur(lap, (window, window), borderType=cv2.BORDER_REFLECT)
        sq = cv2.blur(lap * lap, (window, window), borderType=cv2.BORDER_REFLECT)
        return np.maximum(sq - mean * mean, 0.0)
    raise ValueError(f'measure must be one of {FOCUS_MEASURES}, got {measure!r}')


def focus_measure_depth(frames: np.ndarray, focus_m: Sequence[float], measure: str = 'sml',
                        window: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Depth from focus by the peak of a focus measure over the frames.

    Args:
        frames: F x H x W x C (or F x H x W) images in [0, 1], any frame order.
        focus_m: F focus distances (m), distinct.
        measure: 'sml' (sum-modified Laplacian) or 'lapvar' (variance of Laplacian).
        window: side (px) of the square window the measure is aggregated over.

    Returns:
        depth_m: H x W float32, metres, between the nearest and farthest focus distance.
        confidence: H x W float32 in [0, 1): how much the peak stands out,
            ``(max - mean) / (max + eps)`` over the frames (about 0 on textureless pixels).
    """
    focus = np.asarray(focus_m, dtype=np.float64).ravel()
    gray = _luminance(frames)
    if gray.shape[0] != focus.size:
        raise ValueError(f'{gray.shape[0]} frames but {focus.size} focus distances')
    if focus.size < 2:
        raise ValueError('depth from focus needs at least two frames')
    if np.any(~np.isfinite(focus)) or np.any(focus <= 0):
        raise ValueError(f'focus distances must be finite and > 0, got {focus.tolist()}')
    order = np.argsort(focus)
    focus = focus[order]
    if np.any(np.diff(focus) <= 0):
        raise ValueError(f'focus distances must be distinct for depth from focus, got {focus.tolist()}')
    gray = gray[order]
    fm = np.stack([focus_measure(np.ascontiguousarray(g), measure, window) for g in gray])  # F x H x W
    F = focus.size
    diop = 1.0 / focus                                               # descending with frame index
    k = np.argmax(fm, axis=0)
    x_hat = diop[k]
    if F >= 3:
        # Parabola through the peak and its two neighbours, in dioptres (non-uniform
        # spacing, divided differences); only for peaks with a neighbour on both sides,
        # and its vertex stays between those neighbours.
        kc = np.clip(k, 1, F - 2)
        take = lambda idx: np.take_along_axis(fm, idx[None], 0)[0]
        x0, x1, x2 = diop[kc - 1], diop[kc], diop[kc + 1]
        m0, m1, m2 = take(kc - 1), take(kc), take(kc + 1)
        s01 = (m0 - m1) / (x0 - x1)
        s12 = (m1 - m2) / (x1 - x2)
        curv = (s01 - s12) / (x0 - x2)
        interior = (k >= 1) & (k <= F - 2) & (curv < 0)
        with np.errstate(divide='ignore', invalid='ignore'):
            vertex = np.clip(0.5 * (x1 + x2) - s12 / (2.0 * curv), x2, x0)
        x_hat = np.where(interior, vertex, x_hat)
    depth = (1.0 / x_hat).astype(np.float32)
    peak = fm.max(axis=0)
    confidence = ((peak - fm.mean(axis=0)) / (peak + 1e-6)).astype(np.float32)
    return depth, np.clip(confidence, 0.0, 1.0)
