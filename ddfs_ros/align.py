"""Stack alignment: warp every frame of a focal stack onto a reference frame (no ROS here).

A real focus sweep does not line up: changing focus changes the magnification (focus
*breathing*, typically 1-5 % over a sweep) and a hand-held or robot-mounted camera
moves between frames.  Per frame we estimate a similarity (scale, optional rotation,
shift, in pixels of the published frame) that maps reference coordinates into the
frame, and resample the frame onto the reference grid.

Why ECC on blurred copies: the frames differ in defocus by design, so an intensity
based aligner must not mistake blur for motion.  OpenCV's enhanced correlation
coefficient (``cv2.findTransformECC``) maximises a zero-mean normalised correlation,
which is invariant to the contrast loss that defocus causes, and a disk PSF is
symmetric, so it moves no edge.  Both images are Gaussian-smoothed first (the common
blur swamps the frame-to-frame blur differences) and the estimate runs coarse to fine
on a pyramid, which brings ±several pixels of motion into ECC's capture range.  ECC
has no 4-parameter similarity model, so the affine estimate is projected onto the
nearest similarity (Frobenius norm of the linear part), keeping where the image centre
goes.

Resampling is a low-pass filter (even Lanczos loses contrast near Nyquist at fractional
positions), so warping every frame but the reference would leave the reference the
sharpest frame of the stack, and a focus measure would then pick it everywhere
(measured: the focus measure's AbsRel went from 0.40 misaligned to 0.48 "aligned").
:func:`align_stack` therefore gives every frame, the reference included, the same
small Gaussian low-pass (:data:`EQUALISE_SIGMA_PX`) after the warp, which swamps the
phase-dependent smoothing of the interpolation; frames whose estimated similarity is
the identity within :data:`IDENTITY_TOLERANCE_PX` are not resampled, and a stack with
no frame to resample is returned untouched.

Pixels of the reference that some frame does not see are marked invalid (the border
the warp invalidates); the inference pipeline sets depth NaN there (REP 118 / 117).

:func:`misalign_stack` makes the inverse problem for tests and simulation: breathing
plus random jitter applied to a rendered, perfectly aligned stack.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple, Optional, Sequence

import cv2
import numpy as np

ALIGN_MODES = ('off', 'similarity')
#: Gaussian std (px) applied to every frame of an aligned stack: larger than the
#: interpolation's own smoothing, so all frames end with about the same transfer function.
EQUALISE_SIGMA_PX = 0.6
#: A similarity that moves no pixel of the frame by more than this (px) is the identity.
IDENTITY_TOLERANCE_PX = 0.05


@dataclass
class Similarity:
    """Similarity from reference pixel coordinates to a frame's pixel coordinates.

    ``x_frame = scale * R(rotation) * (x_ref - c) + c + (tx, ty)``, with ``c`` the image
    centre ((W-1)/2, (H-1)/2), so that ``frame(x_frame) = reference(x_ref)``.  A frame
    whose content is magnified by 3 % by breathing has ``scale`` 1.03.

    Attributes:
        scale: dimensionless.
        rotation_deg: degrees, counter-clockwise in image coordinates (y down).
        tx_px, ty_px: shift of the image centre (px).
        ecc: correlation coefficient ECC reached (1 = identical), NaN if ECC failed.
        ok: False when ECC did not converge and the phase-correlation shift was used.
    """

    scale: float = 1.0
    rotation_deg: float = 0.0
    tx_px: float = 0.0
    ty_px: float = 0.0
    ecc: float = float('nan')
    ok: bool = True

    def matrix(self, width: int, height: int) -> np.ndarray:
        """2 x 3 float32 affine matrix, reference -> frame pixel coordinates."""
        c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        th = math.radians(self.rotation_deg)
        A = self.scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
        t = c + np.array([self.tx_px, self.ty_px]) - A @ c
        return np.hstack([A, t[:, None]]).astype(np.float32)

    def as_dict(self) -> dict:
        return asdict(self)


class AlignResult(NamedTuple):
    """Output of :func:`align_stack` (unpacks as ``frames, valid, params``).

    Attributes:
        frames: F x H x W x C float32, every frame resampled onto the reference grid.
        valid: H x W bool, True where every frame saw the reference pixel.
        params: F :class:`Similarity`, reference -> frame (identity for the reference).
    """

    frames: np.ndarray
    valid: np.ndarray
    params: list


def _gray(frame: np.ndarray) -> np.ndarray:
    f = np.asarray(frame, dtype=np.float32)
    if f.ndim == 3 and f.shape[2] == 3:
        return cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(f.reshape(f.shape[0], f.shape[1]))


def _to_similarity(warp: np.ndarray, width: int, height: int, rotation: bool) -> np.ndarray:
    """Nearest similarity (2 x 3) to an affine ``warp``, keeping the image centre's image."""
    A, t = warp[:, :2].astype(np.float64), warp[:, 2].astype(np.float64)
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    a = 0.5 * (A[0, 0] + A[1, 1])
    b = 0.5 * (A[1, 0] - A[0, 1]) if rotation else 0.0
    S = np.array([[a, -b], [b, a]])
    t_new = A @ c + t - S @ c
    return np.hstack([S, t_new[:, None]]).astype(np.float32)


def _from_matrix(M: np.ndarray, width: int, height: int, ecc: float, ok: bool) -> Similarity:
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    a, b = float(M[0, 0]), float(M[1, 0])
    shift = M[:, :2].astype(np.float64) @ c + M[:, 2] - c
    return Similarity(scale=math.hypot(a, b), rotation_deg=math.degrees(math.atan2(b, a)),
                      tx_px=float(shift[0]), ty_px=float(shift[1]), ecc=float(ecc), ok=ok)


def estimate_similarity(reference: np.ndarray, frame: np.ndarray, rotation: bool = False,
                        blur_sigma_px: Optional[float] = None, levels: Optional[int] = None,
                        iterations: int = 60, eps: float = 1e-5) -> Similarity:
    """Similarity mapping ``reference`` pixel coordinates into ``frame`` (see :class:`Similarity`).

    Args:
        reference, frame: H x W (x C) float images in [0, 1] of one size.
        rotation: also estimate an in-plane rotation (else scale + shift only).
        blur_sigma_px: Gaussian smoothing (px at full size) of both images; default
            ``max(1.5, W / 128)``: more than the per-frame blur *differences* matter to
            the aligner, less than the image structure.
        levels: pyramid levels (default: down to about 64 px wide, at most 4).
        iterations, eps: ECC stopping criteria per level.
    """
    ref, mov = _gray(reference), _gray(frame)
    if ref.shape != mov.shape:
        raise ValueError(f'frames differ in size: {ref.shape} vs {mov.shape}')
    H, W = ref.shape
    sigma = float(blur_sigma_px) if blur_sigma_px else max(1.5, W / 128.0)
    if levels is None:
        levels = int(np.clip(math.floor(math.log2(max(min(H, W), 64) / 64.0)) + 1, 1, 4))
    pyr_r, pyr_m = [ref], [mov]
    for _ in range(levels - 1):
        pyr_r.append(cv2.pyrDown(pyr_r[-1]))
        pyr_m.append(cv2.pyrDown(pyr_m[-1]))
    warp = np.eye(2, 3, dtype=np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), float(eps))
    cc = float('nan')
    ok = True
    for lvl in range(levels - 1, -1, -1):
        r, m = pyr_r[lvl], pyr_m[lvl]
        s = max(sigma / (2 ** lvl), 0.8)
        rb = cv2.GaussianBlur(r, (0, 0), s, borderType=cv2.BORDER_REFLECT)
        mb = cv2.GaussianBlur(m, (0, 0), s, borderType=cv2.BORDER_REFLECT)
        h, w = r.shape
        # the warp is in pixels of this level: translation scales with the level
        scale_to = np.array([[1, 1, w / float(W)], [1, 1, h / float(H)]], dtype=np.float32)
        init = (warp * scale_to).astype(np.float32)
        try:
            cc, est = cv2.findTransformECC(rb, mb, init, cv2.MOTION_AFFINE, crit, None, 1)
            est = _to_similarity(est, w, h, rotation)
            warp = est / scale_to
        except cv2.error:
            ok = False
            break
    if not ok:
        # ECC did not converge (a textureless or saturated frame): a pure shift from phase
        # correlation on the blurred images is better than nothing, and says so.
        rb = cv2.GaussianBlur(ref, (0, 0), sigma)
        mb = cv2.GaussianBlur(mov, (0, 0), sigma)
        win = cv2.createHanningWindow((W, H), cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(rb, mb, win)
        warp = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
        cc = float('nan')
    return _from_matrix(warp, W, H, cc, ok)


def valid_mask(params: Sequence[Similarity], width: int, height: int, margin_px: float = 1.0) -> np.ndarray:
    """H x W bool: reference pixels that land inside every frame (``margin_px`` from its border)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ok = np.ones((height, width), dtype=bool)
    for p in params:
        M = p.matrix(width, height)
        u = M[0, 0] * xs + M[0, 1] * ys + M[0, 2]
        v = M[1, 0] * xs + M[1, 1] * ys + M[1, 2]
        ok &= (u >= margin_px - 0.5) & (u <= width - 0.5 - margin_px) \
            & (v >= margin_px - 0.5) & (v <= height - 0.5 - margin_px)
    return ok


def warp_frame(frame: np.ndarray, sim: Similarity, interpolation: int = cv2.INTER_LANCZOS4) -> np.ndarray:
    """Resample ``frame`` (H x W x C) onto the reference grid: ``out(x) = frame(sim(x))``.

    Outside the frame, values are mirrored (border reflection), not zero: a hard black
    edge would be a strong false focus cue; those pixels are invalid anyway.
    """
    f = np.asarray(frame, dtype=np.float32)
    H, W = f.shape[:2]
    out = cv2.warpAffine(f, sim.matrix(W, H), (W, H), flags=interpolation | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(out, 0.0, 1.0).reshape(f.shape)


def align_stack(frames: np.ndarray, reference_index: int, rotation: bool = False,
                blur_sigma_px: Optional[float] = None, equalise_sigma_px: float = EQUALISE_SIGMA_PX) -> AlignResult:
    """Align every frame of a stack to frame ``reference_index``.

    Args:
        frames: F x H x W x C (or F x H x W) float32 in [0, 1].
        reference_index: the frame the others are warped onto (the network's reference).
        rotation: also estimate an in-plane rotation.
        blur_sigma_px: see :func:`estimate_similarity`.
        equalise_sigma_px: Gaussian std (px) applied to every frame when any frame is
            resampled (0 = off; see the module docstring).

    Returns:
        :class:`AlignResult` (aligned frames F x H x W x C, valid H x W bool, F similarities).
    """
    fr = np.asarray(frames, dtype=np.float32)
    squeeze = fr.ndim == 3
    if squeeze:
        fr = fr[..., None]
    if fr.ndim != 4:
        raise ValueError(f'frames must be F x H x W (x C), got {fr.shape}')
    F, H, W, _ = fr.shape
    if not 0 <= reference_index < F:
        raise ValueError(f'reference_index {reference_index} outside 0..{F - 1}')
    ref = fr[reference_index]
    out = fr.copy()
    params: list[Similarity] = []
    warped = False
    for i in range(F):
        if i == reference_index:
            params.append(Similarity(ecc=1.0))
            continue
        sim = estimate_similarity(ref, fr[i], rotation=rotation, blur_sigma_px=blur_sigma_px)
        params.append(sim)
        if max_displacement_px(sim, W, H) > IDENTITY_TOLERANCE_PX:
            out[i] = warp_frame(fr[i], sim)
            warped = True
    if warped and equalise_sigma_px > 0:
        # the same low-pass on every frame, the reference included (module docstring)
        for i in range(F):
            out[i] = cv2.GaussianBlur(out[i], (0, 0), float(equalise_sigma_px),
                                      borderType=cv2.BORDER_REFLECT).reshape(out[i].shape)
    valid = valid_mask(params, W, H)
    return AlignResult(out[..., 0] if squeeze else out, valid, params)


def max_displacement_px(sim: Similarity, width: int, height: int) -> float:
    """Largest distance (px) a similarity moves a pixel of a ``width`` x ``height`` frame (at a corner)."""
    M = sim.matrix(width, height).astype(np.float64)
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], float)
    return float(np.max(np.linalg.norm(corners @ M.T - corners[:, :2], axis=1)))


def breathing_magnifications(focus_m: Sequence[float], breathing: float) -> np.ndarray:
    """Per-frame magnification of a breathing lens, linear in dioptres over the sweep.

    The farthest-focused frame has magnification 1, the nearest ``1 + breathing``
    (e.g. 0.03 = 3 %; negative for a lens whose image shrinks when focusing closer).
    """
    u = 1.0 / np.asarray(focus_m, dtype=np.float64)
    if u.size < 2 or np.ptp(u) == 0:
        return np.ones_like(u)
    return 1.0 + float(breathing) * (u - u.min()) / np.ptp(u)


def misalign_stack(frames: np.ndarray, focus_m: Sequence[float], breathing: float = 0.0,
                   jitter_px: float = 0.0, rng=None) -> tuple[np.ndarray, list]:
    """Apply focus breathing and random camera shake to an aligned stack (simulation).

    Relative to the farthest-focused frame (the pipeline's default reference), which is
    left untouched so that the ground-truth depth stays registered with it: every other
    frame is magnified about the image centre by :func:`breathing_magnifications` and
    shifted by a uniform random ``(dx, dy)`` in ``[-jitter_px, jitter_px]`` pixels.

    Returns:
        (F x H x W x C float32 warped frames, F :class:`Similarity` reference -> frame
        that :func:`align_stack` should recover).
    """
    fr = np.asarray(frames, dtype=np.float32)
    rng = np.random.default_rng(rng)
    focus = np.asarray(focus_m, dtype=np.float64)
    ref = int(np.argmax(focus))
    mags = breathing_magnifications(focus, breathing)
    out = fr.copy()
    sims = []
    for i in range(fr.shape[0]):
        if i == ref:
            sims.append(Similarity())
            continue
        dx, dy = (rng.uniform(-jitter_px, jitter_px, size=2) if jitter_px > 0 else (0.0, 0.0))
        # content magnified by m and moved by (dx, dy): reference point x appears at
        # c + m (x - c) + (dx, dy); warpAffine's forward map puts src(x) there.
        truth = Similarity(scale=float(mags[i]), tx_px=float(dx), ty_px=float(dy))
        sims.append(truth)
        H, W = fr.shape[1:3]
        out[i] = cv2.warpAffine(fr[i], truth.matrix(W, H), (W, H), flags=cv2.INTER_LANCZOS4,
                                borderMode=cv2.BORDER_REFLECT).reshape(fr[i].shape)
    return np.clip(out, 0.0, 1.0), sims


def check_align_mode(mode: str) -> str:
    """Validate an ``align`` parameter value (one of :data:`ALIGN_MODES`)."""
    if mode not in ALIGN_MODES:
        raise ValueError(f'align must be one of {ALIGN_MODES}, got {mode!r}')
    return mode


def align_focal_stack(stack, reference_index: int, mode: str = 'similarity'):
    """The pipeline's alignment step on a :class:`~ddfs_ros.stack.FocalStack`.

    Returns:
        (stack with aligned frames (the same object when ``mode`` is 'off'),
         H x W bool valid mask or None, list of per-frame :class:`Similarity`).
    """
    if check_align_mode(mode) == 'off':
        return stack, None, []
    import dataclasses
    res = align_stack(stack.frames, reference_index)
    return dataclasses.replace(stack, frames=res.frames), res.valid, res.params
