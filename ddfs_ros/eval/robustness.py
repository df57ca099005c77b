"""How an engine holds up when the stack comes from optics unlike our renderer's (no ROS).

    ddfs-eval robustness --engine engines/ddfs_s.json --engine engines/dfv_s.json [--split val]

Every training stack is made by :func:`ddfs_ros.render.render_focal_stack`: a thin-lens
disk blur in linear light, layered with occlusions, and the network is told the exact
lens.  A real camera (or another team's renderer) departs from each of those choices.
This command renders the same scenes several ways and scores every method on each, so
that a margin over the focus measure that only holds for our own renderer shows up:

- ``reference``: our renderer, the lens as told;
- ``gaussian_psf``: a Gaussian blur spot of the same second moment (a lens with
  aberrations is between a disk and a Gaussian);
- ``disk_otf``: the disk on a band-limited image (:func:`ddfs_ros.psf.disk_otf_psfs`): a
  sub-pixel defocus softens the frame, where the pixel-area disk is a delta below half a
  pixel (a real camera, and the shared bags' renderer, behave like this one);
- ``srgb_blur``: the blur applied to the sRGB-encoded values (no linearisation), as many
  simple renderers do;
- ``gather``: each pixel takes the uniform disk blur of its own depth (no occlusion
  layers: the usual depth-dependent blur of graphics tools);
- ``blur_x1.25`` / ``blur_x0.8``: the true blur 1.25x larger / smaller than the lens
  parameters the node is given say (a pixel pitch, f-number or focal length that is off);
- ``exposure``: every frame's exposure off by a gain drawn log-uniform in
  :data:`EXPOSURE_GAIN` (applied to linear light before the noise): auto-exposure flicker
  over a sweep, or the two shots of an aperture pair (the real f/2.8 + f/8 pairs of
  ``real_dfd_indoor_train`` differ in mean brightness by 0.97-1.04x, 10th-90th percentile).

Scenes come from the real RGB-D splits of :mod:`ddfs_ros.data_splits` (default: the
validation split, so that nothing here is a test figure) or from procedural scenes
(``procedural``: the split's texture photographs, the motorcycle camera, scenes 1.5-7.8 m
deep with a largest blur of 2-5 px: dense texture and full sweeps, the regime of
``motorcycle_sweep``; most of its texture crops are magnified, soft in themselves, while
``procedural_crisp`` takes crops of at least the render size, never magnified, as crisp as
the Middlebury photograph of ``motorcycle_sweep``, and ``procedural_thin`` adds 4-10 thin
structures (bars, arcs, rails a few pixels wide) to those crisp scenes: fine geometry with
many depth edges, like the motorcycle's spokes, cables and frame).
Every pixel with finite, positive ground truth and depth is scored (as in every report);
AbsRel is averaged per stack.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Optional, Sequence

import numpy as np

from ..optics import LensModel, coc_px
from ..stack import FocalStack

#: Variant name -> one line of what differs from the reference renderer.
VARIANTS = {
    'reference': 'our renderer (thin-lens disk, linear light, occlusion layers), exact lens',
    'gaussian_psf': 'Gaussian blur spot of the same second moment',
    'disk_otf': 'the disk on a band-limited image: no dead zone below r = 0.5 px',
    'srgb_blur': 'blur applied to sRGB-encoded values',
    'gather': 'per-pixel uniform disk blur of its own depth, no occlusion layers',
    'blur_x1.25': 'true blur 1.25x what the lens parameters say',
    'blur_x0.8': 'true blur 0.8x what the lens parameters say',
    'exposure': 'each frame exposed with its own gain (0.95-1.05x, linear light)',
    'soft_scene': 'disk_otf on a scene soft in itself (all-in-focus image Gaussian-blurred, sigma 1 px)',
}
#: Gaussian sigma (px) of the ``soft_scene`` variant: the blur every frame shares (a lens's MTF,
#: demosaicing, a magnified or smooth texture) that defocus adds to.
SOFT_SCENE_SIGMA_PX = 1.0
#: Range of the per-frame exposure gain of the ``exposure`` variant (log-uniform).
EXPOSURE_GAIN = (0.95, 1.05)
#: Scene sources -> the camera preset of ``ddfs-bag make`` they are rendered with.
SOURCES = {'rgbd_7scenes': 'rgbd_7scenes', 'real_dfd': 'real_dfd_sweep', 'procedural': 'motorcycle',
           'procedural_crisp': 'motorcycle', 'procedural_thin': 'motorcycle'}
#: Thin structures per ``procedural_thin`` scene (:func:`~ddfs_ros.scenes.thin_structure_mask`).
PROCEDURAL_THIN_COUNT = (4, 10)
#: Procedural scenes: nearest depth (m) and far / near, with the motorcycle camera a largest
#: blur of 2-5 px at 256 px, the regime of ``motorcycle_sweep``.
PROCEDURAL_NEAR_M = (1.5, 3.0)
PROCEDURAL_RATIO = (1.6, 2.6)
#: Blur levels of the gather renderer (interpolated linearly in between).
GATHER_LEVELS = 12


def gather_render(rgb: np.ndarray, depth_m: np.ndarray, focus_m: Sequence[float], lens: LensModel,
                  levels: int = GATHER_LEVELS) -> np.ndarray:
    """F x H x W x C linear-light frames in [0, 1]: each pixel the disk blur of its own depth.

    ``rgb``: H x W x C sRGB in [0, 1]; ``depth_m``: H x W metres (finite, > 0).  The image is
    blurred uniformly at ``levels`` radii from 0 to the largest radius of the frame and each
    pixel interpolates between the two levels around its own circle of confusion.  No
    occlusion handling: a sharp foreground edge bleeds into a blurred background as in many
    graphics tools.  Noise and encoding are left to the caller.
    """
    import cv2
    import torch

    from ..psf import disk_psfs
    from ..render import srgb_to_linear
    lin = srgb_to_linear(torch.as_tensor(np.asarray(rgb, dtype=np.float32))).numpy()
    H, W = depth_m.shape
    yy, xx = np.mgrid[:H, :W]
    out = []
    for s in np.atleast_1d(focus_m):
        radius = coc_px(depth_m, float(s), lens.focal_length_m, lens.f_number, lens.pixel_pitch_m) / 2.0
        top = max(float(radius.max()), 1e-6)
        radii = np.linspace(0.0, top, levels)
        stack = np.stack([lin if r < 0.25 else
                          cv2.filter2D(lin, -1, disk_psfs([r])[0].astype(np.float32), borderType=cv2.BORDER_REFLECT)
                          for r in radii])
        pos = radius / radii[1]
        i0 = np.clip(np.floor(pos).astype(np.int64), 0, levels - 2)
        t = np.clip(pos - i0, 0.0, 1.0)[..., None]
        out.append((1.0 - t) * stack[i0, yy, xx] + t * stack[i0 + 1, yy, xx])
    return np.stack(out).astype(np.float32)


def render_variant(variant: str, rgb: np.ndarray, depth_m: np.ndarray, focus_m: np.ndarray,
                   lens: LensModel, noise=None, seed: int = 0) -> FocalStack:
    """The 8-bit stack of ``variant`` (see :data:`VARIANTS`), labelled with the nominal ``lens``."""
    import torch

    from ..render import render_focal_stack, soften_scene, srgb_to_linear
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {sorted(VARIANTS)}, got {variant!r}')
    if variant == 'gather':
        frames = _expose(torch.as_tensor(gather_render(rgb, depth_m, focus_m, lens).transpose(0, 3, 1, 2).copy()),
                         noise, seed)
    elif variant == 'exposure':
        clean = render_focal_stack(rgb, depth_m, focus_m, lens)      # sRGB, no noise, not quantised
        lin = srgb_to_linear(torch.as_tensor(np.ascontiguousarray(clean.transpose(0, 3, 1, 2))))
        gain = np.exp(np.random.default_rng(int(seed)).uniform(*np.log(EXPOSURE_GAIN), size=(len(clean), 1, 1, 1)))
        frames = _expose(lin * torch.as_tensor(gain, dtype=lin.dtype), noise, seed)
    else:
        if variant == 'soft_scene':
            rgb = soften_scene(rgb, SOFT_SCENE_SIGMA_PX)
        scale = float(variant[len('blur_x'):]) if variant.startswith('blur_x') else 1.0
        frames = render_focal_stack(rgb, depth_m, focus_m, lens.with_blur_scale(scale), noise=noise, quantize_bits=8,
                                    rng=int(seed),
                                    psf={'gaussian_psf': 'gaussian', 'disk_otf': 'disk_otf',
                                         'soft_scene': 'disk_otf'}.get(variant, 'disk'),
                                    linear_light=variant != 'srgb_blur')
    return FocalStack(frames=np.asarray(frames, dtype=np.float32), focus_m=np.asarray(focus_m, dtype=np.float64),
                      lens=lens)


def _expose(lin, noise, seed: int) -> np.ndarray:
    """F x H x W x C 8-bit sRGB frames from F x C x H x W linear light (noise in linear light)."""
    import torch

    from ..render import linear_to_srgb
    if noise is not None:
        lin = noise.apply(lin, torch.Generator().manual_seed(int(seed)))
    frames = linear_to_srgb(lin.clamp(0.0, 1.0)).numpy().transpose(0, 2, 3, 1)
    return np.round(np.clip(frames, 0.0, 1.0) * 255.0) / 255.0


def scenes_of(source: str, split: str, count: int, size: Optional[int] = None, seed: int = 0):
    """(rgb, ground-truth depth with NaN holes, hole-free render depth, lens, focus) per scene."""
    from .bag_cli import CAMERA_PRESETS, CameraConfig, depths_of, iter_scenes
    if source not in SOURCES:
        raise ValueError(f'source must be one of {sorted(SOURCES)}, got {source!r}')
    preset = copy.deepcopy(CAMERA_PRESETS[SOURCES[source]])
    if size:
        # same optics at another width: the pitch grows as the image shrinks
        k = preset['width'] / float(size)
        preset['height'] = int(round(preset['height'] / k))
        preset['width'] = int(size)
        if preset.get('pixel_pitch'):
            preset['pixel_pitch'] *= k
    cam = CameraConfig.from_dict(preset)
    rng = np.random.default_rng(seed)
    for sc in (_procedural(cam, split, count, rng, crisp=source != 'procedural',
                           thin=source == 'procedural_thin')
               if source.startswith('procedural') else iter_scenes(source, cam, count, seed=seed, split=split)):
        gt, render_depth = depths_of(sc)
        yield sc.rgb, gt, render_depth, LensModel(cam.focal_length, cam.f_number, sc.pitch), \
            cam.schedule(gt, rng), cam.noise_model()


def _procedural(cam, split: str, count: int, rng: np.random.Generator, crisp: bool = False,
                thin: bool = False):
    """Procedural scenes textured with the split's photographs (the built-in pictures when
    ``../shared/data/textures`` is absent), fitted to the camera; ``crisp``: textures never
    magnified (:func:`~ddfs_ros.scenes.split_photo_texture`); ``thin``: with
    :data:`PROCEDURAL_THIN_COUNT` thin structures each."""
    from .. import data_splits
    from ..scenes import procedural_scene, split_photo_texture
    from .bag_cli import fit_to_camera
    texture = split_photo_texture(split, crisp) if data_splits.texture_paths(split) else None
    for _ in range(count):
        near = float(rng.uniform(*PROCEDURAL_NEAR_M))
        far = near * float(rng.uniform(*PROCEDURAL_RATIO))
        n_thin = int(rng.integers(PROCEDURAL_THIN_COUNT[0], PROCEDURAL_THIN_COUNT[1] + 1)) if thin else 0
        sc = procedural_scene(rng, max(cam.width, cam.height), (near, far), texture=texture, n_thin=n_thin)
        yield fit_to_camera(sc.rgb, sc.depth_m, cam, 'procedural')


def stack_abs_rel(depth: np.ndarray, gt: np.ndarray) -> float:
    """AbsRel over the pixels every report scores (:func:`~ddfs_ros.eval.metrics.valid_mask`:
    ground truth and depth finite and > 0); NaN if there are none."""
    from .metrics import valid_mask
    m = valid_mask(depth, gt)
    return float(np.mean(np.abs(depth[m] - gt[m]) / gt[m])) if m.any() else float('nan')


def robustness_scores(methods: dict[str, Callable[[FocalStack], np.ndarray]], sources: Sequence[str],
                      split: str = 'val', count: int = 12, variants: Sequence[str] = tuple(VARIANTS),
                      size: Optional[int] = None, seed: int = 0) -> dict:
    """{variant: {method: [AbsRel per stack]}} over ``count`` scenes of each source.

    A stack's noise is drawn from ``seed`` and its index within its source, so a source
    scores the same alone as beside others."""
    scores = {v: {m: [] for m in methods} for v in variants}
    for source in sources:
        for k, (rgb, gt, render_depth, lens, focus, noise) in enumerate(scenes_of(source, split, count, size, seed)):
            for v in variants:
                stack = render_variant(v, rgb, render_depth, focus, lens, noise, seed=seed * 1000003 + k)
                for name, predict in methods.items():
                    scores[v][name].append(stack_abs_rel(np.asarray(predict(stack), dtype=np.float64), gt))
    return scores


def robustness_table(scores: dict, reference: str) -> str:
    """Markdown: one row per variant, AbsRel per method and its change against ``reference``."""
    methods = list(next(iter(scores.values())))
    lines = ['| variant | ' + ' | '.join(methods) + ' |', '|---|' + '---|' * len(methods)]
    for v, row in scores.items():
        ref = float(np.nanmean(row[reference])) if reference in row else math.nan
        cells = []
        for m in methods:
            a = float(np.nanmean(row[m]))
            cells.append(f'{a:.4f}' if m == reference or not math.isfinite(ref)
                         else f'{a:.4f} ({(a / ref - 1) * 100:+.0f} %)')
        lines.append(f'| {v} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def run(engines: Sequence[str], sources: Sequence[str] = ('rgbd_7scenes', 'real_dfd'), split: str = 'val',
        count: int = 12, variants: Sequence[str] = tuple(VARIANTS), backend: str = 'auto',
        max_relative_uncertainty: float = 0.0, size: Optional[int] = None, seed: int = 0) -> str:
    """The ``ddfs-eval robustness`` report (markdown)."""
    from .offline import BASELINE_NAME, baseline_predict, load_pipeline, method_names, pipeline_predict
    methods = {}
    for name, path in zip(method_names(engines), engines):
        predict = pipeline_predict(load_pipeline(path, backend=backend,
                                                 max_relative_uncertainty=max_relative_uncertainty))
        methods[name] = lambda s, p=predict: p(s)[0]
    methods[BASELINE_NAME] = lambda s: baseline_predict(s)[0]
    scores = robustness_scores(methods, sources, split, count, variants, size, seed)
    n = len(next(iter(next(iter(scores.values())).values())))
    head = (f'{n} stacks per variant ({", ".join(sources)}, split {split}); AbsRel averaged per stack, '
            f'change against the {BASELINE_NAME} in brackets; the node is always told the nominal lens.')
    legend = '\n'.join(f'- `{v}`: {VARIANTS[v]}' for v in variants)
    return '\n'.join([head, '', robustness_table(scores, BASELINE_NAME), '', legend])
