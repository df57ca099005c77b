"""RGB-D scenes to render focal stacks from: built-in, procedural, from files, real data.

A :class:`Scene` is an all-in-focus sRGB image (H x W x 3 float32 in [0, 1]) with its
depth along the optical axis (H x W float32 metres, finite and > 0 everywhere, holes
filled).  Sources:

- :func:`motorcycle_scene`: scikit-image's Middlebury 2014 *Motorcycle* (real image,
  real stereo disparity turned into metric depth; about 2.2-4.5 m).
- :func:`procedural_scene`: textured slanted planes and textured shapes (and, on request,
  thin structures) in front of a background plane, occlusion-correct (z-buffered) depth;
  textures from scikit-image's real photographs and from coloured 1/f noise.  Deterministic given
  the seed.
- :func:`load_rgbd`: a user's RGB image + depth image (uint16 millimetres by default).
- :func:`real_dfd_scenes`: the real indoor depth-from-defocus set in
  ``../shared/data/real_dfd_indoor_train`` (paired through ``pairs.csv``);
  :func:`real_dfd_aperture_pairs`: its f/2.8 + f/8 shots of one split.
- :func:`fronto_parallel_plane`, :func:`two_plane_scene`: small test scenes.
"""
from __future__ import annotations

import csv
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np

# Middlebury 2014 Motorcycle at the resolution scikit-image ships (741 x 500):
# focal length (px), baseline (mm) and the disparity offset doffs (px) of its calib.txt.
MOTORCYCLE_FX_PX = 994.978
MOTORCYCLE_BASELINE_MM = 193.001
MOTORCYCLE_DOFFS_PX = 31.086

#: The real depth-from-defocus set, relative to the repository root (or the cwd).
REAL_DFD_DEFAULT_ROOT = '../shared/data/real_dfd_indoor_train'
#: Its camera (data README): Nikon D200 + 35 mm lens focused at ~1.7 m, images downsampled
#: 6x to 645 x 432, so the pixel pitch of the published images is ~36 um.
REAL_DFD_FOCAL_LENGTH_M = 0.035
REAL_DFD_FOCUS_M = 1.7
REAL_DFD_PIXEL_PITCH_M = 36e-6
REAL_DFD_WIDTH_PX = 645
REAL_DFD_F_NUMBERS = {'f8': 8.0, 'f2.8': 2.8}

#: scikit-image photographs used as textures (colour ones, and grey ones that get tinted).
PHOTO_TEXTURES = ('astronaut', 'coffee', 'chelsea', 'rocket', 'immunohistochemistry')
GREY_TEXTURES = ('grass', 'gravel', 'brick', 'camera', 'moon', 'coins', 'text', 'page')


@dataclass
class Scene:
    """An all-in-focus image with metric depth.

    Attributes:
        rgb: H x W x 3 float32 sRGB in [0, 1].
        depth_m: H x W float32, metres along the optical axis, finite and > 0.
        name: short identifier.
        fx_px: focal length in pixels at this image size, when known.
        meta: anything else worth knowing (source, camera, valid fraction ...).
    """

    rgb: np.ndarray
    depth_m: np.ndarray
    name: str
    fx_px: Optional[float] = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rgb = np.asarray(self.rgb, dtype=np.float32)
        self.depth_m = np.asarray(self.depth_m, dtype=np.float32)
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise ValueError(f'Scene.rgb must be H x W x 3, got {self.rgb.shape}')
        if self.depth_m.shape != self.rgb.shape[:2]:
            raise ValueError(f'Scene.depth_m {self.depth_m.shape} does not match rgb {self.rgb.shape[:2]}')

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])

    @property
    def depth_range(self) -> tuple[float, float]:
        return float(np.nanmin(self.depth_m)), float(np.nanmax(self.depth_m))


# --------------------------------------------------------------------------- helpers
def fill_depth_holes(depth: np.ndarray, invalid: Optional[np.ndarray] = None) -> np.ndarray:
    """Fill invalid depth (NaN, inf, <= 0, or ``invalid``) from the background side.

    Holes in stereo or structured-light depth are mostly occlusions, which belong to the
    farther surface, so each hole pixel takes the larger of the nearest valid depths to
    its left and right on the same row; rows without any valid pixel take the nearest
    valid pixel in the image.  Returns float32.
    """
    d = np.asarray(depth, dtype=np.float64).copy()
    bad = ~np.isfinite(d) | (d <= 0)
    if invalid is not None:
        bad |= np.asarray(invalid, dtype=bool)
    if not bad.any():
        return d.astype(np.float32)
    if bad.all():
        raise ValueError('depth has no valid pixel to fill holes from')
    H, W = d.shape
    cols = np.broadcast_to(np.arange(W), (H, W))
    left = np.maximum.accumulate(np.where(~bad, cols, -1), axis=1)
    right = np.minimum.accumulate(np.where(~bad, cols, W)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(H)[:, None]
    from_left = np.where(left >= 0, d[rows, np.clip(left, 0, W - 1)], -np.inf)
    from_right = np.where(right < W, d[rows, np.clip(right, 0, W - 1)], -np.inf)
    filled = np.where(bad, np.maximum(from_left, from_right), d)
    still = ~np.isfinite(filled)
    if still.any():
        from scipy import ndimage
        _, (iy, ix) = ndimage.distance_transform_edt(still, return_indices=True)
        filled = filled[iy, ix]
    return filled.astype(np.float32)


def _centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return img[y0:y0 + s, x0:x0 + s]


def _resize_depth_area(depth: np.ndarray, valid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average depth over valid pixels only (holes do not drag the average), then fill."""
    w = cv2.resize(valid.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    num = cv2.resize(np.where(valid, depth, 0.0).astype(np.float32), size, interpolation=cv2.INTER_AREA)
    out = np.where(w > 1e-6, num / np.maximum(w, 1e-6), np.nan)
    return fill_depth_holes(out)


def _to_float_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype == bool:
        return img.astype(np.float32)
    return np.clip(img.astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------- motorcycle
def motorcycle_scene(size: int = 256) -> Scene:
    """scikit-image's Middlebury 2014 Motorcycle (left view) with metric depth, size x size.

    ``depth_mm = baseline * fx / (disparity + doffs)`` (Middlebury calibration).  Invalid
    disparities (occlusions) are filled from the background side, the image is
    centre-cropped to a square and resized with area averaging (depth averaged over
    valid pixels only).  About 2.2-4.5 m.
    """
    from skimage.data import stereo_motorcycle

    left, _right, disp = stereo_motorcycle()
    valid = np.isfinite(disp) & (disp > 0)
    depth_m = MOTORCYCLE_BASELINE_MM * MOTORCYCLE_FX_PX / (np.where(valid, disp, 1.0) + MOTORCYCLE_DOFFS_PX) / 1000.0
    crop = min(disp.shape)
    rgb = cv2.resize(_centre_square(left), (size, size), interpolation=cv2.INTER_AREA)
    depth = _resize_depth_area(_centre_square(depth_m), _centre_square(valid), (size, size))
    return Scene(rgb=_to_float_rgb(rgb), depth_m=depth, name='motorcycle',
                 fx_px=MOTORCYCLE_FX_PX * size / crop,
                 meta={'source': 'Middlebury 2014 Motorcycle via skimage.data.stereo_motorcycle()',
                       'valid_fraction': float(valid.mean())})


# --------------------------------------------------------------------------- textures
@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data
    img = getattr(skimage.data, name)()
    return np.ascontiguousarray(_to_float_rgb(img) if img.ndim == 3 else img.astype(np.float32) / 255.0)


def _noise_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Coloured 1/f^beta noise, size x size x 3 in [0, 1]."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    radius[0, 0] = 1.0
    beta = rng.uniform(0.8, 2.0)
    amp = radius ** (-beta)
    amp[0, 0] = 0.0
    spec = amp[None] * (rng.standard_normal((2, size, size // 2 + 1))
                        + 1j * rng.standard_normal((2, size, size // 2 + 1)))
    fields = np.fft.irfft2(spec, s=(size, size))
    fields = (fields - fields.mean(axis=(1, 2), keepdims=True)) / (fields.std(axis=(1, 2), keepdims=True) + 1e-8)
    c0, c1, c2 = rng.uniform(0.0, 1.0, (3, 3))
    t = 0.5 + 0.22 * fields[0]
    s = 0.22 * fields[1]
    rgb = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None] + s[..., None] * (c2 - 0.5)[None, None]
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def _turned_crop(rng: np.random.Generator, src: np.ndarray, min_fraction: float) -> np.ndarray:
    """A random square crop of ``src`` (``min_fraction``-100 % of its shorter side), turned by a
    random multiple of 90 degrees.  Draws: crop size, y0, x0, turn (in that order)."""
    h, w = src.shape[:2]
    crop = int(rng.uniform(min_fraction, 1.0) * min(h, w))
    y0 = int(rng.integers(0, h - crop + 1))
    x0 = int(rng.integers(0, w - crop + 1))
    return np.rot90(src[y0:y0 + crop, x0:x0 + crop], int(rng.integers(4)))


def _resize_square(patch: np.ndarray, size: int) -> np.ndarray:
    """``patch`` (square) resized to size x size: area averaging when shrinking."""
    interp = cv2.INTER_AREA if patch.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)


def _photo_texture(rng: np.random.Generator, size: int, names: Sequence[str]) -> np.ndarray:
    name = names[int(rng.integers(len(names)))]
    patch = _turned_crop(rng, _photo(name), 0.35)
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    patch = _resize_square(patch, size)
    if patch.ndim == 2:  # grey texture: tint it with two random colours
        a, b = rng.uniform(0.0, 1.0, (2, 3))
        patch = a[None, None] * (1 - patch[..., None]) + b[None, None] * patch[..., None]
    return np.clip(patch, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=3)
def split_texture_images(split: str) -> tuple:
    """RGB uint8 photographs of one split of ``../shared/data/textures`` (:mod:`ddfs_ros.data_splits`)."""
    from . import data_splits
    out = []
    for p in data_splits.texture_paths(split):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return tuple(out)


def split_photo_texture(split: str, crisp: bool = False) -> Callable[[np.random.Generator, int], np.ndarray]:
    """``texture(rng, size)`` drawing random crops (30-100 % of the shorter side, a random
    quarter turn) of this split's photographs: size x size x 3 float32 in [0, 1].

    A crop smaller than ``size`` is magnified, i.e. soft in itself.  ``crisp``: only crops of
    at least ``size`` px from photographs whose shorter side allows it, so a texture is
    never magnified (as sharp as the photograph or sharper).
    """
    images = split_texture_images(split)
    if not images:
        raise FileNotFoundError('no texture photographs found under ../shared/data/textures')

    pools: dict = {}     # size -> the photographs a crisp crop of that size fits in

    def texture(rng: np.random.Generator, size: int) -> np.ndarray:
        if crisp and size not in pools:
            pools[size] = [im for im in images if min(im.shape[:2]) >= size]
        pool = pools[size] if crisp else images
        if not pool:
            raise ValueError(f'no texture photograph of the split is {size} px on its shorter side')
        src = pool[int(rng.integers(len(pool)))]
        least = max(0.3, size / float(min(src.shape[:2]))) if crisp else 0.3
        return _resize_square(_turned_crop(rng, src, least), size).astype(np.float32) / 255.0

    return texture


def random_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size x 3 texture: a real photograph (60%), a tinted grey one (25%) or 1/f noise."""
    u = rng.random()
    if u < 0.6:
        return _photo_texture(rng, size, PHOTO_TEXTURES)
    if u < 0.85:
        return _photo_texture(rng, size, GREY_TEXTURES)
    return _noise_texture(rng, size)


def named_texture(name: str, size: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """A size x size x 3 texture from a scikit-image picture name, or 'noise' (seeded by ``rng``)."""
    if name == 'noise':
        return _noise_texture(rng if rng is not None else np.random.default_rng(0), size)
    src = _photo(name)
    patch = _centre_square(src)
    interp = cv2.INTER_AREA if patch.shape[0] >= size else cv2.INTER_LINEAR
    patch = cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interp)
    if patch.ndim == 2:
        patch = np.repeat(patch[..., None], 3, axis=2)
    return patch.astype(np.float32)


# --------------------------------------------------------------------------- procedural
def _plane_depth(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], depth_m: float,
                 max_slant: float) -> np.ndarray:
    """Depth of a slanted plane through ``depth_m`` at a random point of the image.

    A plane has inverse depth affine in image coordinates; ``max_slant`` bounds the
    relative change of inverse depth across the image.
    """
    yy, xx = grid
    gy, gx = rng.uniform(-max_slant, max_slant, 2) / depth_m
    cy, cx = rng.uniform(-0.5, 0.5, 2)
    inv = 1.0 / depth_m + gy * (yy - cy) + gx * (xx - cx)
    return 1.0 / np.maximum(inv, 1e-3)


def _shape_mask(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], kind: str) -> np.ndarray:
    """A random ellipse, rotated rectangle or convex-ish polygon on the [-1, 1]^2 grid."""
    yy, xx = grid
    cy, cx = rng.uniform(-0.7, 0.7, 2)
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    a, b = rng.uniform(0.12, 0.6, 2)
    if kind == 'ellipse':
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if kind == 'rectangle':
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    # polygon: a star-shaped outline with random radii at sorted angles
    k = int(rng.integers(3, 8))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = rng.uniform(0.15, 0.55, k)
    phi = np.arctan2(v, u) % (2 * np.pi)
    rho = np.hypot(u, v)
    ang = np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi])
    rad = np.concatenate([radii, radii, radii])
    return rho <= np.interp(phi, ang, rad)


#: Thin structures (:func:`thin_structure_mask`): stroke width in pixels of the render size
#: (poles, cables, spokes, chair legs: a few pixels wide, many depth edges per area).
THIN_WIDTH_PX = (1.0, 6.0)


def thin_structure_mask(rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], size: int) -> np.ndarray:
    """A random thin structure on the [-1, 1]^2 grid of a ``size`` px image.

    One of: a long bar (a pole, a cable), an arc of a ring (a wheel rim, a hose), or a rail
    of 3-8 parallel bars (a railing, a grille, spokes).  Strokes are
    :data:`THIN_WIDTH_PX` px wide, so a defocus of a few pixels mixes them with what is
    behind: the fine geometry that large blobs and planes lack.
    """
    yy, xx = grid
    px = 2.0 / size                                    # one pixel in grid units
    half = 0.5 * float(rng.uniform(*THIN_WIDTH_PX)) * px
    cy, cx = rng.uniform(-0.8, 0.8, 2)
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    kind = rng.choice(['bar', 'arc', 'rail'])
    if kind == 'bar':
        length = rng.uniform(0.3, 1.5)
        return (np.abs(v) <= half) & (np.abs(u) <= length)
    if kind == 'arc':
        radius = max(rng.uniform(0.15, 0.8), 2 * half + px)    # a ring, not a disc, at any size
        extent = rng.uniform(0.5, 2.0) * np.pi
        on_ring = np.abs(np.hypot(u, v) - radius) <= half
        return on_ring & (np.arctan2(v, u) % (2 * np.pi) <= extent)
    k = int(rng.integers(3, 9))
    gap = (4 * half + 2 * px) * rng.uniform(1.0, 3.0)   # centre to centre: >= 1 stroke + 2 px apart, any size
    length = rng.uniform(0.3, 1.2)
    offsets = (np.arange(k) - (k - 1) / 2.0) * gap
    near_bar = np.min(np.abs(v[..., None] - offsets), axis=-1) <= half
    return near_bar & (np.abs(u) <= length)


def paint_nearest(rgb: np.ndarray, depth: np.ndarray, texture: np.ndarray, obj_depth: np.ndarray,
                  mask: np.ndarray) -> np.ndarray:
    """Z-buffer one surface into (rgb, depth) in place: it shows only where it is nearer.

    Returns the mask of pixels it now owns.
    """
    visible = mask & (obj_depth < depth)
    rgb[visible] = texture[visible]
    depth[visible] = obj_depth[visible]
    return visible


def procedural_scene(rng, size: int = 128, depth_range: tuple[float, float] = (0.3, 3.0),
                     n_planes: Optional[int] = None, n_shapes: Optional[int] = None,
                     texture: Optional[Callable[[np.random.Generator, int], np.ndarray]] = None,
                     n_thin: int = 0) -> Scene:
    """A random textured scene: a slanted background plane, slanted planes, shapes in front.

    Args:
        rng: numpy Generator or int seed (same seed, same scene).
        size: output is size x size.
        depth_range: (near, far) metres; every depth lies inside it.
        n_planes: textured slanted planes over part of the image (default 1-3).
        n_shapes: textured shapes (ellipses, rectangles, polygons) (default 2-6).
        texture: ``texture(rng, size) -> size x size x 3`` float in [0, 1] for every
            surface (default :func:`random_texture`, the scikit-image pictures; training
            passes photographs of its own split).
        n_thin: thin structures (:func:`thin_structure_mask`) drawn after the shapes,
            each at its own depth; 0 (default) draws nothing more from ``rng``, so the
            scenes of a seed are those of earlier versions.

    Depth is z-buffered (each pixel shows the nearest surface) and objects are placed
    uniformly in inverse depth, so near objects, where defocus changes fastest, are
    as common as far ones.
    """
    rng = np.random.default_rng(rng)
    near, far = float(depth_range[0]), float(depth_range[1])
    if not 0 < near < far:
        raise ValueError(f'depth_range must be 0 < near < far, got {depth_range}')
    lin = (np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0
    grid = np.meshgrid(lin, lin, indexing='ij')

    def random_depth(lo: float, hi: float) -> float:
        return 1.0 / rng.uniform(1.0 / hi, 1.0 / lo)

    # Background: a plane in the far part of the range.
    bg_depth = random_depth(near + 0.6 * (far - near), far)
    depth = np.clip(_plane_depth(rng, grid, bg_depth, 0.4), near, far)
    texture = texture or random_texture
    rgb = texture(rng, size)
    n_planes = int(rng.integers(1, 4)) if n_planes is None else int(n_planes)
    n_shapes = int(rng.integers(2, 7)) if n_shapes is None else int(n_shapes)
    objects = [('plane', None)] * n_planes + [('shape', k) for k in
                                              rng.choice(['ellipse', 'rectangle', 'polygon'], n_shapes)]
    for kind, shape in objects:
        if kind == 'plane':
            mask = _shape_mask(rng, grid, 'rectangle' if rng.random() < 0.6 else 'polygon')
            mask |= _shape_mask(rng, grid, 'rectangle') if rng.random() < 0.3 else False
            obj_depth = _plane_depth(rng, grid, random_depth(near, far), 0.8)
        else:
            mask = _shape_mask(rng, grid, str(shape))
            obj_depth = _plane_depth(rng, grid, random_depth(near, far), 0.15)
        paint_nearest(rgb, depth, texture(rng, size), np.clip(obj_depth, near, far), mask)
    for _ in range(int(n_thin)):
        obj_depth = _plane_depth(rng, grid, random_depth(near, far), 0.3)
        paint_nearest(rgb, depth, texture(rng, size), np.clip(obj_depth, near, far),
                      thin_structure_mask(rng, grid, size))
    return Scene(rgb=rgb, depth_m=depth.astype(np.float32), name=f'procedural_{size}',
                 meta={'depth_range': (near, far), 'n_planes': n_planes, 'n_shapes': n_shapes,
                       'n_thin': int(n_thin)})


def fronto_parallel_plane(size: int, depth_m: float, texture: str = 'astronaut',
                          rng: Optional[np.random.Generator] = None) -> Scene:
    """A textured plane facing the camera at ``depth_m`` (texture: a scikit-image name or 'noise')."""
    rgb = named_texture(texture, size, rng)
    return Scene(rgb=rgb, depth_m=np.full((size, size), depth_m, np.float32),
                 name=f'plane_{texture}_{depth_m:g}m')


def two_plane_scene(size: int, near_m: float, far_m: float, near_texture: str = 'astronaut',
                    far_texture: str = 'brick') -> Scene:
    """A fronto-parallel near square (the central half of the image) over a far plane.

    ``meta['near_mask']`` (H x W bool) marks the near square.
    """
    if not 0 < near_m < far_m:
        raise ValueError(f'need 0 < near < far, got {near_m}, {far_m}')
    rgb = named_texture(far_texture, size)
    depth = np.full((size, size), far_m, np.float32)
    near_mask = np.zeros((size, size), bool)
    q = size // 4
    near_mask[q:size - q, q:size - q] = True
    rgb[near_mask] = named_texture(near_texture, size)[near_mask]
    depth[near_mask] = near_m
    return Scene(rgb=rgb, depth_m=depth, name=f'two_planes_{near_m:g}_{far_m:g}m',
                 meta={'near_mask': near_mask})


# --------------------------------------------------------------------------- files
def _read_image(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return img


def load_rgbd(rgb_path, depth_path, depth_scale: float = 0.001, fill_holes: bool = True,
              name: Optional[str] = None, fx_px: Optional[float] = None) -> Scene:
    """Load an RGB image and its depth image into a :class:`Scene`.

    Args:
        rgb_path: any image OpenCV reads (8 or 16 bit; BGR on disk, RGB in the scene).
        depth_path: an integer image (png/tif) times ``depth_scale`` metres per unit
            (default 0.001: millimetres), a float image or ``.npy`` already in metres.
        depth_scale: metres per unit of an integer depth image.
        fill_holes: fill invalid depth (0, NaN, inf) from the background side; otherwise
            invalid pixels are NaN (the renderer refuses those).
    """
    rgb_path, depth_path = Path(rgb_path), Path(depth_path)
    bgr = _read_image(rgb_path, cv2.IMREAD_UNCHANGED)
    if bgr.ndim == 3:
        bgr = cv2.cvtColor(bgr[..., :3], cv2.COLOR_BGR2RGB)
    rgb = _to_float_rgb(bgr)
    if depth_path.suffix == '.npy':
        raw = np.load(depth_path)
    else:
        raw = _read_image(depth_path, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if raw.ndim == 3:
        raw = raw[..., 0]
    depth = raw.astype(np.float64) * depth_scale if np.issubdtype(raw.dtype, np.integer) \
        else raw.astype(np.float64)
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f'depth {depth.shape} and rgb {rgb.shape[:2]} differ in size '
                         f'({depth_path.name}, {rgb_path.name})')
    invalid = ~np.isfinite(depth) | (depth <= 0)
    depth = fill_depth_holes(depth) if fill_holes else np.where(invalid, np.nan, depth).astype(np.float32)
    return Scene(rgb=rgb, depth_m=depth, name=name or rgb_path.stem, fx_px=fx_px,
                 meta={'rgb_path': str(rgb_path), 'depth_path': str(depth_path),
                       'valid_fraction': float(1.0 - invalid.mean())})


def resolve_data_dir(root) -> Optional[Path]:
    """``root`` as given if it exists, else relative to the repository root; None if neither."""
    p = Path(root)
    if p.is_dir():
        return p
    if not p.is_absolute():
        repo = Path(__file__).resolve().parents[1]
        q = (repo / p).resolve()
        if q.is_dir():
            return q
    return None


def real_dfd_scenes(root=REAL_DFD_DEFAULT_ROOT, aperture: str = 'f8',
                    limit: Optional[int] = None) -> Iterator[Scene]:
    """Scenes of the real indoor depth-from-defocus set (Carvalho et al. 2018).

    Pairs every RGB image with its depth map through ``pairs.csv`` (never by sorted
    order: the file names differ by tens of milliseconds).  ``aperture`` picks
    ``rgb_f8`` (nearly all in focus, the default) or ``rgb_f2.8`` (shallow depth of
    field).  Depth: uint16 millimetres.  ``meta`` carries the camera of the data
    README: focus 1.7 m, f = 35 mm, pitch 36 um at 645 px width, and the f-number.

    Raises:
        FileNotFoundError: the data directory or its ``pairs.csv`` is absent.
    """
    if aperture not in REAL_DFD_F_NUMBERS:
        raise ValueError(f'aperture must be one of {sorted(REAL_DFD_F_NUMBERS)}, got {aperture!r}')
    base = resolve_data_dir(root)
    if base is None or not (base / 'pairs.csv').is_file():
        raise FileNotFoundError(f'real DFD data not found at {root} (expected pairs.csv, rgb_f8/, rgb_f2.8/, '
                                f'depth/; see ../shared/data/README.md)')
    with open(base / 'pairs.csv', newline='') as fh:
        rows = [r for r in csv.DictReader(fh) if r.get('status', 'ok') == 'ok']
    for i, row in enumerate(rows):
        if limit is not None and i >= limit:
            return
        rgb_path = base / f'rgb_{aperture}' / row['rgb_file']
        depth_path = base / 'depth' / row['depth_file']
        scene = load_rgbd(rgb_path, depth_path, depth_scale=0.001, name=Path(row['rgb_file']).stem)
        scale = REAL_DFD_WIDTH_PX / scene.shape[1]
        pitch = REAL_DFD_PIXEL_PITCH_M * scale
        scene.fx_px = REAL_DFD_FOCAL_LENGTH_M / pitch
        scene.meta.update({'aperture': aperture, 'f_number': REAL_DFD_F_NUMBERS[aperture],
                           'focus_m': REAL_DFD_FOCUS_M, 'focal_length_m': REAL_DFD_FOCAL_LENGTH_M,
                           'pixel_pitch_m': pitch, 'split': row.get('split', ''),
                           'depth_file': row['depth_file']})
        yield scene


def real_dfd_aperture_pairs(split: str, root=REAL_DFD_DEFAULT_ROOT) -> list[tuple[Scene, Scene]]:
    """(f/2.8 shot, f/8 shot) of every real_dfd scene of ``split`` (:func:`ddfs_ros.data_splits.real_dfd_split`):
    two real shots at one focus distance, with the depth camera's map on both.

    Raises:
        FileNotFoundError: as :func:`real_dfd_scenes`.
    """
    from . import data_splits
    shots = zip(real_dfd_scenes(root, aperture='f2.8'), real_dfd_scenes(root, aperture='f8'))
    return [pair for i, pair in enumerate(shots) if data_splits.real_dfd_split(i) == split]
