"""Disk point-spread functions and their spectra.

A defocused point images to a disk of diameter ``c_px`` (see :mod:`ddfs_ros.optics`),
so the PSF is a pillbox of radius ``r = c_px / 2`` pixels.  Rim pixels get the
fraction of their area inside the disk (anti-aliased), the kernel is normalised to
sum 1, and ``r < 0.5`` is a delta (the disk fits inside one pixel).

Spectra follow ``skimage.restoration.uft.ir2tf``: the kernel is zero-padded to the
image size and rolled so that its centre sits at pixel (0, 0) (circular boundary),
then transformed with a plain (non-unitary) real FFT.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

#: Samples per pixel along x for the rim-area integral (exact along y).
AREA_SAMPLES = 64
DELTA_RADIUS_PX = 0.5


def disk_psfs(radii_px: Sequence[float] | np.ndarray, half_size: int | None = None) -> np.ndarray:
    """Anti-aliased disk PSFs for many radii at once.

    Args:
        radii_px: K radii in pixels (>= 0).
        half_size: R, the kernels are (2R+1) x (2R+1); default ``ceil(max radius)``.

    Returns:
        K x (2R+1) x (2R+1) float64, each summing to 1.

    The area of the disk inside pixel [x0, x1] x [y0, y1] is the integral over x of the
    overlap of [y0, y1] with the disk's chord [-h(x), h(x)], h = sqrt(r^2 - x^2): exact
    along y, midpoint rule with ``AREA_SAMPLES`` points along x.
    """
    r = np.atleast_1d(np.asarray(radii_px, dtype=np.float64))
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError('PSF radii must be finite and >= 0')
    big = max(float(r.max()), DELTA_RADIUS_PX)
    R = int(math.ceil(big)) if half_size is None else int(half_size)
    offs = np.arange(-R, R + 1, dtype=np.float64)
    # x samples inside each pixel column: (2R+1) x S
    t = (np.arange(AREA_SAMPLES) + 0.5) / AREA_SAMPLES - 0.5
    xs = offs[:, None] + t[None, :]
    h = np.sqrt(np.clip(r[:, None, None] ** 2 - xs[None] ** 2, 0.0, None))  # K x X x S
    y0 = offs[None, :, None, None] - 0.5                                     # 1 x Y x 1 x 1
    y1 = y0 + 1.0
    overlap = np.clip(np.minimum(y1, h[:, None]) - np.maximum(y0, -h[:, None]), 0.0, None)
    area = overlap.mean(axis=-1)                                             # K x Y x X
    # Midpoint in x, exact in y: average with the transpose so the kernel keeps the
    # disk's symmetry (and the two quadrature errors partly cancel).
    area = 0.5 * (area + np.swapaxes(area, 1, 2))
    delta = r < DELTA_RADIUS_PX
    if np.any(delta):
        area[delta] = 0.0
        area[delta, R, R] = 1.0
    return area / area.sum(axis=(1, 2), keepdims=True)


def gaussian_psfs(radii_px: Sequence[float] | np.ndarray, half_size: int | None = None) -> np.ndarray:
    """Gaussian PSFs with the second moment of the disk of the same radius (std ``r / 2``).

    A stand-in for lenses whose blur spot is not a sharp-edged pillbox (aberrations,
    diffraction, apodisation): same blur size, different shape.  Pixel values are the
    Gaussian's integral over each pixel (exact, by ``erf``); ``r < 0.5`` is a delta as
    for the disk.  Each kernel is cut at its own 3 std (``ceil(1.5 r)``, at most
    ``half_size``) and normalised there, so it does not depend on the other radii it is
    computed with.  Returns K x (2R+1) x (2R+1) float64 summing to 1, R defaulting to
    ``ceil(1.5 * max radius)``.
    """
    r = np.atleast_1d(np.asarray(radii_px, dtype=np.float64))
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError('PSF radii must be finite and >= 0')
    big = max(float(r.max()), DELTA_RADIUS_PX)
    R = int(math.ceil(1.5 * big)) if half_size is None else int(half_size)
    out = []
    for ri in r:
        own = min(R, int(math.ceil(1.5 * max(float(ri), DELTA_RADIUS_PX))))
        if ri < DELTA_RADIUS_PX:
            k = np.zeros((2 * own + 1, 2 * own + 1))
            k[own, own] = 1.0
        else:
            edges = np.arange(-own, own + 2, dtype=np.float64) - 0.5                 # 2 own + 2 pixel edges
            cdf = 0.5 * (1.0 + np.vectorize(math.erf)(edges / (math.sqrt(2.0) * ri / 2.0)))
            p1 = np.diff(cdf)
            k = p1[:, None] * p1[None, :]
        out.append(k / k.sum())
    return _centred(out, R)


def _centred(kernels: Sequence[np.ndarray], R: int) -> np.ndarray:
    """Odd square kernels of at most (2R+1) px, each zero-padded to (2R+1) x (2R+1): K x (2R+1) x (2R+1)."""
    out = np.zeros((len(kernels), 2 * R + 1, 2 * R + 1), dtype=np.float64)
    for i, k in enumerate(kernels):
        m = R - k.shape[0] // 2
        out[i, m:m + k.shape[0], m:m + k.shape[1]] = k
    return out


#: Extra half-width (px) of a ``disk_otf`` kernel beyond the disk: its band-limited edge rings a little.
OTF_MARGIN_PX = 3


def disk_otf(radius_px: float, shape: tuple[int, int]) -> np.ndarray:
    """Optical transfer function of a continuous disk of ``radius_px`` on an H x W FFT grid.

    ``2 J1(2 pi r rho) / (2 pi r rho)`` at radial frequency ``rho`` (cycles/px), 1 at
    ``rho = 0`` and for ``r = 0``: real, even, H x W float64 in ``np.fft.fftfreq`` order.
    """
    from scipy.special import j1
    H, W = shape
    rho = np.hypot(np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :])
    x = 2.0 * np.pi * float(radius_px) * rho
    out = np.ones_like(x)
    nz = x > 1e-9
    out[nz] = 2.0 * j1(x[nz]) / x[nz]
    return out


def disk_otf_psfs(radii_px: Sequence[float] | np.ndarray, half_size: int | None = None) -> np.ndarray:
    """The thin-lens disk as a band-limited image sees it: no dead zone below ``r = 0.5``.

    :func:`disk_psfs` integrates the disk over each pixel as if the scene were constant
    inside a pixel, so any disk that fits inside one pixel (``r < 0.5``) is a delta and a
    small defocus leaves the image unchanged.  A real scene has detail between the
    samples, and a disk of radius 0.3 px already lowers the contrast at Nyquist by ~10 %.
    Here the image is taken as band-limited samples (sinc reconstruction): the kernel is
    the continuous disk's OTF (:func:`disk_otf`) brought back to pixels, cropped to
    ``R = ceil(r) + OTF_MARGIN_PX`` (each kernel its own, at most ``half_size``) and
    normalised to sum 1.  Close to the pixel-area disk
    for large ``r`` (the band limit rings a little at the rim, and the kernel has small
    negative lobes); ``r = 0`` is the delta.  The renderer does not crop: it samples
    :func:`disk_otf` on its canvas.  Returns K x (2R+1) x (2R+1) float64.
    """
    r = np.atleast_1d(np.asarray(radii_px, dtype=np.float64))
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError('PSF radii must be finite and >= 0')
    R = int(math.ceil(float(r.max()))) + OTF_MARGIN_PX if half_size is None else int(half_size)
    out = []
    for ri in r:
        # Cut at the kernel's own size: with a crop set by the call's largest radius, how much of
        # the ringing tail is kept (so the kernel) would depend on the other radii.
        own = min(R, int(math.ceil(float(ri))) + OTF_MARGIN_PX)
        n = 2 * (2 * own + 1)                # grid twice the kernel: the sinc tails wrap outside the crop
        k = np.fft.fftshift(np.real(np.fft.ifft2(disk_otf(ri, (n, n)))))
        c = n // 2
        k = k[c - own:c + own + 1, c - own:c + own + 1]
        out.append(k / k.sum())
    return _centred(out, R)


#: PSF shapes the renderer can draw: the thin-lens disk (the model of every volume), the
#: same disk without the dead zone below half a pixel (``disk_otf``: a band-limited image),
#: and a Gaussian of the same second moment (a lens that departs from the disk).
PSF_SHAPES = {'disk': disk_psfs, 'disk_otf': disk_otf_psfs, 'gaussian': gaussian_psfs}
#: Shapes whose ``r < DELTA_RADIUS_PX`` is a delta.
DELTA_SHAPES = ('disk', 'gaussian')


def disk_psf(radius_px: float) -> np.ndarray:
    """One anti-aliased disk PSF, (2R+1) x (2R+1) with R = ceil(radius), sums to 1."""
    return disk_psfs([radius_px])[0]


def kernels_to_spectra(kernels: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Spectra of centred odd-size kernels on an H x W circular grid.

    Args:
        kernels: ... x k x k real tensor, k odd, centre at (k//2, k//2).
        shape: (H, W) of the image.

    Returns:
        ... x H x (W//2 + 1) complex tensor (``torch.fft.rfft2`` of the rolled kernel),
        on the kernels' device.
    """
    H, W = shape
    k = kernels.shape[-1]
    R = k // 2
    if k > H or k > W:
        raise ValueError(f'PSF of size {k} does not fit an image of {H} x {W}')
    lead = kernels.shape[:-2]
    padded = kernels.new_zeros(*lead, H, W)
    idx = torch.arange(-R, R + 1, device=kernels.device)
    rows = (idx % H)[:, None]
    cols = (idx % W)[None, :]
    padded[..., rows, cols] = kernels
    return torch.fft.rfft2(padded)


def laplacian_spectrum(shape: tuple[int, int], device='cpu', dtype=torch.float32) -> torch.Tensor:
    """Spectrum of the 3x3 Laplacian regulariser (centre 4, four neighbours -1), H x (W//2+1)."""
    lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=dtype, device=device)
    return kernels_to_spectra(lap, shape)


class SpectrumCache:
    """A small LRU of PSF spectra keyed by (radii, image size, device, dtype).

    Radii are rounded to 1e-6 px for the key, so repeated stacks with the same camera
    settings and hypotheses reuse the same spectra.
    """

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._store: OrderedDict = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key, build):
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        value = build()
        self._store[key] = value
        if len(self._store) > self.max_entries:
            self._store.popitem(last=False)
        return value

    def clear(self) -> None:
        self._store.clear()


def radii_key(radii_px: np.ndarray) -> bytes:
    """Hashable key of a radius array (rounded to 1e-6 px)."""
    return np.round(np.asarray(radii_px, dtype=np.float64), 6).tobytes() + str(np.shape(radii_px)).encode()


def psf_spectra(radii_px: np.ndarray, shape: tuple[int, int], device='cpu',
                dtype=torch.float32) -> torch.Tensor:
    """Spectra of disk PSFs for an array of radii: radii.shape + (H, W//2+1), complex."""
    radii = np.asarray(radii_px, dtype=np.float64)
    kernels = torch.as_tensor(disk_psfs(radii.reshape(-1)), dtype=dtype, device=device)
    return kernels_to_spectra(kernels, shape).reshape(*radii.shape, shape[0], shape[1] // 2 + 1)
