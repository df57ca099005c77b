"""The ROS nodes, for real: rclpy over loopback DDS in an isolated domain.

- a rendered plane-scene stack published by a test node comes back as depth,
  uncertainty, camera_info, colorized depth and a point cloud with the input's stamp
  and frame_id, equal to the pipeline called directly;
- every bad-input case of issue 6 publishes nothing, bumps its own counter in
  /diagnostics, logs (throttled) naming the topic, and the next good stack works;
- backpressure: a burst far above the processing rate is dropped (counted), memory
  stays bounded and the node answers the next stack;
- a backend that fails at run time hands over to the next one, visible in /diagnostics;
- capture node triples; capture and inference in two processes; ``ddfs-run --demo``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2  # noqa: E402

from ddfs_ros import ros_io  # noqa: E402
from ddfs_ros.cameras.simulated import SimulatedCamera  # noqa: E402
from ddfs_ros.engines import EngineError  # noqa: E402
from ddfs_ros.nodes.common import subscription_qos  # noqa: E402
from ddfs_ros.optics import LensModel  # noqa: E402
from ddfs_ros.stack import FocalStack  # noqa: E402

from conftest import (PLANE_DEPTH_M, ROS_ENV, rendered_plane_stack, shipped_engine, stack_publishers,  # noqa: E402
                      validation_absrel, wait_until)

pytestmark = pytest.mark.ros
PLANE_M = 0.6
FOCUS = np.array([0.2, 0.3, 0.5, 0.8, 1.5])
LENS = LensModel(0.01, 2.0, 40e-6)
DIAG_TYPES = {}
try:
    from diagnostic_msgs.msg import DiagnosticArray
    DIAG_TYPES['/diagnostics'] = DiagnosticArray
except ImportError:
    pass


class Collector(Node):
    """Subscribes to topics (relative to its namespace) and keeps what arrives."""

    def __init__(self, name, namespace, topics: dict, context):
        super().__init__(name, namespace=namespace, context=context)
        self.msgs = {t: [] for t in topics}
        self.lock = threading.Lock()
        for topic, cls in topics.items():
            self.create_subscription(cls, topic, lambda m, t=topic: self._keep(t, m), subscription_qos('reliable', 10))

    def _keep(self, topic, msg):
        with self.lock:
            self.msgs[topic].append(msg)

    def stamps(self, topic) -> list[int]:
        with self.lock:
            return [ros_io.stamp_to_ns(m.header.stamp) for m in self.msgs[topic]]

    def get(self, topic, stamp):
        with self.lock:
            for m in self.msgs[topic]:
                if ros_io.stamp_to_ns(m.header.stamp) == stamp:
                    return m
        return None


class StackPublisher(Node):
    def __init__(self, namespace, context):
        super().__init__('stack_publisher', namespace=namespace, context=context)
        self.pubs = stack_publishers(self)

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def send(self, image, info, lens, parts=('camera_info', 'lens_state', 'image')):
        msgs = {'image': image, 'camera_info': info, 'lens_state': lens}
        for k in parts:
            self.pubs[k].publish(msgs[k])


def _add(executor, *nodes):
    for n in nodes:
        executor.add_node(n)
    return nodes


def _remove(executor, *nodes):
    for n in nodes:
        executor.remove_node(n)
        n.destroy_node()


def _inference(ctx, namespace, engine, **params):
    from ddfs_ros.nodes.inference_node import InferenceNode
    base = {'engine': str(engine), 'backend': 'onnxruntime', 'device': 'cpu', 'hypothesis_mode': 'fixed',
            'max_relative_uncertainty': 0.0, 'pair_timeout': 0.5, 'warmup_runs': 1, 'diagnostics_period': 0.2}
    base.update(params)
    return InferenceNode(namespace=namespace, context=ctx,
                         parameter_overrides=[Parameter(k, value=v) for k, v in base.items()])


@pytest.fixture(scope='module')
def plane_sweep():
    cam = SimulatedCamera('plane', 64, 64, LENS.focal_length_m, LENS.f_number, LENS.pixel_pitch_m,
                          plane_depth_m=PLANE_M, noise={'full_well': 2000.0, 'read_noise': 2.0}, seed=1)
    return cam.capture_sweep(FOCUS)


_stamp_counter = [1_700_000_000_000_000_000]


def _triple(sweep, frames_slice=slice(None), encoding='rgb8', size=None):
    _stamp_counter[0] += 1_000_000
    frames = sweep.frames[frames_slice]
    if size is not None:
        import cv2
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
        lens = LensModel(LENS.focal_length_m, LENS.f_number, LENS.pixel_pitch_m * 64 / size[0])
    else:
        lens = LENS
    stack = FocalStack(frames, FOCUS[frames_slice], lens, stamp_ns=_stamp_counter[0], frame_id='test_optical')
    return ros_io.stack_to_msgs(stack, encoding)


@pytest.fixture(scope='module')
def t1(ros, tiny_engines):
    """Inference node in /t1 + a stack publisher + a collector of every output."""
    ctx, executor = ros
    # a loaded CI machine can hold one of a stack's three messages back for over half a
    # second: the default test timeout (0.5 s) then drops the stack as pair_timeout and a
    # test waiting for another reason's counter never sees it
    node = _inference(ctx, '/t1', tiny_engines['ddfs'], pair_timeout=2.0)
    pub = StackPublisher('/t1', ctx)
    topics = {'depth/image': Image, 'depth/uncertainty': Image, 'depth/camera_info': CameraInfo,
              'depth/image_colorized': Image, 'depth/points': PointCloud2, **DIAG_TYPES}
    col = Collector('collector', '/t1', topics, ctx)
    _add(executor, node, pub, col)
    assert wait_until(lambda: pub.connected() and node.pub_points.get_subscription_count() > 0
                      and node.pub_color.get_subscription_count() > 0, 10.0), 'discovery failed'
    yield node, pub, col
    _remove(executor, node, pub, col)


def _diag_values(col, node_name):
    with col.lock:
        arrays = list(col.msgs.get('/diagnostics', []))
    for arr in reversed(arrays):
        for st in arr.status:
            if node_name in st.name:
                return {kv.key: kv.value for kv in st.values}
    return None


def test_plane_stack_round_trip_over_ros(t1, plane_sweep):
    node, pub, col = t1
    image, info, lens = _triple(plane_sweep)
    stamp = ros_io.stamp_to_ns(image.header.stamp)
    pub.send(image, info, lens)
    outputs = ('depth/image', 'depth/uncertainty', 'depth/camera_info', 'depth/image_colorized', 'depth/points')
    assert wait_until(lambda: all(col.get(t, stamp) is not None for t in outputs), 15.0), \
        {t: col.stamps(t) for t in outputs}
    depth_msg, unc_msg = col.get('depth/image', stamp), col.get('depth/uncertainty', stamp)
    for m in (depth_msg, unc_msg):
        assert (m.encoding, m.height, m.width, m.header.frame_id) == ('32FC1', 64, 64, 'test_optical')
    assert col.get('depth/camera_info', stamp).k[0] == pytest.approx(LENS.focal_length_m / LENS.pixel_pitch_m)
    depth, unc = ros_io.image_to_depth(depth_msg), ros_io.image_to_depth(unc_msg)
    assert np.isfinite(depth).mean() == 1.0 and np.isfinite(unc).all()
    # exactly what the core gives when called directly on the same messages
    direct = node.pipeline.run(ros_io.msgs_to_stack(image, info, lens))
    np.testing.assert_allclose(depth, direct.depth, atol=1e-5)
    np.testing.assert_allclose(unc, direct.uncertainty, atol=1e-5)
    # untrained tiny engine: only the range is meaningful; error printed for the record
    assert 0.1 - 1e-3 <= depth.min() and depth.max() <= 3.0 + 1e-3
    print(f'plane at {PLANE_M} m, untrained tiny ddfs: mean |error| {np.abs(depth - PLANE_M).mean():.3f} m')
    colour = col.get('depth/image_colorized', stamp)
    assert (colour.encoding, colour.height, colour.width) == ('bgr8', 64, 64)
    cloud = col.get('depth/points', stamp)
    assert cloud.width == 64 * 64 and cloud.header.frame_id == 'test_optical'
    pts = ros_io.cloud_to_points(cloud)
    np.testing.assert_allclose(np.sort(pts['z']), np.sort(depth.ravel()), rtol=1e-6)
    if DIAG_TYPES:
        assert wait_until(lambda: (_diag_values(col, '/t1/inference_node') or {}).get('processed', '0') != '0', 5.0)
        v = _diag_values(col, '/t1/inference_node')
        assert v['backend'] == 'onnxruntime' and float(v['latency_ms_p50']) > 0
        assert 'error_unsupported_encoding' in v and 'dropped_busy' in v and 'rate_hz' in v


def test_shipped_engine_over_ros_on_a_known_plane(ros):
    """A shipped engine, through the node: a plane at 3 m comes back within the AbsRel of its validation set."""
    path = shipped_engine('ddfs_s')
    bound = validation_absrel(path)
    ctx, executor = ros
    node = _inference(ctx, '/t10', str(path), hypothesis_mode='from_focus')
    pub = StackPublisher('/t10', ctx)
    col = Collector('collector', '/t10', {'depth/image': Image}, ctx)
    _add(executor, node, pub, col)
    try:
        assert wait_until(pub.connected, 10.0)
        stack = rendered_plane_stack(noise={'full_well': 2000.0}, stamp_ns=123_456_789, frame_id='plane')
        pub.send(*ros_io.stack_to_msgs(stack, 'rgb8'))
        assert wait_until(lambda: col.get('depth/image', 123_456_789) is not None, 30.0)
        depth = ros_io.image_to_depth(col.get('depth/image', 123_456_789))
        absrel = float(np.nanmean(np.abs(depth - PLANE_DEPTH_M) / PLANE_DEPTH_M))
        print(f'shipped ddfs_s over ROS, plane at 3 m: AbsRel {absrel:.3f} (validation {bound:.3f})')
        assert np.isfinite(depth).mean() == 1.0 and absrel < bound
    finally:
        _remove(executor, node, pub, col)


def _corrupt(case, triple):
    image, info, lens = triple
    names = list(lens.name)
    pos = list(lens.position)

    def set_lens(name, value):
        pos[names.index(name)] = value
        lens.position = pos

    if case == 'unsupported_encoding':
        image.encoding = 'rgba8'
    elif case == 'tile_mismatch':
        image.height = image.height - 3
    elif case == 'data_length':
        image.data = bytes(image.data)[:-10]
    elif case == 'bad_size':
        info.height, info.width = 0, 0
    elif case == 'nan_lens':
        set_lens('focus_distance_0', float('nan'))
    elif case == 'nonpositive_lens':
        set_lens('f_number', -2.0)
    elif case == 'missing_lens':
        i = names.index('pixel_pitch')
        lens.name = names[:i] + names[i + 1:]
        lens.position = pos[:i] + pos[i + 1:]
    elif case == 'duplicate_frame':
        set_lens('focus_distance_1', pos[names.index('focus_distance_0')])
    elif case == 'focus_inside_focal_length':
        set_lens('focus_distance_0', 0.005)
    return image, info, lens


BAD_CASES = {  # reason -> topic named in the log line
    'unsupported_encoding': 'focal_stack/image', 'tile_mismatch': 'focal_stack/image',
    'data_length': 'focal_stack/image', 'bad_size': 'focal_stack/camera_info', 'nan_lens': 'focal_stack/lens_state',
    'nonpositive_lens': 'focal_stack/lens_state', 'missing_lens': 'focal_stack/lens_state',
    'duplicate_frame': 'focal_stack/lens_state', 'focus_inside_focal_length': 'focal_stack/lens_state',
}


def test_bad_inputs_publish_nothing_count_log_and_recover(t1, plane_sweep, capfd, request):
    node, pub, col = t1
    # the throttle window must outlast the nine bad cases below (a clean-clone run took > 2 s, the default)
    default = node.get_parameter('error_log_throttle').value
    node.set_parameters([Parameter('error_log_throttle', value=120.0)])
    request.addfinalizer(lambda: node.set_parameters([Parameter('error_log_throttle', value=default)]))
    bad_stamps = []
    for reason in BAD_CASES:
        before = node.counters[reason]
        triple = _corrupt(reason, _triple(plane_sweep))
        bad_stamps.append(ros_io.stamp_to_ns(triple[0].header.stamp))
        pub.send(*triple)
        assert wait_until(lambda: node.counters[reason] == before + 1, 15.0), (
            reason, dict(node.counters), 'pair timeouts', node.pairer.timeouts)
    # a second bad stack of one reason is counted but not logged again (throttle)
    pub.send(*_corrupt('unsupported_encoding', _triple(plane_sweep)))
    assert wait_until(lambda: node.counters['unsupported_encoding'] == 2, 5.0)
    # memory limit (dynamic parameter)
    node.set_parameters([Parameter('max_stack_bytes', value=4096)])
    triple = _triple(plane_sweep)
    bad_stamps.append(ros_io.stamp_to_ns(triple[0].header.stamp))
    pub.send(*triple)
    assert wait_until(lambda: node.counters['too_large'] == 1, 5.0)
    node.set_parameters([Parameter('max_stack_bytes', value=256 * 1024 * 1024)])
    # a triple that never completes: lens_state never comes
    timeouts = node.pairer.timeouts
    image, info, lens = _triple(plane_sweep)
    bad_stamps.append(ros_io.stamp_to_ns(image.header.stamp))
    pub.send(image, info, lens, parts=('image', 'camera_info'))
    assert wait_until(lambda: node.pairer.timeouts == timeouts + 1, 8.0)
    # the next good stack is processed normally
    good = _triple(plane_sweep)
    stamp = ros_io.stamp_to_ns(good[0].header.stamp)
    pub.send(*good)
    assert wait_until(lambda: col.get('depth/image', stamp) is not None, 10.0)
    time.sleep(0.2)
    assert not set(bad_stamps) & set(col.stamps('depth/image') + col.stamps('depth/uncertainty'))
    err = capfd.readouterr().err
    for reason, topic in BAD_CASES.items():
        lines = [ln for ln in err.splitlines() if f': {reason}:' in ln]
        assert len(lines) == 1, (reason, lines)
        assert f'/t1/{topic}' in lines[0] and 'dropping stack' in lines[0]
    assert any('/t1/focal_stack/lens_state' in ln and 'pair_timeout' in ln for ln in err.splitlines())
    if DIAG_TYPES:
        assert wait_until(lambda: (_diag_values(col, '/t1/inference_node') or {}).get('error_too_large') == '1', 5.0)
        v = _diag_values(col, '/t1/inference_node')
        for reason in BAD_CASES:
            assert int(v[f'error_{reason}']) >= 1
        assert int(v['dropped_pair_timeout']) >= 1


@pytest.mark.parametrize('k, p', [
    ([float('inf')] * 9, None),                                     # the fuzz find of issue 12
    ([0.0, 0.0, 32.0, 0.0, 250.0, 32.0, 0.0, 0.0, 1.0], None),          # fx = 0
    (None, [float('nan')] + [0.0] * 11),
    (None, [250.0, 0.0, 32.0, 0.0, 0.0, -250.0, 32.0, 0.0, 0.0, 0.0, 1.0, 0.0]),   # fy < 0
])
def test_bad_intrinsics_are_rejected_counted_and_not_republished(t1, plane_sweep, k, p):
    node, pub, col = t1
    before = node.counters['bad_intrinsics']
    image, info, lens = _triple(plane_sweep)           # lens_state carries focal_length: K is not needed for f
    assert 'focal_length' in lens.name
    if k is not None:
        info.k = k
    if p is not None:
        info.p = p
    stamp = ros_io.stamp_to_ns(image.header.stamp)
    pub.send(image, info, lens)
    assert wait_until(lambda: node.counters['bad_intrinsics'] == before + 1, 5.0), dict(node.counters)
    good = _triple(plane_sweep)
    good_stamp = ros_io.stamp_to_ns(good[0].header.stamp)
    pub.send(*good)
    assert wait_until(lambda: col.get('depth/image', good_stamp) is not None, 10.0)
    for topic in ('depth/image', 'depth/uncertainty', 'depth/camera_info', 'depth/points'):
        assert stamp not in col.stamps(topic), topic
    assert node.stats()['error_bad_intrinsics'] == before + 1


def test_fixed_f_engine_rejects_other_frame_counts(ros, tiny_engines, plane_sweep):
    ctx, executor = ros
    node = _inference(ctx, '/t2', tiny_engines['dfv'])
    pub = StackPublisher('/t2', ctx)
    col = Collector('collector', '/t2', {'depth/image': Image}, ctx)
    _add(executor, node, pub, col)
    try:
        assert wait_until(pub.connected, 10.0)
        bad = _triple(plane_sweep, slice(0, 4))
        pub.send(*bad)
        assert wait_until(lambda: node.counters['frame_count_mismatch'] == 1, 5.0)
        good = _triple(plane_sweep)
        stamp = ros_io.stamp_to_ns(good[0].header.stamp)
        pub.send(*good)
        assert wait_until(lambda: col.get('depth/image', stamp) is not None, 10.0)
        assert col.stamps('depth/image') == [stamp]
    finally:
        _remove(executor, node, pub, col)


def _rss_mb() -> float:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return float('nan')


@pytest.mark.slow
def test_backpressure_drops_stay_bounded_and_node_answers(t1, plane_sweep):
    node, pub, col = t1
    burst = [_triple(plane_sweep, size=(256, 256)) for _ in range(40)]       # 1 MB stacks
    s0 = node.stats()
    rss0 = _rss_mb()
    diag0 = len(col.msgs.get('/diagnostics', []))
    peak = 0
    for triple in burst:
        pub.send(*triple)
        peak = max(peak, len(node.pairer))
        time.sleep(0.005)
    last = _triple(plane_sweep)
    stamp = ros_io.stamp_to_ns(last[0].header.stamp)
    time.sleep(0.3)
    pub.send(*last)
    assert wait_until(lambda: col.get('depth/image', stamp) is not None, 20.0), node.stats()
    assert wait_until(lambda: node.stats()['received'] == node.stats()['processed'] + node.stats()['dropped_busy']
                      + node.stats()['errors_total'], 2.0)
    s1 = node.stats()
    rss1 = _rss_mb()
    received = s1['received'] - s0['received']
    processed = s1['processed'] - s0['processed']
    dropped = s1['dropped_busy'] - s0['dropped_busy']
    print(f'backpressure: {received} stacks in, {processed} processed, {dropped} dropped; '
          f'RSS {rss0:.0f} -> {rss1:.0f} MB')
    assert dropped > 0 and processed < received
    assert processed + dropped + (s1['errors_total'] - s0['errors_total']) == received
    assert peak <= node.pairer.max_pending
    # 40 MB of rgb8 went in (160 MB as float32): a queue would show; the latest-only slot does not
    assert rss1 - rss0 < 80.0
    if DIAG_TYPES:
        assert len(col.msgs['/diagnostics']) > diag0      # diagnostics kept flowing during the burst


def test_run_time_backend_failure_falls_back_in_the_node(t1, plane_sweep):
    node, pub, col = t1
    assert node.engine.backend_name == 'onnxruntime'

    def out_of_memory(*args, **kwargs):
        raise RuntimeError('CUDA out of memory (injected fault)')

    node.engine.active.session.run = out_of_memory
    triple = _triple(plane_sweep)
    stamp = ros_io.stamp_to_ns(triple[0].header.stamp)
    pub.send(*triple)
    assert wait_until(lambda: col.get('depth/image', stamp) is not None, 15.0)
    assert node.engine.backend_name == 'torch'
    if DIAG_TYPES:
        assert wait_until(lambda: (_diag_values(col, '/t1/inference_node') or {}).get('backend') == 'torch', 5.0)


def test_capture_node_publishes_consistent_triples(ros):
    import yaml
    from ddfs_ros.nodes.capture_node import CaptureNode
    ctx, executor = ros
    params = {'scene': 'plane', 'width': 48, 'height': 40, 'rate': 20.0, 'max_sweeps': 3,
              'publish_depth_gt': True, 'encoding': 'bgr8', 'focus_distances': [0.3, 0.6, 1.2],
              'focal_length': 0.01, 'pixel_pitch': 40e-6, 'plane_depth': 0.7, 'frame_id': 'cam_t4'}
    col = Collector('collector', '/t4', {'focal_stack/image': Image, 'focal_stack/camera_info': CameraInfo,
                                          'focal_stack/lens_state': JointState, 'focal_stack/depth_gt': Image}, ctx)
    _add(executor, col)
    cap = CaptureNode(namespace='/t4', context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in params.items()])
    try:
        cfg = yaml.safe_load((ROOT / 'config' / 'camera.yaml').read_text())
        for key in cfg['/**/capture_node']['ros__parameters']:
            assert cap.has_parameter(key), key
        assert wait_until(lambda: cap.pub_image.get_subscription_count() > 0, 10.0)
        _add(executor, cap)
        assert cap.done.wait(10.0)
        assert wait_until(lambda: len(col.stamps('focal_stack/image')) == 3
                          and len(col.stamps('focal_stack/depth_gt')) == 3, 5.0)
        for stamp in col.stamps('focal_stack/image'):
            msgs = [col.get(t, stamp) for t in col.msgs]
            assert all(m is not None and m.header.frame_id == 'cam_t4' for m in msgs)
            image, info, lens, gt = msgs
            assert (image.encoding, image.height, image.width) == ('bgr8', 3 * 40, 48)
            stack = ros_io.msgs_to_stack(image, info, lens)
            np.testing.assert_allclose(stack.focus_m, [0.3, 0.6, 1.2])
            stack.validate()
            np.testing.assert_allclose(ros_io.image_to_depth(gt), 0.7)
    finally:
        _remove(executor, cap, col)


def test_capture_node_with_missing_camera_reports_and_publishes_nothing(ros):
    from ddfs_ros.nodes.capture_node import CaptureNode
    ctx, executor = ros
    col = Collector('collector', '/t9', {'focal_stack/image': Image, 'focal_stack/lens_state': JointState}, ctx)
    params = {'camera': 'v4l2', 'device': '/dev/video_missing_9', 'rate': 20.0, 'retries': 2, 'backoff': 0.01,
              'focus_distances': [0.2, 0.5, 1.0], 'focal_length': 0.004, 'width': 32, 'height': 24}
    cap = CaptureNode(namespace='/t9', context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                                         for k, v in params.items()])
    _add(executor, col, cap)
    try:
        assert wait_until(lambda: cap.failures >= 2, 5.0)
        assert cap.sweeps == 0 and '/dev/video_missing_9' in cap.last_error and '2 attempts' in cap.last_error
        # each failed sweep is retried with back-off; a timer tick inside the hold-off after a
        # failed sweep fails at once (late timer callbacks on a loaded machine come back to back)
        assert wait_until(lambda: cap.camera.failures >= 4, 5.0), cap.camera.failures
        time.sleep(0.2)
        assert col.stamps('focal_stack/image') == [] and col.stamps('focal_stack/lens_state') == []
    finally:
        _remove(executor, cap, col)


def test_missing_v4l2_device_is_retried_one_at_a_time_with_hold_off():
    from ddfs_ros.cameras import CameraError
    from ddfs_ros.cameras.v4l2 import V4L2Camera
    opens, warnings, now = [], [], [0.0]

    class Closed:
        def isOpened(self):
            return False

        def release(self):
            pass

    class Log:
        def warning(self, text):
            warnings.append(text)

    cam = V4L2Camera('/dev/video_gone', 32, 24, retries=3, backoff_s=0.0, backoff_max_s=4.0,
                     capture_factory=lambda dev, api: opens.append(dev) or Closed(), logger=Log(),
                     clock=lambda: now[0])
    cam._hold_s = 1.0                        # first hold-off 1 s (backoff_s = 0 keeps the test fast)
    with pytest.raises(CameraError, match='gave up after 3 attempts'):
        cam.capture_sweep([0.5, 1.0])
    assert len(opens) == 3 and len(warnings) == 2 and all('/dev/video_gone' in w for w in warnings)
    for t in (0.1, 0.5, 0.9):                # the node's timer keeps ticking: no device access
        now[0] = t
        with pytest.raises(CameraError, match='next attempt in'):
            cam.capture_sweep([0.5, 1.0])
    assert len(opens) == 3
    now[0] = 1.01
    with pytest.raises(CameraError):
        cam.capture_sweep([0.5, 1.0])
    assert len(opens) == 6 and cam._hold_until == pytest.approx(1.01 + 2.0)   # hold-off doubled


@pytest.mark.slow
def test_missing_v4l2_device_does_not_flood_the_log():
    p = _spawn(['-m', 'ddfs_ros.nodes.capture_node', '--ros-args', '-r', '__ns:=/t12', '-p', 'camera:=v4l2',
                '-p', 'device:=/dev/video_missing_12', '-p', 'rate:=20.0', '-p', 'retries:=3', '-p', 'backoff:=0.05',
                '-p', 'focus_distances:=[0.2, 0.5, 1.0]', '-p', 'focal_length:=0.004', '-p', 'width:=32',
                '-p', 'height:=24'])
    time.sleep(8.0)
    p.send_signal(signal.SIGINT)
    text = p.communicate(timeout=30)[0]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert p.returncode == 0, text
    # every line is a ROS log line (severity, time, node name), none is OpenCV's or Python logging's
    assert all(ln.startswith(('[INFO]', '[WARN]', '[ERROR]')) and 'capture_node]' in ln for ln in lines), text
    about = [ln for ln in lines if 'video_missing_12' in ln]
    print(f'missing device, 8 s at 20 Hz: {len(about)} log lines')
    assert 1 <= len(about) <= 10, text          # throttled: sweep errors every 2 s, retries every 5 s


def test_inference_yaml_keys_are_declared(t1):
    import yaml
    node = t1[0]
    cfg = yaml.safe_load((ROOT / 'config' / 'inference.yaml').read_text())
    for key in cfg['/**/inference_node']['ros__parameters']:
        assert node.has_parameter(key), key
    d = node.describe_parameter('engine')
    assert d.read_only and 'share dir' in d.description
    assert node.describe_parameter('max_relative_uncertainty').floating_point_range


def test_pair_processing_width_is_a_checked_dynamic_parameter(t1):
    node = t1[0]
    assert node.get_parameter('pair_processing_width').value == 0 == node.pipeline.pair_processing_width
    assert not node.set_parameters([Parameter('pair_processing_width', value=4)])[0].successful
    assert node.set_parameters([Parameter('pair_processing_width', value=96)])[0].successful
    assert node.pipeline.pair_processing_width == 96
    assert node.set_parameters([Parameter('pair_processing_width', value=0)])[0].successful
    assert node.pipeline.pair_processing_width == 0


def test_missing_engine_fails_clearly(ros, tmp_path):
    ctx, _ = ros
    with pytest.raises(EngineError, match='not found'):
        _inference(ctx, '/t5', tmp_path / 'ddfs_s.json')
    from ddfs_ros.nodes.inference_node import DEFAULT_ENGINE, InferenceNode
    if not (ROOT / DEFAULT_ENGINE).is_file():       # the default names a file that is not shipped
        with pytest.raises(EngineError, match=DEFAULT_ENGINE):
            InferenceNode(namespace='/t6', context=ctx)


def _spawn(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **ROS_ENV)
    return subprocess.Popen([sys.executable, *args], cwd=str(ROOT), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


BAD_PARAMETER_RUNS = {
    'capture -p': (['ddfs_ros.nodes.capture_node'], ['-p', 'f_number:=-2.0'], None, 'f_number'),
    'inference -p': (['ddfs_ros.nodes.inference_node'], ['-p', 'max_relative_uncertainty:=-1.0'], None,
                     'max_relative_uncertainty'),
    'capture yaml type': (['ddfs_ros.nodes.capture_node'], [], '/**/capture_node:\n  ros__parameters:\n'
                          '    rate: fast\n', 'rate'),
    'inference yaml range': (['ddfs_ros.nodes.inference_node'], [], '/**/inference_node:\n  ros__parameters:\n'
                             '    pair_timeout: -3.0\n', 'pair_timeout'),
    'inference pipeline check': (['ddfs_ros.nodes.inference_node'],
                                 ['-p', 'hypothesis_mode:=range', '-p', 'depth_min:=2.0', '-p', 'depth_max:=1.0'],
                                 None, 'hypothesis range'),
}


@pytest.mark.parametrize('case', list(BAD_PARAMETER_RUNS))
def test_bad_parameter_from_any_source_is_one_fatal_line_and_exit_1(case, tmp_path):
    module, params, yaml_text, name = BAD_PARAMETER_RUNS[case]
    if yaml_text is not None:
        (tmp_path / 'bad.yaml').write_text(yaml_text)
        params = params + ['--params-file', str(tmp_path / 'bad.yaml')]
    p = _spawn(['-m', *module, '--ros-args', '-r', '__ns:=/t11', *params])
    text = p.communicate(timeout=120)[0]
    assert p.returncode == 1, text
    fatal = [ln for ln in text.splitlines() if '[FATAL]' in ln]
    assert len(fatal) == 1 and 'cannot start' in fatal[0] and name in fatal[0], text
    assert 'Traceback' not in text and 'Exception' not in text.replace('InvalidParameter', ''), text


@pytest.mark.slow
def test_capture_and_inference_in_two_processes(ros, tiny_engines):
    ctx, executor = ros
    col = Collector('collector', '/t7', {'focal_stack/image': Image, 'depth/image': Image}, ctx)
    _add(executor, col)
    cap = _spawn(['-m', 'ddfs_ros.nodes.capture_node', '--ros-args', '-r', '__ns:=/t7',
                  '-p', 'scene:=plane', '-p', 'width:=64', '-p', 'height:=64', '-p', 'rate:=10.0',
                  '-p', 'focus_distances:=[0.2, 0.3, 0.5, 0.8, 1.5]', '-p', 'focal_length:=0.01',
                  '-p', 'pixel_pitch:=4.0e-05', '-p', 'plane_depth:=0.6'])
    # The inference node starts only once the collector receives the stacks: discovery is per
    # pair of processes, and a depth for a stack published before the collector matched the
    # capture node would have no stack to compare with (seen once in a clean-clone run).
    inf = None
    try:
        got_stack = wait_until(lambda: len(col.stamps('focal_stack/image')) >= 1, 60.0, 0.1)
        assert got_stack, 'no stack from the capture node'
        inf = _spawn(['-m', 'ddfs_ros.nodes.inference_node', '--ros-args', '-r', '__ns:=/t7',
                      '-p', f'engine:={tiny_engines["ddfs"]}', '-p', 'backend:=onnxruntime', '-p', 'warmup_runs:=1'])
        ok = wait_until(lambda: len(col.stamps('depth/image')) >= 2, 60.0, 0.1)
        assert ok, 'no depth from the two processes'
        sent = set(col.stamps('focal_stack/image'))
        assert set(col.stamps('depth/image')) <= sent
    finally:
        outs = []
        procs = [p for p in (cap, inf) if p is not None]
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                outs.append(p.communicate(timeout=15)[0])
            except subprocess.TimeoutExpired:
                p.kill()
                outs.append(p.communicate()[0])
        _remove(executor, col)
    assert cap.returncode == 0 and inf.returncode == 0, outs
    assert 'ready: engine' in outs[1]
    # A clean Ctrl-C (issue 12, item 3): no errors, no tracebacks, no rclpy teardown noise.
    alarming = ('ERROR', 'Traceback', 'never retrieved', 'context is invalid', 'Failed to publish',
                'Destroyable', 'Exception')
    for out in outs:
        bad = [ln for ln in out.splitlines() if any(a in ln for a in alarming)]
        assert not bad, bad


@pytest.mark.slow
def test_ddfs_run_demo_writes_report_pngs_and_bag(tiny_engines, tmp_path):
    pytest.importorskip('ddfs_ros.scenes')
    params = tmp_path / 'small.yaml'
    params.write_text('/**/capture_node:\n  ros__parameters:\n    width: 64\n    height: 64\n    rate: 4.0\n'
                      '/**/inference_node:\n  ros__parameters:\n    warmup_runs: 1\n'
                      '    max_relative_uncertainty: 0.0\n')
    out = tmp_path / 'demo'
    p = _spawn(['-m', 'ddfs_ros.nodes.run', '--demo', '--sweeps', '3', '--out', str(out),
                '--engine', str(tiny_engines['dfv_cv']), '--params-file', str(params), '--namespace', '/t8'])
    text = p.communicate(timeout=120)[0]
    assert p.returncode == 0, text
    for needle in ('latency', 'p50', 'p95', 'stacks/s', 'dropped', 'AbsRel', 'RMS', 'delta1', 'wrote bag'):
        assert needle in text, (needle, text)
    import re
    coverage = float(re.search(r'coverage ([0-9.]+) %', text).group(1))
    absrel = float(re.search(r'AbsRel ([0-9.]+)', text).group(1))
    assert coverage > 90.0 and 0.0 <= absrel < 10.0, text
    for png in ('depth_colorized.png', 'uncertainty.png', 'depth_gt_colorized.png', 'all_in_focus.png'):
        assert (out / png).stat().st_size > 100
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    ts = get_typestore(Stores.ROS2_JAZZY)
    with Reader(out / 'bag') as reader:
        topics = {c.topic: c for c in reader.connections}
        assert {'/t8/focal_stack/image', '/t8/focal_stack/depth_gt', '/t8/depth/image',
                '/t8/depth/uncertainty', '/t8/depth/points'} <= set(topics)
        msgs = [ts.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages([topics['/t8/depth/image']])]
    assert msgs and msgs[0].encoding == '32FC1' and msgs[0].height == 64


def _fuzz_triple(rng, sweep):
    """A triple broken in 1-3 random ways, each of which alone makes it invalid."""
    image, info, lens = _triple(sweep)
    names, pos = list(lens.name), list(lens.position)

    def mut_encoding():
        image.encoding = str(rng.choice(['rgba8', 'bgra8', 'mono32', '', '8UC3', 'yuv422', '16UC1', 'RGB8']))

    def mut_height():
        image.height = int(image.height) + int(rng.choice([-1, 1, 7, -63]))

    def mut_width():
        info.width = int(info.width) + int(rng.integers(1, 9))

    def mut_data():
        image.data = bytes(image.data)[: int(rng.integers(0, len(image.data)))]

    def mut_step():
        image.step = int(rng.choice([0, 1, int(image.step) - 1, int(image.step) + 3]))

    def mut_zero():
        info.height = 0 if rng.random() < 0.5 else info.height
        info.width = 0 if info.height else info.width

    def mut_huge():
        image.height = info.height = image.width = info.width = int(rng.choice([1 << 20, 100000, 65536]))

    def mut_lens_value():
        key = str(rng.choice(['focus_distance_0', 'focus_distance_3', 'f_number', 'pixel_pitch', 'focal_length']))
        pos[names.index(key)] = float(rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.0, -1e-6]))

    def mut_lens_missing():
        key = str(rng.choice(['focus_distance_2', 'f_number', 'pixel_pitch']))
        i = names.index(key)
        del names[i], pos[i]

    def mut_duplicate():
        pos[names.index('focus_distance_4')] = pos[names.index('focus_distance_1')]

    def mut_inside_f():
        pos[names.index('focus_distance_2')] = 0.5 * pos[names.index('focal_length')]

    def mut_lens_length():
        pos.append(1.0)

    muts = [mut_encoding, mut_height, mut_width, mut_data, mut_step, mut_zero, mut_huge, mut_lens_value,
            mut_lens_missing, mut_duplicate, mut_inside_f, mut_lens_length]
    chosen = [muts[i] for i in rng.choice(len(muts), size=int(rng.integers(1, 4)), replace=False)]
    for m in sorted(chosen, key=lambda f: f is mut_lens_missing):      # removals last
        m()
    lens.name, lens.position = names, pos
    return image, info, lens


@pytest.mark.slow
def test_fuzz_corrupted_triples_never_crash_or_publish(t1, plane_sweep):
    node, pub, col = t1
    rng = np.random.default_rng(1234)
    s0 = node.stats()
    stamps = []
    for i in range(300):
        triple = _fuzz_triple(rng, plane_sweep)
        stamps.append(ros_io.stamp_to_ns(triple[0].header.stamp))
        pub.send(*triple)
        if i % 10 == 9:
            time.sleep(0.02)
    good = _triple(plane_sweep)
    stamp = ros_io.stamp_to_ns(good[0].header.stamp)
    time.sleep(0.5)
    pub.send(*good)
    assert wait_until(lambda: col.get('depth/image', stamp) is not None, 15.0), node.stats()
    assert wait_until(lambda: node.stats()['processed'] > s0['processed'], 2.0)
    s1 = node.stats()
    got = set(col.stamps('depth/image')) | set(col.stamps('depth/uncertainty'))
    assert not set(stamps) & got
    assert s1['processed'] - s0['processed'] == 1
    handled = sum(s1[k] - s0[k] for k in ('errors_total', 'dropped_busy'))
    assert s1['received'] - s0['received'] == handled + 1
    assert s1['error_internal_error'] == 0
    direct = node.pipeline.run(ros_io.msgs_to_stack(*good))
    np.testing.assert_allclose(ros_io.image_to_depth(col.get('depth/image', stamp)), direct.depth, atol=1e-5)
    print(f'fuzz: {len(stamps)} corrupted triples, {handled} rejected or dropped, reasons: '
          f'{ {k: v for k, v in s1.items() if k.startswith("error_") and v} }')


@pytest.mark.slow
def test_soak_above_capacity_memory_and_latency_stay_bounded(t1, plane_sweep):
    node, pub, col = t1
    triples = [_triple(plane_sweep, size=(128, 128)) for _ in range(4)]
    s0 = node.stats()
    lat0 = len(node._latencies)
    rss = []
    t_end = time.monotonic() + 12.0
    k = 0
    while time.monotonic() < t_end:
        image, info, lens = triples[k % 4]
        _stamp_counter[0] += 1_000_000
        for m in (image, info, lens):
            m.header.stamp = ros_io.ns_to_stamp(_stamp_counter[0])
        pub.send(image, info, lens)
        k += 1
        if k % 20 == 0:
            with col.lock:          # the collector's own copies are not the node's memory
                for msgs in col.msgs.values():
                    msgs.clear()
            rss.append(_rss_mb())
        time.sleep(0.025)              # ~35 stacks/s: several times what the node processes
    time.sleep(1.0)
    s1 = node.stats()
    lats = np.array(list(node._latencies)[lat0:])
    waits = np.array(list(node._waits)[lat0:])
    processed = s1['processed'] - s0['processed']
    dropped = s1['dropped_busy'] - s0['dropped_busy']
    half = len(lats) // 2
    p50a, p50b = float(np.median(lats[:half])), float(np.median(lats[half:]))
    wait_b, service_b = float(np.median(waits[half:])), float(np.median((lats - waits)[half:]))
    print(f'soak: {k} sent, {processed} processed, {dropped} dropped; in-node latency p50 {p50a:.1f} -> '
          f'{p50b:.1f} ms (second half: {wait_b:.1f} ms waiting, {service_b:.1f} ms processing); '
          f'RSS {rss[0]:.0f} -> {max(rss):.0f} MB')
    # above capacity: stacks were dropped (how many per processed one depends on the machine's speed;
    # 'more dropped than processed' failed on a quicker run, 268 processed / 195 dropped)
    assert processed >= 5 and dropped > 0
    assert max(rss) - rss[0] < 25.0                   # no growth with ~1000 stacks pushed through
    # no hidden queue: a stack waits for at most the one being processed.  (Not 'the second
    # half's latency stays near the first half's': on a loaded CI machine the processing
    # itself slowed from 174 to 1129 ms within the 12 s.)
    assert wait_b < 2.0 * service_b + 50.0
    assert len(node.pairer) <= node.pairer.max_pending
