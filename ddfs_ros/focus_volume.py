"""A classical focus volume on the depth hypotheses: what the focus measure knows, camera-invariant.

The DDFS cost volume says, per depth hypothesis, how well the frames agree after
deblurring.  A hand-made focus measure (sum-modified Laplacian) says which frame is
sharpest.  A network that gets both starts from what the classical method already
knows (issue 9: a cost-volume-only network stayed 15 % behind the focus measure; given
the focus measure it caught up).  To keep the camera invariance of DDFS the focus
measure is not handed over per frame (that would tie the network to F and to one
focus schedule) but projected onto the same D hypotheses as the cost volume, through
the thin lens:

- per frame i and pixel, the normalised focus measure ``m_i = FM_i / sum_k FM_k``
  (``FM``: sum-modified Laplacian of the luminance over a 9 x 9 window);
- per frame i and hypothesis j the sharpness the thin lens predicts,
  ``q_ij = g(c_px(d_j; s_i, f, N_i, p))`` with ``g(c) = 1 / (1 + (c / c0)^2)``,
  normalised over the frames (``c0 = 2 px``: a disk of 2 px diameter halves the
  high-frequency energy of a natural image, roughly);
- the focus volume ``V_j = sum_i m_i q_ij``: large where the frames that hypothesis j
  says should be sharp are the sharp ones; then min-max normalised per pixel over j
  like the cost volume.

It works for any F >= 2, any focus schedule and per-frame f-numbers (an aperture pair
at one focus distance: the f/8 frame is predicted sharper far from the focus plane),
because the camera enters only through ``c_px``.  Everything is torch on the frames'
device: training and the node share this code.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as Fnn

from .optics import coc_px

#: Blur diameter (px) at which the predicted sharpness halves.
SHARPNESS_HALF_PX = 2.0
#: Side (px) of the window the sum-modified Laplacian is summed over.
FOCUS_WINDOW_PX = 9
_LUMA = (0.299, 0.587, 0.114)


def sum_modified_laplacian(frames: torch.Tensor, window: int = FOCUS_WINDOW_PX) -> torch.Tensor:
    """Sum-modified Laplacian (Nayar & Nakagawa) of each frame's luminance.

    Args:
        frames: ... x C x H x W float in [0, 1] (C = 1 or 3).
        window: side of the square summing window (px, odd).

    Returns:
        ... x H x W float, window mean of ``|2I - I(x-1) - I(x+1)| + |2I - I(y-1) - I(y+1)|``.
    """
    lead = frames.shape[:-3]
    C, H, W = frames.shape[-3:]
    x = frames.reshape(-1, C, H, W)
    if C == 3:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(dim=1, keepdim=True)
    elif C != 1:
        x = x.mean(dim=1, keepdim=True)
    xp = Fnn.pad(x, (1, 1, 1, 1), mode='replicate')
    ml = (2 * x - xp[..., 1:-1, :-2] - xp[..., 1:-1, 2:]).abs() + (2 * x - xp[..., :-2, 1:-1] - xp[..., 2:, 1:-1]).abs()
    r = window // 2
    ml = Fnn.avg_pool2d(Fnn.pad(ml, (r, r, r, r), mode='replicate'), window, stride=1)
    return ml.reshape(*lead, H, W)


def predicted_sharpness(focus_m: Sequence[float], f_numbers, focal_length_m: float, pixel_pitch_m: float,
                        depths_m: Sequence[float], half_px: float = SHARPNESS_HALF_PX) -> np.ndarray:
    """F x D thin-lens sharpness ``g(c_px)`` of frame i at hypothesis j, normalised over frames."""
    focus = np.asarray(focus_m, dtype=np.float64).ravel()
    N = np.broadcast_to(np.asarray(f_numbers, dtype=np.float64), focus.shape)
    d = np.asarray(depths_m, dtype=np.float64).ravel()
    c = coc_px(d[None, :], focus[:, None], focal_length_m, N[:, None], pixel_pitch_m)
    g = 1.0 / (1.0 + (np.asarray(c) / half_px) ** 2)
    return g / g.sum(axis=0, keepdims=True)


def focus_volume(frames, focus_m: Sequence[float], f_numbers, focal_length_m: float, pixel_pitch_m: float,
                 depths_m: Sequence[float], window: int = FOCUS_WINDOW_PX) -> torch.Tensor:
    """The normalised focus volume (see the module docstring).

    Args:
        frames: F x C x H x W float in [0, 1] (numpy or torch; any frame order).
        focus_m: F focus distances (m), in the frames' order.
        f_numbers: scalar or F per-frame f-numbers.
        focal_length_m: f (m).
        pixel_pitch_m: p (m/px) of these frames.
        depths_m: D hypotheses (m).

    Returns:
        D x H x W float32 in [0, 1] on the frames' device (1 = the frames' sharpness
        pattern fits hypothesis j best).
    """
    x = torch.as_tensor(frames)
    if x.dtype != torch.float32:
        x = x.float()
    fm = sum_modified_laplacian(x, window)                                   # F x H x W
    m = fm / (fm.sum(dim=0, keepdim=True) + 1e-6)
    q = torch.as_tensor(predicted_sharpness(focus_m, f_numbers, focal_length_m, pixel_pitch_m, depths_m),
                        dtype=torch.float32, device=x.device)               # F x D
    v = torch.einsum('fhw,fd->dhw', m, q)
    lo = v.amin(dim=0, keepdim=True)
    hi = v.amax(dim=0, keepdim=True)
    return (v - lo) / (hi - lo + 1e-8)
