"""Inference node: focal stacks in, depth + uncertainty out (DESIGN.md section 5).

Subscribes (relative names, put the node in a namespace):
``focal_stack/image``, ``focal_stack/camera_info``, ``focal_stack/lens_state``.
Publishes, stamped like the input: ``depth/image`` (32FC1 m, NaN invalid),
``depth/uncertainty`` (32FC1 m), ``depth/camera_info`` (copy of the input's),
``depth/image_colorized`` (bgr8) and ``depth/points`` (PointCloud2 xyz+rgb), the last
two only while someone subscribes, and ``/diagnostics``.

Threading: subscription callbacks only pair messages by exact stamp (bounded cache,
timeouts counted) and drop a complete stack into a latest-only slot; one worker
thread converts, runs the :class:`~ddfs_ros.pipeline.DepthPipeline` and publishes.
A stack that arrives while another waits replaces it and is counted as dropped, so
nothing queues without bound.

Bad input never crashes the node and never yields output: each reason is logged
(throttled per reason, naming the topic), counted in /diagnostics, and the next good
stack is processed normally.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2

from .. import ros_io
from ..engines import BACKENDS, DEFAULT_PRECISION, PRECISIONS, EngineError, load_engine
from ..align import check_align_mode
from ..ensemble import make_pipeline
from ..pipeline import DEFAULT_MAX_RELATIVE_UNCERTAINTY
from ..stack import StackError
from .common import describe, intrinsics_problem, run_node, publisher_qos, resolve_path, subscription_qos
from .pairing import LatestSlot, StampPairer

try:
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # diagnostics are optional (DESIGN.md section 5)
    DiagnosticArray = None

DEFAULT_ENGINE = 'engines/ddfs_s.json'
KINDS = ('image', 'camera_info', 'lens_state')
TOPICS = {'image': ros_io.TOPIC_IMAGE, 'camera_info': ros_io.TOPIC_CAMERA_INFO,
          'lens_state': ros_io.TOPIC_LENS_STATE}
#: Every rejection reason, reported in /diagnostics even while 0.
REASONS = ('unsupported_encoding', 'bad_size', 'tile_mismatch', 'data_length', 'too_large', 'stamp_mismatch',
           'frame_id_mismatch', 'bad_lens_state', 'missing_lens', 'nan_lens', 'nonpositive_lens',
           'lens_frame_mismatch', 'focus_inside_focal_length', 'duplicate_frame', 'frame_count_mismatch',
           'too_few_frames', 'nan_pixels', 'bad_shape', 'bad_intrinsics', 'engine_error', 'internal_error')
#: Topic a :class:`StackError` from ``FocalStack.validate`` concerns.
_REASON_TOPIC = {'missing_lens': 'lens_state', 'nan_lens': 'lens_state', 'nonpositive_lens': 'lens_state',
                 'focus_inside_focal_length': 'lens_state', 'duplicate_frame': 'lens_state'}
DEFAULT_MAX_STACK_BYTES = 256 * 1024 * 1024


class InferenceNode(Node):
    """The depth node; see the module docstring.  Parameters: ``config/inference.yaml``."""

    def __init__(self, node_name: str = 'inference_node', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._declare_parameters()
        p = self._param
        self.counters: Counter = Counter()
        self.processed = 0
        self.received = 0
        self.dropped_busy = 0
        self.last_error: str = ''
        self._last_log: dict[str, float] = {}
        self._latencies: deque = deque(maxlen=256)
        #: ms each of those stacks waited in the one-slot queue before the worker took it
        self._waits: deque = deque(maxlen=256)
        self._done_times: deque = deque(maxlen=256)
        self._stats_lock = threading.Lock()
        self.engine_events: list[str] = []
        self.engine = self._load_engine()
        self.pipeline = make_pipeline(self.engine, hypothesis_mode=self._hypothesis_mode(),
                                      reference=p('reference_frame'),
                                      max_uncertainty=p('max_uncertainty') or None,
                                      max_relative_uncertainty=p('max_relative_uncertainty') or None,
                                      processing_width=int(p('processing_width')), upsample=p('upsample'),
                                      align=p('align'), pair_processing_width=int(p('pair_processing_width')))
        self.last_alignment: list = []
        if p('warmup_runs') > 0:
            ms = self.pipeline.warm_up(runs=int(p('warmup_runs')))
            self.get_logger().info(f'warm-up done: {ms:.1f} ms per stack (last of {int(p("warmup_runs"))}) on '
                                   f'{self.engine.description}')
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.pairer = StampPairer(KINDS, timeout_s=p('pair_timeout'), max_pending=p('max_pending'))
        self.slot: LatestSlot = LatestSlot()
        qos_out = publisher_qos(2)
        self.pub_depth = self.create_publisher(Image, 'depth/image', qos_out)
        self.pub_unc = self.create_publisher(Image, 'depth/uncertainty', qos_out)
        self.pub_info = self.create_publisher(CameraInfo, 'depth/camera_info', qos_out)
        self.pub_color = self.create_publisher(Image, 'depth/image_colorized', qos_out)
        self.pub_points = self.create_publisher(PointCloud2, 'depth/points', qos_out)
        self.pub_aif = self.create_publisher(Image, 'all_in_focus/image', qos_out)
        self.pub_diag = self.create_publisher(DiagnosticArray, '/diagnostics', 10) if DiagnosticArray else None
        qos_in = subscription_qos(p('qos'), p('qos_depth'))
        group = MutuallyExclusiveCallbackGroup()
        self.subs = {
            'image': self.create_subscription(Image, ros_io.TOPIC_IMAGE, lambda m: self._on_msg('image', m),
                                              qos_in, callback_group=group),
            'camera_info': self.create_subscription(CameraInfo, ros_io.TOPIC_CAMERA_INFO,
                                                    lambda m: self._on_msg('camera_info', m), qos_in,
                                                    callback_group=group),
            'lens_state': self.create_subscription(JointState, ros_io.TOPIC_LENS_STATE,
                                                   lambda m: self._on_msg('lens_state', m), qos_in,
                                                   callback_group=group),
        }
        timers = MutuallyExclusiveCallbackGroup()
        self.create_timer(0.25, self._expire_pending, callback_group=timers)
        self._diag_period = float(p('diagnostics_period'))
        self.create_timer(self._diag_period, self._publish_diagnostics, callback_group=timers)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name='ddfs_inference_worker', daemon=True)
        self._worker.start()
        m = self.engine.manifest
        size = (f'any size, processing_width {self.pipeline.processing_width} px' if m.dynamic_size
                else f'{m.height}x{m.width}')
        self.get_logger().info(
            f'ready: engine {m.name} ({m.family}, {size}) on {self.engine.description}; '
            f'listening on {self.subs["image"].topic_name}')

    # -- parameters ---------------------------------------------------------------------
    def _declare_parameters(self) -> None:
        d = self.declare_parameter
        d('engine', DEFAULT_ENGINE, describe('engine manifest (.json; an ensemble manifest runs each of its members '
                                             'and combines their depths); relative = the package share dir',
                                             read_only=True))
        d('backend', 'auto', describe('inference backend (auto: tensorrt > onnxruntime > torch on a GPU; on a CPU '
                                      "the engine manifest's measured cpu_preference first, else onnxruntime)",
                                      read_only=True, choices=['auto', *BACKENDS]))
        d('device', '', describe("torch device ('' = cuda if available, else cpu)", read_only=True))
        d('fallback', True, describe('fall back along the backend chain on failure', read_only=True))
        d('precision', DEFAULT_PRECISION, describe(
            "inference precision. auto: on a CPU the engine manifest's measured cpu_preference (e.g. torch bf16 "
            'where it is faster and within 1 % of fp32), fp32 without one and on a GPU; fp32: full precision on '
            'every backend; fp16: TensorRT FP16 (needs an FP16 ONNX in the manifest, else fp32); bf16: torch '
            'backend under bf16 autocast (fp32 on CPUs without AVX512-BF16/AMX). onnxruntime always runs fp32; '
            'the log and /diagnostics (backend_detail) say what runs', read_only=True, choices=list(PRECISIONS)))
        d('hypothesis_mode', 'from_focus', describe('depth hypotheses', choices=['fixed', 'from_focus', 'range']))
        d('depth_min', 0.0, describe('hypothesis range start (m) for hypothesis_mode=range', lo=0.0, hi=1000.0))
        d('depth_max', 0.0, describe('hypothesis range end (m) for hypothesis_mode=range', lo=0.0, hi=1000.0))
        d('reference_frame', 'farthest', describe('reference frame for the network',
                                                  choices=['farthest', 'nearest']))
        d('max_uncertainty', 0.0, describe('mask depth whose uncertainty exceeds this (m); 0 = off',
                                           lo=0.0, hi=1000.0))
        d('max_relative_uncertainty', DEFAULT_MAX_RELATIVE_UNCERTAINTY,
          describe('mask depth whose uncertainty exceeds this fraction of the depth; 0 = off', lo=0.0, hi=100.0))
        d('qos', 'reliable', describe('input QoS', read_only=True, choices=['reliable', 'sensor_data']))
        d('qos_depth', 5, describe('input history depth', lo=1, hi=100, integer=True, read_only=True))
        d('pair_timeout', 1.0, describe('drop an incomplete stamp after this long (s)', lo=0.01, hi=60.0,
                                        read_only=True))
        d('max_pending', 8, describe('incomplete stamps kept at most', lo=1, hi=1000, integer=True, read_only=True))
        d('max_stack_bytes', DEFAULT_MAX_STACK_BYTES,
          describe('reject stacks needing more float32 bytes than this', lo=1024, hi=1 << 40, integer=True))
        d('warmup_runs', 2, describe('synthetic stacks run at start', lo=0, hi=100, integer=True, read_only=True))
        d('diagnostics_period', 1.0, describe('seconds between /diagnostics messages', lo=0.05, hi=60.0,
                                              read_only=True))
        d('error_log_throttle', 2.0, describe('seconds between log lines of one rejection reason',
                                              lo=0.0, hi=3600.0))
        d('colorize_min', 0.0, describe('colour-map start (m); 0 = hypothesis range', lo=0.0, hi=1000.0))
        d('colorize_max', 0.0, describe('colour-map end (m); 0 = hypothesis range', lo=0.0, hi=1000.0))
        d('processing_width', 256, describe('width (px) the cost volume and a dynamic-size engine run at; height '
                                            'by the aspect ratio, never above the input width', lo=16, hi=8192,
                                            integer=True))
        d('pair_processing_width', 0, describe('the same for aperture-only stacks (one focus distance, e.g. an '
                                               'f/2.8 + f/8 pair); 0 = the input width, where their blur '
                                               'difference is largest', lo=0, hi=8192, integer=True))
        d('upsample', 'joint_bilateral', describe('depth/uncertainty back to the input size',
                                                  choices=['joint_bilateral', 'guided', 'bilinear']))
        d('align', 'off', describe('warp every frame onto the reference before the cost volume (focus breathing, '
                                   'small motion); NaN depth where a frame did not see',
                                   choices=['off', 'similarity']))

    def _param(self, name: str):
        return self.get_parameter(name).value

    def _hypothesis_mode(self, values: Optional[dict] = None):
        v = values or {}
        mode = v.get('hypothesis_mode', self._param('hypothesis_mode'))
        if mode == 'range':
            return [float(v.get('depth_min', self._param('depth_min'))),
                    float(v.get('depth_max', self._param('depth_max')))]
        return mode

    def _on_set_parameters(self, params) -> SetParametersResult:
        values = {q.name: q.value for q in params}
        try:
            if {'hypothesis_mode', 'depth_min', 'depth_max'} & set(values):
                mode = self._hypothesis_mode(values)
                probe = make_pipeline(self.engine, hypothesis_mode=mode)   # validates
                self.pipeline.hypothesis_mode = probe.hypothesis_mode
            if 'reference_frame' in values:
                self.pipeline.reference = values['reference_frame']
            if 'max_uncertainty' in values:
                self.pipeline.max_uncertainty = values['max_uncertainty'] or None
            if 'max_relative_uncertainty' in values:
                self.pipeline.max_relative_uncertainty = values['max_relative_uncertainty'] or None
            if 'processing_width' in values:
                self.pipeline.processing_width = int(values['processing_width'])
            if 'pair_processing_width' in values:
                self.pipeline.pair_processing_width = int(values['pair_processing_width'])   # validates
            if 'upsample' in values:
                make_pipeline(self.engine, upsample=values['upsample'])          # validates
                self.pipeline.upsample = values['upsample']
            if 'align' in values:
                self.pipeline.align = check_align_mode(values['align'])
        except (ValueError, TypeError) as e:
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _load_engine(self):
        # bad choices are parameter errors: one FATAL line naming the parameter, exit 1 (run_node)
        for pname, choices in (('backend', ('auto', *BACKENDS)), ('precision', PRECISIONS)):
            if self._param(pname) not in choices:
                raise ValueError(f'parameter {pname}: {self._param(pname)!r} is not one of {", ".join(choices)}')
        name = self._param('engine')
        try:
            path = resolve_path(name)
        except FileNotFoundError as e:
            msg = (f'engine {name!r} not found ({e}). Train and export one (make engines / '
                   f'python -m training.export) or pass engine:=/path/to/NAME.json')
            self.get_logger().fatal(msg)
            raise EngineError(msg) from e

        def on_event(text: str) -> None:
            self.engine_events.append(text)
            # rclpy ties a severity to each call site: one call per severity
            if 'unavailable' in text or 'failed' in text:
                self.get_logger().warning(text)
            else:
                self.get_logger().info(text)

        try:
            return load_engine(path, backend=self._param('backend'), device=self._param('device') or None,
                               fallback=bool(self._param('fallback')), on_event=on_event,
                               precision=self._param('precision'))
        except EngineError as e:
            self.get_logger().fatal(str(e))
            raise

    # -- input side (executor threads) ------------------------------------------------------
    def _on_msg(self, kind: str, msg) -> None:
        try:
            stamp = ros_io.stamp_to_ns(msg.header.stamp)
            complete, dropped = self.pairer.add(kind, stamp, msg)
            self._report_dropped(dropped)
            if complete is not None:
                with self._stats_lock:
                    self.received += 1
                if self.slot.put((complete, time.monotonic())):
                    with self._stats_lock:
                        self.dropped_busy += 1
        except Exception as e:  # noqa: BLE001 - a callback must never take the node down
            self._reject('internal_error', TOPICS[kind], f'{type(e).__name__}: {e}', None)

    def _expire_pending(self) -> None:
        self._report_dropped(self.pairer.expire())

    def _report_dropped(self, dropped) -> None:
        for ex in dropped:
            what = 'no ' + ', '.join(TOPICS[k] for k in ex.missing)
            why = f'within {self.pairer.timeout_s:g} s' if ex.reason == 'pair_timeout' else \
                f'before {self.pairer.max_pending} newer incomplete stamps arrived'
            self._log_throttled(ex.reason, f'{self._topic(ex.missing[0])}: dropping stamp '
                                           f'{ex.stamp_ns / 1e9:.6f}: {what} {why} ({ex.reason})')

    # -- worker -----------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.slot.take(timeout=0.1)
            if job is None:
                continue
            try:
                self._process(*job)
            except Exception as e:  # noqa: BLE001 - keep the worker alive whatever happens
                self._reject('internal_error', 'image', f'{type(e).__name__}: {e}', None)

    def _process(self, parts: dict, t_complete: float) -> None:
        t_start = time.monotonic()
        image, info, lens = parts['image'], parts['camera_info'], parts['lens_state']
        # K feeds the focal length and depth/points, and K and P are republished in
        # depth/camera_info: an all-inf K must never get that far.
        bad_k = intrinsics_problem(info.k, info.p)
        if bad_k is not None:
            self._reject('bad_intrinsics', 'camera_info', bad_k, image.header)
            return
        try:
            stack = ros_io.msgs_to_stack(image, info, lens, max_stack_bytes=int(self._param('max_stack_bytes')))
            want_aif = self.pub_aif.get_subscription_count() > 0
            result = self.pipeline.run(stack, all_in_focus=want_aif)
        except ros_io.InputError as e:
            self._reject(e.reason, self._kind_of(e.topic), str(e), image.header)
            return
        except StackError as e:
            self._reject(e.reason, _REASON_TOPIC.get(e.reason, 'image'), str(e), image.header)
            return
        except EngineError as e:
            self._reject('engine_error', 'image', str(e), image.header)
            return
        header = image.header
        self.pub_info.publish(info)
        self.pub_unc.publish(ros_io.depth_to_image(result.uncertainty, header))
        self.pub_depth.publish(ros_io.depth_to_image(result.depth, header))
        if self.pub_color.get_subscription_count() > 0:
            lo, hi = result.depth_range
            lo = self._param('colorize_min') or lo
            hi = self._param('colorize_max') or hi
            self.pub_color.publish(ros_io.colorized_depth_image(result.depth, lo, hi, header))
        if self.pub_points.get_subscription_count() > 0:
            rgb = stack.frames[result.reference_index]
            self.pub_points.publish(ros_io.depth_to_cloud(result.depth, stack.meta['K'], rgb, header))
        if result.all_in_focus is not None:
            # the input's encoding family: colour in, rgb8 out; gray in, mono8 out
            enc = 'rgb8' if stack.channels == 3 else 'mono8'
            self.pub_aif.publish(ros_io.array_to_image(ros_io.unit_to_pixels(result.all_in_focus, enc), enc, header))
        done = time.monotonic()
        with self._stats_lock:
            self.processed += 1
            self._latencies.append((done - t_complete) * 1e3)
            self._waits.append((t_start - t_complete) * 1e3)
            self._done_times.append(done)
            self.counters['masked_out_of_range'] += result.n_out_of_range
            self.counters['masked_uncertain'] += result.n_uncertain
            self.last_timings = result.timings
            self.last_alignment = result.alignment

    # -- errors -----------------------------------------------------------------------------
    @staticmethod
    def _kind_of(topic: str) -> str:
        for k, t in TOPICS.items():
            if t == topic:
                return k
        return 'image'

    def _topic(self, kind: str) -> str:
        return self.subs[kind].topic_name if kind in getattr(self, 'subs', {}) else TOPICS.get(kind, kind)

    def _reject(self, reason: str, kind: str, message: str, header) -> None:
        with self._stats_lock:
            self.counters[reason] += 1
            self.last_error = f'{reason}: {message}'
        stamp = '' if header is None else f' stamp {ros_io.stamp_to_ns(header.stamp) / 1e9:.6f}'
        self._log_throttled(reason, f'{self._topic(kind)}: dropping stack{stamp}: {reason}: {message}')

    def _log_throttled(self, reason: str, text: str) -> None:
        now = time.monotonic()
        with self._stats_lock:
            if now - self._last_log.get(reason, -1e9) < float(self._param('error_log_throttle')):
                return
            self._last_log[reason] = now
        self.get_logger().error(text)

    # -- diagnostics ------------------------------------------------------------------------
    def stats(self) -> dict:
        """A snapshot of the counters (what /diagnostics publishes)."""
        now = time.monotonic()
        with self._stats_lock:
            lat = np.array(self._latencies, dtype=np.float64)
            wait = np.array(self._waits, dtype=np.float64)
            recent = [t for t in self._done_times if now - t <= max(self._diag_period, 1.0) * 5]
            window = max(self._diag_period, 1.0) * 5
            s = {
                'backend': self.engine.backend_name,
                'backend_detail': self.engine.description,
                'engine': self.engine.manifest.name,
                'received': self.received,
                'processed': self.processed,
                'rate_hz': len(recent) / window,
                'latency_ms_p50': float(np.percentile(lat, 50)) if lat.size else float('nan'),
                'latency_ms_p95': float(np.percentile(lat, 95)) if lat.size else float('nan'),
                # of that latency, the wait for the worker: at most about one stack's processing
                'queue_wait_ms_p50': float(np.percentile(wait, 50)) if wait.size else float('nan'),
                'dropped_busy': self.dropped_busy,
                'dropped_pair_timeout': self.pairer.timeouts,
                'dropped_pair_evicted': self.pairer.evicted,
                'pending_stamps': len(self.pairer),
                'masked_out_of_range': self.counters['masked_out_of_range'],
                'masked_uncertain': self.counters['masked_uncertain'],
                'align': self.pipeline.align,
                # the last stack's per-frame similarity to the reference (frame order after any sorting)
                'align_scales': ','.join(f'{a.scale:.4f}' for a in self.last_alignment),
                'align_shifts_px': ';'.join(f'{a.tx_px:.2f},{a.ty_px:.2f}' for a in self.last_alignment),
                'last_error': self.last_error,
            }
            errors = {f'error_{r}': self.counters[r] for r in REASONS}
        s['errors_total'] = sum(errors.values())
        s.update(errors)
        return s

    def _publish_diagnostics(self) -> None:
        if self.pub_diag is None:
            return
        s = self.stats()
        st = DiagnosticStatus(name=f'{self.get_fully_qualified_name()}: depth', hardware_id=s['engine'])
        drops = s['dropped_busy'] + s['dropped_pair_timeout'] + s['dropped_pair_evicted']
        if s['errors_total'] or drops:
            st.level = DiagnosticStatus.WARN
            st.message = f"{s['processed']} stacks, {drops} dropped, {s['errors_total']} rejected"
        else:
            st.level = DiagnosticStatus.OK
            st.message = f"{s['processed']} stacks on {s['backend']}"
        st.values = [KeyValue(key=k, value=(f'{v:.3f}' if isinstance(v, float) else str(v))) for k, v in s.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)

    def destroy_node(self) -> None:
        self._stop.set()
        self.slot.close()
        if self._worker.is_alive():
            self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args=None) -> int:
    # EngineError is logged as fatal with its reason by the node itself; bad parameters
    # (rclpy's range/type checks, ValueError from the pipeline's own checks) by run_node.
    return run_node(InferenceNode, SingleThreadedExecutor, (EngineError, ValueError), 'inference_node', args,
                    already_logged=(EngineError,))


if __name__ == '__main__':
    raise SystemExit(main())
