"""The network inputs of one stored stack, as training and the engine checks build them (no ROS).

Training shards (``training/stack_data.py``) hold uint8 frames, focus distances,
f-numbers, lens, reference index, hypotheses and the cost volume; training
(``ShardDataset``) and the runtime's validation-stack measurements
(:mod:`ddfs_ros.engines.cpu_preference`) both turn one stack into the network's input
dict here, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from .focus_volume import focus_curve_weights, focus_volume


def stack_inputs(family: str, frames: np.ndarray, focus_m: np.ndarray, f_numbers: Optional[np.ndarray] = None,
                 lens: Optional[Sequence[float]] = None, ref: int = 0, depths_m: Optional[np.ndarray] = None,
                 cost: Optional[np.ndarray] = None, focus_modes: Optional[Sequence[str]] = ('thin_lens',),
                 frame_inputs: bool = False, pad_frames: int = 0) -> dict:
    """Unbatched input tensors of one stack.

    Args:
        family: 'dfv' (``stack`` F x 3 x H x W sorted near to far, ``focus`` F m) or a
            cost-volume family (``image`` 3 x H x W, ``cost_volume`` D x H x W,
            ``depths`` D m, and ``focus_volume`` (k D) x H x W unless ``focus_modes`` is None).
        frames: F x 3 x H x W float32 in [0, 1], in the stack's frame order.
        focus_m: F focus distances (m); ``f_numbers`` F; ``lens`` (focal length m, pitch m/px).
        ref: the reference frame's index; ``depths_m`` the D hypotheses; ``cost`` D x H x W.
        frame_inputs: also ``frames`` F x 3 x H x W and ``curve_weights`` D x F
            (:func:`frame_inputs_of`; engines with ``frames`` among their inputs).
        pad_frames: pad those to this many frames (zero weights: the padding takes no
            part), so that stacks of different F batch together in training.
    """
    focus = np.asarray(focus_m, dtype=np.float64)
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    if family == 'dfv':
        order = np.argsort(focus, kind='stable')
        return {'stack': torch.from_numpy(np.ascontiguousarray(frames[order])),
                'focus': torch.as_tensor(focus[order], dtype=torch.float32)}
    depths = np.asarray(depths_m, dtype=np.float64)
    out = {'image': torch.from_numpy(np.ascontiguousarray(frames[int(ref)])),
           'cost_volume': torch.from_numpy(np.ascontiguousarray(cost, dtype=np.float32)),
           'depths': torch.as_tensor(depths, dtype=torch.float32)}
    if focus_modes:
        f, pitch = (float(v) for v in lens)
        out['focus_volume'] = focus_volume(frames, focus, np.asarray(f_numbers, dtype=np.float64), f, pitch, depths,
                                           modes=focus_modes)
    if frame_inputs:
        out.update(frame_inputs_of(frames, focus, depths, pad_frames))
    return out


def frame_inputs_of(frames, focus_m: np.ndarray, depths_m: np.ndarray, pad_frames: int = 0) -> dict:
    """``frames`` (F' x 3 x H x W, the stack's order) and ``curve_weights`` (D x F'), F' =
    max(F, ``pad_frames``): the inputs of a network's learned focus curves
    (``CostFocusUNet(frame_features=k)``); padded frames are zero with zero weights.
    ``frames`` numpy or torch (kept on its device)."""
    x = torch.as_tensor(frames)
    w = torch.as_tensor(focus_curve_weights(np.asarray(focus_m, dtype=np.float64), np.asarray(depths_m, dtype=np.float64)),
                        dtype=torch.float32, device=x.device)
    extra = max(0, int(pad_frames) - x.shape[0])
    if extra:
        x = torch.cat([x, x.new_zeros((extra, *x.shape[1:]))])
        w = torch.cat([w, w.new_zeros((w.shape[0], extra))], dim=1)
    return {'frames': x.float(), 'curve_weights': w}
