"""Thin-lens focal-stack renderer: an all-in-focus RGB image + a depth map -> F defocused frames.

Model (DESIGN.md section 3): a point at depth ``d`` seen with the lens focused at ``s``
images to a disk of diameter ``c_px(d; s, f, N, p)`` (:mod:`ddfs_ros.optics`), the
anti-aliased pillbox of :mod:`ddfs_ros.psf` with radius ``c_px / 2``.

Layered rendering, in linear light (sRGB is decoded first and re-encoded last):

1. **Layers and blur nodes.**  ``c_px`` is affine in inverse depth ``u = 1/d`` on each
   side of the focus plane, with slope ``A_i = f^2 s_i / (N_i (s_i - f) p)`` px per
   dioptre.  The scene's u range is cut into *occlusion layers* of equal width, each
   spanning ``occlusion_step_px`` (default 2 px) of blur diameter in the frame where
   blur changes fastest (``n_layers`` fixes their number instead).  Inside a layer,
   *blur nodes* sit every ``max_step_px`` (default 0.5 px) of blur diameter; a pixel is
   shared between the two nodes around it with linear weights, so its PSF is a mix of
   two disks whose diameters differ by at most 0.5 px.  Measured against 16x finer
   nodes on a slanted textured plane (128 px, blur up to 13 px) this costs a mean of
   0.05 and a 99th percentile of ~1 grey level of 255.
2. **Blur.**  Each node's premultiplied colour and its coverage are blurred with that
   node's own disk PSF (:mod:`ddfs_ros.psf`, radius ``c_px / 2``), per frame, by FFT
   on a canvas padded by reflection (nothing wraps around the borders).  PSF spectra
   come from a table cached per canvas size (every 1/32 px of radius up to 2 px, every
   1/8 px above) and are linearly interpolated in between; a row depends on its radius
   only (``disk_otf``: the OTF sampled on the canvas, tails uncropped).
3. **Occlusion.**  Layers are composited with the "over" operator, far to near, so a
   near object's blur covers what lies behind it and a blurred far object never
   bleeds over a sharp near one.  A layer occludes only layers whose blur differs
   from its own by at least ``discontinuity_px`` (default 4 px); closer layers add up.
   Light from a continuous surface is not occluded by its own nearer parts, and
   "over" between thin slices of such a surface would wrongly dim the far slice
   wherever the near slice's blur reaches (measured: up to ~50 grey levels on a
   slanted plane); below the threshold a step in depth is rendered as if the far side
   were not hidden, an error of at most half the threshold in blur diameter.
4. **Hidden background.**  Behind a blurred foreground rim a real aperture sees some
   of the background that the all-in-focus image does not contain.  Under layers at
   least the threshold in front of it, each layer is extended with its own colours
   extrapolated by normalised convolution (a Gaussian of half the largest blur
   radius), weighted by its share of everything at or behind it there.  A blurred
   foreground edge over a sharp background then ramps smoothly over the full blur
   diameter instead of showing a dark rim or a hard step on its inner side.  The
   composite is finally divided by its total coverage (1 up to rounding).
5. **Sensor.**  Optional Poisson-Gaussian noise on the linear signal
   (:class:`SensorNoise`: photo-electrons at full scale and read noise in electrons),
   then sRGB encoding and optional quantisation to ``quantize_bits``.

There is no clamp of the circle of confusion except a sanity cap (half the shorter
image side, with a warning): the renderer renders what the optics say.

Speed: two real planes (colour/coverage) travel in one complex FFT, and the real
PSF spectra multiply them as (re, re) pairs, so the cost is about
``F * (C + 1) / 2`` complex inverse FFTs per occlusion layer plus ``(C + 1) / 2``
forward FFTs per node.  Everything is torch on the requested ``device``; Python loops
run over occlusion layers and, inside one, over frames x nodes (whole-image tensor
operations each), never over pixels.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .optics import LensModel
from .psf import DELTA_RADIUS_PX, DELTA_SHAPES, OTF_MARGIN_PX, PSF_SHAPES, disk_otf, kernels_to_spectra
from .stack import FocalStack

#: Default largest change of blur diameter (px) between neighbouring blur nodes.
DEFAULT_MAX_STEP_PX = 0.5
#: Default largest spread of blur diameter (px) inside one occlusion layer.
DEFAULT_OCCLUSION_STEP_PX = 2.0
#: Blur-diameter jump (px) above which a nearer layer is taken to occlude hidden background.
DEFAULT_DISCONTINUITY_PX = 4.0
#: Upper bound on the number of layers and of nodes per layer (only reached for absurd blur ranges).
MAX_LAYERS = 1024
#: Sanity cap on the blur diameter as a fraction of the shorter image side.
SANITY_MAX_COC_FRACTION = 0.5
#: Radius steps (px) of the cached PSF-spectrum table: fine for small disks, whose shape
#: changes fastest with the radius, coarser above FINE_RADIUS_LIMIT_PX.
FINE_RADIUS_STEP_PX = 1.0 / 32.0
FINE_RADIUS_LIMIT_PX = 2.0
RADIUS_STEP_PX = 1.0 / 8.0
_FINE_ROWS = int(round(FINE_RADIUS_LIMIT_PX / FINE_RADIUS_STEP_PX))


def _table_radius(rows: np.ndarray) -> np.ndarray:
    """Radius (px) of PSF-table rows."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.where(rows <= _FINE_ROWS, rows * FINE_RADIUS_STEP_PX,
                    FINE_RADIUS_LIMIT_PX + (rows - _FINE_ROWS) * RADIUS_STEP_PX)


def _table_position(radii: np.ndarray) -> np.ndarray:
    """Fractional PSF-table row of radii (inverse of :func:`_table_radius`)."""
    r = np.asarray(radii, dtype=np.float64)
    return np.where(r <= FINE_RADIUS_LIMIT_PX, r / FINE_RADIUS_STEP_PX,
                    _FINE_ROWS + (r - FINE_RADIUS_LIMIT_PX) / RADIUS_STEP_PX)


# --------------------------------------------------------------------------- colour
def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 sRGB decoding of values in [0, 1]."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1 sRGB encoding of linear values in [0, 1]."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055)


# --------------------------------------------------------------------------- sensor
@dataclass(frozen=True)
class SensorNoise:
    """Poisson-Gaussian sensor noise on the linear signal.

    Attributes:
        full_well: photo-electrons at full scale (linear value 1.0).  The gain is
            ``1 / full_well`` (linear units per electron): shot-noise variance of a pixel
            of linear value x is ``x / full_well``.
        read_noise: read noise, electrons rms (variance ``(read_noise / full_well)^2``
            in linear units).
    """

    full_well: float = 1000.0
    read_noise: float = 2.0

    def __post_init__(self) -> None:
        if not (self.full_well > 0 and math.isfinite(self.full_well)):
            raise ValueError(f'SensorNoise.full_well must be > 0, got {self.full_well}')
        if not (self.read_noise >= 0 and math.isfinite(self.read_noise)):
            raise ValueError(f'SensorNoise.read_noise must be >= 0, got {self.read_noise}')

    @property
    def gain(self) -> float:
        """Linear units per photo-electron."""
        return 1.0 / self.full_well

    def variance(self, linear: np.ndarray | float) -> np.ndarray | float:
        """Expected noise variance (linear units) at linear value(s) ``linear`` (before clipping)."""
        return np.asarray(linear) / self.full_well + (self.read_noise / self.full_well) ** 2

    def apply(self, linear: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Noisy copy of a linear image (any shape), clipped to [0, 1]."""
        electrons = torch.poisson(linear.clamp(0.0, 1.0) * self.full_well, generator=generator)
        if self.read_noise > 0:
            electrons = electrons + self.read_noise * torch.randn(
                linear.shape, generator=generator, device=linear.device, dtype=linear.dtype)
        return (electrons / self.full_well).clamp(0.0, 1.0)


def _torch_generator(rng, device: torch.device) -> Optional[torch.Generator]:
    """A torch generator on ``device`` seeded from ``rng`` (None, int, numpy Generator or torch Generator)."""
    if isinstance(rng, torch.Generator):
        return rng
    if rng is None:
        seed = int(np.random.default_rng().integers(0, 2 ** 62))
    elif isinstance(rng, np.random.Generator):
        seed = int(rng.integers(0, 2 ** 62))
    else:
        seed = int(rng)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


# --------------------------------------------------------------------------- PSF table
class _DiskSpectrumTable:
    """Spectra of disk (or other ``psf`` shape) PSFs on one H x W canvas at the radii of
    :func:`_table_radius`, filled lazily.

    A disk (like the Gaussian) is symmetric about its centre, so its spectrum is real and even.  The table
    holds the full grid (the packed complex FFTs of the renderer need it) with every
    value twice, K x H x W x 2 float32 laid out like ``torch.view_as_real`` of a complex
    spectrum: blurring is then one real elementwise product that broadcasts over leading
    dimensions only, with no copies in or out of complex form.  Training renders
    thousands of stacks at one canvas size, so after the first few the spectra are never
    recomputed.
    """

    def __init__(self, shape: tuple[int, int], device: torch.device, dtype=torch.float32,
                 psf: str = 'disk') -> None:
        self.shape = shape
        self.kernels = PSF_SHAPES[psf]
        self.band_limited = psf == 'disk_otf'
        self.delta_px = DELTA_RADIUS_PX if psf in DELTA_SHAPES else 0.0
        self.device = device
        self.dtype = dtype
        self.table = torch.zeros((0, shape[0], shape[1], 2), dtype=dtype, device=device)
        self.filled = np.zeros(0, dtype=bool)

    def _ensure(self, indices: np.ndarray) -> None:
        top = int(indices.max()) + 1
        if top > self.filled.size:
            grow = torch.zeros((top - self.filled.size,) + tuple(self.table.shape[1:]),
                               dtype=self.table.dtype, device=self.device)
            self.table = torch.cat([self.table, grow])
            self.filled = np.concatenate([self.filled, np.zeros(top - self.filled.size, dtype=bool)])
        missing = np.unique(indices[~self.filled[indices]])
        if missing.size:
            if self.band_limited:
                # The continuous disk's OTF sampled on the canvas: no crop of its ringing tails,
                # so a row is the same whichever rows it is computed with.
                full = torch.as_tensor(np.stack([disk_otf(r, self.shape) for r in _table_radius(missing)]),
                                       dtype=self.dtype, device=self.device)
            else:
                kernels = torch.as_tensor(self.kernels(_table_radius(missing)), dtype=self.dtype,
                                          device=self.device)
                half = kernels_to_spectra(kernels, self.shape).real
                W, Wk = self.shape[1], self.shape[1] // 2 + 1
                # Even in x: column kx > W/2 equals column W - kx.
                full = torch.cat([half, half[:, :, 1:W - Wk + 1].flip(-1)], -1)
            self.table[torch.as_tensor(missing, device=self.device)] = torch.stack([full, full], -1)
            self.filled[missing] = True

    def locate(self, radii_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower table row (int64) and interpolation weight towards the next row, per radius.

        ``r < 0.5`` maps to the delta (row 0, weight 0) as in :mod:`ddfs_ros.psf` (not for
        ``disk_otf``, which has no such dead zone).  The
        rows are filled on the way.  Interpolating (rather than rounding), and finer rows
        below 2 px, matter for small blurs: near r = 0.75 px a 1/16 px change of radius
        moves ~10% of the weight between the centre pixel and its neighbours.
        """
        r = np.asarray(radii_px, dtype=np.float64)
        pos = _table_position(np.where(r < self.delta_px, 0.0, r))
        i0 = np.floor(pos + 1e-9).astype(np.int64)
        t = np.clip(pos - i0, 0.0, 1.0)
        t = np.where(t < 1e-6, 0.0, t)
        self._ensure(np.concatenate([i0.ravel(), i0.ravel() + 1]))
        return i0, t

    def spectrum(self, i0: int, t: float, out: torch.Tensor) -> torch.Tensor:
        """The (re, re) spectrum H x W x 2 between rows i0 and i0 + 1 (a table view when t = 0)."""
        if t == 0.0:
            return self.table[i0]
        return torch.lerp(self.table[i0], self.table[i0 + 1], float(t), out=out)

    def lookup(self, radii_px: np.ndarray) -> torch.Tensor:
        """radii.shape + (H, W) real spectra, linear in radius between table rows."""
        i0, t = self.locate(radii_px)
        buf = torch.empty(self.table.shape[1:], dtype=self.dtype, device=self.device)
        out = torch.stack([self.spectrum(int(i), float(w), buf)[..., 0].clone()
                           for i, w in zip(i0.ravel(), t.ravel())])
        return out.reshape(*i0.shape, *self.shape)


_TABLES: dict = {}
_MAX_TABLES = 6


def _spectrum_table(shape: tuple[int, int], device: torch.device, psf: str = 'disk') -> _DiskSpectrumTable:
    key = (shape, str(device), psf)
    table = _TABLES.pop(key, None)
    if table is None:
        table = _DiskSpectrumTable(shape, device, psf=psf)
    _TABLES[key] = table  # most recently used last
    while len(_TABLES) > _MAX_TABLES:
        _TABLES.pop(next(iter(_TABLES)))
    return table


def _gaussian_spectrum(shape: tuple[int, int], sigma_px: float, device) -> torch.Tensor:
    """Full-grid spectrum (H x W, real) of a periodic Gaussian of std ``sigma_px``."""
    fy = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape[1], device=device)[None, :]
    return torch.exp(-2.0 * math.pi ** 2 * sigma_px ** 2 * (fy ** 2 + fx ** 2))


# --------------------------------------------------------------------------- plan
@dataclass
class LayerPlan:
    """How a depth map is cut into occlusion layers and blur nodes for one focal stack.

    Inverse depth ``u = 1/d`` is cut into occlusion layers of equal width, far to near;
    each layer holds ``m + 1`` blur nodes spaced ``node_step`` in u (the layer's two
    edges and ``m - 1`` points between).  A pixel is shared between the two nodes
    around it with linear (hat) weights, so its blur is a mix of the two nodes' disks.

    Attributes:
        layer: H x W int64 occlusion layer of every pixel (0 = farthest).
        pos: H x W float32 position inside its layer in node steps, in [0, m].
        m: node intervals per occlusion layer.
        layers: occupied occlusion layers, ascending (far to near).
        node_depth_m: n_layers x (m + 1) node depths (m).
        radii_px: F x n_layers x (m + 1) PSF radii (px) of the nodes, uncapped.
        step_px: blur-diameter change between neighbouring nodes (px) in the frame
            where blur changes fastest.
        layer_step_px: the same between neighbouring occlusion layers.
    """

    layer: torch.Tensor
    pos: torch.Tensor
    m: int
    layers: np.ndarray
    node_depth_m: np.ndarray
    radii_px: np.ndarray
    step_px: float
    layer_step_px: float


def blur_slopes(focus_m: np.ndarray, lens: LensModel, f_numbers: np.ndarray) -> np.ndarray:
    """Per frame, |d c_px / d(1/depth)| in px per dioptre: ``f^2 s / (N (s - f) p)``."""
    f = lens.focal_length_m
    return f * f * focus_m / (f_numbers * (focus_m - f) * lens.pixel_pitch_m)


def plan_layers(depth: torch.Tensor, focus_m: np.ndarray, lens: LensModel, f_numbers: np.ndarray,
                max_step_px: float = DEFAULT_MAX_STEP_PX,
                occlusion_step_px: float = DEFAULT_OCCLUSION_STEP_PX,
                n_layers: Optional[int] = None) -> LayerPlan:
    """Cut ``depth`` (H x W metres, torch) into occlusion layers and blur nodes (see module doc).

    By default an occlusion layer spans ``occlusion_step_px`` of blur diameter and nodes
    are ``max_step_px`` apart; ``n_layers`` fixes the number of occlusion layers instead
    (nodes stay at most ``max_step_px`` apart).
    """
    if max_step_px <= 0 or occlusion_step_px <= 0:
        raise ValueError('max_step_px and occlusion_step_px must be > 0')
    inv = 1.0 / depth
    u_lo, u_hi = float(inv.min()), float(inv.max())
    span = u_hi - u_lo
    slope = float(blur_slopes(focus_m, lens, f_numbers).max())
    if n_layers is not None and int(n_layers) < 1:
        raise ValueError(f'n_layers must be >= 1, got {n_layers}')
    if span <= 0:  # one depth: one layer, both nodes at that depth
        count, m, layer_width = 1, 1, 1e-12
    else:
        if n_layers is None:
            count = int(min(max(1, math.ceil(span * slope / occlusion_step_px - 1e-9)), MAX_LAYERS))
        else:
            count = int(n_layers)
        layer_width = span / count
        m = int(min(max(1, math.ceil(layer_width * slope / max_step_px - 1e-9)), MAX_LAYERS))
    node_step = layer_width / m
    rel = (inv - u_lo) / layer_width
    layer = rel.floor().clamp(0, count - 1).long()
    pos = ((rel - layer) * m).clamp(0.0, float(m)).to(torch.float32)
    layers = torch.unique(layer).cpu().numpy()
    node_inv = u_lo + layer_width * np.arange(count)[:, None] + node_step * np.arange(m + 1)[None, :]
    node_depth = 1.0 / node_inv
    radii = 0.5 * lens.coc_px(node_depth[None], focus_m[:, None, None], f_numbers[:, None, None])
    return LayerPlan(layer=layer, pos=pos, m=m, layers=layers, node_depth_m=node_depth,
                     radii_px=np.asarray(radii, dtype=np.float64),
                     step_px=node_step * slope if span > 0 else 0.0,
                     layer_step_px=layer_width * slope if span > 0 else 0.0)


def _fft_size(n: int) -> int:
    """Smallest size >= n of the form 2^a * {1, 3, 5, 9}: the fast ones for torch's CPU FFT.

    (Sizes with larger prime factors, e.g. 147 = 3 * 7^2, take 2-3x longer per pixel.)
    """
    best = None
    for m in (1, 3, 5, 9):
        size = m
        while size < n:
            size *= 2
        best = size if best is None else min(best, size)
    return best


def _mirror_index(n: int, before: int, after: int) -> np.ndarray:
    """Indices that pad an axis of length n symmetrically (d c b a | a b c d), any pad size."""
    i = np.arange(-before, n + after)
    if n == 1:
        return np.zeros_like(i)
    i = np.mod(i, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


# --------------------------------------------------------------------------- render
def soften_scene(rgb: np.ndarray, sigma_px: float) -> np.ndarray:
    """The all-in-focus image of a scene soft in itself: H x W x C in [0, 1] blurred by a Gaussian
    of ``sigma_px`` (px, reflected borders) before any defocus, a blur every frame then shares
    (a lens's MTF, demosaicing, a magnified or smooth texture).  float32."""
    import cv2
    blurred = cv2.GaussianBlur(np.ascontiguousarray(rgb, dtype=np.float32), (0, 0), float(sigma_px),
                               borderType=cv2.BORDER_REFLECT)
    return np.clip(blurred, 0.0, 1.0)


def render_focal_stack(rgb: np.ndarray, depth_m: np.ndarray, focus_m: Sequence[float], lens: LensModel,
                       f_numbers: Optional[Sequence[float]] = None, *,
                       noise: Optional[SensorNoise] = None, quantize_bits: Optional[int] = None,
                       rng=None, device='cpu', n_layers: Optional[int] = None,
                       max_step_px: float = DEFAULT_MAX_STEP_PX,
                       occlusion_step_px: float = DEFAULT_OCCLUSION_STEP_PX,
                       discontinuity_px: float = DEFAULT_DISCONTINUITY_PX,
                       linear_light: bool = True, psf: str = 'disk') -> np.ndarray:
    """Render a focal stack from an all-in-focus image and its depth.

    Args:
        rgb: H x W x C (C = 3 or 1, or H x W) all-in-focus image, float in [0, 1]
            (sRGB-encoded) or uint8.
        depth_m: H x W depth along the optical axis, metres, finite and > 0.
        focus_m: F focus distances (m), any order; frames come out in this order.
        lens: focal length, default f-number and pixel pitch (m/px at this image size).
        f_numbers: optional F per-frame f-numbers (default ``lens.f_number``).
        noise: optional Poisson-Gaussian sensor noise, applied in linear light.
        quantize_bits: optional output quantisation (8 gives 256 levels).
        rng: seed for the noise: None, int, numpy Generator or torch Generator.
        device: torch device that does the work.
        n_layers: number of depth bins (default: from ``max_step_px``).
        max_step_px: largest blur-diameter change (px) between neighbouring bins.
        occlusion_step_px: largest blur-diameter spread (px) inside one occlusion layer.
        linear_light: decode sRGB before blurring and encode after (default True).
        psf: blur-spot shape, ``'disk'`` (thin lens, default; DESIGN.md's pixel-area disk,
            a delta below r = 0.5 px), ``'disk_otf'`` (the same disk on a band-limited
            image: a sub-pixel defocus still softens it, as in a real camera) or
            ``'gaussian'`` (same second moment, std = radius / 2: a lens that departs from
            the thin lens).

    Returns:
        F x H x W x C float32 in [0, 1] (C as the input; 3 for RGB).
    """
    dev = torch.device(device)
    img = np.asarray(rgb)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f'rgb must be H x W x C, got shape {img.shape}')
    H, W, C = img.shape
    depth = np.asarray(depth_m, dtype=np.float32)
    if depth.shape != (H, W):
        raise ValueError(f'depth {depth.shape} does not match image {(H, W)}')
    if not np.all(np.isfinite(depth)) or np.any(depth <= 0):
        raise ValueError('depth must be finite and > 0 everywhere (fill holes first)')
    focus = np.atleast_1d(np.asarray(focus_m, dtype=np.float64))
    fnum = np.full(focus.shape, float(lens.f_number)) if f_numbers is None \
        else np.atleast_1d(np.asarray(f_numbers, dtype=np.float64))
    if fnum.shape != focus.shape:
        raise ValueError(f'{fnum.size} f-numbers for {focus.size} focus distances')
    if np.any(focus <= lens.focal_length_m):
        raise ValueError(f'focus distances {focus.tolist()} must exceed the focal length {lens.focal_length_m} m')
    if psf not in PSF_SHAPES:
        raise ValueError(f'psf must be one of {sorted(PSF_SHAPES)}, got {psf!r}')

    with torch.no_grad():
        image = torch.as_tensor(np.ascontiguousarray(img.transpose(2, 0, 1)), dtype=torch.float32, device=dev)
        image = image.clamp(0.0, 1.0)
        if linear_light:
            image = srgb_to_linear(image)
        depth_t = torch.as_tensor(depth, device=dev)
        plan = plan_layers(depth_t, focus, lens, fnum, max_step_px, occlusion_step_px, n_layers)

        cap = SANITY_MAX_COC_FRACTION * min(H, W) / 2.0
        if plan.radii_px.max() > cap:
            warnings.warn(f'render: blur radius {plan.radii_px.max():.1f} px capped at {cap:.1f} px '
                          f'(half the shorter image side); check the lens settings', RuntimeWarning)
        radii = np.minimum(plan.radii_px, cap)
        out = _composite(image, plan, radii, dev, discontinuity_px, psf)  # F x C x H x W linear

        if noise is not None:
            out = noise.apply(out, _torch_generator(rng, dev))
        if linear_light:
            out = linear_to_srgb(out)
        if quantize_bits is not None:
            levels = float(2 ** int(quantize_bits) - 1)
            out = torch.round(out * levels) / levels
        return out.permute(0, 2, 3, 1).contiguous().cpu().numpy().astype(np.float32)


def _pack(planes: torch.Tensor) -> torch.Tensor:
    """... x 2k x H x W real -> ... x k x H x W complex (pairs of planes as re + i im)."""
    return torch.complex(planes[..., 0::2, :, :], planes[..., 1::2, :, :])


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_pack`: ... x k x H x W complex -> ... x 2k x H x W real."""
    ri = torch.view_as_real(packed)                        # ... x k x H x W x 2
    return ri.movedim(-1, -3).flatten(-4, -3)              # ... x 2k x H x W


def _composite(image: torch.Tensor, plan: LayerPlan, radii: np.ndarray, dev: torch.device,
               discontinuity_px: float, psf: str = 'disk') -> torch.Tensor:
    """Blur every node and composite occlusion layers far to near: F x C x H x W linear.

    The blur of a real image by a real, even PSF is real, so two real planes travel in
    one complex FFT (re + i im) and come back apart: one c2c transform per pair is
    cheaper than two real ones here, mostly because the inverse real FFT is slow.
    """
    C, H, W = image.shape
    F = radii.shape[0]
    planes_n = C + 1 + (C + 1) % 2                             # colour + coverage, padded to even
    P = planes_n // 2
    # a Gaussian spot reaches 1.5 radii (3 std), a band-limited disk rings OTF_MARGIN_PX further
    pad = int(math.ceil(radii.max() * (1.5 if psf == 'gaussian' else 1.0))) + 1 \
        + (OTF_MARGIN_PX if psf == 'disk_otf' else 0)
    Hp = _fft_size(H + 2 * pad)
    Wp = _fft_size(W + 2 * pad)
    rows = torch.as_tensor(_mirror_index(H, pad, Hp - H - pad), device=dev)
    cols = torch.as_tensor(_mirror_index(W, pad, Wp - W - pad), device=dev)
    canvas = image[:, rows][:, :, cols]                       # C x Hp x Wp
    layer = plan.layer[rows][:, cols]                          # Hp x Wp
    pos = plan.pos[rows][:, cols]
    table = _spectrum_table((Hp, Wp), dev, psf)
    row_of, t_of = table.locate(radii)                          # F x n_layers x (m+1)
    psf_buf = torch.empty((Hp, Wp, 2), dtype=torch.float32, device=dev)
    fill_kernel = _gaussian_spectrum((Hp, Wp), max(1.0, 0.5 * float(radii.max())), dev)
    gap = max(1, int(math.ceil(discontinuity_px / plan.layer_step_px - 1e-9))) if plan.layer_step_px > 0 else 1
    node_k = torch.arange(plan.m + 1, device=dev, dtype=torch.float32)[:, None, None]
    recent: list = []  # (layer, colour, coverage) of layers not yet occluding-distance behind

    acc = torch.zeros((F, C, H, W), dtype=torch.float32, device=dev)
    cov = torch.zeros((F, 1, H, W), dtype=torch.float32, device=dev)
    behind = None  # packed spectrum of colour + coverage of everything at or behind this layer
    last = int(plan.layers[-1])
    for g in plan.layers.tolist():
        inside = (layer == g).to(torch.float32)
        weights = (1.0 - (pos[None] - node_k).abs()).clamp_min(0.0) * inside[None]   # (m+1) x Hp x Wp
        used = np.nonzero(weights.flatten(1).amax(1).cpu().numpy() > 0)[0]
        weights = weights[torch.as_tensor(used, device=dev)]
        planes = torch.zeros((len(used), planes_n, Hp, Wp), dtype=torch.float32, device=dev)
        torch.mul(canvas[None], weights[:, None], out=planes[:, :C])
        planes[:, C] = weights
        spec = torch.fft.fft2(_pack(planes))                                      # n x P x Hp x Wp
        total = spec.sum(0)
        behind = total if behind is None else behind + total
        if g + gap <= last:
            # Hidden background: a real aperture sees part of what lies behind a blurred
            # foreground rim.  Under layers at least ``gap`` in front (a depth discontinuity)
            # this layer goes on with its own colours extrapolated by normalised
            # convolution, weighted by its share of all that lies at or behind it there
            # (so a layer far away adds nothing).
            smooth = _unpack(torch.fft.ifft2(torch.cat([total, behind]) * fill_kernel))
            own_w, behind_w = smooth[C], smooth[planes_n + C]
            ok = (own_w > 1e-3) & (behind_w > 1e-3)
            extra = torch.zeros((planes_n, Hp, Wp), dtype=torch.float32, device=dev)
            torch.div(own_w, behind_w.clamp_min(1e-3), out=extra[C])
            extra[C].clamp_(0.0, 1.0).mul_(ok).mul_(layer >= g + gap)
            fill = (smooth[:C] / own_w.clamp_min(1e-3)).clamp_(0.0, 1.0)
            torch.mul(fill, extra[C], out=extra[:C])
            spec[-1] += torch.fft.fft2(_pack(extra))
        # Real PSF spectrum (stored as (re, re) pairs) times the complex layer spectrum
        # viewed as (re, im) pairs; table rows are used in place (or interpolated into one
        # small buffer), nothing is gathered.
        parts = torch.view_as_real(spec)                                         # n x P x Hp x Wp x 2
        out = torch.empty((F, P, Hp, Wp, 2), dtype=torch.float32, device=dev)
        for f in range(F):
            for j, node in enumerate(used):
                row = table.spectrum(int(row_of[f, g, node]), float(t_of[f, g, node]), psf_buf)
                if j == 0:
                    torch.mul(row, parts[j], out=out[f])
                else:
                    out[f].addcmul_(row, parts[j])
        blurred = torch.fft.ifft2(torch.view_as_complex(out))[:, :, pad:pad + H, pad:pad + W]
        blurred = _unpack(blurred)                                               # F x planes_n x H x W
        colour, alpha = blurred[:, :C], blurred[:, C:C + 1].clamp_(0.0, 1.0)
        # "Over", but a layer only occludes layers at least ``gap`` behind it: layers
        # closer than that are slices of one surface (or a step too small to matter)
        # and add up, as light from a continuous surface does.
        while recent and recent[0][0] <= g - gap:
            _, c_k, a_k = recent.pop(0)
            acc += c_k
            cov += a_k
        acc.mul_(1.0 - alpha)
        cov.mul_(1.0 - alpha)
        recent.append((g, colour, alpha))
    for _, c_k, a_k in recent:
        acc += c_k
        cov += a_k
    return (acc / cov.clamp_min(1e-6)).clamp(0.0, 1.0)


def render_stack(rgb: np.ndarray, depth_m: np.ndarray, focus_m: Sequence[float], lens: LensModel,
                 f_numbers: Optional[Sequence[float]] = None, *, noise: Optional[SensorNoise] = None,
                 quantize_bits: Optional[int] = None, rng=None, device='cpu',
                 n_layers: Optional[int] = None, stamp_ns: int = 0,
                 frame_id: str = 'camera_optical_frame', **kwargs) -> FocalStack:
    """:func:`render_focal_stack` wrapped in a :class:`~ddfs_ros.stack.FocalStack` with its optics."""
    frames = render_focal_stack(rgb, depth_m, focus_m, lens, f_numbers, noise=noise,
                                quantize_bits=quantize_bits, rng=rng, device=device,
                                n_layers=n_layers, **kwargs)
    fn = None if f_numbers is None else np.atleast_1d(np.asarray(f_numbers, dtype=np.float64))
    return FocalStack(frames=frames, focus_m=np.atleast_1d(np.asarray(focus_m, dtype=np.float64)),
                      lens=lens, f_numbers=fn, stamp_ns=stamp_ns, frame_id=frame_id,
                      meta={'rendered': True, 'noise': noise, 'quantize_bits': quantize_bits})
