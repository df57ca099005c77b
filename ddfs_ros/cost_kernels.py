"""Fused CPU kernel for the part of the cost volume that follows the inverse FFTs.

After the D*F*C inverse FFTs, the torch path runs about twenty small element-wise
passes per hypothesis (frame mean, variance, two Gaussian blurs, sqrt, channel sum).
On a CPU they cost as much as the FFTs themselves, mostly in memory traffic and op
dispatch.  This numba kernel does all of it in one pass per image while the
deblurred frames are still in cache.  It computes exactly what
:meth:`ddfs_ros.cost_volume.CostVolume.raw_cost` computes with torch (same taps,
same reflect border, float32 accumulation); the tests check the two agree.

numba is optional: :func:`available` says whether the kernel can be used, and the
cost volume falls back to the torch path (the path on CUDA anyway) without it.
"""
from __future__ import annotations

import threading

import numpy as np

try:
    import numba
    from numba import njit, prange
    # GNU OpenMP (numba's default layer here) deadlocks a forked child, and training's
    # DataLoader workers fork.  The workqueue layer is fork-safe but not thread-safe,
    # so calls are serialised by _LOCK.
    numba.config.THREADING_LAYER = 'workqueue'
except ImportError:  # pragma: no cover - exercised only where numba is absent
    numba = None

_LOCK = threading.Lock()


def available() -> bool:
    """True when numba imports (the fused kernel can run)."""
    return numba is not None


# Compiling the kernels is most of a first start (issue 12, item 10).  numba's default
# cache sits next to this file, read-only on system installs and deleted by every
# reinstall; keep it in the user cache instead (ddfs_ros.user_cache), unless
# NUMBA_CACHE_DIR chose a directory.  numba reads CACHE_DIR when a cache=True function
# is decorated, so it is set around the decorators below only: other numba users in the
# process keep their own cache.
_PREVIOUS_CACHE_DIR = None
if numba is not None and not numba.config.CACHE_DIR:
    from .user_cache import numba_cache_dir
    _PREVIOUS_CACHE_DIR = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(numba_cache_dir())

if numba is not None:

    @njit(cache=True, fastmath=False, inline='always')
    def _blur_rows(src, dst, taps, rows):
        """dst[y, :] = sum_k taps[k] * src[rows[y + k], :] (vertical pass, reflect via rows)."""
        H, W = src.shape
        K = taps.shape[0]
        for y in range(H):
            for x in range(W):
                dst[y, x] = 0.0
            for k in range(K):
                t = taps[k]
                r = rows[y + k]
                for x in range(W):
                    dst[y, x] += t * src[r, x]

    @njit(cache=True, fastmath=False, inline='always')
    def _blur_cols(src, dst, taps, cols, pad):
        """dst[y, x] = sum_k taps[k] * src[y, cols[x + k]] (horizontal pass via a padded row)."""
        H, W = src.shape
        K = taps.shape[0]
        for y in range(H):
            for x in range(W + K - 1):
                pad[x] = src[y, cols[x]]
            for x in range(W):
                dst[y, x] = 0.0
            for k in range(K):
                t = taps[k]
                for x in range(W):
                    dst[y, x] += t * pad[x + k]

    @njit(parallel=True, cache=True, fastmath=False)
    def _fused_cost(J, taps, rows, cols, out):
        d, B, F, C, H, W = J.shape
        K = taps.shape[0]
        for task in prange(d * B):
            j = task // B
            b = task % B
            mean = np.empty((H, W), np.float32)
            var = np.empty((H, W), np.float32)
            tmp = np.empty((H, W), np.float32)
            smooth = np.empty((H, W), np.float32)
            pad = np.empty(W + K - 1, np.float32)
            acc = out[b, j]
            for y in range(H):
                for x in range(W):
                    acc[y, x] = 0.0
            inv_f = np.float32(1.0 / F)
            for c in range(C):
                # mean and (two-pass) variance over frames
                for y in range(H):
                    for x in range(W):
                        mean[y, x] = 0.0
                    for i in range(F):
                        for x in range(W):
                            mean[y, x] += J[j, b, i, c, y, x]
                    for x in range(W):
                        mean[y, x] *= inv_f
                        var[y, x] = 0.0
                    for i in range(F):
                        for x in range(W):
                            dev = J[j, b, i, c, y, x] - mean[y, x]
                            var[y, x] += dev * dev
                    for x in range(W):
                        var[y, x] *= inv_f
                # mu = G * mean;  v = G * (var + (mean - mu)^2);  acc += sqrt(v)
                _blur_rows(mean, tmp, taps, rows)
                _blur_cols(tmp, smooth, taps, cols, pad)
                for y in range(H):
                    for x in range(W):
                        e = mean[y, x] - smooth[y, x]
                        var[y, x] += e * e
                _blur_rows(var, tmp, taps, rows)
                _blur_cols(tmp, smooth, taps, cols, pad)
                for y in range(H):
                    for x in range(W):
                        acc[y, x] += np.sqrt(max(smooth[y, x], np.float32(0.0)))

if _PREVIOUS_CACHE_DIR is not None:
    numba.config.CACHE_DIR = _PREVIOUS_CACHE_DIR


def fused_cost(deblurred: np.ndarray, taps: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               out: np.ndarray) -> None:
    """sum_c sqrt(G * (var_F + (mean_F - G * mean_F)^2)) for a chunk of hypotheses.

    Args:
        deblurred: d x B x F x C x H x W float32, C-contiguous (the Wiener outputs).
        taps: the Gaussian taps (float32, odd length 2R+1).
        rows, cols: reflect-padded index arrays of length H + 2R and W + 2R.
        out: B x d x H x W float32 view (a slice of the B x D x H x W result), written.
    """
    with _LOCK:
        _fused_cost(deblurred, taps, rows, cols, out)
