"""numba CPU kernels of :mod:`ddfs_ros.refine`: joint bilateral upsampling and the all-in-focus composite.

The torch/numpy code in :mod:`ddfs_ros.refine` makes about a dozen full-resolution
passes per neighbourhood sample (gather, subtract, square, exp, add, two multiplies,
two accumulations), and the all-in-focus weights another dozen F x H x W temporaries
in float64.  At 640 x 480 that is memory traffic and op dispatch, not arithmetic.
These kernels do each output row in one pass while its inputs are in cache, with the
inner loops over contiguous pixels so that LLVM vectorises them.  The two small steps
around them (the gray guide, its area-averaged copy) are here too: as torch calls they
cost little on an idle CPU but wait for torch's threads when the cores are busy.

They compute what the torch/numpy code computes, in the same order and precision
(float32, except the circle of confusion, float64 as in :func:`ddfs_ros.optics.coc_px`),
so the two agree to float32 rounding; the tests check it.  Differences at that level:
the joint bilateral and all-in-focus kernels let LLVM fuse multiply-adds (``fastmath=
{'contract'}``, nothing else), the all-in-focus weights divide by the depth once per
pixel, and the exponential is :func:`_exp32`, a float32 exp written out (Cephes'
``expf``: range reduction by ln 2, a degree-6 polynomial, the exponent put in by bit
arithmetic) so that it vectorises; libm's ``expf`` is a call LLVM cannot vectorise
without SVML (not installed here).  It is within 2 ulp of ``torch.exp``, and returns 0
where float32 would be subnormal (below about 1e-38).

numba is optional: :func:`available` says whether the kernels can run; without numba
(or for CUDA tensors) :mod:`ddfs_ros.refine` runs its torch/numpy code.  The threading
layer, the lock that serialises parallel calls and the user cache directory of the
compiled code are those of :mod:`ddfs_ros.cost_kernels` (one numba set-up per process).
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import cost_kernels
from .cost_kernels import _LOCK, numba


def available() -> bool:
    """True when numba imports (the kernels can run)."""
    return cost_kernels.available()


#: Rows per task of the parallel loops.  numba's default gives each thread one equal
#: share, and a thread that shares its core with another process (the node's executor,
#: a training run) then holds up the call; smaller tasks are taken by whichever thread
#: is free (measured under load here: the median 2-thread joint bilateral call 8 -> 4.6 ms).
CHUNK_ROWS = 16


def _chunks():
    """The context of a parallel call: tasks of :data:`CHUNK_ROWS` rows (numba >= 0.57)."""
    chunked = getattr(numba, 'parallel_chunksize', None)
    return chunked(CHUNK_ROWS) if chunked is not None else contextlib.nullcontext()

# Same cache placement as ddfs_ros.cost_kernels (the user cache, unless NUMBA_CACHE_DIR
# chose one): numba reads CACHE_DIR when a cache=True function is decorated, so it is
# set around the decorators below only.
_PREVIOUS_CACHE_DIR = None
if numba is not None and not numba.config.CACHE_DIR:
    from .user_cache import numba_cache_dir
    _PREVIOUS_CACHE_DIR = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = str(numba_cache_dir())

# float32 constants (a Python float literal in a kernel would promote to float64)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_MHALF = np.float32(-0.5)
_EXP_HI = np.float32(88.3762626647949)
_EXP_LO = np.float32(-87.3365478515625)     # below: the float32 result would be subnormal
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)

if numba is not None:
    from numba import njit, prange

    @njit(cache=True, fastmath=False, inline='always')
    def _exp32(x):
        """float32 exp(x), vectorisable (Cephes expf); 0 below ``_EXP_LO``."""
        xc = min(max(x, _EXP_LO), _EXP_HI)
        k = np.floor(xc * _LOG2E + _HALF)
        r = xc - k * _LN2_HI
        r = r - k * _LN2_LO
        z = r * r
        p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
        p = p * z + r + _F1
        scale = np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)
        return p * scale if x >= _EXP_LO else _F0

    @njit(parallel=True, cache=True, fastmath=False)
    def _exp32_array(x, out):
        """out = _exp32(x), flat float32 arrays (for the tests)."""
        for i in prange(x.shape[0]):
            out[i] = _exp32(x[i])

    # 'contract' (here and in the all-in-focus kernels) lets LLVM fuse a * b + c into one
    # FMA: one rounding instead of two, no reordering, no assumptions about NaN or inf.
    # 1.3x on this kernel, whose cost is mostly the polynomial of _exp32; the results move
    # by float32 rounding only.
    @njit(parallel=True, cache=True, fastmath={'contract'})
    def _jbu(low, guide, guide_low, yi, wy, xi, wx, inv_r, floor, out):
        """Joint bilateral upsampling, the loop of ``refine._joint_bilateral_torch``.

        low: C x h x w; guide: H x W; guide_low: h x w; yi, wy: T x H (row of each
        vertical tap, its spatial weight); xi, wx: T x W (horizontal); out: C x H x W.
        Per output pixel the taps are summed in the reference's order (rows, then columns).
        """
        C, h, w = low.shape
        H, W = guide.shape
        T = yi.shape[0]
        # the horizontal gathers once per low-res row (each is used by ~2 H / h output rows)
        eg = np.empty((h, T, W), np.float32)
        el = np.empty((h, C, T, W), np.float32)
        for r in prange(h):
            for b in range(T):
                for x in range(W):
                    eg[r, b, x] = guide_low[r, xi[b, x]]
                for c in range(C):
                    for x in range(W):
                        el[r, c, b, x] = low[c, r, xi[b, x]]
        for y in prange(H):
            den = np.zeros(W, np.float32)
            wt = np.empty(W, np.float32)
            for c in range(C):
                for x in range(W):
                    out[c, y, x] = _F0
            for a in range(T):
                r = yi[a, y]
                sy = wy[a, y]
                for b in range(T):
                    if C == 2:      # depth and uncertainty (the pipeline's case) in one loop
                        for x in range(W):
                            d = guide[y, x] - eg[r, b, x]
                            t = (_exp32(d * d * inv_r) + floor) * sy * wx[b, x]
                            den[x] += t
                            out[0, y, x] += el[r, 0, b, x] * t
                            out[1, y, x] += el[r, 1, b, x] * t
                    else:
                        for x in range(W):
                            d = guide[y, x] - eg[r, b, x]
                            t = (_exp32(d * d * inv_r) + floor) * sy * wx[b, x]
                            wt[x] = t
                            den[x] += t
                        for c in range(C):
                            for x in range(W):
                                out[c, y, x] += el[r, c, b, x] * wt[x]
            for c in range(C):
                for x in range(W):
                    out[c, y, x] = out[c, y, x] / den[x]

    @njit(parallel=True, cache=True, fastmath=False)
    def _area(src, out):
        """out (h x w) = src (H x W) averaged over the cells of ``torch`` 'area' interpolation
        (adaptive average pooling: rows floor(i H / h) .. ceil((i + 1) H / h) - 1, likewise
        columns; summed row by row in float32, then divided by the row and column counts)."""
        H, W = src.shape
        h, w = out.shape
        for i in prange(h):
            y0 = (i * H) // h
            y1 = -((-(i + 1) * H) // h)
            for j in range(w):
                x0 = (j * W) // w
                x1 = -((-(j + 1) * W) // w)
                acc = _F0
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        acc += src[y, x]
                out[i, j] = acc / np.float32(y1 - y0) / np.float32(x1 - x0)

    @njit(parallel=True, cache=True, fastmath=False)
    def _gray(rgb, wts, out):
        """out (H x W) = rgb (H x W x 3) . wts, the Rec. 601 luma of ``refine.to_gray``."""
        H, W, _ = rgb.shape
        w0, w1, w2 = wts[0], wts[1], wts[2]
        for y in prange(H):
            for x in range(W):
                out[y, x] = rgb[y, x, 0] * w0 + rgb[y, x, 1] * w1 + rgb[y, x, 2] * w2

    @njit(cache=True, fastmath=False, inline='always')
    def _row_weights(drow, k, s, tau, wrow, dd, inv, tmp):
        """The all-in-focus weights of one row (``refine._focus_weights_numpy``): F x W into wrow.

        ``k[i] = f^2 / (N_i (s_i - f) p)``, so that the circle of confusion (px) of depth d in
        frame i is ``k[i] |d - s_i| / d`` (float64 like optics.coc_px, which divides by d N_i
        (s_i - f) and then by p: the same value to float64 rounding, one division per pixel
        instead of 2 F).  ``dd``, ``inv`` (float64) and ``tmp`` (float32) are W-long scratch.
        """
        F = s.shape[0]
        W = drow.shape[0]
        for x in range(W):
            d = drow[x]
            dd[x] = np.float64(d) if (np.isfinite(d) and d > _F0) else 1.0
            inv[x] = 1.0 / dd[x]
            tmp[x] = np.float32(np.inf)
        for i in range(F):
            ki = k[i]
            si = s[i]
            for x in range(W):
                c = np.float32(ki * abs(dd[x] - si) * inv[x])
                wrow[i, x] = c
                tmp[x] = min(tmp[x], c)                 # tmp: the least circle of confusion
        for i in range(F):
            for x in range(W):
                q = (wrow[i, x] - tmp[x]) / tau
                wrow[i, x] = _exp32(_MHALF * (q * q))
        for x in range(W):
            d = drow[x]
            if not (np.isfinite(d) and d > _F0):       # no depth: equal weights
                for i in range(F):
                    wrow[i, x] = _F1
        for x in range(W):
            tmp[x] = wrow[0, x]                         # tmp: the sum of the weights
        for i in range(1, F):
            for x in range(W):
                tmp[x] += wrow[i, x]
        for i in range(F):
            for x in range(W):
                wrow[i, x] = wrow[i, x] / tmp[x]

    @njit(parallel=True, cache=True, fastmath={'contract'})
    def _focus_weights(depth, k, s, tau, out):
        """out: F x H x W weights of ``depth`` (H x W float32)."""
        F, H, W = out.shape
        for y in prange(H):
            wrow = np.empty((F, W), np.float32)
            dd = np.empty(W, np.float64)
            inv = np.empty(W, np.float64)
            tmp = np.empty(W, np.float32)
            _row_weights(depth[y], k, s, tau, wrow, dd, inv, tmp)
            for i in range(F):
                for x in range(W):
                    out[i, y, x] = wrow[i, x]

    @njit(parallel=True, cache=True, fastmath={'contract'})
    def _all_in_focus(frames, depth, k, s, tau, out):
        """frames: F x H x W x C; out: H x W x C, sum_i w_i frame_i clamped to [0, 1]."""
        F, H, W, C = frames.shape
        for y in prange(H):
            wrow = np.empty((F, W), np.float32)
            dd = np.empty(W, np.float64)
            inv = np.empty(W, np.float64)
            tmp = np.empty(W, np.float32)
            acc = np.empty((W, C), np.float32)
            _row_weights(depth[y], k, s, tau, wrow, dd, inv, tmp)
            # acc = w_0 f_0 + w_1 f_1 + ... in that order (as the reference's einsum);
            # the loops are written out for RGB and mono so that they vectorise
            for i in range(F):
                fi = frames[i, y]
                first = i == 0
                if C == 3:
                    for x in range(W):
                        wv = wrow[i, x]
                        if first:
                            acc[x, 0] = wv * fi[x, 0]
                            acc[x, 1] = wv * fi[x, 1]
                            acc[x, 2] = wv * fi[x, 2]
                        else:
                            acc[x, 0] += wv * fi[x, 0]
                            acc[x, 1] += wv * fi[x, 1]
                            acc[x, 2] += wv * fi[x, 2]
                elif C == 1:
                    for x in range(W):
                        if first:
                            acc[x, 0] = wrow[i, x] * fi[x, 0]
                        else:
                            acc[x, 0] += wrow[i, x] * fi[x, 0]
                else:
                    for x in range(W):
                        for c in range(C):
                            if first:
                                acc[x, c] = wrow[i, x] * fi[x, c]
                            else:
                                acc[x, c] += wrow[i, x] * fi[x, c]
            for x in range(W):
                for c in range(C):
                    out[y, x, c] = min(max(acc[x, c], _F0), _F1)

if _PREVIOUS_CACHE_DIR is not None:
    numba.config.CACHE_DIR = _PREVIOUS_CACHE_DIR


def exp32(x: np.ndarray) -> np.ndarray:
    """The kernels' float32 exp of a float32 array (any shape), for the tests."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    with _LOCK:
        _exp32_array(x.reshape(-1), out.reshape(-1))
    return out


def joint_bilateral(low: np.ndarray, guide: np.ndarray, guide_low: np.ndarray, yi: np.ndarray, wy: np.ndarray,
                    xi: np.ndarray, wx: np.ndarray, inv_r: float, floor: float) -> np.ndarray:
    """C x H x W joint bilateral upsampling of C x h x w ``low`` (all float32, C-contiguous).

    ``yi``/``wy`` (T x H) and ``xi``/``wx`` (T x W) are the sample rows/columns and
    spatial weights of the T vertical and T horizontal taps; ``inv_r`` = -1 / (2 sigma_r^2).
    """
    C = low.shape[0]
    H, W = guide.shape
    out = np.empty((C, H, W), np.float32)
    with _LOCK, _chunks():
        _jbu(low, guide, guide_low, yi, wy, xi, wx, np.float32(inv_r), np.float32(floor), out)
    return out


def area(src: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H x W float32 -> ``size`` (h, w) by area averaging, as ``refine._area`` (torch 'area')."""
    out = np.empty(size, np.float32)
    with _LOCK:
        _area(np.ascontiguousarray(src, dtype=np.float32), out)
    return out


def gray(rgb: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """H x W x 3 float32 -> H x W luma with the three ``weights``, as ``refine.to_gray``."""
    out = np.empty(rgb.shape[:2], np.float32)
    with _LOCK:
        _gray(rgb, np.asarray(weights, dtype=np.float32), out)
    return out


def _lens_args(focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px):
    """(k, s, tau) of :func:`_row_weights`, from the float32 values refine's numpy code rounds
    its inputs to, in float64 (coc_px's precision)."""
    s = np.asarray(focus_m, dtype=np.float32).reshape(-1).astype(np.float64)
    n = np.broadcast_to(np.asarray(f_numbers, dtype=np.float32), s.shape).astype(np.float64)
    f = np.float64(np.float32(focal_length_m))
    p = np.float64(np.float32(pixel_pitch_m))
    return np.ascontiguousarray(f * f / (n * (s - f)) / p), s, np.float32(tau_px)


def focus_weights(depth_m: np.ndarray, focus_m, f_numbers, focal_length_m: float, pixel_pitch_m: float,
                  tau_px: float) -> np.ndarray:
    """F x H x W float32 weights, as ``refine.focus_weights``."""
    d = np.ascontiguousarray(depth_m, dtype=np.float32)
    args = _lens_args(focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)
    out = np.empty((args[0].shape[0],) + d.shape, np.float32)
    with _LOCK, _chunks():
        _focus_weights(d, *args, out)
    return out


def all_in_focus(frames: np.ndarray, depth_m: np.ndarray, focus_m, f_numbers, focal_length_m: float,
                 pixel_pitch_m: float, tau_px: float) -> np.ndarray:
    """H x W x C float32 composite, as ``refine.all_in_focus``."""
    fr = np.ascontiguousarray(frames, dtype=np.float32)
    F, H, W, C = fr.shape
    d = np.ascontiguousarray(depth_m, dtype=np.float32)
    args = _lens_args(focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)
    out = np.empty((H, W, C), np.float32)
    with _LOCK, _chunks():
        _all_in_focus(fr, d, *args, out)
    return out
