"""What the ROS benchmarks share: their DDS environment, the plane stacks they send, stopping the node."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ros_env(offset: int) -> dict:
    """A domain of this process's own (``offset`` keeps two benchmarks apart), loopback, the shm profile."""
    return {'ROS_DOMAIN_ID': str(1 + (os.getpid() + offset) % 100), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
            'FASTRTPS_DEFAULT_PROFILES_FILE': str(ROOT / 'config' / 'fastdds.xml')}


def start_inference_node(namespace: str, params: dict) -> subprocess.Popen:
    """The real inference node in its own process, in ``namespace``, with ``params`` (-p name:=value)."""
    args = [sys.executable, '-m', 'ddfs_ros.nodes.inference_node', '--ros-args', '-r', f'__ns:={namespace}']
    for k, v in params.items():
        args += ['-p', f'{k}:={v}']
    return subprocess.Popen(args, cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stack_publishers(node) -> list:
    """Publishers of one focal stack's three messages: camera_info, lens_state, image (send order)."""
    from sensor_msgs.msg import CameraInfo, Image, JointState

    from ddfs_ros import ros_io
    from ddfs_ros.nodes.common import publisher_qos
    q = publisher_qos(5)
    return [node.create_publisher(CameraInfo, ros_io.TOPIC_CAMERA_INFO, q),
            node.create_publisher(JointState, ros_io.TOPIC_LENS_STATE, q),
            node.create_publisher(Image, ros_io.TOPIC_IMAGE, q)]


def plane_stacks(width: int, height: int, count: int):
    """``count`` noisy F = 5 sweeps (2.2-4.7 m) of a textured plane at 3 m, the same sensor at every size."""
    from ddfs_ros.cameras.simulated import SimulatedCamera
    from ddfs_ros.optics import focus_schedule
    from ddfs_ros.stack import FocalStack
    pitch = 21e-6 * 256 / width
    cam = SimulatedCamera('plane', width, height, 0.025, 2.0, pitch, plane_depth_m=3.0,
                          noise={'full_well': 1000.0, 'read_noise': 2.0})
    focus = focus_schedule(2.2, 4.7, 5)
    return [FocalStack(s.frames, s.focus_m, cam.lens) for s in (cam.capture_sweep(focus) for _ in range(count))]


def shut_down(executor, node, ctx, proc: subprocess.Popen) -> None:
    """Stop this process's executor, node and context, then the node process (killed after 10 s)."""
    import rclpy
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
