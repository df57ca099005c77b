"""``ddfs-bag``: write evaluation bags rendered from RGB-D data, and inspect bags.

::

    ddfs-bag make OUT --source motorcycle --camera camera.yaml --stacks 3
    ddfs-bag make OUT --source procedural --camera camera.yaml --stacks 20 --storage sqlite3
    ddfs-bag make OUT --source rgbd DIR --camera camera.yaml        # DIR/rgbd.yaml says how
    ddfs-bag make OUT --source real_dfd --split test                  # held-out real scenes (data_splits)
    ddfs-bag make OUT --source rgbd_7scenes --split test              # held-out 7-Scenes frames
    ddfs-bag pairs OUT --split val [--width 256]                       # real f/2.8 + f/8 shots (no rendering)
    ddfs-bag info BAG                                                  # stacks, stamps, problems

A bag holds ``<ns>/focal_stack/{image,camera_info,lens_state,depth_gt}`` (DESIGN.md
section 5), rendered by :mod:`ddfs_ros.render` from the scene's all-in-focus image
and depth, quantised to the image encoding.  ``depth_gt`` is the scene depth.

Camera YAML: the capture node's ``config/camera.yaml`` works as it is (its
``ros__parameters`` are read); the keys used are ``width``, ``height``,
``focal_length`` (m), ``f_number``, ``f_numbers`` ([0.0] = none), ``pixel_pitch``
(m/px of the published frame), ``focus_distances`` (m; [0.0] = use ``focus_near``,
``focus_far``, ``focus_count``, ``focus_spacing``, where 0 means the scene's 5th/95th
depth percentile), ``encoding``, ``frame_id``, ``rate`` (stacks/s -> stamp spacing),
``noise``, ``noise_full_well``, ``noise_read_noise``, ``depth_range`` (procedural
scenes), ``seed``; and, for RGB-D sources whose pitch is known at the files' own
resolution, ``native_pixel_pitch`` (m/px before the centre crop and resize; it wins
over ``pixel_pitch``).  Instead of a path, ``--camera`` takes a preset name:
``motorcycle`` (the sample bag's camera) or ``real_dfd`` (Nikon D200, 35 mm, f/2.8,
36 um at 645 px, focus 1.0-6.0 m with 1.7 m).

RGB-D directory (``--source rgbd DIR``): ``DIR/rgbd.yaml`` (or ``--rgbd-config``) with
``rgb`` and ``depth`` globs (paired in sorted order) or ``pairs`` (a CSV with
``rgb_file,depth_file`` columns, files under ``rgb_dir``/``depth_dir``), ``depth_scale``
(m per depth unit, 0.001 for millimetre PNGs) and optional ``native_pixel_pitch``,
``focal_length``.  A folder laid out like ``real_dfd_indoor_train`` (``pairs.csv``,
``rgb_f8/``, ``depth/``) needs no YAML.

Split sources (``--source real_dfd|rgbd_7scenes [DIR] --split train|val|test``, default
test; DIR defaults to ``../shared/data/<dataset>``): the scenes of one split of
:mod:`ddfs_ros.data_splits`, every one of them unless ``--stacks`` / ``--select`` (a slice
over the split's scenes) ask for fewer.  Without ``--camera`` each uses its preset:

- ``real_dfd_sweep``: the data's own camera (Nikon D200, 35 mm, f/2.8, 36 um at 645 px,
  scaled to the output width), 256 x 172 (the 645 x 432 aspect), 5 frames uniform in
  dioptres over the scene's 5th-95th depth percentile; rendered from the f/8 image.
- ``rgbd_7scenes``: 256 x 192 (the 640 x 480 aspect), a 35 mm f/1.8 lens whose pixel
  pitch is f / fx with fx from the data's ``camera-intrinsics.txt`` (585 px at 640 px:
  59.8 um there, 150 um at 256 px, a full-frame sensor), so CameraInfo K and the lens
  agree; the largest blur over a 1-3 m sweep is about 3 px at 256 px.  The depth
  camera's holes (0 = no reading) are filled from the background side
  (:func:`ddfs_ros.scenes.fill_depth_holes`) for rendering only: ``depth_gt`` is NaN there.

Real aperture pairs (``ddfs-bag pairs OUT --split S``): nothing rendered.  Each
``real_dfd_indoor_train`` scene of the split becomes one aperture-only stack of its two
real shots, f/2.8 then f/8, both focused at 1.7 m (Nikon D200, 35 mm, 36 um at 645 px),
with the depth camera's map as ``depth_gt``: real lens blur, noise, JPEG and the shots'
own small misregistration, as in the shared ``dfd_aperture_pairs`` bag.  ``--width``
area-averages frames to that width (pitch scaled alike; depth by nearest neighbour).
"""
from __future__ import annotations

import argparse
import csv
import glob
import logging
import math
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..optics import PSF_SHAPE_NAMES, LensModel, focus_schedule
from .bags import DEFAULT_NAMESPACE, WRITE_ENCODINGS, StackBagWriter, open_bag_info, read_bag

LOG = logging.getLogger('ddfs-bag')

START_STAMP_NS = 1_700_000_000 * 1_000_000_000

#: Named cameras for ``--camera``.
CAMERA_PRESETS = {
    # the camera of sample_bags/motorcycle_sweep and of config/camera.yaml
    'motorcycle': {'width': 256, 'height': 256, 'focal_length': 0.025, 'f_number': 2.0, 'pixel_pitch': 21e-6,
                   'focus_distances': [0.0], 'focus_count': 5, 'focus_spacing': 'dioptre', 'rate': 1.0,
                   'noise': True},
    # the motorcycle camera's sensor at 640 x 480 (VGA, 4:3): the pitch scaled by 256 / 640
    'motorcycle_vga': {'width': 640, 'height': 480, 'focal_length': 0.025, 'f_number': 2.0,
                       'pixel_pitch': 21e-6 * 256 / 640, 'focus_distances': [0.0], 'focus_count': 5,
                       'focus_spacing': 'dioptre', 'rate': 1.0, 'noise': True},
    # real_dfd_indoor_train's camera: Nikon D200, 35 mm, images at 645 x 432 with ~36 um pitch,
    # focus plane 1.7 m; rendered at f/2.8 (its wide aperture) with focus distances around 1.7 m.
    'real_dfd': {'width': 256, 'height': 256, 'focal_length': 0.035, 'f_number': 2.8,
                 'native_pixel_pitch': 36e-6, 'focus_distances': [1.0, 1.3, 1.7, 2.7, 6.0],
                 'rate': 1.0, 'noise': True},
    # the same camera, non-square (645 x 432 aspect), a focus sweep over each scene's depth range
    'real_dfd_sweep': {'width': 256, 'height': 172, 'focal_length': 0.035, 'f_number': 2.8,
                       'native_pixel_pitch': 36e-6, 'focus_distances': [0.0], 'focus_count': 5,
                       'focus_spacing': 'dioptre', 'rate': 1.0, 'noise': True},
    # 7-Scenes frames (640 x 480): 35 mm f/1.8 with the pitch f / fx of the data's K (set on loading)
    'rgbd_7scenes': {'width': 256, 'height': 192, 'focal_length': 0.035, 'f_number': 1.8,
                     'pixel_pitch': None, 'focus_distances': [0.0], 'focus_count': 5,
                     'focus_spacing': 'dioptre', 'rate': 1.0, 'noise': True},
}
#: Sources whose scenes come from a split of :mod:`ddfs_ros.data_splits` -> (data folder, default camera).
SPLIT_SOURCES = {'real_dfd': ('real_dfd_indoor_train', 'real_dfd_sweep'),
                 'rgbd_7scenes': ('rgbd_7scenes', 'rgbd_7scenes')}


@dataclass
class CameraConfig:
    """Camera settings of a rendered bag (metres, pixels of the published frame)."""

    width: int = 256
    height: int = 256
    focal_length: float = 0.025
    f_number: float = 2.0
    f_numbers: Optional[list] = None
    pixel_pitch: Optional[float] = 21e-6
    native_pixel_pitch: Optional[float] = None
    focus_distances: Optional[list] = None
    focus_near: float = 0.0
    focus_far: float = 0.0
    focus_count: int = 5
    focus_spacing: str = 'dioptre'
    focus_jitter: float = 0.0
    breathing: float = 0.0
    jitter_px: float = 0.0
    psf: str = 'disk'          # blur spot of the renderer (ddfs_ros.psf.PSF_SHAPES); disk_otf: no dead zone below 0.5 px
    encoding: str = 'rgb8'
    frame_id: str = 'camera_optical_frame'
    rate: float = 1.0
    noise: bool = True
    noise_full_well: float = 1000.0
    noise_read_noise: float = 2.0
    depth_range: tuple = (0.5, 3.0)
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> 'CameraConfig':
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != 'extra'}
        cfg = cls(**known)
        cfg.extra = {k: v for k, v in d.items() if k not in cls.__dataclass_fields__}
        if cfg.f_numbers is not None and all(float(x) == 0.0 for x in cfg.f_numbers):
            cfg.f_numbers = None
        if cfg.focus_distances is not None and all(float(x) == 0.0 for x in cfg.focus_distances):
            cfg.focus_distances = None
        cfg.depth_range = tuple(float(x) for x in cfg.depth_range)
        return cfg

    def published_pitch(self, source_width: Optional[int] = None, crop_width: Optional[int] = None) -> float:
        """m/px of the published frame: ``native_pixel_pitch`` scaled by the resize, else ``pixel_pitch``."""
        if self.native_pixel_pitch and crop_width:
            return float(self.native_pixel_pitch) * float(crop_width) / float(self.width)
        if not self.pixel_pitch:
            raise ValueError('camera config needs pixel_pitch (or native_pixel_pitch for RGB-D sources)')
        return float(self.pixel_pitch)

    def schedule(self, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Focus distances (m) of one stack for a scene of this depth."""
        if self.focus_distances:
            focus = np.asarray(self.focus_distances, dtype=np.float64)
        else:
            d = depth[np.isfinite(depth) & (depth > 0)]
            near = self.focus_near or float(np.percentile(d, 5))
            far = self.focus_far or float(np.percentile(d, 95))
            focus = focus_schedule(near, far, int(self.focus_count), self.focus_spacing)
        if self.focus_jitter:
            focus = focus * math.exp(rng.normal(0.0, self.focus_jitter))
        return focus

    def noise_model(self):
        if not self.noise:
            return None
        from ..render import SensorNoise
        return SensorNoise(full_well=float(self.noise_full_well), read_noise=float(self.noise_read_noise))


def load_camera(spec: Optional[str]) -> CameraConfig:
    """A preset name, a camera YAML (plain keys or a ROS params file), or None (the motorcycle preset)."""
    if spec is None:
        return CameraConfig.from_dict(CAMERA_PRESETS['motorcycle'])
    if spec in CAMERA_PRESETS:
        return CameraConfig.from_dict(CAMERA_PRESETS[spec])
    import yaml
    doc = yaml.safe_load(Path(spec).read_text()) or {}
    flat = _flatten_ros_params(doc)
    return CameraConfig.from_dict(flat)


def _flatten_ros_params(doc: dict) -> dict:
    """``{node: {ros__parameters: {...}}}`` -> the parameters (first node); plain dicts unchanged."""
    if isinstance(doc, dict):
        for v in doc.values():
            if isinstance(v, dict) and 'ros__parameters' in v:
                return dict(v['ros__parameters'])
    return dict(doc)


# --------------------------------------------------------------------------- scenes
@dataclass
class SceneImage:
    """All-in-focus RGB (H x W x 3 float [0,1]), depth (H x W m, NaN unknown), name, published pitch.

    ``render_depth``: H x W m without holes, for the renderer where ``depth`` has unknown
    pixels (None: the renderer fills them from the nearest known pixel).
    """

    rgb: np.ndarray
    depth: np.ndarray
    name: str
    pitch: float
    render_depth: Optional[np.ndarray] = None


def _to_float_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3].astype(np.float32)
    if rgb.max() > 1.5:
        rgb /= 255.0
    return rgb


def fit_to_camera(rgb: np.ndarray, depth: np.ndarray, cam: CameraConfig, name: str,
                  render_depth: Optional[np.ndarray] = None) -> SceneImage:
    """Centre-crop to the camera's aspect ratio and resize (area for RGB, nearest for depth).

    ``render_depth`` (H x W m, hole-free, optional) is cropped and resized like ``depth``.
    """
    import cv2
    rgb = _to_float_rgb(rgb)
    depth = np.asarray(depth, dtype=np.float32)
    H, W = depth.shape
    if render_depth is not None:
        render_depth = fit_to_camera(rgb, render_depth, cam, name).depth
    want = cam.width / float(cam.height)
    if W / H > want:
        cw, ch = int(round(H * want)), H
    else:
        cw, ch = W, int(round(W / want))
    y0, x0 = (H - ch) // 2, (W - cw) // 2
    rgb, depth = rgb[y0:y0 + ch, x0:x0 + cw], depth[y0:y0 + ch, x0:x0 + cw]
    if (ch, cw) != (cam.height, cam.width):
        rgb = cv2.resize(np.ascontiguousarray(rgb), (cam.width, cam.height), interpolation=cv2.INTER_AREA)
        depth = cv2.resize(np.ascontiguousarray(depth), (cam.width, cam.height), interpolation=cv2.INTER_NEAREST)
    return SceneImage(np.clip(rgb, 0, 1), depth, name, cam.published_pitch(W, cw))


def depths_of(sc: SceneImage) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth H x W m with NaN unknown, hole-free depth for the renderer) of a scene."""
    depth = np.where(np.isfinite(sc.depth) & (sc.depth > 0), sc.depth, np.nan).astype(np.float32)
    if sc.render_depth is not None:
        return depth, np.asarray(sc.render_depth, dtype=np.float32)   # the source's own hole filling
    if np.isfinite(depth).all():
        return depth, depth
    # the renderer needs a depth everywhere: fill unknown pixels with the nearest known one
    from scipy import ndimage
    idx = ndimage.distance_transform_edt(~np.isfinite(depth), return_distances=False, return_indices=True)
    return depth, depth[tuple(idx)]


def _scene_arrays(sc) -> tuple:
    return np.asarray(sc.rgb), np.asarray(sc.depth_m, dtype=np.float32), getattr(sc, 'name', 'scene')


def parse_select(text: Optional[str]) -> slice:
    """'START:STOP:STEP' (Python slice syntax, e.g. '0::8') -> slice; None -> everything."""
    if not text:
        return slice(None)
    parts = [int(p) if p.strip() else None for p in text.split(':')]
    return slice(*parts) if len(parts) > 1 else slice(parts[0], parts[0] + 1)


def iter_scenes(source: str, cam: CameraConfig, count: int, rgbd_dir: Optional[str] = None,
                rgbd_config: Optional[str] = None, seed: int = 0,
                select: Optional[str] = None, split: str = 'test') -> Iterator[SceneImage]:
    """``count`` scenes of ``source`` (motorcycle: the same scene each time; rgbd: the pairs in
    order, restricted to ``select``, a slice such as '0::8'; real_dfd / rgbd_7scenes: the scenes
    of ``split``, restricted to ``select``, a slice over them)."""
    from .. import scenes
    if source == 'motorcycle':
        rgb, depth, name = _scene_arrays(scenes.motorcycle_scene(max(cam.height, cam.width)))
        sc = fit_to_camera(rgb, depth, cam, name or 'motorcycle')
        for _ in range(count):
            yield sc
    elif source == 'procedural':
        rng = np.random.default_rng(seed)
        for _ in range(count):
            rgb, depth, name = _scene_arrays(scenes.procedural_scene(rng, max(cam.height, cam.width),
                                                                    tuple(cam.depth_range)))
            yield fit_to_camera(rgb, depth, cam, name or 'procedural')
    elif source in SPLIT_SOURCES:
        sel = parse_select(select)
        scenes_of = _real_dfd_split_scenes if source == 'real_dfd' else _rgbd_7scenes_split_scenes
        items = list(scenes_of(Path(rgbd_dir) if rgbd_dir else None, split))[sel]
        for load in items[:count]:
            rgb, depth, render_depth, name, fx_px = load()
            if fx_px and not cam.native_pixel_pitch and not cam.pixel_pitch:
                # no pitch given: the one that makes the lens agree with the data's K (f = fx * p)
                cam.native_pixel_pitch = float(cam.focal_length) / fx_px
            yield fit_to_camera(rgb, depth, cam, name, render_depth)
    elif source == 'rgbd':
        if not rgbd_dir:
            raise ValueError('--source rgbd needs a directory')
        sel = parse_select(select)
        idx = range(10 ** 9)[sel]
        n = 0
        for i, (rgb, depth, name) in enumerate(_rgbd_pairs(Path(rgbd_dir), rgbd_config, cam)):
            if n >= count or i >= idx.stop:
                return
            if i in idx:
                yield fit_to_camera(rgb, depth, cam, name)
                n += 1
    else:
        raise ValueError(f'unknown source {source!r}')


def _real_dfd_split_scenes(root: Optional[Path], split: str) -> list:
    """Loaders of the real_dfd scenes of ``split``, each giving (rgb, depth m, None, name, None):
    the f/8 image and the data's own (hole-filled) depth; only the files loaded are read."""
    from .. import data_splits
    root = root or data_splits.SHARED_DATA / 'real_dfd_indoor_train'
    if not (root / 'pairs.csv').is_file():
        raise FileNotFoundError(f'{root}: no pairs.csv (real_dfd_indoor_train, see ../shared/data/README.md)')
    with open(root / 'pairs.csv', newline='') as fh:
        rows = [r for r in csv.DictReader(fh) if r.get('status', 'ok') == 'ok']   # as scenes.real_dfd_scenes
    return [partial(_real_dfd_item, root, r) for i, r in enumerate(rows) if data_splits.real_dfd_split(i) == split]


def _real_dfd_item(root: Path, row: dict) -> tuple:
    from .. import scenes
    sc = scenes.load_rgbd(root / 'rgb_f8' / row['rgb_file'], root / 'depth' / row['depth_file'], 0.001)
    return np.asarray(sc.rgb), np.asarray(sc.depth_m, dtype=np.float32), None, sc.name, None


def _rgbd_7scenes_split_scenes(root: Optional[Path], split: str) -> list:
    """Loaders of the 7-Scenes frames of ``split``, each giving (rgb, depth m with NaN holes,
    hole-filled depth for the renderer, name, fx in px at the files' 640 px width)."""
    from .. import data_splits
    root = root or data_splits.SHARED_DATA / 'rgbd_7scenes'
    frames = data_splits.rgbd_7scenes_frames(split, root)
    if not frames:
        raise FileNotFoundError(f'{root}: no rgbd_7scenes frames of split {split!r}')
    K = np.loadtxt(root / 'camera-intrinsics.txt')
    fx = float(K[0, 0])
    return [partial(_rgbd_7scenes_item, root, f, fx) for f in frames]


def _rgbd_7scenes_item(root: Path, frame: int, fx_px: float) -> tuple:
    from .. import scenes
    sc = scenes.load_rgbd(root / f'frame-{frame:06d}.color.jpg', root / f'frame-{frame:06d}.depth.png', 0.001,
                          fill_holes=False, fx_px=fx_px)
    depth = np.asarray(sc.depth_m, dtype=np.float32)             # NaN where the sensor gave 0
    # holes are mostly occlusions: fill from the farther side, for the renderer only
    filled = scenes.fill_depth_holes(depth)
    return np.asarray(sc.rgb), depth, filled, sc.name, fx_px


def _rgbd_pairs(root: Path, config: Optional[str], cam: CameraConfig) -> Iterator[tuple]:
    from .. import scenes
    import yaml
    cfg_path = Path(config) if config else root / 'rgbd.yaml'
    if cfg_path.is_file():
        cfg = yaml.safe_load(cfg_path.read_text()) or {}
        base = Path(cfg.get('root', root))
        scale = float(cfg.get('depth_scale', 0.001))
        if cfg.get('native_pixel_pitch') and not cam.native_pixel_pitch:
            cam.native_pixel_pitch = float(cfg['native_pixel_pitch'])
        if 'pairs' in cfg:
            rgb_dir, depth_dir = base / cfg.get('rgb_dir', '.'), base / cfg.get('depth_dir', '.')
            with open(base / cfg['pairs'], newline='') as fh:
                rows = [(rgb_dir / r['rgb_file'], depth_dir / r['depth_file']) for r in csv.DictReader(fh)]
        else:
            rgbs = sorted(glob.glob(str(base / cfg['rgb'])))
            depths = sorted(glob.glob(str(base / cfg['depth'])))
            if len(rgbs) != len(depths):
                raise ValueError(f'{len(rgbs)} RGB files but {len(depths)} depth files in {base}')
            rows = list(zip(map(Path, rgbs), map(Path, depths)))
        for r, d in rows:
            sc = scenes.load_rgbd(str(r), str(d), scale)
            rgb, depth, _ = _scene_arrays(sc)
            yield rgb, depth, Path(r).stem
        return
    if (root / 'pairs.csv').is_file() and (root / 'rgb_f8').is_dir():
        for sc in scenes.real_dfd_scenes(root):
            rgb, depth, name = _scene_arrays(sc)
            yield rgb, depth, name
        return
    raise FileNotFoundError(f'{root}: no rgbd.yaml (or --rgbd-config) and not a real_dfd_indoor_train layout')


# --------------------------------------------------------------------------- making bags
def quantize_bits_for(encoding: str) -> Optional[int]:
    return {'rgb8': 8, 'bgr8': 8, 'mono8': 8, 'mono16': 16}.get(encoding)


def make_bag(out, source: str, cam: CameraConfig, stacks: int, storage: str = 'mcap',
             namespace: str = DEFAULT_NAMESPACE, rgbd_dir: Optional[str] = None,
             rgbd_config: Optional[str] = None, with_gt: bool = True, seed: Optional[int] = None,
             start_ns: int = START_STAMP_NS, progress: bool = False, keep: Optional[list] = None,
             select: Optional[str] = None, split: str = 'test') -> dict:
    """Render ``stacks`` focal stacks of ``source`` with camera ``cam`` into a new bag at ``out``.

    ``split`` picks the scenes of the split sources (:data:`SPLIT_SOURCES`).

    Returns a summary dict (path, stacks, storage, lens, focus schedules).  When ``keep``
    is a list, every written ``(FocalStack, depth_gt)`` is appended to it.
    """
    from ..render import render_stack
    seed = cam.seed if seed is None else seed
    rng = np.random.default_rng(seed)
    period_ns = int(round(1e9 / float(cam.rate))) if cam.rate > 0 else 1_000_000_000
    noise = cam.noise_model()
    written, schedules = 0, []
    scenes_it = iter_scenes(source, cam, stacks, rgbd_dir, rgbd_config, seed, select, split)
    if progress:
        from tqdm import tqdm
        scenes_it = tqdm(scenes_it, total=stacks, desc='rendering', unit='stack', leave=False)
    lens = None
    with StackBagWriter(out, namespace=namespace, storage=storage, encoding=cam.encoding) as writer:
        for k, sc in enumerate(scenes_it):
            depth, render_depth = depths_of(sc)
            focus = cam.schedule(depth, rng)
            lens = LensModel(cam.focal_length, cam.f_number, sc.pitch)
            stack = render_stack(sc.rgb, render_depth, focus, lens, cam.f_numbers, noise=noise,
                                 quantize_bits=quantize_bits_for(cam.encoding), rng=int(seed) * 100003 + k,
                                 stamp_ns=start_ns + k * period_ns, frame_id=cam.frame_id, psf=cam.psf)
            if cam.breathing or cam.jitter_px:
                # focus breathing + camera shake relative to the farthest-focused frame, so
                # depth_gt stays registered with the pipeline's default reference frame
                from ..align import misalign_stack
                stack.frames, _ = misalign_stack(stack.frames, stack.focus_m, cam.breathing, cam.jitter_px, rng)
            writer.write(stack, depth_gt=depth if with_gt else None)
            if keep is not None:
                keep.append((stack, depth if with_gt else None))
            written += 1
            schedules.append([round(float(s), 6) for s in focus])
    return {'path': str(out), 'stacks': written, 'storage': storage, 'namespace': namespace,
            'lens': None if lens is None else {'focal_length': lens.focal_length_m, 'f_number': lens.f_number,
                                               'pixel_pitch': lens.pixel_pitch_m},
            'focus': schedules}


def make_pair_bag(out, split: str = 'val', width: Optional[int] = None, root: Optional[Path] = None,
                  storage: str = 'mcap', namespace: str = DEFAULT_NAMESPACE, select: Optional[str] = None,
                  start_ns: int = START_STAMP_NS) -> dict:
    """Write the real f/2.8 + f/8 shots of the real_dfd scenes of ``split`` as aperture-only stacks.

    Args:
        width: frame width (px) after an area downscale; None = the files' own (645).
        select: a Python slice over the split's scenes, e.g. ``'0:4'``.

    Returns a summary dict (path, stacks, size, lens).
    """
    import cv2
    from .. import data_splits
    from ..scenes import REAL_DFD_F_NUMBERS, REAL_DFD_FOCAL_LENGTH_M, REAL_DFD_FOCUS_M, real_dfd_aperture_pairs
    from ..stack import FocalStack
    root = root or data_splits.SHARED_DATA / 'real_dfd_indoor_train'
    scenes = real_dfd_aperture_pairs(split, root)[parse_select(select)]
    f_numbers = [REAL_DFD_F_NUMBERS['f2.8'], REAL_DFD_F_NUMBERS['f8']]
    size, lens = None, None
    with StackBagWriter(out, namespace=namespace, storage=storage, encoding='rgb8') as writer:
        for k, (wide, narrow) in enumerate(scenes):
            frames = [np.clip(np.asarray(x.rgb, dtype=np.float32), 0.0, 1.0) for x in (wide, narrow)]
            depth = np.asarray(narrow.depth_m, dtype=np.float32)
            pitch = float(narrow.meta['pixel_pitch_m'])
            H, W = depth.shape
            if width and int(width) < W:
                w, h = int(width), max(1, int(round(H * int(width) / W)))
                frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]
                depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
                pitch *= W / float(w)
            lens = LensModel(REAL_DFD_FOCAL_LENGTH_M, f_numbers[0], pitch)
            stack = FocalStack(np.stack(frames), [REAL_DFD_FOCUS_M] * 2, lens, f_numbers=f_numbers,
                               stamp_ns=start_ns + k * 1_000_000_000)
            writer.write(stack, depth_gt=depth)
            size = (stack.width, stack.height)
    return {'path': str(out), 'stacks': len(scenes), 'storage': storage, 'namespace': namespace, 'size': size,
            'lens': None if lens is None else {'focal_length': lens.focal_length_m, 'pixel_pitch': lens.pixel_pitch_m,
                                               'f_numbers': f_numbers, 'focus': REAL_DFD_FOCUS_M}}


def cmd_pairs(args) -> int:
    """``ddfs-bag pairs``: :func:`make_pair_bag`."""
    if Path(args.out).exists():
        print(f'ddfs-bag: {args.out} exists; rosbag2 bags are written to a new folder', file=sys.stderr)
        return 2
    try:
        summary = make_pair_bag(args.out, args.split, args.width, Path(args.root) if args.root else None,
                                args.storage, args.namespace, args.select)
    except FileNotFoundError as e:
        print(f'ddfs-bag: {e}', file=sys.stderr)
        return 2
    print(f"wrote {summary['stacks']} real aperture pairs ({args.split} split, {summary['size']}) to {args.out}; "
          f"lens {summary['lens']}")
    return 0


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ddfs-bag', description='Write and inspect focal-stack rosbag2 bags.')
    sub = p.add_subparsers(dest='cmd', required=True)
    m = sub.add_parser('make', help='render an evaluation bag from RGB-D data')
    m.add_argument('out', help='output bag folder (must not exist)')
    m.add_argument('--source', nargs='+', required=True, metavar=('SOURCE', 'DIR'),
                   help='motorcycle | procedural | rgbd DIR | real_dfd [DIR] | rgbd_7scenes [DIR]')
    m.add_argument('--split', choices=('train', 'val', 'test'), default='test',
                   help='real_dfd / rgbd_7scenes: which split of ddfs_ros.data_splits (default test)')
    m.add_argument('--camera', default=None, help='camera YAML or preset (motorcycle, real_dfd, real_dfd_sweep, '
                   'rgbd_7scenes); default: motorcycle, or the split source\'s own preset')
    m.add_argument('--stacks', type=int, default=None,
                   help='number of stacks (default 3; real_dfd / rgbd_7scenes: every scene of the split; '
                        'rgbd: at most one per pair)')
    m.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    m.add_argument('--namespace', default=DEFAULT_NAMESPACE)
    m.add_argument('--rgbd-config', default=None, help='YAML describing the RGB-D folder (default DIR/rgbd.yaml)')
    m.add_argument('--select', default=None, metavar='START:STOP:STEP',
                   help="rgbd: which pairs, as a Python slice (e.g. '0::8': every 8th); "
                        'real_dfd / rgbd_7scenes: a slice over the split\'s scenes')
    m.add_argument('--focus', default=None, help='comma-separated focus distances (m), overrides the camera')
    m.add_argument('--f-number', type=float, default=None, help='override the camera f-number')
    m.add_argument('--size', default=None, help='WxH of the published frames, overrides the camera')
    m.add_argument('--encoding', choices=WRITE_ENCODINGS, default=None)
    m.add_argument('--focus-jitter', type=float, default=None,
                   help='relative std of a per-stack scale of the focus schedule (default 0)')
    m.add_argument('--no-noise', action='store_true', help='render without sensor noise')
    m.add_argument('--breathing', type=float, default=None,
                   help='magnification change over the sweep (0.03: nearest-focused frame 3 %% larger)')
    m.add_argument('--jitter-px', type=float, default=None,
                   help='random per-frame shift, uniform in +-JITTER_PX px (camera shake)')
    m.add_argument('--psf', choices=PSF_SHAPE_NAMES, default=None,
                   help="blur spot: disk (DESIGN.md's pixel-area disk, default), disk_otf (the disk on a "
                        "band-limited image: a sub-pixel defocus softens the frame, as in a real camera), gaussian")
    m.add_argument('--no-gt', action='store_true', help='leave out focal_stack/depth_gt')
    m.add_argument('--seed', type=int, default=None)
    r = sub.add_parser('pairs', help='write the real f/2.8 + f/8 shots of the real_dfd scenes of a split as '
                       'aperture-only stacks (no rendering; depth_gt from the depth camera)')
    r.add_argument('out', help='output bag folder (must not exist)')
    r.add_argument('--split', choices=('train', 'val', 'test'), default='val',
                   help='which split of ddfs_ros.data_splits (default val: not a test figure)')
    r.add_argument('--width', type=int, default=None, help='area-downscale the frames to this width (px)')
    r.add_argument('--select', default=None, metavar='START:STOP:STEP', help="a slice over the split's scenes")
    r.add_argument('--root', default=None, help='the real_dfd_indoor_train folder (default ../shared/data/...)')
    r.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    r.add_argument('--namespace', default=DEFAULT_NAMESPACE)
    i = sub.add_parser('info', help='list the stacks of a bag and what is wrong with any of them')
    i.add_argument('bag')
    i.add_argument('--namespace', default=None)
    c = sub.add_parser('calibration', help='render a focus-calibration bag (input of ddfs-calibrate focus): a '
                       'textured plane at each distance, swept over raw focus values with a known lens curve')
    c.add_argument('out', help='output bag folder (must not exist)')
    c.add_argument('--distances', default='0.12,0.17,0.25,0.4,0.7,1.2',
                   help='comma-separated target distances (m)')
    c.add_argument('--raw', default='0:255:8', metavar='MIN:MAX:STEP', help='raw focus sweep (inclusive of MIN)')
    c.add_argument('--size', default='64x64', help='WxH of the frames')
    c.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    c.add_argument('--namespace', default=DEFAULT_NAMESPACE)
    c.add_argument('--encoding', choices=WRITE_ENCODINGS, default='rgb8')
    c.add_argument('--no-noise', action='store_true', help='render without sensor noise')
    c.add_argument('--seed', type=int, default=0)
    return p


def cmd_calibration(args) -> int:
    """``ddfs-bag calibration``: :func:`ddfs_ros.eval.calibrate_cli.write_calibration_bag` with
    :class:`~ddfs_ros.calibration.SimulatedFocusMotor` (raw 0..255 -> 0.1..2.0 m)."""
    from .calibrate_cli import write_calibration_bag
    try:
        distances = [float(x) for x in args.distances.split(',') if x.strip()]
        lo, hi, step = (float(x) for x in args.raw.split(':'))
        W, H = (int(x) for x in args.size.lower().split('x'))
    except ValueError as e:
        LOG.error(f'bad --distances / --raw / --size: {e}')
        return 2
    if step <= 0 or hi <= lo:
        LOG.error(f'--raw {args.raw}: need MIN < MAX and STEP > 0')
        return 2
    raws = lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1)
    if Path(args.out).exists():
        LOG.error(f'{args.out} exists')
        return 2
    n = write_calibration_bag(args.out, distances, raws, size=(W, H), encoding=args.encoding,
                              namespace=args.namespace, storage=args.storage, noise=not args.no_noise,
                              seed=args.seed)
    LOG.info(f'wrote {n} frames ({len(distances)} distances x {raws.size} raw values) to {args.out}; '
             f'next: ddfs-calibrate focus {args.out} --out calib.yaml')
    return 0


def apply_overrides(cam: CameraConfig, args) -> CameraConfig:
    if args.focus:
        cam.focus_distances = [float(x) for x in args.focus.split(',')]
    if args.f_number:
        cam.f_number = args.f_number
    if args.size:
        w, h = args.size.lower().split('x')
        cam.width, cam.height = int(w), int(h)
    if args.encoding:
        cam.encoding = args.encoding
    if args.focus_jitter is not None:
        cam.focus_jitter = args.focus_jitter
    if args.no_noise:
        cam.noise = False
    if getattr(args, 'breathing', None) is not None:
        cam.breathing = args.breathing
    if getattr(args, 'jitter_px', None) is not None:
        cam.jitter_px = args.jitter_px
    if getattr(args, 'psf', None):
        cam.psf = args.psf
    return cam


def cmd_make(args) -> int:
    source = args.source[0]
    rgbd_dir = args.source[1] if len(args.source) > 1 else None
    if source not in ('motorcycle', 'procedural', 'rgbd', *SPLIT_SOURCES):
        print(f'ddfs-bag: unknown source {source!r} (motorcycle | procedural | rgbd DIR | real_dfd [DIR] | '
              'rgbd_7scenes [DIR])', file=sys.stderr)
        return 2
    if source == 'rgbd' and not rgbd_dir:
        print('ddfs-bag: --source rgbd needs a directory: --source rgbd DIR', file=sys.stderr)
        return 2
    if Path(args.out).exists():
        print(f'ddfs-bag: {args.out} exists; rosbag2 bags are written to a new folder', file=sys.stderr)
        return 2
    camera = args.camera or (SPLIT_SOURCES[source][1] if source in SPLIT_SOURCES else None)
    cam = apply_overrides(load_camera(camera), args)
    stacks = args.stacks if args.stacks is not None else (10 ** 6 if source in SPLIT_SOURCES else 3)
    try:
        summary = make_bag(args.out, source, cam, stacks, args.storage, args.namespace, rgbd_dir,
                           args.rgbd_config, with_gt=not args.no_gt, seed=args.seed,
                           progress=sys.stderr.isatty() and stacks < 10 ** 6, select=args.select, split=args.split)
    except FileNotFoundError as exc:
        print(f'ddfs-bag: {exc}', file=sys.stderr)
        return 2
    lens = summary['lens'] or {}
    print(f"wrote {summary['stacks']} stacks to {summary['path']} ({summary['storage']}, namespace "
          f"{summary['namespace']}); f = {lens.get('focal_length', 0) * 1e3:.1f} mm, N = {lens.get('f_number')}, "
          f"pitch = {lens.get('pixel_pitch', 0) * 1e6:.2f} um/px")
    for k, f in enumerate(summary['focus'][:5]):
        print(f'  stack {k}: focus {f} m')
    return 0


def cmd_info(args) -> int:
    info = open_bag_info(args.bag, args.namespace)
    print(f'{info.path}: {info.storage}, namespace {info.namespace}, depth_gt: {"yes" if info.has_depth_gt else "no"}')
    for t, (ty, n) in sorted(info.topics.items()):
        print(f'  {t}  {ty}  x{n}')
    bad = 0
    for i, item in enumerate(read_bag(args.bag, info=info)):
        if item.ok:
            s = item.stack
            print(f'  #{i} {item.stamp_ns}: {s.num_frames} x {s.height} x {s.width} {s.meta.get("encoding")}, '
                  f'focus {np.round(s.focus_m, 3).tolist()} m, f {s.lens.focal_length_m * 1e3:.1f} mm, '
                  f'N {s.per_frame_f_numbers().tolist()}, pitch {s.lens.pixel_pitch_m * 1e6:.2f} um'
                  + ('' if item.depth_gt is not None else ' (no depth_gt)'))
        else:
            bad += 1
            print(f'  #{i} {item.stamp_ns}: INVALID ({item.stack.reason}): {item.stack}')
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    if args.cmd == 'make':
        return cmd_make(args)
    if args.cmd == 'calibration':
        return cmd_calibration(args)
    if args.cmd == 'pairs':
        return cmd_pairs(args)
    return cmd_info(args)


if __name__ == '__main__':
    raise SystemExit(main())
