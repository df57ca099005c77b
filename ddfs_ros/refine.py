"""Back to the camera's resolution: edge-aware upsampling and the all-in-focus image.

The network runs at ``processing_width`` (DESIGN.md section 5); depth and uncertainty
are brought back to the input size here, guided by a full-resolution image (the
reference frame or the all-in-focus composite), so that depth edges land on the
image edges instead of being smeared over a processing pixel or two.

Methods (chosen by measurement, see bench/RESULTS.md "Edge-aware upsampling"):

- ``bilinear``: the plain baseline.
- ``joint_bilateral``: joint bilateral upsampling (Kopf et al., SIGGRAPH 2007): each
  output pixel is a weighted mean of the low-resolution samples in a 4 x 4
  neighbourhood, weights = spatial Gaussian (in low-res px) x range Gaussian of the
  difference between the full-resolution guide at the output pixel and the
  low-resolution guide at the sample.  A sample across an intensity edge gets almost
  no weight, so the depth step follows the image edge.
- ``guided``: the fast guided filter (He & Sun 2015): the locally linear
  coefficients of depth on the guide are fitted at low resolution, upsampled
  bilinearly and applied to the full-resolution guide.

Everything is torch on CPU (or the maps' device), no ROS.  Shapes: low-resolution
maps are C x h x w, guides H x W (gray, float in [0, 1]).  On CPU, joint bilateral
upsampling, the all-in-focus composite and the gray and area-averaged guides run as
numba kernels (:mod:`ddfs_ros.refine_kernels`; same results to float32 rounding,
bench/refine.py measures them) when numba imports; the torch/numpy code here is their
reference and the path for CUDA tensors and without numba.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as Fnn

from . import refine_kernels
from .optics import coc_px

UPSAMPLE_METHODS = ('bilinear', 'joint_bilateral', 'guided')

#: Spatial sigma of the joint bilateral weights, in low-resolution pixels.
JBU_SIGMA_SPACE = 1.0
#: Range sigma of the joint bilateral weights (guide intensity in [0, 1]).
JBU_SIGMA_RANGE = 0.05
#: Least range weight (relative to a perfect colour match) of a joint bilateral sample.
JBU_RANGE_FLOOR = 1e-3
#: Guided filter radius (low-resolution px) and regulariser (intensity^2).
GUIDED_RADIUS = 2
GUIDED_EPS = 1e-3
#: Softness (px) of the per-frame blur weights of the all-in-focus composite.
AIF_TAU_PX = 1.0


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """H x W x C (C = 1 or 3, RGB) or H x W -> H x W luma (Rec. 601 weights)."""
    if image.dim() == 2:
        return image
    if image.shape[-1] == 1:
        return image[..., 0]
    w = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype, device=image.device)
    if image.dtype == torch.float32 and image.dim() == 3 and _kernels_for(image):
        return torch.from_numpy(refine_kernels.gray(image.detach().numpy(), w.numpy()))
    return image @ w


def _bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """C x h x w -> C x H x W, bilinear with half-pixel centres."""
    return Fnn.interpolate(x[None], size=size, mode='bilinear', align_corners=False)[0]


def _area(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """H x W -> h x w by area averaging (the guide at the processing resolution)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.dtype == torch.float32 and _kernels_for(x):
        return torch.from_numpy(refine_kernels.area(x.detach().numpy(), tuple(size)))
    return Fnn.interpolate(x[None, None], size=size, mode='area')[0, 0]


def joint_bilateral_upsample(low: torch.Tensor, guide: torch.Tensor, guide_low: Optional[torch.Tensor] = None,
                             sigma_space: float = JBU_SIGMA_SPACE, sigma_range: float = JBU_SIGMA_RANGE,
                             radius: int = 2) -> torch.Tensor:
    """Joint bilateral upsampling of C x h x w maps to the guide's H x W.

    Args:
        low: C x h x w float maps (depth, uncertainty ...), finite.
        guide: H x W full-resolution guide in [0, 1].
        guide_low: h x w guide at the maps' resolution (default: ``guide`` area-averaged).
        sigma_space: spatial sigma in low-resolution pixels.
        sigma_range: range sigma in guide units.
        radius: the neighbourhood is the (2 * radius) x (2 * radius) low-res samples
            around each output pixel's continuous low-res position.

    Returns:
        C x H x W float32.
    """
    C, h, w = low.shape
    H, W = guide.shape
    if guide_low is None:
        guide_low = _area(guide, (h, w))
    ys = _jbu_taps(H, h, sigma_space, radius, low.device)
    xs = _jbu_taps(W, w, sigma_space, radius, low.device)
    if not _kernels_for(low, guide, guide_low):
        return _joint_bilateral_torch(low, guide, guide_low, ys, xs, sigma_range)
    f32 = [np.ascontiguousarray(t.detach().numpy(), dtype=np.float32) for t in (low, guide, guide_low)]
    (yi, wy), (xi, wx) = [(torch.stack(i).numpy(), torch.stack(wt).numpy()) for i, wt in (ys, xs)]
    return torch.from_numpy(refine_kernels.joint_bilateral(*f32, yi, wy, xi, wx, -0.5 / sigma_range ** 2,
                                                           JBU_RANGE_FLOOR))


def _kernels_for(*tensors: torch.Tensor) -> bool:
    """Whether the numba kernels run (numba imports and everything is on the CPU)."""
    return refine_kernels.available() and all(t.device.type == 'cpu' for t in tensors)


def _jbu_taps(n_out: int, n_in: int, sigma_space: float, radius: int, dev) -> tuple[list, list]:
    """Per tap d = 1 - radius .. radius along one axis: the clamped low-res index of each
    output pixel (n_out, long) and its spatial weight (n_out, float32)."""
    # continuous low-res coordinates of the output pixel centres (half-pixel convention)
    c = (torch.arange(n_out, device=dev, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5
    i0 = torch.floor(c).long()
    inv_s = -0.5 / sigma_space ** 2
    idx = [(i0 + d).clamp_(0, n_in - 1) for d in range(1 - radius, radius + 1)]
    return idx, [torch.exp((c - i.float()) ** 2 * inv_s) for i in idx]


def _joint_bilateral_torch(low: torch.Tensor, guide: torch.Tensor, guide_low: torch.Tensor, ys, xs,
                           sigma_range: float) -> torch.Tensor:
    """The torch code of :func:`joint_bilateral_upsample` (the kernel's reference, the CUDA path)."""
    C = low.shape[0]
    H, W = guide.shape
    dev = low.device
    num = torch.zeros(C, H, W, dtype=torch.float32, device=dev)
    den = torch.zeros(H, W, dtype=torch.float32, device=dev)
    inv_r = -0.5 / sigma_range ** 2
    for yi, wy in zip(*ys):
        rows_g = guide_low.index_select(0, yi)                        # H x w: separable gathers,
        rows_l = low.index_select(1, yi)                              # no H*W index arrays
        for xi, wx in zip(*xs):
            g = rows_g.index_select(1, xi)                            # H x W
            # the floor keeps a pixel whose colour matches no sample (noise, a thin line)
            # at the spatial average instead of dividing ~0 by ~0
            wt = torch.exp((guide - g).square_().mul_(inv_r)).add_(JBU_RANGE_FLOOR)
            wt.mul_(wy[:, None]).mul_(wx[None, :])
            den += wt
            num.addcmul_(rows_l.index_select(2, xi), wt)
    return num / den


def _box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, ... x h x w, replicate borders."""
    k = 2 * r + 1
    shape = x.shape
    y = Fnn.avg_pool2d(Fnn.pad(x.reshape(-1, 1, *shape[-2:]), (r, r, r, r), mode='replicate'), k, stride=1)
    return y.reshape(shape)


def guided_upsample(low: torch.Tensor, guide: torch.Tensor, guide_low: Optional[torch.Tensor] = None,
                    radius: int = GUIDED_RADIUS, eps: float = GUIDED_EPS) -> torch.Tensor:
    """Fast guided filter upsampling of C x h x w maps to the guide's H x W (float32)."""
    C, h, w = low.shape
    H, W = guide.shape
    if guide_low is None:
        guide_low = _area(guide, (h, w))
    I = guide_low[None]                                   # 1 x h x w
    mean_i = _box(I, radius)
    mean_p = _box(low, radius)
    cov = _box(I * low, radius) - mean_i * mean_p
    var = _box(I * I, radius) - mean_i * mean_i
    a = cov / (var + eps)
    b = mean_p - a * mean_i
    a, b = _box(a, radius), _box(b, radius)
    return _bilinear(a, (H, W)) * guide[None] + _bilinear(b, (H, W))


def upsample(low: torch.Tensor, size: tuple[int, int], method: str = 'joint_bilateral',
             guide: Optional[torch.Tensor] = None) -> torch.Tensor:
    """C x h x w maps to C x H x W by ``method`` (see the module docstring).

    ``guide`` (H x W gray in [0, 1]) is needed by the edge-aware methods; without one
    they fall back to bilinear.  Maps already at ``size`` are returned as they are.
    """
    if method not in UPSAMPLE_METHODS:
        raise ValueError(f'upsample method must be one of {UPSAMPLE_METHODS}, got {method!r}')
    low = low.float()
    if tuple(low.shape[-2:]) == tuple(size):
        return low
    if method == 'bilinear' or guide is None:
        return _bilinear(low, size)
    guide = guide.to(low.device, torch.float32)
    if method == 'joint_bilateral':
        return joint_bilateral_upsample(low, guide)
    return guided_upsample(low, guide)


def focus_weights(depth_m: np.ndarray, focus_m: Sequence[float], f_numbers: Sequence[float],
                  focal_length_m: float, pixel_pitch_m: float, tau_px: float = AIF_TAU_PX) -> np.ndarray:
    """Per-frame in-focus weights at the estimated depth: F x H x W float32, sum 1 per pixel.

    The circle of confusion c_i (px) of the depth in frame i (thin lens, section 3 of
    DESIGN.md, unclamped) gives ``w_i = exp(-((c_i - min_k c_k) / tau)^2 / 2)``: the
    sharpest frame at that depth dominates, frames nearly as sharp blend in (less noise).
    Non-finite depth gets equal weights.
    """
    if refine_kernels.available():
        return refine_kernels.focus_weights(depth_m, focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)
    return _focus_weights_numpy(depth_m, focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)


def _focus_weights_numpy(depth_m: np.ndarray, focus_m: Sequence[float], f_numbers: Sequence[float],
                         focal_length_m: float, pixel_pitch_m: float, tau_px: float = AIF_TAU_PX) -> np.ndarray:
    """The numpy code of :func:`focus_weights` (the kernel's reference, the path without numba)."""
    d = np.asarray(depth_m, dtype=np.float32)
    ok = np.isfinite(d) & (d > 0)
    d = np.where(ok, d, 1.0).astype(np.float32)
    s = np.asarray(focus_m, dtype=np.float32)[:, None, None]
    n = np.broadcast_to(np.asarray(f_numbers, dtype=np.float32), (len(s),))[:, None, None]
    c = coc_px(d[None], s, np.float32(focal_length_m), n, np.float32(pixel_pitch_m)).astype(np.float32)
    c -= c.min(axis=0, keepdims=True)
    w = np.exp(-0.5 * (c / np.float32(tau_px)) ** 2)
    w[:, ~ok] = 1.0
    w /= w.sum(axis=0, keepdims=True)
    return w


def all_in_focus(frames: np.ndarray, depth_m: np.ndarray, focus_m: Sequence[float], f_numbers: Sequence[float],
                 focal_length_m: float, pixel_pitch_m: float, tau_px: float = AIF_TAU_PX) -> np.ndarray:
    """All-in-focus composite: F x H x W x C frames blended by :func:`focus_weights`.

    Args:
        frames: F x H x W x C float32 in [0, 1] at the depth map's resolution.
        depth_m: H x W estimated depth (m), before any sanity mask (the composite needs a
            depth everywhere; a wrong depth there only picks a blurrier frame).
        pixel_pitch_m: m/px of ``frames``.

    Returns:
        H x W x C float32 in [0, 1].
    """
    if refine_kernels.available():
        return refine_kernels.all_in_focus(frames, depth_m, focus_m, f_numbers, focal_length_m, pixel_pitch_m,
                                           tau_px)
    return _all_in_focus_torch(frames, depth_m, focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)


def _all_in_focus_torch(frames: np.ndarray, depth_m: np.ndarray, focus_m: Sequence[float],
                        f_numbers: Sequence[float], focal_length_m: float, pixel_pitch_m: float,
                        tau_px: float = AIF_TAU_PX) -> np.ndarray:
    """The numpy/torch code of :func:`all_in_focus` (the kernel's reference, the path without numba)."""
    w = _focus_weights_numpy(depth_m, focus_m, f_numbers, focal_length_m, pixel_pitch_m, tau_px)
    fr = torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32))
    out = torch.einsum('fhw,fhwc->hwc', torch.from_numpy(w), fr)
    return out.clamp_(0.0, 1.0).numpy()
