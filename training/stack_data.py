"""Training data for the focus networks: rendered focal stacks with honest splits.

Every sample is a pure function of ``(config, split, seed, index)``:

1. **Scene** (all-in-focus RGB + metric depth, ``size`` x ``size``):
   - ``procedural`` (70 %): :func:`ddfs_ros.scenes.procedural_scene` textured with the
     natural photographs of ``../shared/data/textures`` of this split only
     (:mod:`ddfs_ros.data_splits`: 80 / 10 / 10 % by a hash of the file name);
   - ``rgbd_7scenes`` (15 %): real indoor geometry and colour, frames of this split;
   - ``real_dfd`` (15 %): the f/8 image and depth of a ``real_dfd_indoor_train`` scene
     of this split.
   Real images are cropped (a random square, 50-100 % of the short side), resized,
   flipped.  The Middlebury motorcycle is never used (it is the demo and a test bag).
   A part may instead draw **real aperture pairs** (``real_pair_prob``): the real f/2.8
   and f/8 shots of a ``real_dfd_indoor_train`` scene of the split, not rendered at all
   (:func:`real_pair_sample`).
2. **Camera**: F frames (a range for the camera-invariant cost-volume family, a fixed
   F for DFV), a focus schedule over the scene's 5th-95th depth percentiles (uniform
   in dioptres, uniform in depth, or random; for the cost-volume family sometimes in
   random order and sometimes an aperture pair: one focus distance, two f-numbers),
   f-number and focal length, and the pixel pitch that makes the largest blur over the
   scene ``max_blur_px`` (log-uniform).  The cost volume models every blur drawn
   (``max_coc_px`` above the largest ``max_blur_px``).
3. **Sensor**: Poisson-Gaussian noise (most samples) and 8-bit quantisation, by
   :func:`ddfs_ros.render.render_focal_stack`, the simulated camera's renderer.
4. **Network inputs**, with the node's own code: the DDFS cost volume
   (:class:`ddfs_ros.cost_volume.CostVolume`) on the full frame, over the
   ``focus_span`` hypotheses (:func:`ddfs_ros.optics.hypotheses_from_focus_span`); the
   focus volume (:mod:`ddfs_ros.focus_volume`) on the training crop; the reference
   frame by :func:`ddfs_ros.stack.reference_index` (farthest focus, ties to the largest
   f-number) -- the rule the node uses.

Rendering + cost volume take ~0.1-0.2 s per sample on one core, so samples are written
in shards (``.cache/focus_data/<name>/<split>/shard_NNNN.npz``) by ``python -m
training.stack_data``, and :class:`ShardDataset` reads whatever shards exist: training
can start on the first shards while more are rendered.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ddfs_ros import data_splits
from ddfs_ros.cost_volume import CostVolume
from ddfs_ros.network_inputs import stack_inputs
from ddfs_ros.optics import LensModel, coc_m, hypotheses_from_focus_span
from ddfs_ros.scenes import split_photo_texture, split_texture_images
from ddfs_ros.stack import reference_index

from .config import load_config
from .data import crop_resize

SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}
SHARD_SIZE = 250


@dataclass
class StackDataConfig:
    """How samples are drawn.  Lengths in metres, blur in pixels at ``size``."""

    family: str = 'ddfs'                 # 'ddfs' (cost volume, any F) or 'dfv' (fixed F, sorted stack)
    size: int = 96
    frames: Any = (2, 8)                 # (min, max) F, or an int
    num_hypotheses: int = 32
    sources: dict = field(default_factory=lambda: {'procedural': 0.7, 'rgbd_7scenes': 0.15, 'real_dfd': 0.15})
    scene_near: tuple = (0.3, 2.0)       # nearest depth of procedural scenes (m)
    scene_ratio: tuple = (1.5, 6.0)      # far / near of procedural scenes
    max_blur_px: tuple = (1.5, 12.0)     # largest blur diameter over the scene (px, log-uniform)
    f_number: tuple = (1.4, 8.0)
    focal_length_mm: tuple = (4.0, 50.0)
    schedules: dict = field(default_factory=lambda: {'dioptre': 0.4, 'depth': 0.2, 'random': 0.4})
    unsorted_prob: float = 0.2           # cost-volume family only
    aperture_pair_prob: float = 0.07     # cost-volume family only
    # Where an aperture pair focuses: None = sqrt(near * far), mid-scene (ambiguous: the
    # same blur in front of and behind the focus plane); (a, b) = at a fraction t ~ U(a, b)
    # of the scene's dioptre range from its far end (t = 1: the nearest depth), the usual
    # depth-from-defocus setup that puts most of the scene on one side of the focus plane.
    aperture_pair_focus: Optional[tuple] = None
    # Where the sweep ends sit in the scene: None = around the 5th / 95th depth percentiles,
    # widened (most of the scene inside the sweep); ((a, b), (c, d)) = the nearest focus at
    # the depth percentile U(a, b), the farthest at U(c, d), so up to b % / (100 - c) % of
    # the scene lies in front of / behind the sweep, as when a camera sweeps a working
    # range and the background (or the floor at its feet) lies outside it.
    sweep_percentiles: Optional[tuple] = None
    # Share of stacks drawn with a Gaussian blur spot (:func:`ddfs_ros.psf.gaussian_psfs`,
    # same second moment) instead of the thin-lens disk: real lenses are neither.
    psf_gaussian_prob: float = 0.0
    # Share of the other stacks drawn with the band-limited disk (``psf='disk_otf'``,
    # :func:`ddfs_ros.psf.disk_otf_psfs`) instead of the pixel-area disk of DESIGN.md, whose
    # r < 0.5 px delta leaves a sub-pixel defocus invisible; a real camera (and the shared
    # bags' renderer: session 8) sees it, and in a sweep with a few px of blur in all that
    # is most of what tells neighbouring focus positions apart.
    psf_otf_prob: float = 0.0
    # True blur / the blur the lens values say (log-uniform; (1, 1) = exact): the frames are
    # rendered with the pitch divided by it, the sample keeps the nominal lens (the cost volume
    # and the focus volume use it), as a camera's nominal f-number, focal length or focus
    # distance are off (session 7: `ddfs-eval robustness`, blur_x0.8 / x1.25).
    blur_scale: tuple = (1.0, 1.0)
    noise_prob: float = 0.85
    full_well: tuple = (300.0, 20000.0)  # photo-electrons at full scale (log-uniform)
    read_noise: tuple = (0.5, 5.0)       # electrons rms
    max_coc_px: float = 24.0             # cost-volume clamp, above every drawn blur
    # Share of samples that are a real aperture pair (cost-volume family; session 10): the
    # f/2.8 and f/8 shots of a ``real_dfd_indoor_train`` scene of this split -- real lens
    # blur with its aberrations, real noise, JPEG and the shots' ~1 px misregistration, which
    # no renderer of ours makes -- with the depth camera's ground truth, a random square at
    # a scale U(real_pair_scale) of the source resolution (the shared pairs bag: 0.59).
    # Every length (depth, focus, focal length, pitch) is multiplied by k, log-uniform in
    # real_pair_world_scale: the blur in pixels is invariant under that (thin lens), so the
    # frames stay exact while the network cannot key on one camera's metric values.
    real_pair_prob: float = 0.0
    real_pair_scale: tuple = (0.35, 0.8)
    # Share of stacks whose scene is soft before any defocus: the all-in-focus image blurred
    # by a Gaussian of sigma U(scene_blur_px) px (a magnified or smooth texture, a lens's own
    # MTF, demosaicing; :func:`ddfs_ros.render.soften_scene`). Every frame shares that blur,
    # which weakens the defocus cue (session 12: at sigma 0.7 / 1.4 px `ddfs_s`'s procedural
    # validation AbsRel rose 0.054 -> 0.078 / 0.144; `ddfs-eval robustness --variant soft_scene`).
    scene_blur_prob: float = 0.0
    scene_blur_px: tuple = (0.3, 1.5)
    real_pair_world_scale: tuple = (0.5, 2.0)
    # Share of procedural scenes that also hold thin structures (bars, arcs, rails 1-6 px
    # wide: poles, cables, spokes; :func:`ddfs_ros.scenes.thin_structure_mask`), U(thin_count)
    # of them: real scenes have fine geometry with many depth edges, our blobs and planes
    # none (session 13). No extra draw when off: old shards stay.
    thin_prob: float = 0.0
    thin_count: tuple = (3, 10)

    @classmethod
    def from_dict(cls, d: dict) -> 'StackDataConfig':
        known = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def max_frames(self) -> int:
        return int(self.frames) if np.isscalar(self.frames) else int(self.frames[1])


# ------------------------------------------------------------------------------- scenes
@lru_cache(maxsize=3)
def _real_scenes(source: str, split: str) -> tuple:
    """(rgb float32, depth metres) of the real RGB-D scenes of one split."""
    from ddfs_ros.scenes import load_rgbd, real_dfd_scenes
    out = []
    if source == 'real_dfd':
        root = data_splits.SHARED_DATA / 'real_dfd_indoor_train'
        if root.is_dir():
            for i, sc in enumerate(real_dfd_scenes(root)):
                if data_splits.real_dfd_split(i) == split:
                    out.append((sc.rgb, sc.depth_m))
    elif source == 'rgbd_7scenes':
        root = data_splits.SHARED_DATA / 'rgbd_7scenes'
        for f in data_splits.rgbd_7scenes_frames(split, root):
            sc = load_rgbd(root / f'frame-{f:06d}.color.jpg', root / f'frame-{f:06d}.depth.png', fill_holes=True)
            out.append((sc.rgb, sc.depth_m))
    else:
        raise ValueError(source)
    return tuple(out)


@lru_cache(maxsize=3)
def _real_pairs(split: str) -> tuple:
    """Per real_dfd scene of one split: (f/2.8 shot H x W x 3 uint8, f/8 shot, depth H x W metres,
    pixel pitch m, their f-numbers)."""
    from ddfs_ros.scenes import real_dfd_aperture_pairs
    root = data_splits.SHARED_DATA / 'real_dfd_indoor_train'
    if not root.is_dir():
        return ()
    return tuple((np.round(np.clip(wide.rgb, 0, 1) * 255).astype(np.uint8),
                  np.round(np.clip(narrow.rgb, 0, 1) * 255).astype(np.uint8),
                  np.asarray(narrow.depth_m, np.float32), float(narrow.meta['pixel_pitch_m']),
                  (float(wide.meta['f_number']), float(narrow.meta['f_number'])))
                 for wide, narrow in real_dfd_aperture_pairs(split, root))


def real_pair_sample(cfg: StackDataConfig, split: str, rng: np.random.Generator) -> dict:
    """One real aperture pair (see ``StackDataConfig.real_pair_prob``), in :func:`make_sample`'s layout."""
    import cv2
    from ddfs_ros.scenes import REAL_DFD_FOCAL_LENGTH_M, REAL_DFD_FOCUS_M
    pairs = _real_pairs(split)
    if not pairs:
        raise FileNotFoundError(f'no real_dfd scenes of split {split!r} under {data_splits.SHARED_DATA}')
    wide, narrow, depth, pitch, f_numbers = pairs[int(rng.integers(len(pairs)))]
    H, W = depth.shape
    S = cfg.size
    side = min(int(round(S / rng.uniform(*cfg.real_pair_scale))), H, W)
    y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    win = (slice(y, y + side), slice(x, x + side))
    frames = [cv2.resize(im[win], (S, S), interpolation=cv2.INTER_AREA) for im in (wide, narrow)]
    gt = cv2.resize(depth[win], (S, S), interpolation=cv2.INTER_NEAREST)
    gt = np.clip(np.nan_to_num(gt, nan=float(np.nanmedian(gt))), 0.1, None)
    if rng.random() < 0.5:
        frames, gt = [f[:, ::-1] for f in frames], gt[:, ::-1]
    fnums = np.array(f_numbers, np.float64)
    if rng.random() < 0.5:
        frames, fnums = frames[::-1], fnums[::-1].copy()
    k = _log_uniform(rng, *cfg.real_pair_world_scale)
    focus = np.full(2, REAL_DFD_FOCUS_M * k)
    lens = LensModel(REAL_DFD_FOCAL_LENGTH_M * k, float(fnums.min()), pitch * side / S * k)
    gt = (gt * k).astype(np.float32)
    chw = np.ascontiguousarray(np.stack([np.moveaxis(f, -1, 0) for f in frames]))          # 2 x 3 x S x S uint8
    d = np.percentile(gt, [0.5, 50, 99.5])
    blur = float(np.max(coc_m(d[:, None], focus[None, :], lens.focal_length_m, fnums[None, :]))) / lens.pixel_pitch_m
    out = {'frames': chw, 'focus': focus.astype(np.float32), 'f_numbers': fnums.astype(np.float32),
           'lens': np.array([lens.focal_length_m, lens.pixel_pitch_m], np.float64),
           'gt': np.ascontiguousarray(gt), 'ref': reference_index(focus, fnums, 'farthest'),
           'meta': {'source': 'real_dfd_pair', 'schedule': 'aperture_pair', 'F': 2, 'max_blur_px': blur,
                    'psf': 'real', 'blur_scale': 1.0, 'world_scale': k, 'crop_scale': S / side}}
    hyps = hypotheses_from_focus_span(focus, cfg.num_hypotheses)
    cost = _cost_volume(cfg.max_coc_px)(chw.astype(np.float32) / 255.0, focus, fnums, lens.focal_length_m,
                                        lens.pixel_pitch_m, hyps)
    out['cost'] = cost.numpy().astype(np.float16)
    out['depths'] = hyps.astype(np.float32)
    return out


def draw_scene(cfg: StackDataConfig, split: str, rng: np.random.Generator):
    """(rgb size x size x 3 in [0, 1], depth size x size metres, source name)."""
    from ddfs_ros.scenes import procedural_scene
    sources = {k: w for k, w in cfg.sources.items() if w > 0}
    for s in ('real_dfd', 'rgbd_7scenes'):
        if s in sources and not _real_scenes(s, split):
            sources.pop(s)
    names = sorted(sources)
    p = np.array([sources[n] for n in names], dtype=np.float64)
    src = names[int(rng.choice(len(names), p=p / p.sum()))]
    if src == 'procedural':
        near = float(rng.uniform(*cfg.scene_near))
        far = near * float(rng.uniform(*cfg.scene_ratio))
        n_thin = 0
        if cfg.thin_prob > 0 and rng.random() < cfg.thin_prob:
            n_thin = int(rng.integers(cfg.thin_count[0], cfg.thin_count[1] + 1))
        sc = procedural_scene(rng, cfg.size, (near, far), texture=split_photo_texture(split), n_thin=n_thin)
        rgb, depth = np.asarray(sc.rgb, np.float32), np.asarray(sc.depth_m, np.float32)
    else:
        scenes = _real_scenes(src, split)
        rgb, depth = scenes[int(rng.integers(len(scenes)))]
        rgb, depth = crop_resize(rgb, depth, cfg.size, rng)
        depth = np.clip(np.nan_to_num(depth, nan=float(np.nanmedian(depth))), 0.1, None)
    if rng.random() < 0.5:
        rgb, depth = rgb[:, ::-1], depth[:, ::-1]
    return np.ascontiguousarray(np.clip(rgb, 0, 1)), np.ascontiguousarray(depth), src


# ------------------------------------------------------------------------------ cameras
def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def draw_camera(cfg: StackDataConfig, depth: np.ndarray, rng: np.random.Generator) -> dict:
    """Focus distances (frame order), per-frame f-numbers, lens and schedule name."""
    F = int(cfg.frames) if np.isscalar(cfg.frames) else int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
    if cfg.sweep_percentiles is None:
        lo, hi = np.percentile(depth, [5, 95])
        near = float(lo) * rng.uniform(0.8, 1.1)
        far = max(float(hi) * rng.uniform(0.9, 1.3), near * 1.15)
    else:
        (a, b), (c, e) = cfg.sweep_percentiles
        near, far = (float(v) for v in np.percentile(depth, [rng.uniform(a, b), rng.uniform(c, e)]))
        far = max(far, near * 1.15)
    kinds = sorted(cfg.schedules)
    w = np.array([cfg.schedules[k] for k in kinds], dtype=np.float64)
    kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    if kind == 'depth':
        focus = np.linspace(near, far, F)
    elif kind == 'dioptre':
        focus = 1.0 / np.linspace(1.0 / near, 1.0 / far, F)
    else:
        u = np.sort(rng.uniform(1.0 / far, 1.0 / near, F))[::-1]
        u[0], u[-1] = 1.0 / near, 1.0 / far
        # distinct focus distances: two equal ones (same f-number) make a stack invalid
        focus = 1.0 / (u + 1e-4 * (1.0 / near) * np.arange(F)[::-1])
    N = _log_uniform(rng, *cfg.f_number)
    fl = min(_log_uniform(rng, *cfg.focal_length_mm) * 1e-3, 0.5 * near)
    f_numbers = np.full(F, N)
    family_cv = cfg.family != 'dfv'
    if family_cv and rng.random() < cfg.aperture_pair_prob:
        F, kind = 2, 'aperture_pair'
        if cfg.aperture_pair_focus is None:
            focus = np.full(2, math.sqrt(near * far))
        else:
            t = float(rng.uniform(*cfg.aperture_pair_focus))
            focus = np.full(2, 1.0 / (1.0 / far + t * (1.0 / near - 1.0 / far)))
        f_numbers = np.array([N, min(N * rng.uniform(2.0, 4.0), 22.0)])
        if rng.random() < 0.5:
            f_numbers = f_numbers[::-1].copy()
    target = _log_uniform(rng, *cfg.max_blur_px)
    d = np.percentile(depth, [0.5, 50, 99.5])
    cmax = float(np.max(coc_m(d[:, None], focus[None, :], fl, f_numbers[None, :])))
    pitch = max(cmax / target, 1e-8)
    if family_cv and kind != 'aperture_pair' and rng.random() < cfg.unsorted_prob:
        order = rng.permutation(F)
        focus, f_numbers, kind = focus[order], f_numbers[order], kind + '_unsorted'
    return {'focus_m': np.asarray(focus, np.float64), 'f_numbers': np.asarray(f_numbers, np.float64),
            'lens': LensModel(fl, float(N), pitch), 'schedule': kind, 'max_blur_px': target}


# ------------------------------------------------------------------------------ samples
_CV: dict = {}


def _cost_volume(max_coc_px: float) -> CostVolume:
    if max_coc_px not in _CV:
        _CV[max_coc_px] = CostVolume('cpu', max_coc_px=max_coc_px)
    return _CV[max_coc_px]


def make_sample(cfg: StackDataConfig, split: str, seed: int, index: int) -> dict:
    """One rendered sample (numpy).

    Keys: ``frames`` F x 3 x S x S uint8 (frame order; DFV: sorted near to far),
    ``focus`` F (m), ``f_numbers`` F, ``lens`` [f (m), pitch (m/px)], ``gt`` S x S (m),
    ``ref`` reference index; cost-volume family also ``cost`` D x S x S float16 and
    ``depths`` D (m).
    """
    from ddfs_ros.render import SensorNoise, render_focal_stack, soften_scene

    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    if cfg.family != 'dfv' and cfg.real_pair_prob > 0 and rng.random() < cfg.real_pair_prob:
        return real_pair_sample(cfg, split, rng)
    rgb, depth, src = draw_scene(cfg, split, rng)
    scene_blur = 0.0
    if cfg.scene_blur_prob > 0 and rng.random() < cfg.scene_blur_prob:    # no draw when off: old shards stay
        scene_blur = float(rng.uniform(*cfg.scene_blur_px))
        rgb = soften_scene(rgb, scene_blur)
    cam = draw_camera(cfg, depth, rng)
    focus, fnums, lens = cam['focus_m'], cam['f_numbers'], cam['lens']
    noise = None
    if rng.random() < cfg.noise_prob:
        noise = SensorNoise(full_well=_log_uniform(rng, *cfg.full_well), read_noise=float(rng.uniform(*cfg.read_noise)))
    psf = 'gaussian' if cfg.psf_gaussian_prob > 0 and rng.random() < cfg.psf_gaussian_prob else 'disk'
    if psf == 'disk' and cfg.psf_otf_prob > 0 and rng.random() < cfg.psf_otf_prob:
        psf = 'disk_otf'
    scale = 1.0 if tuple(cfg.blur_scale) == (1.0, 1.0) else _log_uniform(rng, *cfg.blur_scale)
    frames = render_focal_stack(rgb, depth, focus, lens.with_blur_scale(scale), f_numbers=fnums, noise=noise,
                                quantize_bits=8, rng=rng, psf=psf)
    chw = np.ascontiguousarray(np.moveaxis(np.asarray(frames, np.float32), -1, 1))     # F x 3 x S x S
    if cfg.family == 'dfv':
        order = np.argsort(focus, kind='stable')
        chw, focus, fnums = chw[order], focus[order], fnums[order]
    out = {'frames': np.round(chw * 255.0).astype(np.uint8), 'focus': focus.astype(np.float32),
           'f_numbers': fnums.astype(np.float32),
           'lens': np.array([lens.focal_length_m, lens.pixel_pitch_m], np.float64),
           'gt': depth.astype(np.float32), 'ref': reference_index(focus, fnums, 'farthest'),
           'meta': {'source': src, 'schedule': cam['schedule'], 'F': int(len(focus)),
                    'max_blur_px': cam['max_blur_px'], 'psf': psf, 'blur_scale': scale,
                    'scene_blur_px': scene_blur}}
    if cfg.family != 'dfv':
        hyps = hypotheses_from_focus_span(focus, cfg.num_hypotheses)
        cost = _cost_volume(cfg.max_coc_px)(chw, focus, fnums, lens.focal_length_m, lens.pixel_pitch_m, hyps)
        out['cost'] = cost.numpy().astype(np.float16)
        out['depths'] = hyps.astype(np.float32)
    return out


def write_shard(cfg: StackDataConfig, split: str, seed: int, shard: int, folder: Path,
                shard_size: int = SHARD_SIZE) -> Path:
    """Render samples ``[shard * shard_size, (shard + 1) * shard_size)`` into one npz."""
    import json
    folder = Path(folder) / split
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'shard_{shard:04d}.npz'
    if path.exists():
        return path
    torch.set_num_threads(1)
    Fm = cfg.max_frames
    samples = [make_sample(cfg, split, seed, shard * shard_size + i) for i in range(shard_size)]
    S = cfg.size
    frames = np.zeros((shard_size, Fm, 3, S, S), np.uint8)
    focus = np.zeros((shard_size, Fm), np.float32)
    fnums = np.zeros((shard_size, Fm), np.float32)
    for i, s in enumerate(samples):
        F = len(s['focus'])
        frames[i, :F], focus[i, :F], fnums[i, :F] = s['frames'], s['focus'], s['f_numbers']
    arrays = {'frames': frames, 'focus': focus, 'f_numbers': fnums,
              'nframes': np.array([len(s['focus']) for s in samples], np.int16),
              'lens': np.stack([s['lens'] for s in samples]), 'gt': np.stack([s['gt'] for s in samples]),
              'ref': np.array([s['ref'] for s in samples], np.int16)}
    if cfg.family != 'dfv':
        arrays['cost'] = np.stack([s['cost'] for s in samples])
        arrays['depths'] = np.stack([s['depths'] for s in samples])
    tmp = folder / f'shard_{shard:04d}.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    (folder / f'shard_{shard:04d}_meta.json').write_text(json.dumps(
        {'config': asdict(cfg), 'seed': seed, 'split': split, 'samples': [s['meta'] for s in samples]}))
    return path


# ------------------------------------------------------------------------------ dataset
class ShardDataset(Dataset):
    """The rendered shards of one split, as network inputs.

    Training (``crop`` set): a random ``crop`` x ``crop`` window, random flips and
    transposition (the optics are isotropic); every network here is fully
    convolutional.  The focus volume is computed on the window.

    Items: cost-volume family ``image`` 3 x h x w, ``cost_volume`` D x h x w,
    ``focus_volume`` D x h x w, ``depths`` D; DFV ``stack`` F x 3 x h x w, ``focus`` F;
    both ``gt`` h x w (m).  ``focus_modes``: the focus-volume blocks the network takes
    (its ``focus_volume_modes``), so ``focus_volume`` is (blocks * D) x h x w.
    ``frame_inputs``: also ``frames`` F_max x 3 x h x w and ``curve_weights`` D x F_max,
    padded to the shards' frame capacity (a network with learned focus curves).
    """

    def __init__(self, folder: Path | str | Sequence[Path | str], split: str, family: str,
                 crop: Optional[int] = None, seed: int = 0, max_shards: Optional[int] = None,
                 focus_modes: Sequence[str] = ('thin_lens',), frame_inputs: bool = False) -> None:
        self.family, self.crop, self.focus_modes = family, crop, tuple(focus_modes)
        self.frame_inputs = bool(frame_inputs)
        self.rng = np.random.default_rng(seed)
        folders = [folder] if isinstance(folder, (str, Path)) else list(folder)
        paths = [p for f in folders for p in sorted((Path(f) / split).glob('shard_[0-9][0-9][0-9][0-9].npz'))]
        paths = paths[:max_shards]
        if not paths:
            raise FileNotFoundError(f'no shards in {", ".join(str(Path(f) / split) for f in folders)}')
        # filled shard by shard into arrays allocated once: concatenating lists of shards
        # held every sample twice (~13 GB at 32 cost-volume shards).  The sizes come from
        # the small per-sample 'nframes' array; the first shard read gives the layout.
        counts = []
        for p in paths:
            with np.load(p) as z:
                counts.append(int(z['nframes'].shape[0]))
        self.arrays: dict = {}
        start = 0
        for p, n in zip(paths, counts):
            with np.load(p) as z:
                for k in z.files:
                    a = z[k]
                    if k not in self.arrays:
                        self.arrays[k] = np.empty((sum(counts), *a.shape[1:]), a.dtype)
                    self.arrays[k][start:start + n] = a
            start += n
        self.num_shards = len(paths)

    def __len__(self) -> int:
        return int(self.arrays['gt'].shape[0])

    def __getitem__(self, i: int) -> dict:
        a = self.arrays
        F = int(a['nframes'][i])
        frames = a['frames'][i, :F]
        gt = a['gt'][i]
        cost = a['cost'][i] if 'cost' in a else None
        if self.crop:
            S = gt.shape[-1]
            y, x = (int(v) for v in self.rng.integers(0, S - self.crop + 1, 2))
            win = (slice(y, y + self.crop), slice(x, x + self.crop))
            frames, gt = frames[..., win[0], win[1]], gt[win]
            cost = cost[..., win[0], win[1]] if cost is not None else None
            flips = self.rng.random(3) < 0.5
            if flips[0]:
                frames, gt = frames[..., ::-1], gt[..., ::-1]
                cost = cost[..., ::-1] if cost is not None else None
            if flips[1]:
                frames, gt = frames[..., ::-1, :], gt[..., ::-1, :]
                cost = cost[..., ::-1, :] if cost is not None else None
            if flips[2]:
                frames, gt = frames.swapaxes(-1, -2), gt.swapaxes(-1, -2)
                cost = cost.swapaxes(-1, -2) if cost is not None else None
        out = stack_inputs(self.family, np.ascontiguousarray(frames, dtype=np.float32) / 255.0, a['focus'][i, :F],
                           a['f_numbers'][i, :F], a['lens'][i], int(a['ref'][i]),
                           a['depths'][i] if 'depths' in a else None, cost, self.focus_modes,
                           frame_inputs=self.frame_inputs, pad_frames=a['frames'].shape[1])
        out['gt'] = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))
        return out


def data_parts(data: dict) -> list[tuple[StackDataConfig, Path, int]]:
    """(config, cache folder, seed) of each part of a training YAML's ``data:`` section.

    Part 0 is the section itself; ``extra_train`` entries are more training shards drawn
    with some fields changed (their own ``cache`` folder, seed = base seed + part
    index unless given), so that a later session can widen the draws without
    re-rendering or discarding what exists.  Validation comes from part 0 and from every
    part marked ``val: true`` (see :func:`validation_parts`).
    """
    base = {k: v for k, v in data.items() if k != 'extra_train'}
    seed = int(base.get('seed', 0))
    parts = [(StackDataConfig.from_dict(base), Path(base['cache']), seed)]
    for i, extra in enumerate(data.get('extra_train') or [], start=1):
        merged = {**base, **extra}
        parts.append((StackDataConfig.from_dict(merged), Path(extra['cache']), int(extra.get('seed', seed + i))))
    return parts


def validation_parts(data: dict) -> list[int]:
    """Indices of the parts whose ``val`` split is rendered and validated on: 0 and those marked ``val: true``."""
    return [0] + [i for i, extra in enumerate(data.get('extra_train') or [], start=1) if extra.get('val')]


def training_parts(data: dict) -> list[int]:
    """Indices of the parts trained on: all but those marked ``train: false`` (kept for their
    validation split, or for a run that resumes an older schedule)."""
    entries = [data] + list(data.get('extra_train') or [])
    return [i for i, e in enumerate(entries) if e.get('train', True)]


def main(argv: Optional[Sequence[str]] = None) -> None:
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description='Render training shards of focal stacks (see module docstring).')
    ap.add_argument('--config', required=True, help='training YAML (its data: section)')
    ap.add_argument('--split', default='train', choices=sorted(SPLIT_IDS))
    ap.add_argument('--shards', default='0:4', help='shard range a:b')
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--part', type=int, default=0, help='0: the data section; N: its extra_train[N-1] entry')
    a = ap.parse_args(argv)
    conf = load_config(a.config)
    cfg, folder, seed = data_parts(conf['data'])[a.part]
    if a.split != 'train' and a.part not in validation_parts(conf['data']):
        ap.error('this extra_train part holds training shards only (mark it val: true to validate on it)')
    lo, hi = (int(x) for x in a.shards.split(':'))
    jobs = list(range(lo, hi))
    # load the scenes once, before the workers fork
    for s in ('real_dfd', 'rgbd_7scenes'):
        _real_scenes(s, a.split)
    if cfg.real_pair_prob > 0:
        _real_pairs(a.split)
    split_texture_images(a.split)
    if a.workers > 1:
        import multiprocessing as mp
        with mp.get_context('fork').Pool(a.workers) as pool:
            for p in tqdm(pool.imap_unordered(_shard_job, [(cfg, a.split, seed, k, folder) for k in jobs]),
                          total=len(jobs), desc=f'{folder.name}/{a.split}'):
                print(p, flush=True)
    else:
        for k in tqdm(jobs, desc=f'{folder.name}/{a.split}'):
            print(write_shard(cfg, a.split, seed, k, folder), flush=True)


def _shard_job(args) -> Path:
    return write_shard(*args)


if __name__ == '__main__':
    main()
