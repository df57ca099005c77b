"""FocalStack: the in-memory contract between capture, cost volume, engines and eval.

Decisions (DESIGN.md section 5):
- Frames may come in any order; :meth:`FocalStack.sorted` orders them near to far
  (DFV needs that order, the cost volume does not care).
- Two frames with the same focus distance *and* the same f-number add no
  information and make the stack invalid.  Same focus distance with different
  f-numbers is valid (depth from defocus by aperture).
- Every focus distance must exceed the focal length (else no real image forms).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from .optics import LensModel


def reference_index(focus_m, f_numbers, which: str = 'farthest') -> int:
    """Index of the reference frame; one rule for training and for the node.

    'farthest' (default) or 'nearest' focus distance; frames that tie on the focus
    distance (an aperture pair) are broken by the largest f-number, the frame with
    the deepest depth of field.  Any other string is an explicit index.
    """
    focus = np.asarray(focus_m, dtype=np.float64).ravel()
    n = np.broadcast_to(np.asarray(f_numbers, dtype=np.float64), focus.shape)
    if which in ('farthest', 'nearest'):
        key = focus if which == 'farthest' else -focus
        # lexsort: last key is primary
        return int(np.lexsort((n, key))[-1])
    return int(which)


class StackError(ValueError):
    """A focal stack that cannot be turned into depth; ``reason`` is a short counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _finite_positive(name: str, values: np.ndarray) -> None:
    if values.size == 0:
        raise StackError('missing_lens', f'{name} is missing')
    if not np.all(np.isfinite(values)):
        raise StackError('nan_lens', f'{name} has NaN/inf values: {values.tolist()}')
    if np.any(values <= 0):
        raise StackError('nonpositive_lens', f'{name} must be > 0, got {values.tolist()}')


@dataclass
class FocalStack:
    """F frames of one focus sweep plus the optics that produced them.

    Attributes:
        frames: F x H x W x C float32 in [0, 1] (C = 1 or 3, RGB order), linear
            in the sensor's response (whatever the camera publishes).
        focus_m: F focus distances (m, object side), in frame order.
        lens: focal length, default f-number and pixel pitch of the published frames.
        f_numbers: F per-frame f-numbers; ``None`` means ``lens.f_number`` for all.
        stamp_ns: acquisition stamp (ns) shared by the three ROS messages.
        frame_id: optical frame of the camera.
    """

    frames: np.ndarray
    focus_m: np.ndarray
    lens: LensModel
    f_numbers: Optional[np.ndarray] = None
    stamp_ns: int = 0
    frame_id: str = 'camera_optical_frame'
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.frames = np.asarray(self.frames)
        if self.frames.ndim == 3:
            self.frames = self.frames[..., None]
        self.focus_m = np.atleast_1d(np.asarray(self.focus_m, dtype=np.float64))
        if self.f_numbers is not None:
            self.f_numbers = np.atleast_1d(np.asarray(self.f_numbers, dtype=np.float64))

    # -- shape ---------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def channels(self) -> int:
        return int(self.frames.shape[3])

    def per_frame_f_numbers(self) -> np.ndarray:
        """F f-numbers (the lens default repeated where none is given per frame)."""
        if self.f_numbers is None:
            return np.full(self.num_frames, float(self.lens.f_number))
        return self.f_numbers

    # -- checks ----------------------------------------------------------------
    def validate(self, min_frames: int = 2) -> 'FocalStack':
        """Raise :class:`StackError` (with a ``reason`` key) on anything unusable."""
        fr = self.frames
        if fr.ndim != 4 or fr.shape[3] not in (1, 3):
            raise StackError('bad_shape', f'frames must be F x H x W x C with C in (1, 3), got {fr.shape}')
        if self.num_frames < min_frames:
            raise StackError('too_few_frames', f'need at least {min_frames} frames, got {self.num_frames}')
        if self.height < 8 or self.width < 8:
            raise StackError('bad_size', f'frames of {self.height} x {self.width} are too small')
        if not np.all(np.isfinite(fr)):
            raise StackError('nan_pixels', 'frames contain NaN/inf pixels')
        if self.focus_m.shape != (self.num_frames,):
            raise StackError('missing_lens', f'{self.focus_m.size} focus distances for {self.num_frames} frames')
        _finite_positive('focus distance', self.focus_m)
        fn = self.per_frame_f_numbers()
        if fn.shape != (self.num_frames,):
            raise StackError('missing_lens', f'{fn.size} f-numbers for {self.num_frames} frames')
        _finite_positive('f-number', fn)
        for name in ('focal_length_m', 'pixel_pitch_m'):
            _finite_positive(name, np.array([getattr(self.lens, name)], dtype=np.float64))
        if np.any(self.focus_m <= self.lens.focal_length_m):
            raise StackError('focus_inside_focal_length',
                             f'focus distances {self.focus_m.tolist()} m must exceed the focal length '
                             f'{self.lens.focal_length_m} m')
        pairs = set()
        for s, n in zip(np.round(self.focus_m, 9), np.round(fn, 6)):
            if (s, n) in pairs:
                raise StackError('duplicate_frame',
                                 f'two frames share focus distance {s} m and f-number {n}: no depth cue')
            pairs.add((s, n))
        return self

    # -- views -----------------------------------------------------------------
    def sorted(self) -> 'FocalStack':
        """The same stack with frames ordered near to far (stable on ties)."""
        order = np.argsort(self.focus_m, kind='stable')
        return replace(self, frames=self.frames[order], focus_m=self.focus_m[order],
                       f_numbers=None if self.f_numbers is None else self.f_numbers[order])

    def reference_index(self, which: str = 'farthest') -> int:
        """Index of the reference frame: 'farthest' (default), 'nearest' or an integer string."""
        return reference_index(self.focus_m, self.per_frame_f_numbers(), which)

    def reference_frame(self, which: str = 'farthest') -> np.ndarray:
        """H x W x C reference image for the network."""
        return self.frames[self.reference_index(which)]

    def as_rgb(self) -> np.ndarray:
        """Frames as F x H x W x 3 (gray repeated)."""
        return self.frames if self.channels == 3 else np.repeat(self.frames, 3, axis=3)

    @property
    def aperture_only(self) -> bool:
        """True when every frame has the same focus distance (depth from defocus by
        aperture, e.g. an f/2.8 + f/8 pair): only the f-numbers differ."""
        lo, hi = self.focus_range
        return hi - lo <= 1e-6 * hi

    @property
    def focus_range(self) -> tuple[float, float]:
        return float(self.focus_m.min()), float(self.focus_m.max())

    def nbytes(self) -> int:
        return int(self.frames.nbytes)

