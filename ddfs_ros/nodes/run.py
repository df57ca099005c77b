"""``ddfs-run``: capture and inference nodes in one process (no ``ros2 launch`` needed).

The same nodes and YAML files as ``launch/depth.launch.py``, on one
MultiThreadedExecutor, talking over real ROS topics (Fast DDS, the package's
``config/fastdds.xml``).  For machines with the pip ROS 2 wheels and no ROS install.

    ddfs-run                                   # run until Ctrl-C
    ddfs-run --sweeps 20                       # stop after 20 sweeps are answered
    ddfs-run --duration 30 --engine /abs/ddfs_s.json --backend onnxruntime
    ddfs-run --params-file my_overrides.yaml   # applied after the two package files
    ddfs-run --demo --sweeps 12 --out demo_out # the `make demo` run

``--demo`` runs the simulated camera on the built-in motorcycle scene with the
shipped engine, records inputs and outputs, and prints latency (p50/p95), stacks/s,
drops and depth error against the scene's true depth; it writes colorized depth and
uncertainty PNGs and an mcap bag (``rosbags``) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

from .common import (PARAMETER_ERRORS, configure_fastdds, install_stop_handlers, parameter_error_text,
                     resolve_path, stop_nodes)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='ddfs-run', description=__doc__.split('\n\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--camera-params', default='config/camera.yaml', help='capture node YAML')
    ap.add_argument('--inference-params', default='config/inference.yaml', help='inference node YAML')
    ap.add_argument('--params-file', action='append', default=[], help='extra ROS params file (repeatable)')
    ap.add_argument('--namespace', default='/camera')
    ap.add_argument('--engine', help='engine manifest (overrides the YAML)')
    ap.add_argument('--backend', choices=['auto', 'tensorrt', 'onnxruntime', 'torch'])
    ap.add_argument('--rate', type=float, help='sweeps per second (overrides the YAML)')
    ap.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = no limit)')
    ap.add_argument('--sweeps', type=int, default=0, help='stop once this many sweeps are answered (0 = no limit)')
    ap.add_argument('--no-capture', action='store_true', help='inference node only (topics from elsewhere)')
    ap.add_argument('--demo', action='store_true', help='simulated motorcycle + shipped engine, report, PNGs, bag')
    ap.add_argument('--out', default='demo_out', help='demo output folder')
    return ap


def _overrides(args, demo: bool):
    from rclpy.parameter import Parameter
    inf, cap = [], []
    if args.engine:
        inf.append(Parameter('engine', value=str(Path(args.engine).resolve()) if Path(args.engine).exists()
                             else args.engine))
    if args.backend:
        inf.append(Parameter('backend', value=args.backend))
    if args.rate:
        cap.append(Parameter('rate', value=float(args.rate)))
    if args.sweeps:
        cap.append(Parameter('max_sweeps', value=int(args.sweeps)))
    if demo:
        cap += [Parameter('camera', value='simulated'), Parameter('scene', value='motorcycle'),
                Parameter('publish_depth_gt', value=True)]
    return inf, cap


def main(argv: Optional[list[str]] = None) -> int:
    args, ros_extra = build_parser().parse_known_args(argv)
    profile = configure_fastdds()          # before rclpy.init: Fast DDS reads it at start-up
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from ..cameras import CameraError
    from ..engines import EngineError
    from .capture_node import CaptureNode
    from .inference_node import InferenceNode

    files = []
    for f in [args.camera_params, args.inference_params] + list(args.params_file):
        try:
            files += ['--params-file', str(resolve_path(f))]
        except FileNotFoundError as e:
            print(f'ddfs-run: parameter file {e}', file=sys.stderr)
            return 2
    if '--ros-args' in ros_extra:
        ros_extra = ros_extra[ros_extra.index('--ros-args') + 1:]
    # No rclpy signal handlers: Ctrl-C sets `stop` and the loop below shuts down in order
    # (stop_nodes), instead of rclpy invalidating the context under running callbacks.
    rclpy.init(args=['ddfs-run', '--ros-args', *files, *ros_extra], signal_handler_options=SignalHandlerOptions.NO)
    log = rclpy.logging.get_logger('ddfs_run')
    nodes = []
    executor = None
    recorder = None
    try:
        inf_over, cap_over = _overrides(args, args.demo)
        try:
            inference = InferenceNode(namespace=args.namespace, parameter_overrides=inf_over)
            nodes.append(inference)
            capture = None
            if not args.no_capture:
                capture = CaptureNode(namespace=args.namespace, parameter_overrides=cap_over)
                nodes.append(capture)
        except PARAMETER_ERRORS as e:
            log.fatal(f'cannot start: {parameter_error_text(e)}')
            return 1
        except EngineError:
            return 1                 # the inference node logged the reason as fatal
        except (CameraError, ValueError, ImportError) as e:
            log.fatal(f'cannot start: {type(e).__name__}: {e}')
            return 1
        if args.demo:
            from .demo import DemoRecorder
            recorder = DemoRecorder(Path(args.out), namespace=args.namespace)
            nodes.append(recorder)
        stop = install_stop_handlers()
        executor = MultiThreadedExecutor(num_threads=4)
        for n in nodes:
            executor.add_node(n)
        inference.get_logger().info(f'ddfs-run: {len(nodes)} nodes in {args.namespace}; Fast DDS profile {profile}')
        t0 = time.monotonic()
        done_at = None
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if args.duration and now - t0 >= args.duration:
                break
            if capture is not None and capture.done.is_set():
                s = inference.stats()
                answered = s['processed'] + s['errors_total'] + s['dropped_busy'] + s['dropped_pair_timeout'] \
                    + s['dropped_pair_evicted']
                done_at = done_at or now
                finished = answered >= capture.sweeps and (recorder is None or recorder.caught_up(s['processed']))
                # Drain: outputs still in flight get a grace period, never forever.
                if finished or now - done_at > 30.0:
                    break
        if recorder is not None:
            return recorder.finish(inference, capture)
        s = inference.stats()
        keys = ('backend', 'processed', 'received', 'dropped_busy', 'dropped_pair_timeout', 'errors_total',
                'latency_ms_p50', 'latency_ms_p95')
        print(json.dumps({k: (None if isinstance(s[k], float) and s[k] != s[k] else s[k]) for k in keys}))
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0                     # Ctrl-C during start-up, before the handlers are in
    finally:
        try:
            stop_nodes(executor, nodes)
        finally:
            rclpy.try_shutdown()


if __name__ == '__main__':
    raise SystemExit(main())
