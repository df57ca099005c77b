"""FocalStack <-> ROS 2 messages (DESIGN.md section 5); depth, colour and cloud outputs.

One focal stack travels as three messages with the identical header:

- ``focal_stack/image`` (sensor_msgs/Image): the F frames tiled vertically,
  height = F*h, width = w, encodings mono8, mono16, rgb8, bgr8, 32FC1;
- ``focal_stack/camera_info`` (sensor_msgs/CameraInfo) of ONE frame (h x w);
- ``focal_stack/lens_state`` (sensor_msgs/JointState): ``position`` holds the named
  values ``focus_distance_<i>`` (m), ``f_number``, ``pixel_pitch`` (m/px),
  optional ``focal_length`` (m, else K[0] * pitch) and optional ``f_number_<i>``.

Pixel conversion uses ``cv_bridge`` when it imports and the numpy code below
otherwise; both give the same arrays (tested).  ``PointCloud2`` is built with
``sensor_msgs_py.point_cloud2`` when it imports, else with the numpy layout of
:mod:`ddfs_ros.pointcloud` (same bytes, tested where both exist).

Every input problem raises :class:`InputError` (a :class:`~ddfs_ros.stack.StackError`
with a ``reason`` counter key and the ``topic`` it concerns).
"""
from __future__ import annotations

import math
import re
import sys
from typing import Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2, PointField
from std_msgs.msg import Header

from .colorize import colorize_depth
from .optics import LensModel
from .pointcloud import POINT_DTYPE, xyzrgb_points
from .stack import FocalStack, StackError

try:  # optional: only on a full ROS install
    from cv_bridge import CvBridge as _CvBridge
    _BRIDGE = _CvBridge()
except Exception:  # noqa: BLE001 - any import/ABI failure means "not available"
    _BRIDGE = None

try:
    from sensor_msgs_py import point_cloud2 as _pc2
except Exception:  # noqa: BLE001
    _pc2 = None

#: encoding -> (numpy dtype, channels).  Anything else is rejected.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    'mono8': (np.dtype(np.uint8), 1),
    'mono16': (np.dtype(np.uint16), 1),
    'rgb8': (np.dtype(np.uint8), 3),
    'bgr8': (np.dtype(np.uint8), 3),
    '32FC1': (np.dtype(np.float32), 1),
}
#: Full-scale value of each integer encoding (32FC1 is taken as [0, 1] already).
_FULL_SCALE = {'mono8': 255.0, 'mono16': 65535.0, 'rgb8': 255.0, 'bgr8': 255.0, '32FC1': 1.0}
#: Rec. 601 luma, used when an RGB stack is published in a mono encoding.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

TOPIC_IMAGE = 'focal_stack/image'
TOPIC_CAMERA_INFO = 'focal_stack/camera_info'
TOPIC_LENS_STATE = 'focal_stack/lens_state'
TOPIC_DEPTH_GT = 'focal_stack/depth_gt'

_FOCUS_RE = re.compile(r'^focus_distance_(\d+)$')
_FNUM_RE = re.compile(r'^f_number_(\d+)$')


class InputError(StackError):
    """A bad input message: ``reason`` (counter key) and ``topic`` (relative topic name)."""

    def __init__(self, reason: str, message: str, topic: str = TOPIC_IMAGE) -> None:
        super().__init__(reason, message)
        self.topic = topic


def have_cv_bridge() -> bool:
    return _BRIDGE is not None


def have_sensor_msgs_py() -> bool:
    return _pc2 is not None


# -- time and headers ----------------------------------------------------------------
def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def make_header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


# -- pixels ----------------------------------------------------------------------------
def _check_image(msg: Image, topic: str) -> tuple[np.dtype, int]:
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise InputError('unsupported_encoding',
                         f'encoding {enc!r} is not supported (use one of {", ".join(ENCODINGS)})', topic)
    dtype, ch = ENCODINGS[enc]
    h, w = int(msg.height), int(msg.width)
    if h <= 0 or w <= 0:
        raise InputError('bad_size', f'image of {h} x {w} pixels', topic)
    row = w * ch * dtype.itemsize
    if int(msg.step) < row:
        raise InputError('data_length', f'step {msg.step} < width*channels*bytes = {row}', topic)
    if len(msg.data) != int(msg.step) * h:
        raise InputError('data_length',
                         f'data has {len(msg.data)} bytes, step*height = {int(msg.step) * h}', topic)
    return dtype, ch


def image_to_array(msg: Image, topic: str = TOPIC_IMAGE) -> np.ndarray:
    """Image -> H x W x C array in the message's own dtype and channel order (zero copy when packed).

    Raises:
        InputError: unsupported encoding, zero size, step/data length mismatch.
    """
    dtype, ch = _check_image(msg, topic)
    h, w = int(msg.height), int(msg.width)
    if _BRIDGE is not None:
        arr = np.asarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding='passthrough'))
        return arr.reshape(h, w, ch)
    return _numpy_image_to_array(msg, dtype, ch)


def _numpy_image_to_array(msg: Image, dtype: np.dtype, ch: int) -> np.ndarray:
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    raw = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)
    row = w * ch * dtype.itemsize
    if step != row:
        raw = np.ascontiguousarray(raw[:, :row])
    msg_dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<') if dtype.itemsize > 1 else dtype
    arr = raw.view(msg_dtype).reshape(h, w, ch)
    if arr.dtype.byteorder not in ('=', '|') and arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def array_to_image(arr: np.ndarray, encoding: str, header: Optional[Header] = None) -> Image:
    """H x W (x C) array in ``encoding``'s dtype -> Image (``data`` from ``tobytes()``)."""
    if encoding not in ENCODINGS:
        raise InputError('unsupported_encoding', f'encoding {encoding!r} is not supported')
    dtype, ch = ENCODINGS[encoding]
    a = np.ascontiguousarray(arr, dtype=dtype)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] != ch:
        raise ValueError(f'{encoding} needs H x W x {ch}, got {a.shape}')
    header = header if header is not None else Header()
    if _BRIDGE is not None:
        msg = _BRIDGE.cv2_to_imgmsg(a if ch > 1 else a[..., 0], encoding=encoding, header=header)
        return msg
    return numpy_array_to_image(a, encoding, header)


def numpy_array_to_image(a: np.ndarray, encoding: str, header: Header) -> Image:
    """The package's own conversion (what ``cv_bridge.cv2_to_imgmsg`` does)."""
    dtype, ch = ENCODINGS[encoding]
    h, w = a.shape[:2]
    return Image(header=header, height=h, width=w, encoding=encoding,
                 is_bigendian=int(sys.byteorder == 'big'), step=w * ch * dtype.itemsize,
                 data=a.tobytes())


def pixels_to_unit(arr: np.ndarray, encoding: str) -> np.ndarray:
    """Pixels of ``encoding`` -> float32 in [0, 1], RGB channel order (bgr8 reversed)."""
    if encoding == 'bgr8':
        arr = arr[..., ::-1]
    if encoding == '32FC1':
        return np.ascontiguousarray(arr, dtype=np.float32)
    # one pass: convert and scale into a fresh contiguous float32 array
    out = np.empty(arr.shape, dtype=np.float32)
    np.multiply(arr, np.float32(1.0 / _FULL_SCALE[encoding]), out=out, dtype=np.float32)
    return out


def unit_to_pixels(frames: np.ndarray, encoding: str) -> np.ndarray:
    """float [0, 1] frames (... x C, RGB or gray) -> pixels of ``encoding`` (rounded, clipped)."""
    x = np.asarray(frames, dtype=np.float32)
    _, ch = ENCODINGS[encoding]
    if ch == 1 and x.shape[-1] == 3:
        x = (x @ _LUMA)[..., None]
    elif ch == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if encoding == 'bgr8':
        x = x[..., ::-1]
    if encoding == '32FC1':
        return np.ascontiguousarray(x, dtype=np.float32)
    full = _FULL_SCALE[encoding]
    dtype = ENCODINGS[encoding][0]
    return np.clip(np.round(x * full), 0, full).astype(dtype)


# -- camera info and lens state ------------------------------------------------------
def make_camera_info(width: int, height: int, fx: float, fy: Optional[float] = None,
                     cx: Optional[float] = None, cy: Optional[float] = None,
                     header: Optional[Header] = None) -> CameraInfo:
    """Pinhole CameraInfo of one frame (no distortion, R = I, P = [K | 0])."""
    fy = fx if fy is None else fy
    cx = (width - 1) / 2.0 if cx is None else cx
    cy = (height - 1) / 2.0 if cy is None else cy
    info = CameraInfo(header=header if header is not None else Header(), height=int(height), width=int(width))
    info.distortion_model = 'plumb_bob'
    info.d = [0.0] * 5
    info.k = [float(fx), 0.0, float(cx), 0.0, float(fy), float(cy), 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [float(fx), 0.0, float(cx), 0.0, 0.0, float(fy), float(cy), 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def scale_camera_info(info: CameraInfo, width: int, height: int) -> CameraInfo:
    """The CameraInfo of the same camera resampled to ``width`` x ``height``."""
    sx, sy = width / float(info.width), height / float(info.height)
    k = list(info.k)
    out = make_camera_info(width, height, k[0] * sx, k[4] * sy,
                           (k[2] + 0.5) * sx - 0.5, (k[5] + 0.5) * sy - 0.5, info.header)
    return out


def make_lens_state(focus_m: Sequence[float], f_number: float, pixel_pitch_m: float,
                    focal_length_m: Optional[float] = None, f_numbers: Optional[Sequence[float]] = None,
                    header: Optional[Header] = None) -> JointState:
    """JointState with the named lens values in ``position`` (tile order)."""
    names = [f'focus_distance_{i}' for i in range(len(focus_m))] + ['f_number', 'pixel_pitch']
    values = [float(s) for s in focus_m] + [float(f_number), float(pixel_pitch_m)]
    if focal_length_m is not None:
        names.append('focal_length')
        values.append(float(focal_length_m))
    if f_numbers is not None:
        names += [f'f_number_{i}' for i in range(len(f_numbers))]
        values += [float(n) for n in f_numbers]
    return JointState(header=header if header is not None else Header(), name=names, position=values)


def lens_values(msg: JointState) -> dict[str, float]:
    """Named values of a lens_state message (``position`` by ``name``)."""
    names, pos = list(msg.name), list(msg.position)
    if len(names) != len(pos):
        raise InputError('bad_lens_state', f'{len(names)} names but {len(pos)} positions', TOPIC_LENS_STATE)
    if len(set(names)) != len(names):
        raise InputError('bad_lens_state', f'repeated names in {names}', TOPIC_LENS_STATE)
    return {n: float(v) for n, v in zip(names, pos)}


def _lens_value_ok(name: str, v: Optional[float], topic: str) -> float:
    if v is None:
        raise InputError('missing_lens', f'{name} is missing', topic)
    if not math.isfinite(v):
        raise InputError('nan_lens', f'{name} is {v}', topic)
    if v <= 0:
        raise InputError('nonpositive_lens', f'{name} must be > 0, got {v}', topic)
    return v


def parse_lens_state(msg: JointState, num_frames: int, fx_px: float):
    """(focus_m (F,), LensModel, per-frame f-numbers or None) from a lens_state message."""
    vals = lens_values(msg)
    t = TOPIC_LENS_STATE
    idx = sorted(int(m.group(1)) for m in map(_FOCUS_RE.match, vals) if m)
    if idx != list(range(len(idx))):
        raise InputError('missing_lens', f'focus_distance_<i> indices {idx} are not 0..n-1', t)
    if len(idx) != num_frames:
        raise InputError('lens_frame_mismatch',
                         f'{len(idx)} focus distances for an image of {num_frames} tiles', t)
    focus = np.array([_lens_value_ok(f'focus_distance_{i}', vals[f'focus_distance_{i}'], t)
                      for i in range(num_frames)], dtype=np.float64)
    f_number = _lens_value_ok('f_number', vals.get('f_number'), t)
    pitch = _lens_value_ok('pixel_pitch', vals.get('pixel_pitch'), t)
    if 'focal_length' in vals:
        focal = _lens_value_ok('focal_length', vals['focal_length'], t)
    else:
        fx = _lens_value_ok('camera_info K[0] (fx, needed without focal_length)', fx_px, TOPIC_CAMERA_INFO)
        focal = fx * pitch
    per = sorted(int(m.group(1)) for m in map(_FNUM_RE.match, vals) if m)
    f_numbers = None
    if per:
        if per != list(range(num_frames)):
            raise InputError('missing_lens', f'f_number_<i> indices {per} do not cover 0..{num_frames - 1}', t)
        f_numbers = np.array([_lens_value_ok(f'f_number_{i}', vals[f'f_number_{i}'], t)
                              for i in range(num_frames)], dtype=np.float64)
    return focus, LensModel(focal, f_number, pitch), f_numbers


# -- stacks ------------------------------------------------------------------------------
def stack_to_msgs(stack: FocalStack, encoding: str = 'rgb8', camera_info: Optional[CameraInfo] = None,
                  include_focal_length: bool = True) -> tuple[Image, CameraInfo, JointState]:
    """FocalStack -> (tiled Image, CameraInfo of one frame, JointState lens_state), one header.

    ``camera_info`` is copied (header replaced) when given; otherwise a pinhole with
    fx = f / pitch, principal point at the centre.
    """
    def header() -> Header:      # one Header object per message: they are mutable
        return make_header(stack.stamp_ns, stack.frame_id)

    F, H, W, _ = stack.frames.shape
    pix = unit_to_pixels(stack.frames, encoding)                # F x H x W x ch
    image = array_to_image(pix.reshape(F * H, W, pix.shape[-1]), encoding, header())
    if camera_info is None:
        info = make_camera_info(W, H, stack.lens.focal_length_m / stack.lens.pixel_pitch_m, header=header())
    else:
        info = CameraInfo(header=header(), height=camera_info.height, width=camera_info.width,
                          distortion_model=camera_info.distortion_model, d=list(camera_info.d),
                          k=list(camera_info.k), r=list(camera_info.r), p=list(camera_info.p),
                          binning_x=camera_info.binning_x, binning_y=camera_info.binning_y,
                          roi=camera_info.roi)
    lens = make_lens_state(stack.focus_m, stack.lens.f_number, stack.lens.pixel_pitch_m,
                           stack.lens.focal_length_m if include_focal_length else None,
                           stack.f_numbers, header())
    return image, info, lens


def check_triple(image: Image, info: CameraInfo, lens: JointState) -> None:
    """Headers of the three messages must be identical (stamp and frame_id)."""
    stamps = {stamp_to_ns(m.header.stamp) for m in (image, info, lens)}
    if len(stamps) != 1:
        raise InputError('stamp_mismatch', f'stamps differ: {sorted(stamps)}', TOPIC_IMAGE)
    frames = {m.header.frame_id for m in (image, info, lens)}
    if len(frames) != 1:
        raise InputError('frame_id_mismatch', f'frame_ids differ: {sorted(frames)}', TOPIC_CAMERA_INFO)


def msgs_to_stack(image: Image, info: CameraInfo, lens: JointState,
                  max_stack_bytes: Optional[int] = None) -> FocalStack:
    """(tiled Image, CameraInfo, JointState) -> FocalStack of float32 [0, 1] RGB/gray frames.

    Checks, in order, each raising :class:`InputError` with a reason key: encoding,
    sizes, tiling (image height a multiple of camera_info height, same width), the
    memory limit (``max_stack_bytes`` of float32 frames), step/data length, lens values.
    ``FocalStack.validate`` (run by the pipeline) adds the optical checks.
    """
    check_triple(image, info, lens)
    if image.encoding not in ENCODINGS:
        raise InputError('unsupported_encoding',
                         f'encoding {image.encoding!r} is not supported (use one of {", ".join(ENCODINGS)})')
    _, ch = ENCODINGS[image.encoding]
    h, w = int(info.height), int(info.width)
    if h <= 0 or w <= 0:
        raise InputError('bad_size', f'camera_info gives a {h} x {w} frame', TOPIC_CAMERA_INFO)
    if int(image.height) <= 0 or int(image.width) <= 0:
        raise InputError('bad_size', f'image of {image.height} x {image.width} pixels')
    if int(image.width) != w or int(image.height) % h != 0:
        raise InputError('tile_mismatch',
                         f'image {image.height} x {image.width} is not a vertical tiling of '
                         f'{h} x {w} frames (camera_info)')
    F = int(image.height) // h
    need = F * h * w * ch * 4
    if max_stack_bytes is not None and need > max_stack_bytes:
        raise InputError('too_large', f'stack of {F} x {h} x {w} x {ch} needs {need} bytes as float32, '
                                      f'limit max_stack_bytes = {max_stack_bytes}')
    pix = image_to_array(image)
    frames = pixels_to_unit(pix, image.encoding).reshape(F, h, w, ch)
    k = list(info.k)
    focus, lens_model, f_numbers = parse_lens_state(lens, F, float(k[0]) if len(k) == 9 else float('nan'))
    return FocalStack(frames=frames, focus_m=focus, lens=lens_model, f_numbers=f_numbers,
                      stamp_ns=stamp_to_ns(image.header.stamp), frame_id=image.header.frame_id,
                      meta={'encoding': image.encoding, 'K': np.array(k, dtype=np.float64).reshape(3, 3)})


# -- outputs -----------------------------------------------------------------------------
def depth_to_image(values_m: np.ndarray, header: Header) -> Image:
    """H x W metres -> 32FC1 Image (NaN kept: REP 117 'invalid')."""
    return numpy_array_to_image(np.ascontiguousarray(values_m, dtype=np.float32)[..., None], '32FC1', header)


def image_to_depth(msg: Image) -> np.ndarray:
    """32FC1 Image -> H x W float32."""
    if msg.encoding != '32FC1':
        raise InputError('unsupported_encoding', f'depth must be 32FC1, got {msg.encoding!r}', TOPIC_DEPTH_GT)
    return image_to_array(msg, TOPIC_DEPTH_GT)[..., 0]


def colorized_depth_image(depth_m: np.ndarray, d_min: float, d_max: float, header: Header) -> Image:
    """bgr8 Image of the depth with the fixed Turbo map over [d_min, d_max] (NaN = black)."""
    return numpy_array_to_image(colorize_depth(depth_m, d_min, d_max), 'bgr8', header)


POINT_FIELDS = [PointField(name='x', offset=0, datatype=PointField.FLOAT32, count=1),
                PointField(name='y', offset=4, datatype=PointField.FLOAT32, count=1),
                PointField(name='z', offset=8, datatype=PointField.FLOAT32, count=1),
                PointField(name='rgb', offset=12, datatype=PointField.FLOAT32, count=1)]


def numpy_cloud(header: Header, points: np.ndarray) -> PointCloud2:
    """Unorganised PointCloud2 from a ``POINT_DTYPE`` array (the numpy twin of ``create_cloud``)."""
    pts = np.ascontiguousarray(points, dtype=POINT_DTYPE)
    return PointCloud2(header=header, height=1, width=int(pts.shape[0]), fields=list(POINT_FIELDS),
                       is_bigendian=False, point_step=POINT_DTYPE.itemsize,
                       row_step=POINT_DTYPE.itemsize * int(pts.shape[0]), data=pts.tobytes(), is_dense=True)


def depth_to_cloud(depth_m: np.ndarray, K, rgb: Optional[np.ndarray], header: Header) -> PointCloud2:
    """``depth/points``: finite points of the depth image through K, coloured by the reference frame."""
    pts = xyzrgb_points(depth_m, K, rgb)
    if _pc2 is not None:
        cloud = _pc2.create_cloud(header, list(POINT_FIELDS), pts)
        cloud.is_dense = True
        return cloud
    return numpy_cloud(header, pts)


def cloud_to_points(msg: PointCloud2) -> np.ndarray:
    """PointCloud2 in our layout -> ``POINT_DTYPE`` array (for tests and tools)."""
    if msg.point_step != POINT_DTYPE.itemsize:
        raise ValueError(f'point_step {msg.point_step} != {POINT_DTYPE.itemsize}')
    return np.frombuffer(msg.data, dtype=POINT_DTYPE)
