"""The inference node over real rclpy: a non-square stack in, input-size depth and all-in-focus out.

Uses the dynamic-size tiny engine (``cost_argmin_engines``) at processing_width 32, so a
64 x 48 stack runs the cost volume at 32 x 24 and comes back at 64 x 48.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from ddfs_ros import ros_io  # noqa: E402
from ddfs_ros.cameras.simulated import SimulatedCamera  # noqa: E402
from ddfs_ros.nodes.common import subscription_qos  # noqa: E402
from ddfs_ros.stack import FocalStack  # noqa: E402

from conftest import stack_publishers, wait_until

pytestmark = pytest.mark.ros
FOCUS = np.array([0.1, 0.15, 0.3, 0.7, 1.5])


class _Collect(Node):
    def __init__(self, ctx, topics):
        super().__init__('aif_collector', namespace='/aif', context=ctx)
        self.msgs = {t: {} for t in topics}
        self.lock = threading.Lock()
        for t in topics:
            self.create_subscription(Image, t, lambda m, t=t: self._keep(t, m), subscription_qos('reliable', 10))

    def _keep(self, t, m):
        with self.lock:
            self.msgs[t][ros_io.stamp_to_ns(m.header.stamp)] = m


def test_all_in_focus_and_depth_at_input_size_over_ros(cost_argmin_engines):
    from ddfs_ros.nodes.inference_node import InferenceNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ex = MultiThreadedExecutor(num_threads=3, context=ctx)
    params = {'engine': str(cost_argmin_engines['dynamic']), 'backend': 'onnxruntime', 'device': 'cpu',
              'hypothesis_mode': 'fixed', 'max_relative_uncertainty': 0.0, 'warmup_runs': 0,
              'processing_width': 32}
    node = InferenceNode(namespace='/aif', context=ctx,
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    pub = Node('aif_pub', namespace='/aif', context=ctx)
    pubs = stack_publishers(pub)
    col = _Collect(ctx, ['depth/image', 'all_in_focus/image'])
    for n in (node, pub, col):
        ex.add_node(n)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    try:
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values())
                     and node.pub_aif.get_subscription_count() > 0, 10.0), 'discovery failed'
        cam = SimulatedCamera('plane', 64, 48, 0.0029, 1.0, 3.1e-3 / 512, plane_depth_m=0.25)
        sweep = cam.capture_sweep(FOCUS)
        for i, enc in enumerate(('rgb8', 'mono8')):
            stack = FocalStack(sweep.frames, FOCUS, cam.lens, stamp_ns=1_700_000_000_000_000_000 + i,
                               frame_id='cam_optical')
            image, info, lens = ros_io.stack_to_msgs(stack, enc)
            for k, m in (('camera_info', info), ('lens_state', lens), ('image', image)):
                pubs[k].publish(m)
            stamp = ros_io.stamp_to_ns(image.header.stamp)
            assert wait_until(lambda: all(stamp in col.msgs[t] for t in col.msgs), 15.0), \
                {t: list(v) for t, v in col.msgs.items()}
            with col.lock:
                aif, depth = col.msgs['all_in_focus/image'][stamp], col.msgs['depth/image'][stamp]
            assert (depth.height, depth.width) == (48, 64)
            assert (aif.encoding, aif.height, aif.width, aif.header.frame_id) == (enc, 48, 64, 'cam_optical')
            # what the core composes from the same messages
            direct = node.pipeline.run(ros_io.msgs_to_stack(image, info, lens), all_in_focus=True)
            want = ros_io.unit_to_pixels(direct.all_in_focus, enc)
            got = ros_io.image_to_array(aif, ros_io.TOPIC_IMAGE).reshape(want.shape)
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
            assert direct.geometry.width == 32 and direct.geometry.height == 24
    finally:
        ex.shutdown(timeout_sec=2.0)
        for n in (node, pub, col):
            n.destroy_node()
        rclpy.try_shutdown(context=ctx)
        th.join(timeout=5.0)
