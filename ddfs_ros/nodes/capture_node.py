"""Capture node: drives a focus sweep per period and publishes one focal stack per sweep.

Publishes (relative names) ``focal_stack/image`` (frames tiled vertically),
``focal_stack/camera_info`` (one frame), ``focal_stack/lens_state`` (named lens values)
and, for simulated cameras with ``publish_depth_gt``, ``focal_stack/depth_gt``; all
with the identical stamp (the start of the sweep) and frame_id.

``mode: calibrate`` publishes single frames instead, for ``ddfs-calibrate focus``:
``calibration/image`` (sensor_msgs/Image, one frame) and ``calibration/lens_state``
(sensor_msgs/JointState, named positions ``focus_raw`` and ``target_distance`` in m), one
stamp each; one frame per timer tick, sweeping the raw focus control from
``calibration_raw_min`` to ``calibration_raw_max`` by ``calibration_raw_step`` once per
``target_distance`` (a parameter the user changes while the node runs, after moving the
target: ``ros2 param set /camera/capture_node target_distance 0.5``).

Camera faults (device missing or unplugged, focus control rejected) are logged,
counted in /diagnostics and retried with back-off by the camera; a failed sweep
publishes nothing (never half a stack).  Parameters: ``config/camera.yaml``.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState

from .. import ros_io
from ..cameras import CameraError, FocusCamera, make_camera
from ..optics import PSF_SHAPE_NAMES, focus_schedule
from ..stack import FocalStack
from .common import describe, publisher_qos, run_node

#: mode calibrate topics (relative), what ``ddfs-calibrate focus`` reads
TOPIC_CAL_IMAGE = 'calibration/image'
TOPIC_CAL_LENS = 'calibration/lens_state'

try:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:
    DiagnosticArray = None


class _ThrottledWarnings:
    """``warning(text)`` through the node's ROS logger (severity, name, /rosout), at most one
    line per ``period_s`` seconds: a missing camera must not flood the log."""

    def __init__(self, node: Node, period_s: float = 5.0) -> None:
        self._logger = node.get_logger()
        self._period_s = period_s

    def warning(self, text: str) -> None:
        self._logger.warning(text, throttle_duration_sec=self._period_s)


class CaptureNode(Node):
    """Focus-sweep publisher; see the module docstring."""

    def __init__(self, node_name: str = 'capture_node', camera: Optional[FocusCamera] = None, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        p = self._param
        self.mode = p('mode')
        self.camera = camera if camera is not None else self._make_camera()
        qos = publisher_qos(int(p('qos_depth')))
        if self.mode == 'calibrate':
            self.cal_raws = self._calibration_raws()
            self.cal_index = 0
            self.cal_target = 0.0          # target distance of the sweep in progress (m); 0 = none yet
            self.focus_m = np.zeros(0)
            self.f_numbers = None
            self.pub_cal_image = self.create_publisher(Image, TOPIC_CAL_IMAGE, qos)
            self.pub_cal_lens = self.create_publisher(JointState, TOPIC_CAL_LENS, qos)
            self.add_on_set_parameters_callback(self._check_target)
        else:
            self.focus_m = self._schedule()
            fn = [float(x) for x in p('f_numbers') if float(x) > 0]
            self.f_numbers = np.asarray(fn, dtype=np.float64) if fn else None
            if self.f_numbers is not None and self.f_numbers.shape != self.focus_m.shape:
                raise ValueError(f'f_numbers has {self.f_numbers.size} values for {self.focus_m.size} '
                                 'focus distances')
            FocalStack(np.zeros((len(self.focus_m), 8, 8, 1), np.float32), self.focus_m, self.camera.lens,
                       self.f_numbers).validate(min_frames=1)      # refuse a schedule the node would reject
            self.pub_image = self.create_publisher(Image, ros_io.TOPIC_IMAGE, qos)
            self.pub_info = self.create_publisher(CameraInfo, ros_io.TOPIC_CAMERA_INFO, qos)
            self.pub_lens = self.create_publisher(JointState, ros_io.TOPIC_LENS_STATE, qos)
            self.pub_gt = self.create_publisher(Image, ros_io.TOPIC_DEPTH_GT, qos) if p('publish_depth_gt') \
                else None
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10) if DiagnosticArray else None
        self.sweeps = 0
        self.failures = 0
        self.last_error = ''
        self.sweep_ms = 0.0
        self.done = threading.Event()
        group = MutuallyExclusiveCallbackGroup()
        tick = self._calibration_tick if self.mode == 'calibrate' else self._tick
        self.timer = self.create_timer(1.0 / float(p('rate')), tick, callback_group=group)
        self.create_timer(1.0, self._publish_diagnostics, callback_group=MutuallyExclusiveCallbackGroup())
        if self.mode == 'calibrate':
            self.get_logger().info(
                f'{p("camera")} camera {self.camera.width}x{self.camera.height}, mode calibrate: raw focus '
                f'{self.cal_raws[0]:g}..{self.cal_raws[-1]:g} in {self.cal_raws.size} steps at {p("rate")} frames/s '
                'per target distance; set target_distance (m) after placing the target')
            return
        self.get_logger().info(
            f'{p("camera")} camera {self.camera.width}x{self.camera.height}, {len(self.focus_m)} frames at '
            f'{np.round(self.focus_m, 3).tolist()} m, {p("rate")} Hz, f = {self.camera.lens.focal_length_m} m, '
            f'N = {self.camera.lens.f_number}, pitch = {self.camera.lens.pixel_pitch_m} m/px')

    # -- parameters ---------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        d = self.declare_parameter
        ro = dict(read_only=True)
        d('camera', 'simulated', describe('camera backend', choices=['simulated', 'v4l2'], **ro))
        d('mode', 'stack', describe('stack: focal stacks; calibrate: single frames for ddfs-calibrate',
                                    choices=['stack', 'calibrate'], **ro))
        d('calibration_raw_min', 0.0, describe('mode calibrate: first raw focus value', lo=-1e6, hi=1e6, **ro))
        d('calibration_raw_max', 255.0, describe('mode calibrate: last raw focus value', lo=-1e6, hi=1e6, **ro))
        d('calibration_raw_step', 5.0, describe('mode calibrate: raw focus step', lo=1e-6, hi=1e6, **ro))
        d('target_distance', 0.0, describe('mode calibrate: distance (m) of the target now; set it after each '
                                           'move (0 = not placed yet)', lo=0.0, hi=1e4))
        d('processing_width', 256, describe('focus_spacing planned: width (px) the inference node processes at',
                                            lo=8, hi=8192, integer=True, **ro))
        d('device', '/dev/video0', describe('v4l2 device path or index', **ro))
        d('width', 640, describe('frame width (px)', lo=8, hi=8192, integer=True, **ro))
        d('height', 480, describe('frame height (px)', lo=8, hi=8192, integer=True, **ro))
        d('rate', 2.0, describe('sweeps per second', lo=0.01, hi=1000.0, **ro))
        d('focus_distances', [0.0], describe('explicit focus schedule (m); [] or [0.0] = use near/far/count', **ro))
        d('focus_near', 0.0, describe('nearest focus (m); 0 = scene 5th percentile / calibration range',
                                      lo=0.0, hi=1e4, **ro))
        d('focus_far', 0.0, describe('farthest focus (m); 0 = scene 95th percentile / calibration range',
                                     lo=0.0, hi=1e4, **ro))
        d('focus_count', 5, describe('frames per sweep', lo=1, hi=64, integer=True, **ro))
        d('focus_spacing', 'dioptre', describe('schedule spacing (planned: ddfs-plan for the lens and range)',
                                               choices=['dioptre', 'depth', 'planned'], **ro))
        d('f_number', 2.0, describe('lens f-number', lo=0.5, hi=64.0, **ro))
        d('f_numbers', [0.0], describe('per-frame f-numbers; [] or [0.0] = f_number for all', **ro))
        d('pixel_pitch', 21e-6 * 256 / 640, describe('pixel pitch of the published frame (m/px)', lo=1e-7, hi=1e-2, **ro))
        d('focal_length', 0.05, describe('focal length (m)', lo=1e-4, hi=2.0, **ro))
        d('frame_id', 'camera_optical_frame', describe('optical frame id', **ro))
        d('encoding', 'rgb8', describe('published encoding', choices=list(ros_io.ENCODINGS), **ro))
        d('scene', 'motorcycle', describe('simulated scene', choices=['motorcycle', 'procedural', 'plane', 'rgbd'],
                                          **ro))
        d('plane_depth', 1.0, describe('depth of the plane scene (m)', lo=1e-3, hi=1e4, **ro))
        d('depth_range', [0.5, 3.0], describe('procedural scene depth range (m)', **ro))
        d('rgb_path', '', describe('rgbd scene: RGB image file', **ro))
        d('depth_path', '', describe('rgbd scene: depth image file', **ro))
        d('depth_scale', 0.001, describe('rgbd scene: metres per depth unit', lo=1e-9, hi=1e3, **ro))
        d('publish_depth_gt', False, describe('publish focal_stack/depth_gt (simulated only)', **ro))
        d('psf', 'disk', describe("simulated blur spot: disk (DESIGN.md's pixel-area disk), disk_otf (the disk on a "
                                  'band-limited image: a sub-pixel defocus softens the frame, as in a real camera), '
                                  'gaussian', choices=list(PSF_SHAPE_NAMES), **ro))
        d('noise', True, describe('simulated sensor noise', **ro))
        d('noise_full_well', 1000.0, describe('photo-electrons at full scale', lo=1.0, hi=1e7, **ro))
        d('noise_read_noise', 2.0, describe('read noise (electrons rms)', lo=0.0, hi=1e4, **ro))
        d('seed', 0, describe('noise / procedural scene seed', lo=0, hi=2 ** 31 - 1, integer=True, **ro))
        d('calibration', [0.0, 0.1, 255.0, 2.0],
          describe('v4l2 focus calibration, flat [raw0, dist0_m, raw1, dist1_m, ...]', **ro))
        d('settle_frames', 3, describe('v4l2 frames discarded after a focus change', lo=0, hi=100, integer=True, **ro))
        d('retries', 3, describe('v4l2 sweep attempts before reporting a failure', lo=1, hi=100, integer=True, **ro))
        d('backoff', 0.5, describe('v4l2 first retry wait (s), doubling', lo=0.0, hi=60.0, **ro))
        d('max_sweeps', 0, describe('stop after this many sweeps (0 = run forever)', lo=0, hi=2 ** 31 - 1,
                                    integer=True, **ro))
        d('qos_depth', 2, describe('publisher history depth', lo=1, hi=100, integer=True, **ro))

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _make_camera(self) -> FocusCamera:
        p = self._param
        if p('camera') == 'v4l2':
            cal = np.asarray(list(p('calibration')), dtype=np.float64).reshape(-1, 2)
            return make_camera('v4l2', device=p('device'), width=p('width'), height=p('height'), calibration=cal,
                               focal_length_m=p('focal_length'), f_number=p('f_number'),
                               pixel_pitch_m=p('pixel_pitch'), settle_frames=p('settle_frames'),
                               retries=p('retries'), backoff_s=p('backoff'), logger=_ThrottledWarnings(self))
        noise = None
        if p('noise'):
            noise = {'full_well': p('noise_full_well'), 'read_noise': p('noise_read_noise')}
        # mode calibrate renders its own target plane: no scene to load
        scene = 'plane' if p('mode') == 'calibrate' else p('scene')
        return make_camera('simulated', scene=scene, width=p('width'), height=p('height'),
                           focal_length_m=p('focal_length'), f_number=p('f_number'), pixel_pitch_m=p('pixel_pitch'),
                           noise=noise, seed=p('seed'), plane_depth_m=p('plane_depth'),
                           depth_range_m=list(p('depth_range')), rgb_path=p('rgb_path'),
                           depth_path=p('depth_path'), depth_scale=p('depth_scale'), psf=p('psf'))

    def _schedule(self) -> np.ndarray:
        p = self._param
        explicit = [float(x) for x in p('focus_distances') if float(x) > 0]
        if explicit:
            return np.asarray(explicit, dtype=np.float64)
        near, far = float(p('focus_near')), float(p('focus_far'))
        if near <= 0 or far <= 0:
            if hasattr(self.camera, 'depth_percentiles'):
                lo, hi = self.camera.depth_percentiles(5.0, 95.0)
            elif hasattr(self.camera, 'calibration'):
                lo, hi = self.camera.calibration.distance_range
                hi = min(hi, 1e3)
            else:
                raise ValueError('set focus_near and focus_far (or focus_distances)')
            near = near if near > 0 else lo
            far = far if far > 0 else hi
        if p('focus_spacing') == 'planned':
            return self._planned(near, far)
        return focus_schedule(near, far, int(p('focus_count')), p('focus_spacing'))

    def _planned(self, near: float, far: float) -> np.ndarray:
        """``ddfs-plan``'s schedule for this lens and range; snapped to the raw values of the
        camera's calibration table (and those values' distances) when it has one."""
        from ..planner import plan
        cal = getattr(self.camera, 'calibration', None)
        result = plan(near, far, int(self._param('focus_count')), self.camera.lens, self.camera.width,
                      int(self._param('processing_width')), calibration=cal)
        self.get_logger().info(
            f'planned schedule {np.round(result.focus_m, 3).tolist()} m'
            + (f' (raw {result.raw.tolist()})' if result.raw is not None else '')
            + f"; model relative error {result.compared['planned']:.4f} (uniform in dioptres "
              f"{result.compared['dioptre']:.4f})")
        return np.asarray(result.focus_m, dtype=np.float64)

    # -- mode: calibrate ----------------------------------------------------------------
    def _calibration_raws(self) -> np.ndarray:
        lo, hi = float(self._param('calibration_raw_min')), float(self._param('calibration_raw_max'))
        step = float(self._param('calibration_raw_step'))
        if not hi > lo:
            raise ValueError(f'calibration_raw_max ({hi:g}) must exceed calibration_raw_min ({lo:g})')
        raws = lo + step * np.arange(int(np.floor((hi - lo) / step + 1e-9)) + 1)     # never past hi
        if raws.size < 3:
            raise ValueError(f'raw focus {lo:g}..{hi:g} by {step:g} gives {raws.size} values; a focus peak '
                             'needs at least 3 (better 20+)')
        return raws

    def _check_target(self, params) -> SetParametersResult:
        for prm in params:
            if prm.name == 'target_distance' and prm.value > 0 and prm.value <= self.camera.lens.focal_length_m:
                return SetParametersResult(successful=False, reason=(
                    f'target_distance {prm.value} m must exceed the focal length {self.camera.lens.focal_length_m} m'))
        return SetParametersResult(successful=True)

    def _calibration_tick(self) -> None:
        """One frame of the raw sweep at the current target distance (nothing before one is set,
        nothing after the sweep until it changes)."""
        target = float(self._param('target_distance'))
        if target <= 0:
            self.get_logger().info('mode calibrate: waiting for target_distance (m) to be set',
                                   throttle_duration_sec=10.0)
            return
        if target != self.cal_target:
            self.cal_target, self.cal_index = target, 0       # a new placement: sweep again
        if self.cal_index >= self.cal_raws.size:
            return
        max_sweeps = int(self._param('max_sweeps'))
        stamp_ns = self.get_clock().now().nanoseconds
        t0 = time.perf_counter()
        try:
            got = self.camera.capture_raw(float(self.cal_raws[self.cal_index]), target)
        except CameraError as e:
            self.failures += 1
            self.last_error = str(e)
            self.get_logger().error(f'calibration frame failed, nothing published: {e}', throttle_duration_sec=2.0)
            return
        header = ros_io.make_header(stamp_ns, self._param('frame_id'))
        encoding = self._param('encoding')
        image = ros_io.array_to_image(ros_io.unit_to_pixels(got.frame, encoding), encoding, header)
        lens = JointState(header=ros_io.make_header(stamp_ns, self._param('frame_id')),
                          name=['focus_raw', 'target_distance'], position=[float(got.focus_raw), target])
        self.pub_cal_lens.publish(lens)
        self.pub_cal_image.publish(image)
        self.sweep_ms = (time.perf_counter() - t0) * 1e3
        self.cal_index += 1
        if self.cal_index == self.cal_raws.size:
            self.sweeps += 1
            self.get_logger().info(f'calibration sweep {self.sweeps} at {target:.3f} m done; move the target and set '
                                   'target_distance')
            if max_sweeps and self.sweeps >= max_sweeps:
                self.timer.cancel()
                self.done.set()

    # -- the sweep ----------------------------------------------------------------------
    def _tick(self) -> None:
        max_sweeps = int(self._param('max_sweeps'))
        if max_sweeps and self.sweeps >= max_sweeps:
            return
        stamp_ns = self.get_clock().now().nanoseconds
        t0 = time.perf_counter()
        try:
            sweep = self.camera.capture_sweep(self.focus_m, self.f_numbers)
        except CameraError as e:
            self.failures += 1
            self.last_error = str(e)
            self.get_logger().error(f'sweep failed, nothing published: {e}', throttle_duration_sec=2.0)
            return
        except Exception as e:  # noqa: BLE001 - a bad frame must not kill the publisher
            self.failures += 1
            self.last_error = f'{type(e).__name__}: {e}'
            self.get_logger().error(f'sweep failed, nothing published: {self.last_error}',
                                    throttle_duration_sec=2.0)
            return
        self.publish_sweep(sweep, stamp_ns)
        self.sweep_ms = (time.perf_counter() - t0) * 1e3
        self.sweeps += 1
        if max_sweeps and self.sweeps >= max_sweeps:
            self.timer.cancel()
            self.get_logger().info(f'published {self.sweeps} sweeps (max_sweeps); stopping')
            self.done.set()

    def publish_sweep(self, sweep, stamp_ns: int) -> None:
        """Publish one sweep as the three (four) messages with one header."""
        frame_id = self._param('frame_id')
        stack = FocalStack(sweep.frames, sweep.focus_m, self.camera.lens, sweep.f_numbers, stamp_ns=stamp_ns,
                           frame_id=frame_id)
        fx, fy, cx, cy = self.camera.intrinsics()
        info = ros_io.make_camera_info(self.camera.width, self.camera.height, fx, fy, cx, cy)
        image, info, lens = ros_io.stack_to_msgs(stack, self._param('encoding'), camera_info=info)
        if self.pub_gt is not None and sweep.depth_gt is not None:
            self.pub_gt.publish(ros_io.depth_to_image(sweep.depth_gt, image.header))
        self.pub_info.publish(info)
        self.pub_lens.publish(lens)
        self.pub_image.publish(image)

    def _publish_diagnostics(self) -> None:
        if self.pub_diag is None:
            return
        st = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: capture', hardware_id=self._param('camera'))
        st.level = DiagnosticStatus.WARN if self.failures else DiagnosticStatus.OK
        st.message = f'{self.sweeps} sweeps, {self.failures} failed'
        st.values = [KeyValue(key='sweeps', value=str(self.sweeps)),
                     KeyValue(key='failures', value=str(self.failures)),
                     KeyValue(key='sweep_ms', value=f'{self.sweep_ms:.2f}'),
                     KeyValue(key='last_error', value=self.last_error)]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        try:
            self.camera.close()
        finally:
            super().destroy_node()


def main(args=None) -> int:
    # Bad parameters (rclpy's range/type checks, and the node's own ValueErrors) end in one
    # FATAL line and exit code 1 (run_node).
    return run_node(CaptureNode, lambda: MultiThreadedExecutor(num_threads=2), (CameraError, ValueError, ImportError),
                    'capture_node', args)


if __name__ == '__main__':
    raise SystemExit(main())
