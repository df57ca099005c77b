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

**The focus curve** (``mode='focus_curve'``, engines whose manifest lists it in
``focus_volume_modes``).  The sharpness model above is coarse where blur is small: with
a few pixels of blur across the whole sweep ``g`` hardly changes between hypotheses and
the volume is nearly flat (on the shared ``motorcycle_sweep`` its argmax alone scores
AbsRel 0.255, against 0.059 for the focus-measure baseline).  The focus curve needs no
blur model at all: it is the focus measure as a function of the focus position,
interpolated in dioptres to each hypothesis, the classical depth-from-focus estimate
(``ddfs_ros.baselines``) spread over the hypotheses:

- inside the sweep, ``V_j`` is the parabola (in dioptres) through the normalised focus
  measure of the three frames nearest to hypothesis j (two frames: the line through
  them); its maximum over j is the baseline's parabolic peak (argmax alone: AbsRel 0.054
  on ``motorcycle_sweep``);
- outside the sweep the end frame's value falls off linearly, by half of it over a
  sweep's width, so a pixel sharpest in the end frame leans past the sweep's end
  without a parabola's extrapolation running away;
- frames with the same focus distance (and other f-numbers) are summed; with fewer than
  two distinct focus distances (an aperture pair) there is no curve and the volume is 0.

It is linear in the focus measure (a D x F matrix of interpolation weights that depends
only on the focus distances and the hypotheses), so it costs one small matrix product,
works for any F and schedule, and keeps the scale identity (only dioptre ratios enter).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as Fnn

from .optics import coc_px

#: Volumes :func:`focus_volume` can stack, in the order an engine's manifest lists them.
FOCUS_VOLUME_MODES = ('thin_lens', 'focus_curve')
#: Outside the sweep the focus curve falls off by this fraction of the end frame's value
#: per sweep width (in dioptres) beyond the end.
CURVE_FALLOFF = 0.5
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


def focus_curve_weights(focus_m: Sequence[float], depths_m: Sequence[float]) -> np.ndarray:
    """D x F interpolation weights of the focus curve (module docstring), in the frames' order.

    Row j holds the Lagrange weights, in dioptres, of the three distinct focus positions
    nearest to hypothesis j (two with two distinct positions), summed onto every frame
    focused there; outside the sweep, the end position's weight ``1 - CURVE_FALLOFF *
    distance / sweep width``.  All zero with fewer than two distinct focus distances.
    """
    focus = np.asarray(focus_m, dtype=np.float64).ravel()
    uj = 1.0 / np.asarray(depths_m, dtype=np.float64).ravel()
    u_all = 1.0 / focus
    u, inverse = np.unique(np.round(u_all, 12), return_inverse=True)          # ascending dioptres
    W = np.zeros((uj.size, u.size))
    if u.size >= 2:
        span = u[-1] - u[0]
        for j, x in enumerate(uj):
            if x < u[0] or x > u[-1]:
                e = 0 if x < u[0] else u.size - 1
                W[j, e] = max(0.0, 1.0 - CURVE_FALLOFF * abs(x - u[e]) / span)
                continue
            c = int(np.clip(np.argmin(np.abs(u - x)), 1, u.size - 2)) if u.size >= 3 else 0
            ks = [c - 1, c, c + 1] if u.size >= 3 else [0, 1]
            for a in ks:
                W[j, a] = np.prod([(x - u[b]) / (u[a] - u[b]) for b in ks if b != a])
    return W[:, inverse]


def focus_volume(frames, focus_m: Sequence[float], f_numbers, focal_length_m: float, pixel_pitch_m: float,
                 depths_m: Sequence[float], window: int = FOCUS_WINDOW_PX,
                 modes: Sequence[str] = ('thin_lens',)) -> torch.Tensor:
    """The normalised focus volume (see the module docstring).

    Args:
        frames: F x C x H x W float in [0, 1] (numpy or torch; any frame order).
        focus_m: F focus distances (m), in the frames' order.
        f_numbers: scalar or F per-frame f-numbers.
        focal_length_m: f (m).
        pixel_pitch_m: p (m/px) of these frames.
        depths_m: D hypotheses (m).
        modes: the volumes to stack, from :data:`FOCUS_VOLUME_MODES` (``thin_lens``: the
            sharpness-model projection; ``focus_curve``: the interpolated focus curve).

    Returns:
        (len(modes) * D) x H x W float32 in [0, 1] on the frames' device, one D block per
        mode (1 = hypothesis j fits the frames' sharpness best; an aperture pair's
        focus-curve block is 0).
    """
    unknown = [m for m in modes if m not in FOCUS_VOLUME_MODES]
    if unknown or not modes:
        raise ValueError(f'focus volume modes must be from {FOCUS_VOLUME_MODES}, got {list(modes)}')
    x = torch.as_tensor(frames)
    if x.dtype != torch.float32:
        x = x.float()
    fm = sum_modified_laplacian(x, window)                                   # F x H x W
    m = fm / (fm.sum(dim=0, keepdim=True) + 1e-6)
    blocks = []
    for mode in modes:
        if mode == 'thin_lens':
            w = predicted_sharpness(focus_m, f_numbers, focal_length_m, pixel_pitch_m, depths_m).T   # D x F
        else:
            w = focus_curve_weights(focus_m, depths_m)                                              # D x F
        v = torch.einsum('fhw,df->dhw', m, torch.as_tensor(w, dtype=torch.float32, device=x.device))
        lo = v.amin(dim=0, keepdim=True)
        hi = v.amax(dim=0, keepdim=True)
        blocks.append((v - lo) / (hi - lo + 1e-8))
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=0)
