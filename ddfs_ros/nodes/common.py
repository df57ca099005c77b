"""Shared node plumbing: install paths, the Fast DDS profile, parameter descriptors, QoS."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions

PACKAGE = 'ddfs_ros'
REPO_ROOT = Path(__file__).resolve().parents[2]
FASTDDS_ENV = 'FASTRTPS_DEFAULT_PROFILES_FILE'


def share_dirs() -> list[Path]:
    """Where launch/, config/ and engines/ may live, most specific first.

    The source checkout the code runs from (``pip install -e .`` / PYTHONPATH), then the
    ament index (colcon, or a venv on ``AMENT_PREFIX_PATH``), then ``<sys.prefix>/share``
    (``pip install .``).
    """
    out = []
    if (REPO_ROOT / 'package.xml').is_file():
        # Running from a source checkout: its own config/engines match the code being run,
        # even when an older copy of the package is installed in the same environment.
        out.append(REPO_ROOT)
    try:
        from ament_index_python.packages import get_package_share_directory
        out.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - not on the index
        pass
    out.append(Path(sys.prefix) / 'share' / PACKAGE)
    return [p for p in out if p.is_dir()]


def resolve_path(path: str | Path, must_exist: bool = True) -> Path:
    """An absolute path as is; a relative one against the share dirs, then the working directory.

    Returns the first existing candidate; if none exists, the first candidate
    (``must_exist=False``) or raises FileNotFoundError naming every place looked at.
    """
    p = Path(os.path.expanduser(str(path)))
    if p.is_absolute():
        if must_exist and not p.exists():
            raise FileNotFoundError(f'{p} does not exist')
        return p
    candidates = []
    for c in [d / p for d in share_dirs()] + [Path.cwd() / p]:
        if c not in candidates:
            candidates.append(c)
    for c in candidates:
        if c.exists():
            return c
    if must_exist:
        raise FileNotFoundError(f'{path} not found in ' + ', '.join(str(c.parent) for c in candidates))
    return candidates[0]


def configure_fastdds(profile: Optional[str | Path] = None) -> Optional[Path]:
    """Point Fast DDS at ``config/fastdds.xml`` (16 MB shared memory, UDP on 127.0.0.1).

    Must run before ``rclpy.init``.  An already set ``FASTRTPS_DEFAULT_PROFILES_FILE``
    wins (the user's own profile), unless ``profile`` is given explicitly.
    """
    if profile is None and os.environ.get(FASTDDS_ENV):
        return Path(os.environ[FASTDDS_ENV])
    try:
        path = resolve_path(profile or 'config/fastdds.xml')
    except FileNotFoundError:
        return None
    os.environ[FASTDDS_ENV] = str(path)
    return path


def describe(description: str, *, lo=None, hi=None, step=None, integer: bool = False, read_only: bool = False,
             choices: Optional[list[str]] = None) -> ParameterDescriptor:
    """ParameterDescriptor with an optional range (and the choices spelled in the text)."""
    text = description + (f" (one of: {', '.join(choices)})" if choices else '')
    d = ParameterDescriptor(description=text, read_only=read_only)
    if lo is not None and hi is not None:
        if integer:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=int(step or 1))]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi),
                                                         step=float(step or 0.0))]
    return d


def intrinsics_problem(k, p) -> Optional[str]:
    """Why a CameraInfo's K (3x3, row-major) and P (3x4) cannot be used or republished, or None.

    Both must have their 9 / 12 values, all finite, with fx, fy > 0 (K[0], K[4] and
    P[0], P[5]).  The node derives the focal length from K, builds ``depth/points``
    from K and republishes K and P in ``depth/camera_info``: an ``inf`` or zero
    there would reach image_pipeline and rviz2 (issue 12, item 6).
    """
    for name, vals, n in (('K', k, 9), ('P', p, 12)):
        v = np.asarray(list(vals), dtype=np.float64)
        if v.size != n:
            return f'{name} has {v.size} values, not {n}'
        if not np.isfinite(v).all():
            return f'{name} is not finite: {v.tolist()}'
        fx, fy = (v[0], v[4]) if name == 'K' else (v[0], v[5])
        if not (fx > 0 and fy > 0):
            return f'{name} has fx = {fx:g}, fy = {fy:g}; both must be > 0'
    return None


def subscription_qos(kind: str, depth: int = 5) -> QoSProfile:
    """``reliable`` (default: best effort loses large images over Fast DDS) or ``sensor_data``."""
    if kind == 'sensor_data':
        q = QoSProfile(**{k: getattr(qos_profile_sensor_data, k) for k in ('history', 'reliability', 'durability')},
                       depth=depth)
        return q
    if kind != 'reliable':
        raise ValueError(f"qos must be 'reliable' or 'sensor_data', got {kind!r}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


def publisher_qos(depth: int = 2) -> QoSProfile:
    """Reliable, volatile, shallow (DESIGN.md section 5)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


#: Errors from rclpy's parameter machinery: a value outside its descriptor's range, of the
#: wrong type, or a read-only one set; from the command line (``-p``), a YAML file or overrides.
PARAMETER_ERRORS: tuple = (ParameterException,)


def parameter_error_text(e: BaseException) -> str:
    """One line for a bad parameter: what rclpy said, and where such values come from."""
    text = ' '.join(str(e).split())
    return f'bad parameter: {text} (set by -p, a --params-file YAML or launch arguments; ' \
           f'`ros2 param describe` lists the ranges)'


def install_stop_handlers() -> threading.Event:
    """SIGINT/SIGTERM set the returned event instead of tearing rclpy down asynchronously.

    rclpy's own handler shuts the context down at once, while the worker thread may be
    publishing and timers may be firing: that is where "publisher's context is invalid"
    and "Destroyable ... destruction was requested" came from on every Ctrl-C.  With
    this handler (and ``rclpy.init(signal_handler_options=SignalHandlerOptions.NO)``)
    the spin loop notices the event and :func:`stop_nodes` shuts down in order.
    Must run in the main thread.
    """
    stop = threading.Event()

    def _handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)
    return stop


def spin_until(executor: Executor, stop: threading.Event, period_s: float = 0.1,
               done: Optional[Callable[[], bool]] = None) -> None:
    """Spin ``executor`` until ``stop`` is set, ``done()`` is true or the context ends.

    ``period_s`` (s) bounds how long a signal waits to be noticed.
    """
    while not stop.is_set() and executor.context.ok():
        executor.spin_once(timeout_sec=period_s)
        if done is not None and done():
            return


def stop_nodes(executor: Optional[Executor], nodes: list[Node], timeout_s: float = 5.0) -> None:
    """Orderly teardown: timers off, in-flight callbacks finished, nodes destroyed.

    The context is shut down by the caller afterwards (``rclpy.try_shutdown``), so no
    callback, worker thread or log call ever meets an invalid context.  ``timeout_s``
    (s) bounds the wait for callbacks still running on executor threads.
    """
    for node in nodes:
        for timer in list(node.timers):
            timer.cancel()
        stop = getattr(node, 'stop', None)
        if callable(stop):
            stop()                   # worker threads: joined before anything is destroyed
    if executor is not None:
        # MultiThreadedExecutor runs callbacks on a pool; Executor.shutdown() does not wait
        # for them (rclpy Jazzy), so wait on the submitted tasks here, then collect them so
        # that none logs "exception was never retrieved".
        end = time.monotonic() + timeout_s
        tasks = list(getattr(executor, '_futures', []))
        while any(not t.done() for t in tasks) and time.monotonic() < end:
            time.sleep(0.01)
        for t in tasks:
            if t.done():
                try:
                    t.result()
                except Exception:  # noqa: BLE001 - teardown: the node logged it when it happened
                    pass
        executor.shutdown(timeout_sec=timeout_s)
    for node in nodes:
        node.destroy_node()


def run_node(make_node: Callable[[], Node], make_executor: Callable[[], Executor], startup_errors: tuple = (),
             logger_name: str = PACKAGE, args=None, already_logged: tuple = ()) -> int:
    """``main()`` of a node process.

    Fast DDS profile, ``rclpy.init`` without rclpy's signal handlers, spin until
    SIGINT/SIGTERM, then :func:`stop_nodes` and ``rclpy.try_shutdown`` in ``finally``.

    Returns the process exit code: 1 when the node could not start because of a bad
    parameter (any source) or one of ``startup_errors``: one FATAL line under
    ``logger_name`` says why, no traceback (exceptions in ``already_logged`` were
    logged as fatal by the node itself); else 0, also after Ctrl-C.
    """
    configure_fastdds()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = None
    executor = None
    try:
        try:
            node = make_node()
        except PARAMETER_ERRORS as e:
            rclpy.logging.get_logger(logger_name).fatal(f'cannot start: {parameter_error_text(e)}')
            return 1
        except startup_errors as e:
            if not isinstance(e, already_logged):
                rclpy.logging.get_logger(logger_name).fatal(f'cannot start: {e}')
            return 1
        stop = install_stop_handlers()
        executor = make_executor()
        executor.add_node(node)
        spin_until(executor, stop)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass                         # Ctrl-C during start-up (before the handlers are in)
    finally:
        try:
            if node is not None:
                stop_nodes(executor, [node])
        finally:
            rclpy.try_shutdown()
    return 0
