"""The DDFS cost volume (Fujimura et al., IJCV 2024), batched in torch on any device.

For every depth hypothesis d_j and frame i the frame is deconvolved by the Wiener-Hunt
filter of the disk PSF that an object at d_j would have in that frame::

    J_ij = IFFT( conj(H_ij) FFT(I_i) / (|H_ij|^2 + lambda |FFT(L)|^2) )

(L the 3x3 Laplacian, lambda = 0.01, circular boundary: exactly
``skimage.restoration.wiener(I, psf, balance=0.01, clip=False)``).  If d_j is the true
depth the deblurred frames agree.  Per channel, mu = G * mean_i J_ij and
v = G * mean_i (J_ij - mu)^2 (G a Gaussian, sigma 1 px, reflect borders); the cost is
``C_j = sum_c sqrt(v)``, then ``tanh(a C)`` removes outliers (a = atanh(0.999)/0.3) and
each pixel is min-max normalised over the D hypotheses.

This module is the "GPU preprocessor" of the inference node and the input builder of
training: the same code on CPU and CUDA (``device`` argument), no Python loop over
pixels, hypotheses or channels on the hot path (a loop over chunks of hypotheses
bounds the memory).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as Fnn

from .optics import coc_px, default_max_coc_px
from .psf import SpectrumCache, laplacian_spectrum, psf_spectra, radii_key
from .stack import FocalStack

WIENER_BALANCE = 0.01
SMOOTH_SIGMA_PX = 1.0
#: tanh gain: a cost of 0.3 maps to 0.999.
TANH_GAIN = math.atanh(0.999) / 0.3
NORM_EPS = 1e-8


def gaussian_taps(sigma_px: float, truncate: float = 4.0) -> np.ndarray:
    """1D Gaussian weights as ``scipy.ndimage.gaussian_filter`` uses them (radius = int(truncate*sigma+0.5))."""
    radius = int(truncate * float(sigma_px) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma_px) ** 2)
    return w / w.sum()


def symmetric_index(n: int, radius: int) -> np.ndarray:
    """Indices of a length-n axis padded by ``radius`` with scipy's 'reflect' (d c b a | a b c d) rule."""
    i = np.arange(-radius, n + radius)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i < n, i, period - 1 - i)


class GaussianSmoother:
    """Separable Gaussian blur of ... x H x W tensors with reflect borders (matches scipy)."""

    def __init__(self, sigma_px: float = SMOOTH_SIGMA_PX) -> None:
        self.taps = gaussian_taps(sigma_px)
        self.radius = len(self.taps) // 2
        self._cache: dict = {}

    def _setup(self, H: int, W: int, device, dtype):
        key = (H, W, str(device), dtype)
        if key not in self._cache:
            rows = torch.as_tensor(symmetric_index(H, self.radius), device=device)
            cols = torch.as_tensor(symmetric_index(W, self.radius), device=device)
            k = torch.as_tensor(self.taps, dtype=dtype, device=device)
            self._cache[key] = (rows, cols, k.view(1, 1, -1, 1), k.view(1, 1, 1, -1))
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        rows, cols, kv, kh = self._setup(H, W, x.device, x.dtype)
        lead = x.shape[:-2]
        y = x.reshape(-1, 1, H, W)
        y = Fnn.conv2d(y.index_select(2, rows), kv)
        y = Fnn.conv2d(y.index_select(3, cols), kh)
        return y.reshape(*lead, H, W)


class CostVolume:
    """Builds DDFS cost volumes; caches Wiener filters per (settings, hypotheses, size).

    Args:
        device: torch device of the computation (``'cpu'``, ``'cuda'``, ...).
        max_coc_px: clamp of the blur diameter; ``None`` = 10 px at 256 px width, scaled.
        balance: Wiener-Hunt lambda.
        sigma_px: Gaussian smoothing of mean and variance.
        chunk_depths: hypotheses processed at once (bounds memory: about
            ``chunk * F * C * H * W * 12`` bytes).
        cache_entries: how many filter banks to keep (one per camera setting).
    """

    def __init__(self, device: str | torch.device = 'cpu', max_coc_px: Optional[float] = None,
                 balance: float = WIENER_BALANCE, sigma_px: float = SMOOTH_SIGMA_PX,
                 chunk_depths: int = 8, cache_entries: int = 8, dtype=torch.float32) -> None:
        self.device = torch.device(device)
        self.max_coc_px = max_coc_px
        self.balance = float(balance)
        self.chunk_depths = int(chunk_depths)
        self.dtype = dtype
        self.smooth = GaussianSmoother(sigma_px)
        self.cache = SpectrumCache(cache_entries)

    # -- optics ---------------------------------------------------------------------
    def blur_radii(self, focus_m, f_numbers, focal_length_m: float, pixel_pitch_m: float,
                   depths_m, width_px: int) -> np.ndarray:
        """PSF radii (px), D x F: half the clamped circle of confusion of d_j in frame i."""
        max_px = self.max_coc_px if self.max_coc_px is not None else default_max_coc_px(width_px)
        d = np.asarray(depths_m, dtype=np.float64)[:, None]
        s = np.asarray(focus_m, dtype=np.float64)[None, :]
        n = np.broadcast_to(np.asarray(f_numbers, dtype=np.float64), s.shape)
        return coc_px(d, s, focal_length_m, n, pixel_pitch_m, max_px) / 2.0

    def wiener_filters(self, radii_px: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
        """conj(H) / (|H|^2 + lambda |L|^2) for every radius: radii.shape x H x (W//2+1), cached."""
        key = (radii_key(radii_px), tuple(shape), str(self.device), self.dtype, self.balance)

        def build() -> torch.Tensor:
            h = psf_spectra(radii_px, shape, self.device, self.dtype)
            lap = laplacian_spectrum(shape, self.device, self.dtype)
            return torch.conj(h) / (h.real ** 2 + h.imag ** 2 + self.balance * (lap.real ** 2 + lap.imag ** 2))

        return self.cache.get(key, build)

    # -- the volume -------------------------------------------------------------------
    @torch.no_grad()
    def raw_cost(self, frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """Un-normalised cost sum_c sqrt(v), B x D x H x W, from B x F x C x H x W frames."""
        B, F, C, H, W = frames.shape
        D = filters.shape[0]
        spec = torch.fft.rfft2(frames)                          # B F C H Wr
        out = frames.new_empty(B, D, H, W)
        for j0 in range(0, D, self.chunk_depths):
            wf = filters[j0:j0 + self.chunk_depths]             # d F H Wr
            deblurred = torch.fft.irfft2(wf[None, :, :, None] * spec[:, None], s=(H, W))  # B d F C H W
            mu = self.smooth(deblurred.mean(dim=2))             # B d C H W
            deblurred.sub_(mu.unsqueeze(2)).square_()
            var = self.smooth(deblurred.mean(dim=2))
            out[:, j0:j0 + wf.shape[0]] = var.clamp_min_(0).sqrt_().sum(dim=2)
        return out

    @staticmethod
    def normalise(cost: torch.Tensor) -> torch.Tensor:
        """tanh outlier removal then per-pixel min-max over the hypothesis axis (dim -3)."""
        c = torch.tanh(TANH_GAIN * cost)
        lo = c.amin(dim=-3, keepdim=True)
        hi = c.amax(dim=-3, keepdim=True)
        return (c - lo) / (hi - lo + NORM_EPS)

    def __call__(self, frames, focus_m: Sequence[float], f_numbers, focal_length_m: float,
                 pixel_pitch_m: float, depths_m: Sequence[float]) -> torch.Tensor:
        """The normalised cost volume.

        Args:
            frames: F x C x H x W or B x F x C x H x W, float in [0, 1] (numpy or torch).
                A batch shares one camera setting.
            focus_m: F focus distances (m).
            f_numbers: a scalar or F per-frame f-numbers.
            focal_length_m: f (m).
            pixel_pitch_m: p (m/px) of these frames.
            depths_m: D hypotheses (m).

        Returns:
            D x H x W (or B x D x H x W) float32 on ``self.device``; low = likely depth.
        """
        x = torch.as_tensor(frames).to(self.device, self.dtype)
        batched = x.dim() == 5
        if not batched:
            x = x.unsqueeze(0)
        if x.dim() != 5:
            raise ValueError(f'frames must be (B x) F x C x H x W, got {tuple(x.shape)}')
        H, W = x.shape[-2:]
        radii = self.blur_radii(focus_m, f_numbers, focal_length_m, pixel_pitch_m, depths_m, W)
        vol = self.normalise(self.raw_cost(x, self.wiener_filters(radii, (H, W))))
        return vol if batched else vol[0]

    def from_stack(self, stack: FocalStack, depths_m: Sequence[float]) -> torch.Tensor:
        """D x H x W cost volume of a :class:`FocalStack`."""
        frames = np.ascontiguousarray(np.moveaxis(stack.frames, -1, 1))  # F C H W
        return self(frames, stack.focus_m, stack.per_frame_f_numbers(), stack.lens.focal_length_m,
                    stack.lens.pixel_pitch_m, depths_m)
