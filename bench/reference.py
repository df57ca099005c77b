"""The slow, obviously-correct DDFS cost volume: loops over frames, hypotheses, channels.

Straight from DESIGN.md section 4 with the library functions it names:
``skimage.restoration.wiener(image, psf, balance=0.01, clip=False)`` per frame,
hypothesis and channel, ``scipy.ndimage.gaussian_filter(sigma=1, mode='reflect')``,
tanh outlier removal, per-pixel min-max.  Used by the tests and raced by
``bench/cost_volume.py``; never on the hot path.

``dtype``: float64 (the default, the accuracy reference) or float32, the precision the
project's implementation computes in, so that the benchmark can also compare like with
like (skimage, scipy.fft and scipy.ndimage keep float32 inputs in float32).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_filter
from skimage.restoration import wiener

from ddfs_ros.optics import coc_px, default_max_coc_px
from ddfs_ros.psf import disk_psf


def reference_cost_volume(frames: np.ndarray, focus_m, f_numbers, focal_length_m: float,
                          pixel_pitch_m: float, depths_m, max_coc_px: float | None = None,
                          normalise: bool = True, dtype=np.float64) -> np.ndarray:
    """D x H x W cost volume from F x H x W x C frames in [0, 1], computed in ``dtype``."""
    frames = np.asarray(frames, dtype=dtype)
    F, H, W, C = frames.shape
    fn = np.broadcast_to(np.asarray(f_numbers, dtype=np.float64), (F,))
    max_px = default_max_coc_px(W) if max_coc_px is None else max_coc_px
    cost = np.zeros((len(depths_m), H, W), dtype=dtype)
    for j, d in enumerate(depths_m):
        deblurred = np.zeros((F, H, W, C), dtype=dtype)
        for i in range(F):
            psf = disk_psf(coc_px(d, focus_m[i], focal_length_m, fn[i], pixel_pitch_m, max_px) / 2.0).astype(dtype)
            for c in range(C):
                deblurred[i, :, :, c] = wiener(frames[i, :, :, c], psf, balance=0.01, clip=False)
        for c in range(C):
            mu = gaussian_filter(deblurred[:, :, :, c].mean(axis=0), 1.0, mode='reflect')
            v = gaussian_filter(((deblurred[:, :, :, c] - mu) ** 2).mean(axis=0), 1.0, mode='reflect')
            cost[j] += np.sqrt(v)
    if not normalise:
        return cost
    cost = np.tanh(math.atanh(0.999) / 0.3 * cost)
    lo, hi = cost.min(axis=0), cost.max(axis=0)
    return (cost - lo) / (hi - lo + 1e-8)
