"""Simulated focus-sweep camera: the thin-lens renderer on an RGB-D scene, plus sensor noise.

Scenes:

- ``motorcycle``: scikit-image's Middlebury motorcycle with its real disparity
  (:func:`ddfs_ros.scenes.motorcycle_scene`), the built-in real scene;
- ``procedural``: a random layered scene (:func:`ddfs_ros.scenes.procedural_scene`), seeded;
- ``plane``: a fronto-parallel textured plane at ``plane_depth_m`` (a known depth for tests);
- ``rgbd``: a user-given RGB + depth pair (:func:`ddfs_ros.scenes.load_rgbd`).

The scene is static, so the noise-free render of a focus schedule is cached and each
sweep only adds fresh sensor noise (:class:`~ddfs_ros.render.SensorNoise`, in linear
light, exactly where the renderer applies it).  That keeps a CPU simulation at the
sweep rate.
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
import torch

from ..optics import PSF_SHAPE_NAMES, LensModel
from .base import CameraError, FocusCamera, RawFrame, Sweep

SCENES = ('motorcycle', 'procedural', 'plane', 'rgbd')


def plane_scene(width: int, height: int, depth_m: float, texture: str = 'astronaut'):
    """A fronto-parallel plane at ``depth_m`` textured with a scikit-image photograph.

    Returns (rgb H x W x 3 float32 [0, 1], depth H x W float32 m).
    """
    import skimage.data
    img = getattr(skimage.data, texture)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = cv2.resize(img[..., :3], (width, height), interpolation=cv2.INTER_AREA)
    return img.astype(np.float32) / 255.0, np.full((height, width), float(depth_m), dtype=np.float32)


class SimulatedCamera(FocusCamera):
    """Renders sweeps of one RGB-D scene.

    Args:
        scene: one of :data:`SCENES`.
        width, height: frame size (px); default VGA 640 x 480 (4:3).
        focal_length_m, f_number, pixel_pitch_m: the lens; the pitch is m/px at ``width`` (default:
            the sensor with 21 um/px at 256 px, i.e. 8.4 um/px at 640 px).
        noise: ``None`` or :class:`~ddfs_ros.render.SensorNoise` (or a dict of its fields).
        seed: seed for the noise and the procedural scene.
        plane_depth_m: depth of the ``plane`` scene.
        depth_range_m: depth range of the ``procedural`` scene.
        rgb_path, depth_path, depth_scale: the ``rgbd`` scene (depth in file units x scale = m).
        device: torch device of the renderer.
        breathing: magnification change over the sweep (0.03 = the nearest-focused frame
            3 % larger than the farthest), :func:`ddfs_ros.align.misalign_stack`.
        jitter_px: per-frame random shift (uniform in +-jitter_px px) of every frame but the
            farthest-focused one (camera shake); depth_gt stays registered with that frame.
        psf: the renderer's blur spot (:data:`ddfs_ros.psf.PSF_SHAPES`): ``disk`` (DESIGN.md),
            ``disk_otf`` (no dead zone below r = 0.5 px, as a real camera) or ``gaussian``.
        focus_motor: the simulated focus control for :meth:`capture_raw` (``mode:
            calibrate``): an object with ``distance_m(raw)``; default
            :class:`~ddfs_ros.calibration.SimulatedFocusMotor` (raw 0..255 -> 0.1..2.0 m,
            non-linear in dioptres), the curve a calibration must recover.
    """

    def __init__(self, scene: str = 'motorcycle', width: int = 640, height: int = 480,
                 focal_length_m: float = 0.025, f_number: float = 2.0, pixel_pitch_m: float = 21e-6 * 256 / 640,
                 noise=None, seed: int = 0, plane_depth_m: float = 1.0,
                 depth_range_m: Sequence[float] = (0.5, 3.0), rgb_path: str = '', depth_path: str = '',
                 depth_scale: float = 0.001, texture: str = 'astronaut', device: str = 'cpu',
                 breathing: float = 0.0, jitter_px: float = 0.0, focus_motor=None, psf: str = 'disk') -> None:
        if psf not in PSF_SHAPE_NAMES:      # the renderer checks too, but only at the first sweep
            raise ValueError(f'psf must be one of {list(PSF_SHAPE_NAMES)}, got {psf!r}')
        self.psf = psf
        self.breathing, self.jitter_px = float(breathing), float(jitter_px)
        if focus_motor is None:
            from ..calibration import SimulatedFocusMotor
            focus_motor = SimulatedFocusMotor()
        self.focus_motor = focus_motor
        self.texture = texture
        if scene not in SCENES:
            raise ValueError(f'scene must be one of {SCENES}, got {scene!r}')
        self.width, self.height = int(width), int(height)
        self.lens = LensModel(focal_length_m, f_number, pixel_pitch_m)
        self.scene_name = scene
        self.device = device
        self.rng = np.random.default_rng(seed)
        self._gen = torch.Generator(device=device).manual_seed(int(seed))
        from ..render import SensorNoise
        if isinstance(noise, dict):
            noise = SensorNoise(**noise)
        self.noise = noise
        self.rgb, self.depth = self._load_scene(scene, plane_depth_m, depth_range_m, rgb_path, depth_path,
                                                depth_scale, texture, seed)
        self._cache: dict = {}

    def _load_scene(self, scene, plane_depth_m, depth_range_m, rgb_path, depth_path, depth_scale, texture, seed):
        W, H = self.width, self.height
        if scene == 'plane':
            return plane_scene(W, H, plane_depth_m, texture)
        from .. import scenes
        side = max(H, W)        # the built-in scenes are square: make one that covers, then crop
        if scene == 'motorcycle':
            sc = scenes.motorcycle_scene(side)
        elif scene == 'procedural':
            sc = scenes.procedural_scene(np.random.default_rng(seed), side, tuple(depth_range_m))
        else:
            if not rgb_path or not depth_path:
                raise CameraError('scene rgbd needs rgb_path and depth_path')
            sc = scenes.load_rgbd(rgb_path, depth_path, depth_scale)
        rgb = np.asarray(sc.rgb, dtype=np.float32)
        if rgb.max() > 1.5:
            rgb = rgb / 255.0
        depth = np.asarray(sc.depth_m, dtype=np.float32)
        if scene != 'rgbd' and rgb.shape[:2] != (H, W):     # centre crop keeps the pixel pitch
            y0, x0 = (rgb.shape[0] - H) // 2, (rgb.shape[1] - W) // 2
            rgb, depth = rgb[y0:y0 + H, x0:x0 + W], depth[y0:y0 + H, x0:x0 + W]
        if rgb.shape[:2] != (H, W):
            rgb = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_AREA)
            depth = cv2.resize(depth, (W, H), interpolation=cv2.INTER_NEAREST)
        return rgb, depth

    @property
    def depth_range(self) -> tuple[float, float]:
        """(min, max) of the scene's finite depth (m)."""
        d = self.depth[np.isfinite(self.depth)]
        return float(d.min()), float(d.max())

    def depth_percentiles(self, lo: float = 5.0, hi: float = 95.0) -> tuple[float, float]:
        d = self.depth[np.isfinite(self.depth)]
        return float(np.percentile(d, lo)), float(np.percentile(d, hi))

    def _clean(self, focus_m: np.ndarray, f_numbers: Optional[np.ndarray]) -> np.ndarray:
        key = (tuple(np.round(focus_m, 9)), None if f_numbers is None else tuple(np.round(f_numbers, 6)))
        if key not in self._cache:
            from ..render import render_focal_stack
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = render_focal_stack(self.rgb, self.depth, focus_m, self.lens, f_numbers,
                                                  device=self.device, psf=self.psf)
        return self._cache[key]

    def capture_sweep(self, focus_m, f_numbers=None) -> Sweep:
        focus = np.asarray(focus_m, dtype=np.float64)
        fn = None if f_numbers is None else np.asarray(f_numbers, dtype=np.float64)
        if np.any(focus <= self.lens.focal_length_m):
            raise CameraError(f'focus distances {focus.tolist()} must exceed the focal length '
                              f'{self.lens.focal_length_m} m')
        frames = self._clean(focus, fn)
        if self.breathing or self.jitter_px:
            # the optics move the image before the sensor adds noise
            from ..align import misalign_stack
            frames, _ = misalign_stack(frames, focus, self.breathing, self.jitter_px, self.rng)
        if self.noise is not None:
            from ..render import linear_to_srgb, srgb_to_linear
            lin = srgb_to_linear(torch.from_numpy(frames).to(self.device))
            frames = linear_to_srgb(self.noise.apply(lin, self._gen)).cpu().numpy().astype(np.float32)
        return Sweep(frames=np.array(frames, dtype=np.float32, copy=True), focus_m=focus, f_numbers=fn,
                     depth_gt=self.depth.copy())

    def capture_raw(self, focus_raw: float, target_m: Optional[float] = None) -> RawFrame:
        """A textured plane at ``target_m`` seen with the lens focused at
        ``focus_motor.distance_m(focus_raw)``, plus sensor noise (see the base class)."""
        if target_m is None or not np.isfinite(target_m) or target_m <= self.lens.focal_length_m:
            raise CameraError(f'simulated calibration needs a target distance beyond the focal length '
                              f'({self.lens.focal_length_m} m), got {target_m}')
        focus = float(self.focus_motor.distance_m(float(focus_raw)))
        if not np.isfinite(focus) or focus <= self.lens.focal_length_m:
            raise CameraError(f'raw focus {focus_raw:g} focuses at {focus} m, not beyond the focal length')
        key = ('plane', self.width, self.height)
        if key not in self._cache:
            self._cache[key] = plane_scene(self.width, self.height, 1.0, self.texture)[0]
        rgb = self._cache[key]
        import warnings

        from ..render import render_focal_stack
        with warnings.catch_warnings():
            # far out of focus the blur exceeds half the frame and the renderer caps it (and
            # says so): such frames are flat either way, the focus peak is unaffected
            warnings.simplefilter('ignore', RuntimeWarning)
            frame = render_focal_stack(rgb, np.full((self.height, self.width), float(target_m), np.float32),
                                       [focus], self.lens, device=self.device, psf=self.psf)
        if self.noise is not None:
            from ..render import linear_to_srgb, srgb_to_linear
            lin = srgb_to_linear(torch.from_numpy(frame).to(self.device))
            frame = linear_to_srgb(self.noise.apply(lin, self._gen)).cpu().numpy()
        return RawFrame(np.array(frame[0], dtype=np.float32, copy=True), float(focus_raw))
