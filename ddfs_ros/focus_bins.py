"""The depths a frame-based (``dfv``) engine can output: the focus distances and bins past the sweep.

DFV takes the expected focus distance under a softmax over the F frames, so its depth
never leaves the focus range, and a pixel beyond the farthest focus is pulled onto it
(on the shared ``motorcycle_sweep``, 5 % of the pixels lie beyond the sweep; ``dfv_s``
scored AbsRel 0.103 there, the classical focus measure, whose parabola extrapolates,
0.073).  An engine with ``extrapolate_bins = E`` adds E bins past each end of the sweep,
spaced by the sweep's mean step in dioptres; the network scores them from the frames'
scores (``training/models/focusnets.py``).  The far bins stop at ``2**k`` times the
farthest focus (bin k), so a short sweep far away does not reach infinity.

Torch on the caller's device: the network's graph and the node's output range share
this function.
"""
from __future__ import annotations

import torch


def extrapolated_focus(focus_m: torch.Tensor, count: int) -> torch.Tensor:
    """Output bins of a frame-based engine (m, ascending).

    Args:
        focus_m: B x F focus distances (m), ascending, F >= 2.
        count: E bins past each end (0: the focus distances themselves).

    Returns:
        B x (F + 2E) depths (m): E nearer than the nearest focus, the F focus distances,
        E beyond the farthest; uniform in dioptres with the sweep's mean step ``du``
        (nearer: ``u_near + k du``; beyond: ``max(u_far - k du, u_far / 2**k)``).
    """
    if count <= 0:
        return focus_m
    u = 1.0 / focus_m
    du = ((u[:, :1] - u[:, -1:]) / (focus_m.shape[1] - 1)).clamp_min(1e-6)
    k = torch.arange(1, count + 1, dtype=focus_m.dtype, device=focus_m.device)[None]
    near = 1.0 / (u[:, :1] + k.flip(1) * du)
    far = 1.0 / torch.maximum(u[:, -1:] - k * du, u[:, -1:] / 2.0 ** k)
    return torch.cat([near, focus_m, far], dim=1)
