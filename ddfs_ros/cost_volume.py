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

from . import cost_kernels
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
    """Separable Gaussian blur of ... x H x W tensors with reflect borders (matches scipy).

    Two implementations of the same filter (same taps, same border rule):
    - ``'matmul'``: a product with a banded H x H (and W x W) matrix that has the
      reflect border folded in; device-agnostic torch, the path on CUDA.
    - ``'opencv'``: ``cv2.sepFilter2D`` with BORDER_REFLECT on CPU float tensors
      (zero-copy views), about 3x faster than the GEMMs on a CPU.
    ``'auto'`` takes OpenCV for CPU tensors when it imports.  Tests check both
    against ``scipy.ndimage.gaussian_filter``.
    """

    def __init__(self, sigma_px: float = SMOOTH_SIGMA_PX, method: str = 'auto') -> None:
        if method not in ('auto', 'matmul', 'opencv'):
            raise ValueError(f"method must be 'auto', 'matmul' or 'opencv', got {method!r}")
        self.taps = gaussian_taps(sigma_px)
        self.radius = len(self.taps) // 2
        self.method = method
        self._cv2 = None
        if method in ('auto', 'opencv'):
            try:
                import cv2
                self._cv2 = cv2
            except ImportError:
                if method == 'opencv':
                    raise
        self._cache: dict = {}

    def matrix(self, n: int) -> np.ndarray:
        """n x n smoothing matrix M such that M @ x blurs x along its first axis."""
        r = self.radius
        band = np.zeros((n, n + 2 * r))
        for i in range(n):
            band[i, i:i + 2 * r + 1] = self.taps
        fold = np.zeros((n + 2 * r, n))
        fold[np.arange(n + 2 * r), symmetric_index(n, r)] = 1.0
        return band @ fold

    def _matrices(self, H: int, W: int, device, dtype):
        key = (H, W, str(device), dtype)
        if key not in self._cache:
            self._cache[key] = (torch.as_tensor(self.matrix(H), dtype=dtype, device=device),
                                torch.as_tensor(self.matrix(W).T.copy(), dtype=dtype, device=device))
        return self._cache[key]

    def uses_opencv(self, x: torch.Tensor) -> bool:
        return (self._cv2 is not None and x.device.type == 'cpu'
                and x.dtype in (torch.float32, torch.float64) and self.radius <= min(x.shape[-2:]))

    def __call__(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        H, W = x.shape[-2:]
        if self.uses_opencv(x):
            cv2 = self._cv2
            src = x.contiguous().view(-1, H, W).numpy()
            res = torch.empty_like(x) if out is None else out
            dst = res.view(-1, H, W).numpy()
            k = self.taps.astype(np.float32 if x.dtype == torch.float32 else np.float64)
            for i in range(src.shape[0]):   # per image: OpenCV filters 2D arrays
                cv2.sepFilter2D(src[i], -1, k, k, dst=dst[i], borderType=cv2.BORDER_REFLECT)
            return res
        mh, mwt = self._matrices(H, W, x.device, x.dtype)
        res = torch.matmul(mh, torch.matmul(x, mwt))
        if out is not None:
            out.copy_(res)
            return out
        return res


def inverse_rfft2(spec: torch.Tensor, out: torch.Tensor, half: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``irfft2`` of ... x H x (W//2+1) spectra into ``out`` (... x H x W).

    With a ``half`` buffer it runs as a complex inverse FFT along H followed by a
    real one along W: on CPU about 30% faster than ``torch.fft.irfft2``, which copies
    its input first.  Without one it is plain ``irfft2`` (the better choice on CUDA).
    """
    if half is None:
        return torch.fft.irfft2(spec, s=out.shape[-2:], out=out)
    torch.fft.ifft(spec, dim=-2, out=half)
    return torch.fft.irfft(half, n=out.shape[-1], dim=-1, out=out)


def sum_over(x: torch.Tensor, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Sum over a short middle axis into ``out`` by adding slices (a handful of frames or
    channels): several times faster on CPU than a reduction kernel over that axis."""
    out.copy_(x.select(dim, 0))
    for i in range(1, x.shape[dim]):
        out.add_(x.select(dim, i))
    return out


class CostVolume:
    """Builds DDFS cost volumes; caches Wiener filters per (settings, hypotheses, size).

    Args:
        device: torch device of the computation (``'cpu'``, ``'cuda'``, ...).
        max_coc_px: clamp of the blur diameter; ``None`` = 10 px at 256 px width, scaled.
        balance: Wiener-Hunt lambda.
        sigma_px: Gaussian smoothing of mean and variance.
        chunk_bytes: size of one chunk of deblurred frames (bounds the memory; default
            4 MB on CPU, where the cache rewards small chunks, 256 MB on CUDA).
        cache_entries: how many filter banks to keep (one per camera setting).
        dtype: float32 (default) or float64.
        smoothing: Gaussian implementation, see :class:`GaussianSmoother`.
        fused: 'auto' runs everything after the inverse FFTs in the numba kernel of
            :mod:`ddfs_ros.cost_kernels` on CPU/float32 when numba imports; 'off' forces
            the torch path (the path on CUDA), 'on' insists on the kernel.
    """

    def __init__(self, device: str | torch.device = 'cpu', max_coc_px: Optional[float] = None,
                 balance: float = WIENER_BALANCE, sigma_px: float = SMOOTH_SIGMA_PX,
                 chunk_bytes: Optional[int] = None, cache_entries: int = 8, dtype=torch.float32,
                 smoothing: str = 'auto', fused: str = 'auto') -> None:
        self.device = torch.device(device)
        self.max_coc_px = max_coc_px
        self.balance = float(balance)
        # Small chunks keep the deblurred frames in the CPU cache; a GPU wants big batches.
        self.chunk_bytes = int(chunk_bytes or (256 << 20 if self.device.type == 'cuda' else 4 << 20))
        self.dtype = dtype
        self.smooth = GaussianSmoother(sigma_px, smoothing)
        self.split_ifft = self.device.type == 'cpu'
        if fused not in ('auto', 'on', 'off'):
            raise ValueError(f"fused must be 'auto', 'on' or 'off', got {fused!r}")
        cpu32 = self.device.type == 'cpu' and dtype == torch.float32
        if fused == 'on' and not (cpu32 and cost_kernels.available()):
            raise ValueError('the fused kernel needs numba, a CPU device and float32')
        self.fused = fused != 'off' and cpu32 and cost_kernels.available()
        self._fused_taps = self.smooth.taps.astype(np.float32)
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
    def depths_per_chunk(self, frames_shape: torch.Size) -> int:
        """Hypotheses per chunk so that one chunk of deblurred frames stays near ``chunk_bytes``."""
        per_depth = int(np.prod(frames_shape)) * torch.finfo(self.dtype).bits // 8
        return max(1, int(self.chunk_bytes // max(per_depth, 1)))

    @torch.no_grad()
    def raw_cost(self, frames: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        """Un-normalised cost sum_c sqrt(v), B x D x H x W, from B x F x C x H x W frames.

        Uses mean_i (J_i - mu)^2 = var_i(J) + (mean_i J - mu)^2 with the variance taken
        about the unsmoothed frame mean (two-pass, so float32 keeps its precision);
        only B x d x C x H x W maps are smoothed.
        """
        B, F, C, H, W = frames.shape
        D = filters.shape[0]
        spec = torch.fft.rfft2(frames).unsqueeze(0)             # 1 B F C H Wr
        out = frames.new_empty(B, D, H, W)
        step = self.depths_per_chunk(frames.shape)
        if self.fused:   # the kernel runs one (hypothesis, batch) pair per thread
            step = max(step, -(-cost_kernels.numba.get_num_threads() // B))
        # Reused buffers (hypothesis axis first so a partial chunk is a contiguous
        # slice): fresh multi-MB allocations cost page faults on every chunk.
        prod = torch.empty(step, B, F, C, H, W // 2 + 1, dtype=spec.dtype, device=spec.device)
        half = torch.empty_like(prod) if self.split_ifft else None
        deblurred = frames.new_empty(step, B, F, C, H, W)
        if self.fused:
            r = self.smooth.radius
            rows, cols = symmetric_index(H, r).astype(np.int64), symmetric_index(W, r).astype(np.int64)
        else:
            mean = frames.new_empty(step, B, C, H, W)
            var = torch.empty_like(mean)
            smoothed = torch.empty_like(mean)
        for j0 in range(0, D, step):
            d = min(step, D - j0)
            J = deblurred[:d]
            torch.mul(filters[j0:j0 + d, None, :, None], spec, out=prod[:d])
            inverse_rfft2(prod[:d], J, None if half is None else half[:d])   # d B F C H W
            if self.fused:
                cost_kernels.fused_cost(J.numpy(), self._fused_taps, rows, cols, out[:, j0:j0 + d].numpy())
                continue
            m, v, g = mean[:d], var[:d], smoothed[:d]
            sum_over(J, 2, m).div_(F)
            J.sub_(m.unsqueeze(2)).square_()
            sum_over(J, 2, v).div_(F)                          # variance about the frame mean
            mu = self.smooth(m, out=g)                          # d B C H W
            v.add_(m.sub_(mu).square_())                        # + (mean - mu)^2
            g = self.smooth(v, out=g).clamp_min_(0).sqrt_()
            sum_over(g, 2, out[:, j0:j0 + d].transpose(0, 1))  # over channels
        return out

    @staticmethod
    def normalise(cost: torch.Tensor) -> torch.Tensor:
        """tanh outlier removal then per-pixel min-max over the hypothesis axis (dim -3).

        Costs of textured pixels saturate tanh within 1e-6 of 1, where float32 has no
        resolution left.  With u = 1 - tanh(a C) = 2 sigmoid(-2 a C), which float32
        holds to full relative precision, (t - t_min) / (t_max - t_min + eps) is exactly
        (u_max - u) / (u_max - u_min + eps).
        """
        u = torch.sigmoid(cost * (-2.0 * TANH_GAIN)).mul_(2.0)
        u_max = u.amax(dim=-3, keepdim=True)
        u_min = u.amin(dim=-3, keepdim=True)
        return (u_max - u).div_(u_max - u_min + NORM_EPS)

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
