"""Bag replay through the real inference node over ROS topics.

The recorded CDR bytes of each stack (``focal_stack/image``, ``camera_info``,
``lens_state``) go on the wire unchanged, as ``ros2 bag play`` would send them, in
stamp order, from a player node with the capture node's QoS (reliable, volatile).
The player collects ``depth/image`` and ``depth/uncertainty`` and pairs them with the
bag's ``depth_gt`` by stamp.

Two ways to have a node:
- in-process (default): :class:`~ddfs_ros.nodes.inference_node.InferenceNode` is
  created in this process, in the bag's namespace, with the engine/backend/hypothesis
  parameters given, and spun by a MultiThreadedExecutor on its own rclpy context; its
  counters tell at once when it rejected a stack;
- ``external=True``: a node already running in the namespace (``ros2 launch`` /
  ``ddfs-run``); rejections are then seen through ``/diagnostics``.

Pacing: with ``rate=None`` the player sends a stack, then waits for its outputs (or
the node's rejection, or ``timeout_s``), so no stack is dropped for being early;
with ``rate`` (stacks/s) it publishes on that clock and collects what comes back
(stacks without output are counted as dropped).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from .bags import BagStack, open_bag_info, read_bag
from .offline import grid_sample, method_names, rejected, score
from .report import GRID_STACKS, MethodRun, StackResult

LOG = logging.getLogger(__name__)

#: After a stack the node rejected, how long to keep listening for a late output anyway.
REJECT_GRACE_S = 0.05


@dataclass
class _Outputs:
    depth: Optional[np.ndarray] = None
    uncertainty: Optional[np.ndarray] = None
    t_depth: Optional[float] = None
    t_unc: Optional[float] = None

    @property
    def complete(self) -> bool:
        return self.depth is not None and self.uncertainty is not None

    @property
    def t_done(self) -> float:
        return max(self.t_depth, self.t_unc)


@dataclass
class ReplayOptions:
    """How to replay: see :func:`replay_bag`."""

    backend: str = 'auto'
    hypothesis_mode: object = 'from_focus'
    rate: Optional[float] = None
    timeout_s: float = 30.0
    external: bool = False
    namespace: Optional[str] = None
    node_params: dict = field(default_factory=dict)
    discovery_timeout_s: float = 20.0
    grid_stacks: int = GRID_STACKS


def _image_array(msg) -> np.ndarray:
    if msg.encoding != '32FC1':
        raise ValueError(f'expected 32FC1 output, got {msg.encoding}')
    a = np.frombuffer(msg.data, dtype='>f4' if msg.is_bigendian else '<f4')
    row = int(msg.step) // 4
    return a.reshape(int(msg.height), row)[:, :int(msg.width)].astype(np.float32)


def _ros_environment(external: bool) -> None:
    """Fast DDS profile (large shared-memory segment) and, in-process, localhost-only discovery."""
    from ..nodes.common import configure_fastdds
    configure_fastdds()
    if not external:
        os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


class _Session:
    """One rclpy context with the player node (and the in-process inference node)."""

    def __init__(self, namespace: str, engine: Optional[str], opts: ReplayOptions) -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, JointState

        _ros_environment(opts.external)
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = None
        self.player = Node('ddfs_bag_player', namespace=namespace or '/', context=self.ctx)
        qos_pub = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        qos_sub = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)
        self.pubs = {'image': self.player.create_publisher(Image, 'focal_stack/image', qos_pub),
                     'camera_info': self.player.create_publisher(CameraInfo, 'focal_stack/camera_info', qos_pub),
                     'lens_state': self.player.create_publisher(JointState, 'focal_stack/lens_state', qos_pub)}
        self.outputs: dict[int, _Outputs] = {}
        self.cond = threading.Condition()
        self.player.create_subscription(Image, 'depth/image', lambda m: self._on_output('depth', m), qos_sub)
        self.player.create_subscription(Image, 'depth/uncertainty', lambda m: self._on_output('uncertainty', m),
                                        qos_sub)
        self.diag: dict = {}
        try:
            from diagnostic_msgs.msg import DiagnosticArray
            self.player.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        except ImportError:
            pass
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.ctx)
        self.executor.add_node(self.player)
        if not opts.external:
            from rclpy.parameter import Parameter

            from ..nodes.inference_node import InferenceNode
            params = {'engine': str(engine), 'backend': opts.backend}
            mode = opts.hypothesis_mode
            if isinstance(mode, (list, tuple)):
                params.update(hypothesis_mode='range', depth_min=float(mode[0]), depth_max=float(mode[1]))
            else:
                params['hypothesis_mode'] = str(mode)
            params.update(opts.node_params)
            overrides = [Parameter(k, value=v) for k, v in params.items()]
            self.node = InferenceNode(namespace=namespace or '/', context=self.ctx, parameter_overrides=overrides)
            self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_loop, name='ddfs_replay_spin', daemon=True)
        self._spin.start()

    def _spin_loop(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - shutdown races end the spin
            pass

    def _on_output(self, kind: str, msg) -> None:
        from ..ros_io import stamp_to_ns
        stamp = stamp_to_ns(msg.header.stamp)
        arr = _image_array(msg)
        now = time.monotonic()
        with self.cond:
            out = self.outputs.setdefault(stamp, _Outputs())
            setattr(out, kind, arr)
            setattr(out, 't_depth' if kind == 'depth' else 't_unc', now)
            self.cond.notify_all()

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            if st.name.endswith(': depth'):
                vals = {kv.key: kv.value for kv in st.values}
                with self.cond:
                    self.diag[st.name] = vals
                    self.cond.notify_all()

    # -- what the node has rejected so far ------------------------------------------------
    def rejections(self) -> int:
        """Stacks the node refused or dropped so far (bad input, pairing timeouts, busy drops)."""
        keys = ('errors_total', 'dropped_pair_timeout', 'dropped_pair_evicted', 'dropped_busy')
        if self.node is not None:
            s = self.node.stats()
            return int(sum(int(s[k]) for k in keys))
        with self.cond:
            return int(sum(int(float(v.get(k, 0))) for v in self.diag.values() for k in keys))

    def last_error(self) -> str:
        """The node's last rejection, 'reason: message' ('' if none or unknown)."""
        if self.node is not None:
            return self.node.stats().get('last_error', '')
        with self.cond:
            for v in self.diag.values():
                return v.get('last_error', '')
        return ''

    def wait_for_graph(self, timeout_s: float) -> None:
        """Until the node subscribes to our three topics and publishes both outputs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ok_in = all(p.get_subscription_count() > 0 for p in self.pubs.values())
            ok_out = all(self.player.count_publishers(self.player.resolve_topic_name(t)) > 0
                         for t in ('depth/image', 'depth/uncertainty'))
            if ok_in and ok_out:
                time.sleep(0.2)  # let the reliable readers/writers finish matching
                return
            time.sleep(0.05)
        raise TimeoutError(f'no inference node on {self.player.get_namespace()} within {timeout_s:.0f} s '
                           '(is it running, in this ROS_DOMAIN_ID and namespace?)')

    def publish(self, item: BagStack) -> float:
        """Put the stack's recorded bytes on the wire; returns the monotonic send time."""
        t = time.monotonic()
        for role in ('camera_info', 'lens_state', 'image'):
            if role in item.raw:
                self.pubs[role].publish(item.raw[role][2])
        return t

    def close(self) -> None:
        import rclpy
        try:
            self.executor.shutdown(timeout_sec=2.0)
        except Exception:  # noqa: BLE001
            pass
        if self.node is not None:
            self.node.destroy_node()
        self.player.destroy_node()
        rclpy.try_shutdown(context=self.ctx)
        self._spin.join(timeout=5.0)


def _wait(session: _Session, stamp: int, baseline_rejects: int, deadline: float) -> bool:
    """Until both outputs of ``stamp`` arrived, the node rejected the stack, or the deadline.

    Returns True when the node's rejection/drop counters rose meanwhile.
    """
    rejected_now = False
    with session.cond:
        while True:
            out = session.outputs.get(stamp)
            if out is not None and out.complete:
                return rejected_now
            now = time.monotonic()
            if now >= deadline:
                return rejected_now
            session.cond.release()
            try:
                rejected_now = session.rejections() > baseline_rejects
            finally:
                session.cond.acquire()
            if rejected_now:
                deadline = min(deadline, now + REJECT_GRACE_S)
            session.cond.wait(timeout=min(0.05, max(deadline - now, 0.0)))


def _light(item: BagStack, keep_frame: bool) -> BagStack:
    """The item without its raw bytes and frames (kept: stamp, validity, gt, first frame for the grid)."""
    stack = item.stack
    if item.ok:
        stack = _FirstFrame(item.stack.frames[0].copy() if keep_frame else None)
    return BagStack(stamp_ns=item.stamp_ns, stack=stack, depth_gt=item.depth_gt, raw={}, gt_error=item.gt_error)


@dataclass
class _FirstFrame:
    first: Optional[np.ndarray]

    @property
    def frames(self):
        return [self.first]


def replay_one(bag, engine: Optional[str], label: str, opts: ReplayOptions):
    """Replay the bag once through one node; returns (MethodRun, grid samples).

    The bag is streamed: only the stack on the wire is held in memory in full.
    """
    info = open_bag_info(bag, opts.namespace)
    session = _Session(info.namespace, engine, opts)
    run = MethodRun(method=label, backend='external' if opts.external else session.node.engine.backend_name)
    samples = []
    sent: list[tuple] = []   # (light item, valid per reader, send time, the node's error if it refused it)
    try:
        session.wait_for_graph(opts.discovery_timeout_s)
        t0 = time.monotonic()
        for i, item in enumerate(read_bag(bag, info=info)):
            if opts.rate is not None:
                delay = t0 + i / float(opts.rate) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            before = session.rejections()
            t_sent = session.publish(item)
            node_error = ''
            if opts.rate is None:
                timeout = opts.timeout_s if item.ok else min(opts.timeout_s, 3.0)
                if _wait(session, item.stamp_ns, before, t_sent + timeout):
                    node_error = session.last_error()
            sent.append((_light(item, keep_frame=i < 4 * opts.grid_stacks), item.ok, t_sent, node_error))
        if opts.rate is not None:
            end = time.monotonic() + opts.timeout_s
            for item, ok, _ in sent:
                if ok:
                    _wait(session, item.stamp_ns, 1 << 60, end)
        time.sleep(0.05)
        with session.cond:
            outputs = dict(session.outputs)
        for i, (item, ok, t_sent, node_error) in enumerate(sent):
            out = outputs.get(item.stamp_ns)
            if out is not None and out.complete:
                latency = (out.t_done - t_sent) * 1e3
                keep = ok and len(samples) < opts.grid_stacks and item.stack.frames[0] is not None
                res = score(i, item, out.depth, out.uncertainty, latency, keep)
                if not ok:
                    res.message = f'the node accepted a stack the reader calls invalid: {item.stack}'
                run.results.append(res)
                if keep:
                    samples.append(grid_sample(item, res, f'#{i} {item.stamp_ns / 1e9:.3f} s'))
                    res.depth = res.uncertainty = None
            elif not ok:
                run.results.append(rejected(i, item))
            elif node_error:
                # a stack valid as such that this engine refuses (e.g. a DFV engine's frame count)
                reason, _, message = node_error.partition(': ')
                run.results.append(StackResult(index=i, stamp_ns=item.stamp_ns, status='rejected',
                                               reason=reason, message=message))
            else:
                why = session.node.last_error if session.node is not None else ''
                run.results.append(StackResult(index=i, stamp_ns=item.stamp_ns, status='dropped',
                                               reason='no_output',
                                               message=f'no depth within {opts.timeout_s:g} s'
                                               + (f' (node: {why})' if why else '')))
        if session.node is not None:
            st = session.node.stats()
            run.extra['node_rejected'] = int(st['errors_total'])
            run.extra['node_dropped'] = int(st['dropped_busy'] + st['dropped_pair_timeout']
                                            + st['dropped_pair_evicted'])
    finally:
        session.close()
    return run, samples


def replay_bag(bag, engines: Sequence = (), opts: Optional[ReplayOptions] = None, labels: Optional[list] = None):
    """Replay ``bag`` through a node per engine (or the one external node); returns (runs, samples)."""
    opts = opts or ReplayOptions()
    runs, samples = [], {}
    if opts.external:
        label = (labels or method_names(engines) or ['external node'])[0]
        run, smp = replay_one(bag, None, label, opts)
        runs.append(run)
        samples[label] = smp
        return runs, samples
    for label, engine in zip(labels or method_names(engines), engines):
        run, smp = replay_one(bag, str(engine), label, opts)
        runs.append(run)
        samples[label] = smp
    return runs, samples
