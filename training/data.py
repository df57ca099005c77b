"""Synthetic focal-stack data: procedural and real RGB-D scenes rendered with random cameras.

Every sample is a deterministic function of ``(config, split, seed, index)``:

1. a scene: ``ddfs_ros.scenes.procedural_scene`` (random textures and depth layers),
   or a scene of
   ``../shared/data/real_dfd_indoor_train`` (its f/8 image taken as all-in-focus;
   skipped when the folder is absent); real scenes are scaled in depth into the
   hypothesis range (a uniform scale of the world is a physically valid scene),
   randomly cropped, resized to the network resolution and flipped;
2. a camera (DESIGN.md section 7): F frames (2..10 for the cost-volume families, the
   engine's F for DFV), a focus schedule uniform in depth, in dioptres or random
   (sometimes in non-monotonic order, sometimes two apertures at one focus),
   f-number 1.4..8, focal length 4..50 mm and a pixel pitch chosen so that the
   largest circle of confusion over the scene spans ``max_coc_px`` (1..15 px) at the
   network resolution; then the DDFS scale augmentation k in {1, 1.5, ..., 9}
   (depth, focus, f and pitch times k leave every blur in pixels unchanged);
3. the stack rendered by ``ddfs_ros.render.render_focal_stack`` (the renderer of the
   simulated camera) and, for the cost-volume families, the network input made by
   ``ddfs_ros.cost_volume.CostVolume`` -- the code the inference node runs.

Validation holds out whole camera settings, not just scenes: the validation split
draws its focal length and f-number from bands that the training split never samples
(``holdout_*``), its procedural scenes from other seeds and its real scenes from a
held-out subset.

Rendering + cost volume cost ~0.1-1 s per sample on a CPU, so :func:`build_cache`
materialises a split once under a git-ignored folder (``.cache/data/...``) and
:class:`CachedDataset` serves it (with random flips) to every model of that family.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ddfs_ros.cost_volume import CostVolume
from ddfs_ros.optics import LensModel, coc_m, default_max_coc_px, depth_hypotheses

REAL_DFD_ROOT = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'real_dfd_indoor_train'
SPLIT_IDS = {'train': 0, 'val': 1, 'test': 2}


@dataclass
class DataConfig:
    """How samples are drawn.  Lengths in metres, blur in pixels at ``size``.

    ``frames``: (min, max) F, or an int for a fixed F.  ``fixed_focus``: use exactly these
    focus distances (camera-shift protocol) instead of random schedules.  ``fixed_lens``:
    ``{'focal_length_m', 'f_number', 'pixel_pitch_m'}`` instead of random lenses.
    """

    size: int = 128
    num_hypotheses: int = 32
    d_min: float = 0.1
    d_max: float = 3.0
    spacing: str = 'depth'
    frames: Any = (2, 10)
    want_stack: bool = False            # store the sorted stack (DFV)
    want_cost: bool = True              # store image + cost volume (DDFS, dfv_cv)
    scene_near: tuple = (0.25, 1.5)     # nearest scene depth range (m, before k)
    scene_ratio: tuple = (1.5, 5.0)     # far / near
    source_weights: dict = field(default_factory=lambda: {'procedural': 0.75,
                                                          'real_dfd': 0.25})
    f_number: tuple = (1.4, 8.0)
    focal_length_mm: tuple = (4.0, 50.0)
    max_coc_px: tuple = (1.0, 15.0)
    holdout_f_number: tuple = (3.2, 4.0)        # validation-only band
    holdout_focal_length_mm: tuple = (10.0, 14.0)
    schedules: tuple = ('depth', 'dioptre', 'random')
    unsorted_prob: float = 0.2
    aperture_pair_prob: float = 0.05
    scale_aug: Sequence[float] = tuple(np.arange(1.0, 9.01, 0.5).tolist())
    full_well: tuple = (300.0, 20000.0)          # photo-electrons at full scale (log-uniform)
    read_noise: tuple = (0.5, 5.0)              # electrons rms
    noise_prob: float = 0.8
    quantize_bits: Optional[int] = 8
    fixed_focus: Optional[Sequence[float]] = None
    fixed_lens: Optional[dict] = None
    fixed_scene_range: Optional[tuple] = None   # (near, far) of every scene, metres

    @classmethod
    def from_dict(cls, d: dict) -> 'DataConfig':
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ('scene_near', 'scene_ratio', 'f_number', 'focal_length_mm', 'max_coc_px',
                  'holdout_f_number', 'holdout_focal_length_mm', 'schedules', 'full_well', 'read_noise',
                  'fixed_scene_range'):
            if known.get(k) is not None:
                known[k] = tuple(known[k])
        if isinstance(known.get('frames'), list):
            known['frames'] = tuple(known['frames'])
        return cls(**known)

    def hypotheses(self) -> np.ndarray:
        """The D base hypotheses (m, ascending) before the scale augmentation."""
        return depth_hypotheses(self.d_min, self.d_max, self.num_hypotheses, self.spacing)


# --------------------------------------------------------------------------------------
# scenes
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _real_dfd_scenes() -> list:
    if not REAL_DFD_ROOT.is_dir():
        return []
    from ddfs_ros.scenes import real_dfd_scenes
    return list(real_dfd_scenes(REAL_DFD_ROOT))


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    import cv2
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def crop_resize(rgb: np.ndarray, depth: np.ndarray, size: int, rng: np.random.Generator):
    """Random square crop (50-100 % of the short side), resized to size x size."""
    H, W = depth.shape
    short = min(H, W)
    c = int(rng.uniform(0.5, 1.0) * short)
    c = max(min(c, short), min(size, short))
    y = int(rng.integers(0, H - c + 1))
    x = int(rng.integers(0, W - c + 1))
    rgb = rgb[y:y + c, x:x + c]
    depth = depth[y:y + c, x:x + c]
    return _resize(rgb, size).astype(np.float32), _resize(depth, size, nearest=True).astype(np.float32)


def _fit_depth(depth: np.ndarray, near: float, far: float) -> np.ndarray:
    """Scale a real depth map so that its 2nd..98th percentiles span about [near, far]; clip the rest."""
    d = np.where(np.isfinite(depth) & (depth > 0), depth, np.nan)
    lo, hi = np.nanpercentile(d, [2, 98])
    # A uniform scale keeps the scene physically valid; fit whichever end binds.
    s = min(far / hi, max(near / lo, 1e-6)) if hi / lo > far / near else near / lo
    d = np.nan_to_num(d * s, nan=far)
    return np.clip(d, near, far).astype(np.float32)


def draw_scene(cfg: DataConfig, split: str, rng: np.random.Generator):
    """(rgb size x size x 3 [0,1], depth size x size metres, source name) before k."""
    from ddfs_ros.scenes import procedural_scene

    if cfg.fixed_scene_range is not None:
        near, far = cfg.fixed_scene_range
    else:
        near = float(rng.uniform(*cfg.scene_near))
        far = min(cfg.d_max * 0.98, near * float(rng.uniform(*cfg.scene_ratio)))
        near = max(near, cfg.d_min * 1.02)
        far = max(far, near * 1.2)
    sources = {k: w for k, w in cfg.source_weights.items() if w > 0}
    if 'real_dfd' in sources and not _real_dfd_scenes():
        sources.pop('real_dfd')
    names = sorted(sources)
    p = np.array([sources[n] for n in names], dtype=np.float64)
    src = names[int(rng.choice(len(names), p=p / p.sum()))]
    if src == 'procedural':
        scene = procedural_scene(rng, cfg.size, (near, far))
        rgb, depth = np.asarray(scene.rgb, np.float32), np.asarray(scene.depth_m, np.float32)
        if rgb.shape[0] != cfg.size or rgb.shape[1] != cfg.size:
            rgb, depth = crop_resize(rgb, depth, cfg.size, rng)
    else:
        # the Middlebury motorcycle is the demo and a test bag: never a training scene
        from ddfs_ros.data_splits import real_dfd_split
        scenes = _real_dfd_scenes()
        want = 'train' if split == 'train' else 'val'
        idx = [i for i in range(len(scenes)) if real_dfd_split(i) == want]
        scene = scenes[idx[int(rng.integers(len(idx)))]]
        rgb, depth = crop_resize(np.asarray(scene.rgb, np.float32), np.asarray(scene.depth_m, np.float32),
                                  cfg.size, rng)
        depth = _fit_depth(depth, near, far)
    if rng.random() < 0.5:
        rgb, depth = rgb[:, ::-1], depth[:, ::-1]
    if rng.random() < 0.5:
        rgb, depth = rgb[::-1], depth[::-1]
    return np.ascontiguousarray(np.clip(rgb, 0, 1)), np.ascontiguousarray(depth), src


# --------------------------------------------------------------------------------------
# cameras
# --------------------------------------------------------------------------------------
def _uniform_outside(rng: np.random.Generator, lo: float, hi: float, band: tuple, log: bool = True) -> float:
    """A (log-)uniform draw in [lo, hi] outside ``band`` (rejection)."""
    for _ in range(1000):
        v = math.exp(rng.uniform(math.log(lo), math.log(hi))) if log else rng.uniform(lo, hi)
        if not band[0] <= v <= band[1]:
            return v
    raise RuntimeError('holdout band covers the whole range')


def draw_camera(cfg: DataConfig, split: str, depth: np.ndarray, rng: np.random.Generator,
                num_frames: Optional[int] = None) -> dict:
    """Focus distances (frame order), per-frame f-numbers and lens for a scene (before k)."""
    if cfg.fixed_focus is not None:
        focus = np.asarray(cfg.fixed_focus, dtype=np.float64)
        F = len(focus)
        kind = 'fixed'
    else:
        if num_frames is None:
            F = int(cfg.frames) if np.isscalar(cfg.frames) else int(rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        else:
            F = num_frames
        lo, hi = np.percentile(depth, [5, 95])
        near = max(float(lo) * rng.uniform(0.7, 1.1), cfg.d_min)
        far = max(float(hi) * rng.uniform(0.9, 1.4), near * 1.3)
        kind = str(rng.choice(list(cfg.schedules)))
        if kind == 'depth':
            focus = np.linspace(near, far, F)
        elif kind == 'dioptre':
            focus = 1.0 / np.linspace(1.0 / near, 1.0 / far, F)
        else:
            focus = np.sort(np.exp(rng.uniform(math.log(near), math.log(far), F)))
            # two identical focus distances would make the stack invalid
            focus = np.maximum.accumulate(focus * (1 + 1e-3 * np.arange(F)))
    f_numbers = None
    if cfg.fixed_lens is not None:
        fl = float(cfg.fixed_lens['focal_length_m'])
        N = float(cfg.fixed_lens['f_number'])
        pitch = float(cfg.fixed_lens['pixel_pitch_m'])
    else:
        if split == 'train':
            N = _uniform_outside(rng, *cfg.f_number, cfg.holdout_f_number)
            fmm = _uniform_outside(rng, *cfg.focal_length_mm, cfg.holdout_focal_length_mm)
        else:
            N = math.exp(rng.uniform(*np.log(cfg.holdout_f_number)))
            fmm = math.exp(rng.uniform(*np.log(cfg.holdout_focal_length_mm)))
        # a real image needs s > f; keep f well below the nearest focus distance
        fl = min(fmm * 1e-3, 0.5 * float(focus.min()))
        # pitch such that the largest blur over the scene is max_coc_px at this resolution
        target = math.exp(rng.uniform(*np.log(cfg.max_coc_px)))
        d = np.percentile(depth, [0.5, 50, 99.5])
        cmax = float(np.max(coc_m(d[:, None], focus[None, :], fl, N)))
        pitch = max(cmax / target, 1e-7)
        if cfg.fixed_focus is None and F >= 2 and rng.random() < cfg.aperture_pair_prob and not cfg.want_stack:
            # depth from defocus by aperture: one focus distance, two f-numbers
            F = 2
            focus = np.full(2, float(np.median(focus)))
            f_numbers = np.array([N, min(N * rng.uniform(2.0, 4.0), 22.0)])
            kind = 'aperture_pair'
    order = np.arange(F)
    if cfg.fixed_focus is None and kind != 'aperture_pair' and rng.random() < cfg.unsorted_prob:
        order = rng.permutation(F)
        kind += '_unsorted'
    focus = focus[order]
    return {'focus_m': focus, 'f_numbers': f_numbers, 'lens': LensModel(fl, N, pitch), 'schedule': kind}


# --------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------
_CV_CACHE: dict = {}


def _cost_volume(max_coc_px: Optional[float]) -> CostVolume:
    if max_coc_px not in _CV_CACHE:
        _CV_CACHE[max_coc_px] = CostVolume('cpu', max_coc_px=max_coc_px)
    return _CV_CACHE[max_coc_px]


def make_sample(cfg: DataConfig, split: str, seed: int, index: int) -> dict:
    """One sample as numpy arrays (see module docstring).

    Keys: ``gt`` H x W (m), ``focus`` F (m, frame order), ``meta`` (dict), and
    ``image`` 3 x H x W + ``cost`` D x H x W + ``depths`` D (m) when ``want_cost``;
    ``stack`` F x 3 x H x W + ``focus_sorted`` F (near -> far) when ``want_stack``.
    """
    from ddfs_ros.render import SensorNoise, render_focal_stack

    rng = np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])
    rgb, depth, src = draw_scene(cfg, split, rng)
    cam = draw_camera(cfg, split, depth, rng)
    k = float(rng.choice(np.asarray(cfg.scale_aug, dtype=np.float64))) if cfg.scale_aug else 1.0
    lens = cam['lens'].scaled(k)
    focus = cam['focus_m'] * k
    depth_k = depth * k
    noise = None
    if rng.random() < cfg.noise_prob:
        noise = SensorNoise(full_well=math.exp(rng.uniform(*np.log(cfg.full_well))),
                            read_noise=float(rng.uniform(*cfg.read_noise)))
    frames = render_focal_stack(rgb, depth_k, focus, lens, f_numbers=cam['f_numbers'], noise=noise,
                                quantize_bits=cfg.quantize_bits, rng=rng)
    frames = np.asarray(frames, dtype=np.float32)                          # F x H x W x 3
    out = {'gt': depth_k.astype(np.float32), 'focus': focus.astype(np.float32)}
    if cfg.want_cost:
        hyps = cfg.hypotheses() * k
        chw = np.ascontiguousarray(np.moveaxis(frames, -1, 1))             # F x 3 x H x W
        fn = cam['f_numbers'] if cam['f_numbers'] is not None else lens.f_number
        cost = _cost_volume(None)(chw, focus, fn, lens.focal_length_m, lens.pixel_pitch_m, hyps)
        ref = int(np.argmax(focus)) if cam['f_numbers'] is None else int(np.argmax(cam['f_numbers']))
        out['image'] = chw[ref]
        out['cost'] = cost.numpy()
        out['depths'] = hyps.astype(np.float32)
    if cfg.want_stack:
        order = np.argsort(focus, kind='stable')
        out['stack'] = np.ascontiguousarray(np.moveaxis(frames[order], -1, 1))
        out['focus_sorted'] = focus[order].astype(np.float32)
    out['meta'] = {'source': src, 'k': k, 'F': int(len(focus)), 'schedule': cam['schedule'],
                   'focal_length_m': lens.focal_length_m, 'f_number': lens.f_number,
                   'pixel_pitch_m': lens.pixel_pitch_m,
                   'noise': None if noise is None else [noise.full_well, noise.read_noise],
                   'focus_m': [float(x) for x in focus]}
    return out


class OnTheFlyDataset(Dataset):
    """Renders sample ``i`` of a split on demand (deterministic: same i, same sample)."""

    def __init__(self, cfg: DataConfig, split: str, length: int, seed: int = 0) -> None:
        self.cfg, self.split, self.length, self.seed = cfg, split, int(length), int(seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return to_tensors(make_sample(self.cfg, self.split, self.seed, i))


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------
ARRAY_KEYS = {'gt': np.float32, 'image': np.float16, 'cost': np.float16, 'depths': np.float32,
              'stack': np.float16, 'focus_sorted': np.float32}


def _work(args):
    cfg, split, seed, idx = args
    torch.set_num_threads(1)
    s = make_sample(cfg, split, seed, idx)
    return idx, s


def build_cache(cfg: DataConfig, split: str, count: int, out: Path, seed: int = 0, workers: int = 1,
                progress: bool = True) -> Path:
    """Render ``count`` samples of ``split`` into ``out/{split}.npz`` (+ ``{split}_meta.json``)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, split, seed, i) for i in range(count)]
    # load the real scenes once, before the workers fork
    if cfg.source_weights.get('real_dfd', 0) > 0:
        _real_dfd_scenes()
    samples: list = [None] * count
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context('fork').Pool(workers) as pool:
            for idx, s in tqdm(pool.imap_unordered(_work, jobs, chunksize=4), total=count,
                               desc=f'render {out.name}/{split}', disable=not progress):
                samples[idx] = s
    else:
        for job in tqdm(jobs, desc=f'render {out.name}/{split}', disable=not progress):
            idx, s = _work(job)
            samples[idx] = s
    arrays = {}
    for key, dt in ARRAY_KEYS.items():
        if key in samples[0]:
            arrays[key] = np.stack([s[key] for s in samples]).astype(dt)
    tmp = out / f'{split}.tmp.npz'
    np.savez(tmp, **arrays)
    os.replace(tmp, out / f'{split}.npz')
    meta = {'config': asdict(cfg), 'seed': seed, 'count': count, 'split': split,
            'samples': [s['meta'] for s in samples]}
    (out / f'{split}_meta.json').write_text(json.dumps(meta, default=_json_default))
    return out / f'{split}.npz'


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def to_tensors(s: dict) -> dict:
    out = {}
    for key in ARRAY_KEYS:
        if key in s:
            out[key] = torch.as_tensor(np.asarray(s[key], dtype=np.float32))
    return out


class CachedDataset(Dataset):
    """A rendered split held in memory; random horizontal/vertical flips when ``augment``.

    Flips act on every spatial array alike (the cost volume is spatially equivariant).
    """

    def __init__(self, path: Path | str, augment: bool = False, seed: int = 0, crop: Optional[int] = None) -> None:
        path = Path(path)
        self.crop = crop
        with np.load(path) as z:
            self.arrays = {k: z[k] for k in z.files}
        meta_path = path.with_name(path.stem + '_meta.json')
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.arrays['gt'].shape[0])

    def __getitem__(self, i: int) -> dict:
        s = {k: v[i] for k, v in self.arrays.items()}
        if self.crop:
            # random crop (training only): every network here is fully convolutional over
            # local windows, so 64 px crops of 128 px samples cost a quarter per sample
            H, W = s['gt'].shape
            y = int(self.rng.integers(0, H - self.crop + 1))
            x = int(self.rng.integers(0, W - self.crop + 1))
            s = {k: (v[..., y:y + self.crop, x:x + self.crop] if v.ndim >= 2 else v) for k, v in s.items()}
        if self.augment:
            for axis_from_end in (1, 2):        # W then H
                if self.rng.random() < 0.5:
                    s = {k: (np.flip(v, axis=v.ndim - axis_from_end) if v.ndim >= 2 else v) for k, v in s.items()}
        return to_tensors({k: np.ascontiguousarray(v) for k, v in s.items()})


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .config import load_config

    ap = argparse.ArgumentParser(description='Render a cached synthetic focal-stack split.')
    ap.add_argument('--config', required=True, help='training YAML (its data: section is used)')
    ap.add_argument('--split', default='train', choices=sorted(SPLIT_IDS))
    ap.add_argument('--count', type=int, default=None)
    ap.add_argument('--out', default=None, help='cache folder (default: the config\'s data.cache)')
    ap.add_argument('--workers', type=int, default=1)
    ap.add_argument('--seed', type=int, default=None)
    ap.add_argument('--force', action='store_true', help='render again even if the split exists')
    a = ap.parse_args(argv)
    conf = load_config(a.config)
    d = dict(conf['data'])
    family = conf.get('model', {}).get('family')
    d.setdefault('want_stack', family == 'dfv')
    d.setdefault('want_cost', family != 'dfv')
    cfg = DataConfig.from_dict(d)
    count = a.count or d.get(f'{a.split}_count', 256)
    out = Path(a.out or d['cache'])
    seed = a.seed if a.seed is not None else int(d.get('seed', 0))
    if (out / f'{a.split}.npz').exists() and not a.force:
        print(f'{out / a.split}.npz exists (use --force to render again)')
        return
    path = build_cache(cfg, a.split, count, out, seed=seed, workers=a.workers)
    print(path)


if __name__ == '__main__':
    main()
