"""rosbag2 focal-stack bags: read and write with the pure-Python ``rosbags`` library.

No ROS install is needed: messages are (de)serialised with rosbags' own ROS 2 Jazzy
type store.  The schema is DESIGN.md section 5: under a namespace (default
``/camera``) one focal stack is ``focal_stack/image`` (frames tiled vertically),
``focal_stack/camera_info`` (one frame's geometry), ``focal_stack/lens_state``
(JointState of named lens values) and, in evaluation bags, ``focal_stack/depth_gt``
(32FC1 metres, NaN unknown), all four with the identical header stamp.

Reading groups messages by exact header stamp (not by bag receive time), releases
stacks in stamp order through a small reorder window, and turns every group into a
:class:`~ddfs_ros.stack.FocalStack` or a :class:`~ddfs_ros.stack.StackError` saying
what is wrong with it (wrong tile height, missing lens_state, NaN focus, ...): a bad
stack is reported, never raised.

Message -> FocalStack conversion is :func:`stack_from_messages`, a pure function of
the message fields (rosbags or rclpy message objects alike, duck-typed), so the
evaluation, the tests and the node agree on one reading of the schema.
"""
from __future__ import annotations

import heapq
import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..optics import LensModel
from ..stack import FocalStack, StackError

LOG = logging.getLogger(__name__)

TOPIC_IMAGE = 'focal_stack/image'
TOPIC_INFO = 'focal_stack/camera_info'
TOPIC_LENS = 'focal_stack/lens_state'
TOPIC_GT = 'focal_stack/depth_gt'
#: role -> (relative topic, message type)
ROLES = {
    'image': (TOPIC_IMAGE, 'sensor_msgs/msg/Image'),
    'camera_info': (TOPIC_INFO, 'sensor_msgs/msg/CameraInfo'),
    'lens_state': (TOPIC_LENS, 'sensor_msgs/msg/JointState'),
    'depth_gt': (TOPIC_GT, 'sensor_msgs/msg/Image'),
}
STACK_ROLES = ('image', 'camera_info', 'lens_state')
DEFAULT_NAMESPACE = '/camera'

# Stack encodings of DESIGN.md section 5: encoding -> (numpy dtype, channels, full scale).
# Same set, same checks and the same float arithmetic as ddfs_ros.ros_io (the node's
# reading), so offline scoring sees bit-identical frames to the node's.
_ENCODINGS = {
    'mono8': (np.dtype(np.uint8), 1, 255.0),
    'mono16': (np.dtype(np.uint16), 1, 65535.0),
    'rgb8': (np.dtype(np.uint8), 3, 255.0),
    'bgr8': (np.dtype(np.uint8), 3, 255.0),
    '32FC1': (np.dtype(np.float32), 1, 1.0),
}
WRITE_ENCODINGS = tuple(_ENCODINGS)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@lru_cache(maxsize=1)
def typestore():
    """The ROS 2 Jazzy type store of rosbags (cached)."""
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_JAZZY)


def normalize_namespace(ns: Optional[str]) -> str:
    """'/camera', 'camera', 'camera/' -> '/camera'; '', '/' -> '' (root)."""
    if ns is None:
        return DEFAULT_NAMESPACE
    ns = '/' + ns.strip('/')
    return '' if ns == '/' else ns


def topic_name(namespace: str, role: str) -> str:
    """Absolute topic of ``role`` ('image', 'camera_info', 'lens_state', 'depth_gt') under ``namespace``."""
    return f'{normalize_namespace(namespace)}/{ROLES[role][0]}'


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# --------------------------------------------------------------------------- decoding
def _raw_image(msg, encodings: dict) -> np.ndarray:
    enc = str(msg.encoding)
    if enc not in encodings:
        raise StackError('unsupported_encoding',
                         f'encoding {enc!r} is not supported (use one of {", ".join(encodings)})')
    dtype, ch = encodings[enc][0], encodings[enc][1]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise StackError('bad_size', f'image of {h} x {w} pixels')
    row = w * ch * dtype.itemsize
    if step < row:
        raise StackError('data_length', f'step {step} < width*channels*bytes = {row}')
    data = msg.data
    buf = data.view(np.uint8).reshape(-1) if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    if buf.size != step * h:
        raise StackError('data_length', f'data has {buf.size} bytes, step*height = {step * h}')
    raw = buf.reshape(h, step)
    if step != row:
        raw = np.ascontiguousarray(raw[:, :row])
    msg_dtype = dtype.newbyteorder('>' if msg.is_bigendian else '<') if dtype.itemsize > 1 else dtype
    arr = raw.view(msg_dtype).reshape(h, w, ch)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    return arr


def image_to_array(msg) -> np.ndarray:
    """sensor_msgs/Image of a stack encoding -> H x W x C array in the message's dtype and channel order.

    ``msg`` is any object with ``height, width, encoding, is_bigendian, step, data``
    (rosbags or rclpy messages; ``data`` as numpy array, bytes or array.array).
    Raises :class:`StackError` ('unsupported_encoding', 'bad_size', 'data_length').
    """
    return _raw_image(msg, _ENCODINGS)


def image_to_float(msg) -> np.ndarray:
    """Stack image -> H x W x C float32 in [0, 1], RGB order (``pixels * float32(1/full_scale)``)."""
    arr = image_to_array(msg)
    enc = str(msg.encoding)
    x = arr.astype(np.float32)
    if enc != '32FC1':
        x *= np.float32(1.0 / _ENCODINGS[enc][2])
    if enc == 'bgr8':
        x = x[..., ::-1]
    return np.ascontiguousarray(x)


_DEPTH_ENCODINGS = {'32FC1': (np.dtype(np.float32), 1), '16UC1': (np.dtype(np.uint16), 1),
                    'mono16': (np.dtype(np.uint16), 1)}


def depth_from_image(msg) -> np.ndarray:
    """Depth image -> H x W float32 metres (32FC1 as is; 16UC1/mono16 millimetres per REP 118, 0 -> NaN)."""
    arr = _raw_image(msg, _DEPTH_ENCODINGS)[..., 0]
    if str(msg.encoding) == '32FC1':
        return arr
    d = arr.astype(np.float32) / np.float32(1000.0)
    d[arr == 0] = np.nan
    return d


_FOCUS_RE = re.compile(r'^focus_distance_(\d+)$')
_FNUM_RE = re.compile(r'^f_number_(\d+)$')


def _lens_value(name: str, v: Optional[float]) -> float:
    if v is None:
        raise StackError('missing_lens', f'{name} is missing')
    if not math.isfinite(v):
        raise StackError('nan_lens', f'{name} is {v}')
    if v <= 0:
        raise StackError('nonpositive_lens', f'{name} must be > 0, got {v}')
    return float(v)


def parse_lens(names: Sequence[str], positions: Sequence[float], num_frames: int, fx_px: float):
    """lens_state values -> (focus_m (F,), LensModel, per-frame f-numbers (F,) or None).

    Names per DESIGN.md section 5: ``focus_distance_<i>`` (m) for i = 0..F-1,
    ``f_number``, ``pixel_pitch`` (m/px), optional ``focal_length`` (m, else
    ``fx_px * pitch``) and optional ``f_number_<i>`` for every frame.
    """
    names = [str(n) for n in names]
    pos = [float(v) for v in positions]
    if len(names) != len(pos):
        raise StackError('bad_lens_state', f'{len(names)} names but {len(pos)} positions')
    if len(set(names)) != len(names):
        raise StackError('bad_lens_state', f'repeated names in {names}')
    vals = dict(zip(names, pos))
    idx = sorted(int(m.group(1)) for m in map(_FOCUS_RE.match, vals) if m)
    if idx != list(range(len(idx))):
        raise StackError('missing_lens', f'focus_distance_<i> indices {idx} are not 0..n-1')
    if len(idx) != num_frames:
        raise StackError('lens_frame_mismatch', f'{len(idx)} focus distances for an image of {num_frames} tiles')
    focus = np.array([_lens_value(f'focus_distance_{i}', vals[f'focus_distance_{i}'])
                      for i in range(num_frames)], dtype=np.float64)
    f_number = _lens_value('f_number', vals.get('f_number'))
    pitch = _lens_value('pixel_pitch', vals.get('pixel_pitch'))
    if 'focal_length' in vals:
        focal = _lens_value('focal_length', vals['focal_length'])
    else:
        focal = _lens_value('camera_info K[0] (fx, needed without focal_length)', fx_px) * pitch
    per = sorted(int(m.group(1)) for m in map(_FNUM_RE.match, vals) if m)
    f_numbers = None
    if per:
        if per != list(range(num_frames)):
            raise StackError('missing_lens', f'f_number_<i> indices {per} do not cover 0..{num_frames - 1}')
        f_numbers = np.array([_lens_value(f'f_number_{i}', vals[f'f_number_{i}'])
                              for i in range(num_frames)], dtype=np.float64)
    return focus, LensModel(focal, f_number, pitch), f_numbers


def stack_from_messages(image, camera_info, lens_state, stamp_ns: Optional[int] = None,
                        validate: bool = True) -> FocalStack:
    """The three focal-stack messages -> :class:`FocalStack` (DESIGN.md section 5), validated.

    A pure function of the message fields (rosbags or rclpy messages alike), with the
    same checks, reason keys and float arithmetic as the node's
    ``ddfs_ros.ros_io.msgs_to_stack`` followed by ``FocalStack.validate``.

    Raises:
        StackError: ``reason`` among 'missing_image', 'missing_camera_info',
            'missing_lens', 'stamp_mismatch', 'frame_id_mismatch', 'unsupported_encoding',
            'bad_size', 'tile_mismatch', 'data_length', 'bad_lens_state',
            'lens_frame_mismatch', 'nan_lens', 'nonpositive_lens', 'duplicate_frame', ...
    """
    if image is None:
        raise StackError('missing_image', 'no focal_stack/image for this stamp')
    if camera_info is None:
        raise StackError('missing_camera_info', 'no focal_stack/camera_info for this stamp')
    if lens_state is None:
        raise StackError('missing_lens', 'no focal_stack/lens_state for this stamp')
    msgs = (image, camera_info, lens_state)
    stamps = {stamp_to_ns(m.header.stamp) for m in msgs}
    if len(stamps) != 1:
        raise StackError('stamp_mismatch', f'stamps differ: {sorted(stamps)}')
    if len({str(m.header.frame_id) for m in msgs}) != 1:
        raise StackError('frame_id_mismatch', 'frame_ids of the three messages differ')
    if str(image.encoding) not in _ENCODINGS:
        raise StackError('unsupported_encoding', f'encoding {image.encoding!r} is not supported '
                         f'(use one of {", ".join(_ENCODINGS)})')
    ch = _ENCODINGS[str(image.encoding)][1]
    h, w = int(camera_info.height), int(camera_info.width)
    if h <= 0 or w <= 0:
        raise StackError('bad_size', f'camera_info gives a {h} x {w} frame')
    if int(image.height) <= 0 or int(image.width) <= 0:
        raise StackError('bad_size', f'image of {image.height} x {image.width} pixels')
    if int(image.width) != w or int(image.height) % h != 0:
        raise StackError('tile_mismatch', f'image {image.height} x {image.width} is not a vertical tiling '
                         f'of {h} x {w} frames (camera_info)')
    n_frames = int(image.height) // h
    frames = image_to_float(image).reshape(n_frames, h, w, ch)
    k = [float(v) for v in camera_info.k]
    focus, lens, f_numbers = parse_lens(lens_state.name, lens_state.position, n_frames,
                                        k[0] if len(k) == 9 else math.nan)
    stack = FocalStack(frames=frames, focus_m=focus, lens=lens, f_numbers=f_numbers,
                       stamp_ns=stamp_to_ns(image.header.stamp) if stamp_ns is None else int(stamp_ns),
                       frame_id=str(image.header.frame_id),
                       meta={'encoding': str(image.encoding),
                             'K': np.array(k, dtype=np.float64).reshape(3, 3) if len(k) == 9 else None})
    return stack.validate() if validate else stack


# --------------------------------------------------------------------------- reading
@dataclass
class BagInfo:
    """What :func:`open_bag_info` finds in a bag."""

    path: Path
    namespace: str
    storage: str
    topics: dict            # topic -> (msgtype, message count)
    has_depth_gt: bool
    namespaces: list        # every namespace that holds a focal_stack/image topic


@dataclass
class BagStack:
    """One stamp of a bag: the stack (or why it is unusable), its ground truth and raw messages.

    ``raw`` maps role -> (topic, msgtype, serialized CDR bytes) so a replay can put the
    recorded bytes on the wire unchanged (what ``ros2 bag play`` does).
    """

    stamp_ns: int
    stack: object                       # FocalStack | StackError
    depth_gt: Optional[np.ndarray]
    raw: dict = field(default_factory=dict)
    gt_error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return isinstance(self.stack, FocalStack)


def _find_namespaces(topics: Sequence[str]) -> list[str]:
    suffix = '/' + TOPIC_IMAGE
    found = []
    for t in topics:
        if t == TOPIC_IMAGE or t.endswith(suffix):
            found.append(normalize_namespace(t[:-len(TOPIC_IMAGE)]))
    return sorted(set(found))


def _storage_of(path: Path) -> str:
    if path.is_dir():
        files = [p.suffix for p in path.iterdir()]
        return 'mcap' if '.mcap' in files else 'sqlite3' if '.db3' in files else '?'
    return {'.mcap': 'mcap', '.db3': 'sqlite3'}.get(path.suffix, '?')


def open_bag_info(bag_path, namespace: Optional[str] = None) -> BagInfo:
    """Inspect a bag: storage, topics and the focal-stack namespace (auto-detected when None)."""
    from rosbags.rosbag2 import Reader
    path = Path(bag_path)
    with Reader(path) as reader:
        topics = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
    storage = _storage_of(path)
    namespaces = _find_namespaces(list(topics))
    if namespace is None:
        if not namespaces:
            raise ValueError(f'{path}: no */{TOPIC_IMAGE} topic; topics are {sorted(topics)}')
        if len(namespaces) > 1:
            LOG.warning('%s holds focal stacks under %s; using %s (pass --namespace)', path, namespaces,
                        namespaces[0])
        ns = namespaces[0]
    else:
        ns = normalize_namespace(namespace)
    return BagInfo(path=path, namespace=ns, storage=storage, topics=topics,
                   has_depth_gt=topic_name(ns, 'depth_gt') in topics, namespaces=namespaces)


def read_bag(bag_path, namespace: Optional[str] = None, window: int = 16,
             info: Optional[BagInfo] = None) -> Iterator[BagStack]:
    """Yield every stamp of the bag's focal stacks as a :class:`BagStack`, in stamp order.

    Messages are grouped by exact header stamp.  A group is released once ``window``
    later stamps have been seen (or at the end of the bag), so memory stays bounded
    and stamps out of order by fewer than ``window`` stacks still come out sorted.
    """
    from rosbags.rosbag2 import Reader
    info = info or open_bag_info(bag_path, namespace)
    ts = typestore()
    role_of = {topic_name(info.namespace, r): r for r in ROLES}
    pending: dict[int, dict] = {}
    heap: list[int] = []

    def release(stamp: int) -> BagStack:
        group = pending.pop(stamp)
        return _to_bag_stack(stamp, group, info.has_depth_gt)

    with Reader(info.path) as reader:
        conns = [c for c in reader.connections if c.topic in role_of]
        for conn, _, raw in reader.messages(connections=conns):
            role = role_of[conn.topic]
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                stamp = stamp_to_ns(msg.header.stamp)
            except Exception as exc:  # noqa: BLE001 - a corrupt record must not end the read
                LOG.warning('%s: undecodable %s message skipped: %s', info.path, conn.topic, exc)
                continue
            if stamp not in pending:
                pending[stamp] = {}
                heapq.heappush(heap, stamp)
            group = pending[stamp]
            if role in group:
                LOG.warning('%s: second %s message at stamp %d ignored', info.path, conn.topic, stamp)
                continue
            group[role] = (conn.topic, conn.msgtype, bytes(raw), msg)
            while len(heap) > window:
                yield release(heapq.heappop(heap))
        while heap:
            yield release(heapq.heappop(heap))


def _to_bag_stack(stamp: int, group: dict, expect_gt: bool) -> BagStack:
    msgs = {r: v[3] for r, v in group.items()}
    raw = {r: v[:3] for r, v in group.items()}
    try:
        stack = stack_from_messages(msgs.get('image'), msgs.get('camera_info'), msgs.get('lens_state'),
                                    stamp_ns=stamp)
    except StackError as exc:
        exc.stamp_ns = stamp
        stack = exc
    except Exception as exc:  # noqa: BLE001 - anything malformed is a bad stack, not a crash
        err = StackError('malformed', f'{type(exc).__name__}: {exc}')
        err.stamp_ns = stamp
        stack = err
    gt, gt_error = None, None
    if 'depth_gt' in msgs:
        try:
            gt = depth_from_image(msgs['depth_gt'])
        except StackError as exc:
            gt_error = str(exc)
    elif expect_gt:
        gt_error = 'no depth_gt for this stamp'
    if gt is not None and isinstance(stack, FocalStack) and gt.shape != (stack.height, stack.width):
        gt_error = f'depth_gt {gt.shape} does not match the frame size {(stack.height, stack.width)}'
        gt = None
    return BagStack(stamp_ns=stamp, stack=stack, depth_gt=gt, raw=raw, gt_error=gt_error)


def read_stacks(bag_path, namespace: Optional[str] = None) -> Iterator[tuple]:
    """Yield ``(FocalStack or StackError, depth_gt H x W float32 m or None)`` per stamp, in stamp order.

    A :class:`StackError` carries ``reason``, its message and ``stamp_ns``.
    """
    for item in read_bag(bag_path, namespace):
        yield item.stack, item.depth_gt


# --------------------------------------------------------------------------- writing
def offered_qos(depth: int = 5):
    """The publisher QoS the capture node offers (reliable, volatile, keep last ``depth``).

    Written into metadata.yaml so that ``ros2 bag play`` republishes with it.
    Infinite durations are written as rmw's RMW_DURATION_INFINITE, as rosbag2 on Jazzy does.
    """
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
    inf = QosTime(sec=9223372036, nsec=854775807)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
               durability=QosDurability.VOLATILE, deadline=inf, lifespan=inf,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=inf,
               avoid_ros_namespace_conventions=False)


def frames_to_image_bytes(frames: np.ndarray, encoding: str) -> tuple[np.ndarray, int]:
    """F x H x W x C float [0, 1] (RGB) -> (tiled F*H x W x C' array in ``encoding``, step bytes)."""
    fr = np.asarray(frames, dtype=np.float32)
    if fr.ndim == 3:
        fr = fr[..., None]
    f, h, w, c = fr.shape
    tiled = fr.reshape(f * h, w, c)
    if encoding in ('mono8', 'mono16') and c == 3:
        # ITU-R 601 luma, what cv_bridge / OpenCV use for RGB -> gray
        tiled = tiled @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
    elif encoding in ('rgb8', 'bgr8') and c == 1:
        tiled = np.repeat(tiled, 3, axis=2)
    if encoding == 'bgr8':
        tiled = tiled[..., ::-1]
    if encoding in ('rgb8', 'bgr8', 'mono8'):
        arr = np.round(np.clip(tiled, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif encoding == 'mono16':
        arr = np.round(np.clip(tiled, 0.0, 1.0) * 65535.0).astype('<u2')
    elif encoding == '32FC1':
        if tiled.shape[2] != 1:
            tiled = tiled @ np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None]
        arr = tiled.astype('<f4')
    else:
        raise ValueError(f'cannot write encoding {encoding!r}; use one of {WRITE_ENCODINGS}')
    arr = np.ascontiguousarray(arr)
    return arr, int(w * arr.shape[2] * arr.dtype.itemsize)


def stack_messages(stack: FocalStack, encoding: str = 'rgb8', depth_gt: Optional[np.ndarray] = None,
                   fx_px: Optional[float] = None, cx_px: Optional[float] = None,
                   cy_px: Optional[float] = None) -> dict:
    """rosbags messages {role: msg} of one stack (plus depth_gt when given), DESIGN.md section 5.

    ``fx_px`` defaults to the stack's own ``meta['K']`` (a stack read from a bag), else
    ``f / pitch``; the principal point likewise, else the image centre.
    The lens state always carries ``focal_length`` so readers need not trust K.
    """
    ts = typestore()
    T = ts.types
    sec, nsec = divmod(int(stack.stamp_ns), 1_000_000_000)
    header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec),
                                      frame_id=stack.frame_id)
    arr, step = frames_to_image_bytes(stack.frames, encoding)
    image = T['sensor_msgs/msg/Image'](header=header, height=arr.shape[0], width=arr.shape[1],
                                       encoding=encoding, is_bigendian=0, step=step,
                                       data=arr.reshape(-1).view(np.uint8))
    h, w = stack.height, stack.width
    K = stack.meta.get('K') if isinstance(stack.meta, dict) else None
    if K is not None and np.shape(K) == (3, 3):
        # a stack read from a bag keeps its camera's intrinsics when written again
        K = np.asarray(K, dtype=np.float64)
        fx_px = fx_px or float(K[0, 0])
        cx_px = float(K[0, 2]) if cx_px is None else cx_px
        cy_px = float(K[1, 2]) if cy_px is None else cy_px
    fx = float(fx_px) if fx_px else stack.lens.focal_length_m / stack.lens.pixel_pitch_m
    cx = (w - 1) / 2.0 if cx_px is None else float(cx_px)
    cy = (h - 1) / 2.0 if cy_px is None else float(cy_px)
    roi = T['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    info = T['sensor_msgs/msg/CameraInfo'](
        header=header, height=h, width=w, distortion_model='plumb_bob', d=np.zeros(5),
        k=np.array([fx, 0, cx, 0, fx, cy, 0, 0, 1], dtype=np.float64),
        r=np.eye(3).reshape(-1),
        p=np.array([fx, 0, cx, 0, 0, fx, cy, 0, 0, 0, 1, 0], dtype=np.float64),
        binning_x=0, binning_y=0, roi=roi)
    names = [f'focus_distance_{i}' for i in range(stack.num_frames)]
    values = [float(s) for s in stack.focus_m]
    names += ['f_number', 'pixel_pitch', 'focal_length']
    values += [float(stack.lens.f_number), float(stack.lens.pixel_pitch_m), float(stack.lens.focal_length_m)]
    if stack.f_numbers is not None:
        names += [f'f_number_{i}' for i in range(stack.num_frames)]
        values += [float(n) for n in stack.f_numbers]
    lens = T['sensor_msgs/msg/JointState'](header=header, name=names, position=np.array(values, dtype=np.float64),
                                           velocity=np.zeros(0), effort=np.zeros(0))
    out = {'image': image, 'camera_info': info, 'lens_state': lens}
    if depth_gt is not None:
        d = np.ascontiguousarray(np.asarray(depth_gt, dtype='<f4'))
        if d.shape != (h, w):
            raise ValueError(f'depth_gt {d.shape} must be one frame, {(h, w)}')
        out['depth_gt'] = T['sensor_msgs/msg/Image'](header=header, height=h, width=w, encoding='32FC1',
                                                     is_bigendian=0, step=4 * w,
                                                     data=d.reshape(-1).view(np.uint8))
    return out


class StackBagWriter:
    """Write focal stacks into a new rosbag2 bag (mcap by default, or sqlite3).

    Use as a context manager::

        with StackBagWriter('out/bag', namespace='/camera') as w:
            w.write(stack, depth_gt=depth)
    """

    def __init__(self, path, namespace: str = DEFAULT_NAMESPACE, storage: str = 'mcap',
                 encoding: str = 'rgb8', qos_depth: int = 5) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        if storage not in ('mcap', 'sqlite3'):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        if encoding not in WRITE_ENCODINGS:
            raise ValueError(f'encoding must be one of {WRITE_ENCODINGS}, got {encoding!r}')
        self.path = Path(path)
        self.namespace = normalize_namespace(namespace)
        self.encoding = encoding
        self._qos = offered_qos(qos_depth)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
        self._conns: dict = {}
        self.count = 0

    def __enter__(self) -> 'StackBagWriter':
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def _connection(self, role: str):
        if role not in self._conns:
            _, msgtype = ROLES[role]
            self._conns[role] = self._writer.add_connection(
                topic_name(self.namespace, role), msgtype, typestore=typestore(),
                offered_qos_profiles=[self._qos])
        return self._conns[role]

    def write(self, stack: FocalStack, depth_gt: Optional[np.ndarray] = None, **camera) -> None:
        """Write one stack (three messages, plus depth_gt when given) at its ``stamp_ns``.

        ``camera`` may give ``fx_px``, ``cx_px``, ``cy_px`` for the CameraInfo.
        """
        self.write_messages(stack_messages(stack, self.encoding, depth_gt, **camera), int(stack.stamp_ns))

    def write_messages(self, messages: dict, log_time_ns: int) -> None:
        """Write prepared rosbags messages {role: msg}; lets tests write deliberately broken stacks."""
        ts = typestore()
        for role in ('image', 'camera_info', 'lens_state', 'depth_gt'):
            if role in messages:
                msgtype = ROLES[role][1]
                self._writer.write(self._connection(role), int(log_time_ns),
                                   bytes(ts.serialize_cdr(messages[role], msgtype)))
        self.count += 1
