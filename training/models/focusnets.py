"""Full-resolution, shallow focus networks: the engines that beat the classical focus measure.

Why these and not the deep encoders of ``ddfs.py`` / ``dfv.py`` (issue 9, measured):
a focus cue is local (a few pixels of blur), so a network that halves the resolution
five times before it decides throws the cue away; these keep a full-resolution path
(a three-level U-Net with skip connections) and take the expectation of the focus
distance in dioptres, where the thin-lens blur is linear.

- :class:`CostFocusUNet` (family ``ddfs``, arch ``unet_cv_fv``): the DDFS idea -- the
  camera enters only through the cost volume -- with a 2D U-Net over
  [reference RGB, the D-channel DDFS cost volume, the D-channel classical focus volume
  of :mod:`ddfs_ros.focus_volume`], a softmax over the D hypotheses and the soft
  argmin in dioptres.  Works for any F, any focus schedule, any lens.  Deviations
  from the paper: no adaptive cost aggregation (its ``grid_sample`` was 35 % of a
  training step for no measured gain at this size), one output scale, and the focus
  volume as an extra input (a design lever of issue 9).
- :class:`FocusStackNet` (family ``dfv``, arch ``dfv_lite``): DFV (Yang et al. 2022)
  at full resolution: a shared 2D U-Net per frame, the differential focus volume
  (``feat_i - feat_{i+1}``, the last frame kept), three 3x3x3 convolutions along
  (frames, y, x), a softmax over the frames and the expected focus distance in
  dioptres.  Deviations from DFV's layer table: a three-level U-Net instead of the
  ResNet/PSP encoder and one output scale (the deep encoder at 1/32 is what lost the
  focus cue); fixed F.

Both return ``(depth, uncertainty)`` in eval mode (B x 1 x H x W metres; uncertainty =
first-order std of depth, from the std in dioptres), and a dict with ``depth``, ``uncertainty`` and
``prob`` in training mode.  H and W must be multiples of :data:`SIZE_MULTIPLE`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddfs_ros.focus_bins import extrapolated_focus

#: H and W must be multiples of this (three 2x poolings).
SIZE_MULTIPLE = 8
#: ``volume_skip`` scales: logits += SKIP_GAIN * w_b * block_b, so that the learned
#: weights reach a softmax-sharpening size (~10) in a few thousand AdamW steps.
SKIP_GAIN = 10.0
#: Initial logit offset of ``extrapolate`` bins: exp(-6) ~ 0.25 % of a frame's weight, so
#: a grown network starts where the old one was and the bins still get a gradient.
EXTRAP_INIT_LOGIT = -6.0
#: Channels of the per-frame network behind ``CostFocusUNet(frame_features=k)``: three 3x3
#: convolutions (a 7 x 7 px view, enough for a focus cue of a few pixels of blur).  8, not
#: 16: measured on one core under load, a bf16 training step of it on 64 crops of 64 px
#: (8 stacks x 8 frames) took 0.08 s at 8 and 0.16 s at 16 channels (the rest of the
#: step: 0.26 s).
FRAME_NET_WIDTH = 8
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet2D(nn.Module):
    """Three-level U-Net: full, 1/2, 1/4 and 1/8 resolution, skip connections, 1x1 head.

    Args:
        in_ch: input channels.
        out_ch: output channels (logits, no activation).
        widths: channels at full, 1/2, 1/4, 1/8 resolution.
    """

    def __init__(self, in_ch: int, out_ch: int, widths: Sequence[int] = (32, 48, 64, 96)) -> None:
        super().__init__()
        c0, c1, c2, c3 = (int(w) for w in widths)
        self.e0 = nn.Sequential(_conv(in_ch, c0), _conv(c0, c0))
        self.e1 = nn.Sequential(_conv(c0, c1), _conv(c1, c1))
        self.e2 = nn.Sequential(_conv(c1, c2), _conv(c2, c2))
        self.e3 = nn.Sequential(_conv(c2, c3), _conv(c3, c3))
        self.d2 = nn.Sequential(_conv(c3 + c2, c2), _conv(c2, c2))
        self.d1 = nn.Sequential(_conv(c2 + c1, c1), _conv(c1, c1))
        self.d0 = nn.Sequential(_conv(c1 + c0, c0), _conv(c0, c0))
        self.head = nn.Conv2d(c0, out_ch, 1)

    @staticmethod
    def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode='bilinear', align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.e0(x)
        x1 = self.e1(F.max_pool2d(x0, 2))
        x2 = self.e2(F.max_pool2d(x1, 2))
        x3 = self.e3(F.max_pool2d(x2, 2))
        y = self.d2(torch.cat([self._up(x3, x2), x2], 1))
        y = self.d1(torch.cat([self._up(y, x1), x1], 1))
        y = self.d0(torch.cat([self._up(y, x0), x0], 1))
        return self.head(y)


def _normalise(rgb: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation inside the graph (the node feeds RGB in [0, 1])."""
    shape = [1] * rgb.dim()
    shape[-3] = 3
    mean = torch.tensor(_MEAN, dtype=rgb.dtype, device=rgb.device).view(shape)
    std = torch.tensor(_STD, dtype=rgb.dtype, device=rgb.device).view(shape)
    return (rgb - mean) / std


def expectation_in_dioptres(prob: torch.Tensor, values_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth and its std from a per-pixel distribution over depth values, both taken in dioptres.

    Args:
        prob: B x K x H x W probabilities (sum 1 over K).
        values_m: B x K depths (m) the K bins stand for.

    Returns:
        depth B x 1 x H x W = 1 / E[u] (m) with u = 1 / d; uncertainty B x 1 x H x W =
        std(u) / E[u]^2 (m), the first-order std of depth.  Why not the std in metres: with
        hypotheses uniform in dioptres a little mass on the far bins (tens of metres) would
        dominate it, and the relative uncertainty std(u) / E[u] is what the blur measures.
    """
    u_bins = 1.0 / values_m[:, :, None, None]
    u = (prob * u_bins).sum(dim=1, keepdim=True).clamp_min(1e-6)
    var_u = (prob * (u_bins - u) ** 2).sum(dim=1, keepdim=True)
    return 1.0 / u, torch.sqrt(var_u.clamp_min(1e-12)) / (u * u)


def _add_blocks(logits: torch.Tensor, weights: torch.Tensor, volume: torch.Tensor, D: int) -> torch.Tensor:
    """``logits`` (B x D x H x W) plus ``weights[b]`` times the b-th D-block of ``volume``
    (B x kD x H x W), for each of the k weights.  One multiply-add per block: a cat + 5-D
    reduction here cost torch bf16 +77 % per stack."""
    for b in range(weights.shape[0]):
        logits = logits + weights[b] * volume[:, b * D:(b + 1) * D].float()
    return logits


def focus_volume_modes(model: nn.Module) -> tuple:
    """The focus-volume D-blocks ``model`` takes (:class:`CostFocusUNet`'s ``focus_volume_modes``;
    ``('thin_lens',)`` for a network without the attribute, whose data pipeline ignores it)."""
    return tuple(getattr(model, 'focus_volume_modes', ('thin_lens',)))


def data_options(model: nn.Module) -> dict:
    """``ShardDataset`` keywords for the inputs ``model`` takes (focus-volume blocks, frames)."""
    return {'focus_modes': focus_volume_modes(model), 'frame_inputs': bool(getattr(model, 'uses_frames', False))}


class CostFocusUNet(nn.Module):
    """[reference RGB, cost volume, focus volume] -> softmax over D -> depth (family ``ddfs``).

    ``forward(image B x 3 x H x W in [0,1], cost_volume B x D x H x W, depths B x D (m),
    focus_volume B x kD x H x W)``, k = 1 (thin-lens focus volume) or 2 with
    ``focus_curve`` (and the focus curve, :func:`ddfs_ros.focus_volume.focus_volume`).

    ``volume_skip``: the cost volume and each focus-volume block also go straight to the
    D logits, each with one learned weight (zero at first: a grown network computes what
    the old one did).  Why: the U-Net's last layer has ``widths[0]`` = 32 channels to
    describe a 32-bin distribution at every pixel, so a sharp per-hypothesis curve that
    is already in the input (the focus curve's argmax alone matches the trained network
    on ``motorcycle_sweep``, 0.054 vs 0.055, and beats it past the sweep's ends) has to
    squeeze through that bottleneck; the skip hands it over and the U-Net learns the
    correction.

    ``frame_features = k``: two more inputs, ``frames`` B x F x 3 x H x W (the stack, any
    F) and ``curve_weights`` B x D x F (:func:`ddfs_ros.focus_volume.focus_curve_weights`),
    and k more D-blocks: a small shared per-frame network scores each frame's local
    sharpness, a softmax over the frames normalises it (as ``m_i`` normalises the
    focus measure) and the focus curve's interpolation weights project it onto the
    hypotheses (:meth:`learned_focus_curves`).  Why: the frame-based ``dfv_s`` sees
    learned per-frame features and this network only hand-made ones (issue 9's check:
    a cost-volume U-Net given the frames caught up with the frame-based network); the
    projection keeps what makes the family camera-invariant (only focus positions in
    dioptres enter, any F).  The new input channels and skip weights start at zero, so a
    grown network starts where the old one was.
    """

    arch = 'unet_cv_fv'
    #: parameters a checkpoint of the network without them may lack (``train_focus.load_grown``)
    growth_keys = ('skip', 'frame_net.')

    def __init__(self, num_hypotheses: int = 32, widths: Sequence[int] = (32, 48, 64, 96),
                 focus_curve: bool = False, volume_skip: bool = False, frame_features: int = 0) -> None:
        super().__init__()
        self.num_hypotheses = int(num_hypotheses)
        #: D-blocks of the focus_volume input (ddfs_ros.focus_volume.FOCUS_VOLUME_MODES)
        self.focus_volume_modes = ('thin_lens', 'focus_curve') if focus_curve else ('thin_lens',)
        #: learned focus curves (k D-blocks) from ``frames`` and ``curve_weights`` (0: no such inputs)
        self.frame_features = int(frame_features)
        blocks = 1 + len(self.focus_volume_modes)
        self.net = UNet2D(3 + (blocks + self.frame_features) * self.num_hypotheses, self.num_hypotheses, widths)
        self.skip = nn.Parameter(torch.zeros(blocks)) if volume_skip else None
        self.frame_net = self.skip_frames = None
        if self.frame_features:
            self.frame_net = nn.Sequential(_conv(3, FRAME_NET_WIDTH), _conv(FRAME_NET_WIDTH, FRAME_NET_WIDTH),
                                           nn.Conv2d(FRAME_NET_WIDTH, self.frame_features, 3, padding=1))
            self.skip_frames = nn.Parameter(torch.zeros(self.frame_features))

    @property
    def uses_frames(self) -> bool:
        """Whether ``forward`` takes ``frames`` and ``curve_weights``."""
        return self.frame_net is not None

    def learned_focus_curves(self, frames: torch.Tensor, curve_weights: torch.Tensor) -> torch.Tensor:
        """k D-blocks: a learned per-frame focus measure, projected onto the hypotheses like the focus curve.

        Args:
            frames: B x F x 3 x H x W in [0, 1], any frame order, any F.
            curve_weights: B x D x F (:func:`ddfs_ros.focus_volume.focus_curve_weights`);
                a frame whose column is all zero (padding, or an aperture pair, which has
                no curve) takes no part.

        Returns:
            B x (k D) x H x W: per channel, the softmax over the frames of the score
            (the learned counterpart of the normalised focus measure ``m_i``) projected
            through the weights.  Only focus positions in dioptres enter: any F, any schedule.
        """
        B, Fr, C, H, W = frames.shape
        w = curve_weights.float()
        used = w.abs().sum(dim=1) > 0                                            # B x F: frames taking part
        flat = frames.reshape(B * Fr, C, H, W)
        if self.training:
            # only the frames that take part: padding costs no compute and stays out of the
            # batch-norm statistics (zero frames would skew them against inference)
            idx = used.reshape(-1).nonzero().squeeze(1)
            part = self.frame_net(_normalise(flat.index_select(0, idx))).float()
            s = part.new_zeros((B * Fr, *part.shape[1:])).index_copy(0, idx, part)
        else:
            s = self.frame_net(_normalise(flat)).float()
        s = s.reshape(B, Fr, self.frame_features, H, W)
        used = used[:, :, None, None, None]                                      # B x F x 1 x 1 x 1
        p = torch.softmax(torch.where(used, s, torch.full_like(s, -30.0)), dim=1) * used.float()
        v = torch.einsum('bfkhw,bdf->bkdhw', p, w)
        return v.reshape(B, self.frame_features * self.num_hypotheses, H, W)

    def forward(self, image: torch.Tensor, cost_volume: torch.Tensor, depths: torch.Tensor,
                focus_volume: torch.Tensor, frames: Optional[torch.Tensor] = None,
                curve_weights: Optional[torch.Tensor] = None):
        # Low cost = likely depth; the network sees it as is and learns the sign.
        parts = [_normalise(image), cost_volume, focus_volume]
        learned = None
        if self.frame_net is not None:
            learned = self.learned_focus_curves(frames, curve_weights)
            parts.append(learned.to(cost_volume.dtype))
        x = torch.cat(parts, dim=1)
        # fp32 from here on: under bf16 autocast (training) the expectation would lose ~0.4 %
        logits = self.net(x).float()
        D = self.num_hypotheses
        if self.skip is not None:
            w = SKIP_GAIN * self.skip
            logits = _add_blocks(logits, w[:1], cost_volume, D)
            logits = _add_blocks(logits, w[1:], focus_volume, D)
        if learned is not None:
            logits = _add_blocks(logits, SKIP_GAIN * self.skip_frames, learned, D)
        prob = torch.softmax(logits, dim=1)
        depth, unc = expectation_in_dioptres(prob, depths.float())
        if self.training:
            return {'depth': depth, 'uncertainty': unc, 'prob': prob}
        return depth, unc


class FocusStackNet(nn.Module):
    """DFV at full resolution on a fixed-F stack sorted near to far (family ``dfv``).

    ``forward(stack B x F x 3 x H x W in [0,1], focus B x F (m, ascending))``.

    ``extrapolate = E``: E more bins past each end of the sweep
    (:func:`ddfs_ros.focus_bins.extrapolated_focus`), their logits from the F frame
    logits and the last 3D layer's ``agg`` features of every frame by two 3x3
    convolutions (how the focus evidence changes towards the sweep's ends says how far
    past them the peak lies; the frame logits alone are not smooth enough to extrapolate);
    a deviation from DFV, whose depth cannot leave the focus range.  The last
    convolution starts at zero weight and a bias of :data:`EXTRAP_INIT_LOGIT`, so a grown
    network starts where the old one was.
    """

    arch = 'dfv_lite'
    growth_keys = ('extrap.',)

    def __init__(self, num_frames: int = 5, widths: Sequence[int] = (16, 24, 32, 48), feat: int = 16,
                 agg: int = 16, use_diff: bool = True, extrapolate: int = 0) -> None:
        super().__init__()
        self.num_frames = int(num_frames)
        self.use_diff = bool(use_diff)
        self.extrapolate = int(extrapolate)
        self.extrap = None
        if self.extrapolate > 0:
            self.extrap = nn.Sequential(nn.Conv2d(self.num_frames * (1 + int(agg)), 16, 3, padding=1),
                                        nn.ReLU(inplace=True),
                                        nn.Conv2d(16, 2 * self.extrapolate, 3, padding=1))
            nn.init.zeros_(self.extrap[2].weight)
            nn.init.constant_(self.extrap[2].bias, EXTRAP_INIT_LOGIT)
        self.features = UNet2D(3, feat, widths)
        self.agg = nn.Sequential(
            nn.Conv3d(feat, agg, 3, padding=1, bias=False), nn.BatchNorm3d(agg), nn.ReLU(inplace=True),
            nn.Conv3d(agg, agg, 3, padding=1, bias=False), nn.BatchNorm3d(agg), nn.ReLU(inplace=True),
            nn.Conv3d(agg, 1, 3, padding=1))

    def forward(self, stack: torch.Tensor, focus: torch.Tensor):
        B, Fr, C, H, W = stack.shape
        f = self.features(_normalise(stack.reshape(B * Fr, C, H, W)))
        f = f.reshape(B, Fr, -1, H, W).transpose(1, 2)                     # B x C x F x H x W
        if self.use_diff:
            f = torch.cat([f[:, :, :-1] - f[:, :, 1:], f[:, :, -1:]], dim=2)
        hidden = self.agg[:-1](f)                                            # B x agg x F x H x W
        logits = self.agg[-1](hidden)[:, 0].float()                          # B x F x H x W
        bins = focus.float()
        if self.extrap is not None:
            E = self.extrapolate
            x = self.extrap(torch.cat([logits, hidden.flatten(1, 2).float()], dim=1))   # B x 2E x H x W
            logits = torch.cat([x[:, :E], logits, x[:, E:]], dim=1)          # near bins, frames, far bins
            bins = extrapolated_focus(bins, E)
        prob = torch.softmax(logits, dim=1)
        depth, unc = expectation_in_dioptres(prob, bins)
        if self.training:
            return {'depth': depth, 'uncertainty': unc, 'prob': prob}
        return depth, unc
