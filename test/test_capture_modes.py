"""Capture node ``mode: calibrate`` and ``focus_spacing: planned``, over real rclpy (loopback DDS).

- calibrate: the simulated camera (a textured plane, a known non-linear raw -> dioptre
  curve) publishes calibration/image + calibration/lens_state; the test moves the
  "target" with ``target_distance`` through the node's parameter service (what
  ``ros2 param set`` does), records the two topics, writes them to a rosbag2 as
  ``ros2 bag record`` would (CDR bytes), and ``ddfs-calibrate``'s fit recovers the curve
  within 2 %;
- planned: the schedule is ``ddfs-plan``'s for the lens and range, snapped to the
  calibration table's raw values on a v4l2 camera.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState

from ddfs_ros import ros_io
from ddfs_ros.nodes.common import subscription_qos

from conftest import wait_until

pytestmark = pytest.mark.ros
DISTANCES = [0.12, 0.17, 0.25, 0.4, 0.7, 1.2]
NS = '/tcal'


class Recorder(Node):
    """Keeps every message of the two calibration topics (what ``ros2 bag record`` would)."""

    def __init__(self, context) -> None:
        super().__init__('recorder', namespace=NS, context=context)
        self.lock = threading.Lock()
        self.msgs: list = []          # (topic, msgtype, msg)
        for topic, cls, name in (('calibration/image', Image, 'sensor_msgs/msg/Image'),
                                 ('calibration/lens_state', JointState, 'sensor_msgs/msg/JointState')):
            self.create_subscription(cls, topic, lambda m, t=topic, n=name: self._keep(t, n, m),
                                     subscription_qos('reliable', 50))

    def _keep(self, topic, msgtype, msg) -> None:
        with self.lock:
            self.msgs.append((f'{NS}/{topic}', msgtype, msg))


def _write_bag(path: Path, msgs: list) -> None:
    """rosbag2 (mcap) of rclpy messages, serialised to CDR as the recorder does."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ddfs_ros.eval.bags import typestore
    ts = typestore()
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for topic, msgtype, msg in msgs:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=ts)
            w.write(conns[topic], ros_io.stamp_to_ns(msg.header.stamp), serialize_message(msg))


def test_calibrate_mode_records_a_bag_ddfs_calibrate_fits(ros, tmp_path):
    from rclpy.parameter_client import AsyncParameterClient

    from ddfs_ros.calibration import SimulatedFocusMotor
    from ddfs_ros.cameras.v4l2 import FocusCalibration
    from ddfs_ros.eval import calibrate_cli
    from ddfs_ros.nodes import capture_node
    from ddfs_ros.nodes.capture_node import CaptureNode
    assert (capture_node.TOPIC_CAL_IMAGE, capture_node.TOPIC_CAL_LENS) == \
        (calibrate_cli.TOPIC_CAL_IMAGE, calibrate_cli.TOPIC_CAL_LENS)
    ctx, executor = ros
    raws = np.arange(0.0, 256.0, 8.0)
    params = {'mode': 'calibrate', 'width': 64, 'height': 64, 'rate': 100.0, 'focal_length': 0.008,
              'pixel_pitch': 5e-6, 'f_number': 2.0, 'calibration_raw_min': 0.0, 'calibration_raw_max': 255.0,
              'calibration_raw_step': 8.0, 'max_sweeps': len(DISTANCES), 'encoding': 'mono8'}
    cap = CaptureNode(namespace=NS, context=ctx, parameter_overrides=[Parameter(k, value=v)
                                                                      for k, v in params.items()])
    rec = Recorder(ctx)
    client = AsyncParameterClient(rec, f'{NS}/capture_node')
    executor.add_node(rec)
    executor.add_node(cap)
    try:
        assert np.array_equal(cap.cal_raws, raws)
        assert wait_until(lambda: cap.pub_cal_image.get_subscription_count() > 0
                          and cap.pub_cal_lens.get_subscription_count() > 0, 10.0)
        assert client.wait_for_services(10.0)
        time.sleep(0.3)
        assert cap.sweeps == 0 and not rec.msgs           # nothing before a target is placed
        # a target at or inside the focal length is refused by the parameter service
        bad = client.set_parameters([Parameter('target_distance', value=0.005)])
        assert wait_until(bad.done, 5.0) and not bad.result().results[0].successful
        for k, d in enumerate(DISTANCES):
            fut = client.set_parameters([Parameter('target_distance', value=d)])
            assert wait_until(fut.done, 5.0) and fut.result().results[0].successful
            assert wait_until(lambda: cap.sweeps == k + 1, 30.0), f'sweep {k} at {d} m did not finish'
        assert cap.done.wait(5.0)
        n = len(DISTANCES) * raws.size
        assert wait_until(lambda: len(rec.msgs) == 2 * n, 10.0), len(rec.msgs)
    finally:
        executor.remove_node(cap)
        executor.remove_node(rec)
    # one image and one lens state per stamp, with the raw sweep and the target in them
    by_stamp: dict = {}
    for topic, _, m in rec.msgs:
        by_stamp.setdefault(ros_io.stamp_to_ns(m.header.stamp), {})[topic.rsplit('/', 1)[-1]] = m
    assert len(by_stamp) == len(DISTANCES) * raws.size
    assert all(set(v) == {'image', 'lens_state'} for v in by_stamp.values())
    lens = [v['lens_state'] for v in by_stamp.values()]
    assert all(list(m.name) == ['focus_raw', 'target_distance'] for m in lens)
    assert sorted({round(m.position[1], 6) for m in lens}) == DISTANCES
    img = next(iter(by_stamp.values()))['image']
    assert (img.encoding, img.height, img.width) == ('mono8', 64, 64)

    bag = tmp_path / 'cal_bag'
    _write_bag(bag, rec.msgs)
    out = tmp_path / 'calib.yaml'
    assert calibrate_cli.main(['focus', str(bag), '--out', str(out)]) == 0
    from ddfs_ros.calibration import load_calibration_pairs
    pairs = load_calibration_pairs(out)
    cal = FocusCalibration(pairs[:, 0], pairs[:, 1])
    grid = np.linspace(pairs[0, 0], pairs[-1, 0], 64)
    rel = cal.distance_for_raw(grid) / SimulatedFocusMotor().distance_m(grid) - 1.0
    assert np.abs(rel).max() < 0.02


def test_planned_spacing_is_the_planner_schedule(ros):
    from ddfs_ros.cameras.v4l2 import FocusCalibration
    from ddfs_ros.nodes.capture_node import CaptureNode
    from ddfs_ros.optics import LensModel
    from ddfs_ros.planner import plan
    ctx, _ = ros
    common = {'focus_spacing': 'planned', 'focus_near': 0.3, 'focus_far': 1.5, 'focus_count': 4,
              'focal_length': 0.004, 'f_number': 2.0, 'pixel_pitch': 3e-6, 'width': 64, 'height': 48,
              'processing_width': 64}
    # simulated camera: the plan itself
    cap = CaptureNode(namespace='/tplan', context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in dict(common, scene='plane').items()])
    try:
        want = plan(0.3, 1.5, 4, LensModel(0.004, 2.0, 3e-6), 64, 64).focus_m
        np.testing.assert_allclose(cap.focus_m, want)
        assert cap.focus_m[0] == pytest.approx(0.3) and cap.focus_m[-1] == pytest.approx(1.5)
    finally:
        cap.destroy_node()
    # v4l2 camera with a calibration: snapped to integer raw values, the distances of those values
    table = [0.0, 0.1, 50.0, 0.15, 120.0, 0.3, 200.0, 0.8, 255.0, 2.0]
    cap = CaptureNode(namespace='/tplan2', context=ctx, parameter_overrides=[
        Parameter(k, value=v) for k, v in dict(common, camera='v4l2', device='/dev/video_missing_77',
                                               calibration=table).items()])
    try:
        cal = FocusCalibration.from_pairs(np.reshape(table, (-1, 2)))
        raw = cal.raw_for_distance(cap.focus_m)
        np.testing.assert_allclose(raw, np.round(raw), atol=1e-6)
        unsnapped = plan(0.3, 1.5, 4, LensModel(0.004, 2.0, 3e-6), 64, 64).focus_m
        assert not np.allclose(cap.focus_m, unsnapped, rtol=1e-6)       # snapping moved them ...
        np.testing.assert_allclose(cap.focus_m, unsnapped, rtol=0.05)   # ... by less than a raw step
    finally:
        cap.destroy_node()
