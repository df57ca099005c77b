"""Shared node plumbing: install paths, the Fast DDS profile, parameter descriptors, QoS."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, DurabilityPolicy, qos_profile_sensor_data

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


def run_node(make_node: Callable[[], Node], make_executor: Callable[[], Executor], startup_errors: tuple = (),
             logger_name: Optional[str] = PACKAGE, args=None) -> int:
    """``main()`` of a node process: Fast DDS profile, ``rclpy.init``/``shutdown`` in
    ``try/finally``, spin until Ctrl-C.  Returns the process exit code: 1 when the node
    could not start because of one of ``startup_errors`` (logged as fatal under
    ``logger_name``; ``None`` when the node logs its own reason), else 0."""
    configure_fastdds()
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = make_node()
        except startup_errors as e:
            if logger_name:
                rclpy.logging.get_logger(logger_name).fatal(f'cannot start: {e}')
            return 1
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
