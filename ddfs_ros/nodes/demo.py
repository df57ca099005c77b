"""The ``ddfs-run --demo`` recorder: listens like any ROS client, records, scores, reports.

It subscribes to the inputs and outputs over DDS (its subscription also switches on
the node's colorized depth and point cloud), writes every message as received (the
CDR bytes off the wire) into an mcap bag with the ``rosbags`` writer, and at the end
scores each depth map against ``focal_stack/depth_gt`` and writes PNGs.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2

from .. import ros_io
from ..colorize import colorize_depth, colorize_uncertainty
from .common import subscription_qos

#: relative topic -> (rclpy type, ROS 2 type name)
RECORDED = {
    'focal_stack/image': (Image, 'sensor_msgs/msg/Image'),
    'focal_stack/camera_info': (CameraInfo, 'sensor_msgs/msg/CameraInfo'),
    'focal_stack/lens_state': (JointState, 'sensor_msgs/msg/JointState'),
    'focal_stack/depth_gt': (Image, 'sensor_msgs/msg/Image'),
    'depth/image': (Image, 'sensor_msgs/msg/Image'),
    'depth/uncertainty': (Image, 'sensor_msgs/msg/Image'),
    'depth/camera_info': (CameraInfo, 'sensor_msgs/msg/CameraInfo'),
    'depth/image_colorized': (Image, 'sensor_msgs/msg/Image'),
    'depth/points': (PointCloud2, 'sensor_msgs/msg/PointCloud2'),
    'all_in_focus/image': (Image, 'sensor_msgs/msg/Image'),
}


def _stamp_of(raw: bytes, msg_cls) -> int:
    return ros_io.stamp_to_ns(deserialize_message(raw, msg_cls).header.stamp)


class DemoRecorder(Node):
    """Records the demo's topics into ``out/bag`` (mcap) and keeps what the report needs."""

    def __init__(self, out: Path, namespace: str = '/camera') -> None:
        super().__init__('demo_recorder', namespace=namespace)
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.bag_path = self.out / 'bag'
        if self.bag_path.exists():
            import shutil
            shutil.rmtree(self.bag_path)
        self.typestore = get_typestore(Stores.ROS2_JAZZY)
        self.writer = Writer(self.bag_path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self._lock = threading.Lock()
        self.conns = {}
        self.t_image: dict[int, float] = {}
        self.t_depth: dict[int, float] = {}
        self.last: dict[str, bytes] = {}
        self.depth_raw: dict[int, bytes] = {}
        self.unc_raw: dict[int, bytes] = {}
        self.gt_raw: dict[int, bytes] = {}
        self.aif_raw: dict[int, bytes] = {}
        self.counts = {t: 0 for t in RECORDED}
        qos = subscription_qos('reliable', 10)
        for topic, (cls, typename) in RECORDED.items():
            sub = self.create_subscription(cls, topic, lambda raw, t=topic: self._on_raw(t, raw), qos, raw=True)
            self.conns[topic] = self.writer.add_connection(sub.topic_name, typename, typestore=self.typestore)

    def _on_raw(self, topic: str, raw: bytes) -> None:
        now = time.monotonic()
        cls = RECORDED[topic][0]
        stamp = _stamp_of(raw, cls)
        with self._lock:
            if self.writer is None:
                return
            self.writer.write(self.conns[topic], time.time_ns(), raw)
            self.counts[topic] += 1
            self.last[topic] = raw
            if topic == 'focal_stack/image':
                self.t_image[stamp] = now
            elif topic == 'depth/image':
                self.t_depth[stamp] = now
                self.depth_raw[stamp] = raw
            elif topic == 'depth/uncertainty':
                self.unc_raw[stamp] = raw
            elif topic == 'focal_stack/depth_gt':
                self.gt_raw[stamp] = raw
            elif topic == 'all_in_focus/image':
                self.aif_raw[stamp] = raw

    def caught_up(self, processed: int) -> bool:
        """True once every depth the inference node published has arrived here."""
        with self._lock:
            return len(self.t_depth) >= processed and len(self.unc_raw) >= processed

    def finish(self, inference, capture) -> int:
        """Close the bag, print the report, write PNGs; exit status (1 if no depth came back)."""
        with self._lock:
            self.writer.close()
            self.writer = None
        from ..eval.metrics import aggregate, compute_metrics
        stats = inference.stats()
        per = []
        lat = []
        rel_unc = []
        for stamp, raw in sorted(self.depth_raw.items()):
            depth = ros_io.image_to_depth(deserialize_message(raw, Image))
            if stamp in self.t_image:
                lat.append((self.t_depth[stamp] - self.t_image[stamp]) * 1e3)
            if stamp in self.gt_raw:
                gt = ros_io.image_to_depth(deserialize_message(self.gt_raw[stamp], Image))
                unc = None
                if stamp in self.unc_raw:
                    unc = ros_io.image_to_depth(deserialize_message(self.unc_raw[stamp], Image))
                per.append(compute_metrics(depth, gt, unc))
                if unc is not None:
                    with np.errstate(invalid='ignore', divide='ignore'):
                        r = unc / gt
                    rel_unc.append(float(np.nanmedian(r[np.isfinite(r)])) if np.isfinite(r).any() else np.nan)
        n = len(self.depth_raw)
        sent = capture.sweeps if capture is not None else len(self.t_image)
        span = (max(self.t_depth.values()) - min(self.t_image.values())) if n and self.t_image else float('nan')
        drops = stats['dropped_busy'] + stats['dropped_pair_timeout'] + stats['dropped_pair_evicted']
        print(f'ddfs demo: engine {stats["engine"]} on {stats["backend_detail"]}')
        print(f'  stacks: {sent} published, {n} depth maps received, {drops} dropped, '
              f'{stats["errors_total"]} rejected')
        if lat:
            print(f'  latency (stack published -> depth received, over ROS): p50 {np.percentile(lat, 50):.1f} ms, '
                  f'p95 {np.percentile(lat, 95):.1f} ms; in-node p50 {stats["latency_ms_p50"]:.1f} ms, '
                  f'p95 {stats["latency_ms_p95"]:.1f} ms')
            rate = capture.get_parameter('rate').value if capture else float('nan')
            print(f'  throughput: {n / span:.2f} stacks/s (camera rate {rate:g} Hz)')
        if per:
            m = aggregate(per)
            print(f'  depth error vs the scene\'s true depth ({len(per)} stacks): AbsRel {m["absrel"]:.3f}, '
                  f'RMS {m["rms"]:.3f} m, delta1 {m["delta1"]:.1f} %, coverage {100 * m["coverage"]:.1f} %')
            if not m['coverage'] >= 0.5:
                rel = float(np.nanmedian(rel_unc)) if rel_unc else float('nan')
                print(f'  note: {100 * (1 - (m["coverage"] or 0)):.0f} % of the pixels were blanked (NaN) by the '
                      f'depth sanity check (max_relative_uncertainty = '
                      f'{inference.get_parameter("max_relative_uncertainty").value}, max_uncertainty = '
                      f'{inference.get_parameter("max_uncertainty").value} m): this engine\'s median '
                      f'uncertainty is {rel:.2f} x the depth. The error covers the pixels kept. To see the '
                      f'depth anyway: --params-file with max_relative_uncertainty: 0.0, or another engine '
                      f'(--engine engines/ddfs_s.json)')
        written = self._write_pngs()
        print(f'  wrote {", ".join(str(p) for p in written)}')
        print(f'  wrote bag {self.bag_path} (mcap, {sum(self.counts.values())} messages on '
              f'{sum(1 for c in self.counts.values() if c)} topics)')
        return 0 if n else 1

    def _write_pngs(self) -> list[Path]:
        out = []
        if not self.depth_raw:
            return out
        stamp = max(self.depth_raw)
        depth = ros_io.image_to_depth(deserialize_message(self.depth_raw[stamp], Image))
        gt = None
        if stamp in self.gt_raw:
            gt = ros_io.image_to_depth(deserialize_message(self.gt_raw[stamp], Image))
            ok = gt[np.isfinite(gt)]
            lo, hi = float(np.percentile(ok, 1)), float(np.percentile(ok, 99))
        else:
            ok = depth[np.isfinite(depth)]
            lo, hi = (float(ok.min()), float(ok.max())) if ok.size else (0.0, 1.0)
        images = {'depth_colorized.png': colorize_depth(depth, lo, hi)}
        if gt is not None:
            images['depth_gt_colorized.png'] = colorize_depth(gt, lo, hi)
        if stamp in self.unc_raw:
            unc = ros_io.image_to_depth(deserialize_message(self.unc_raw[stamp], Image))
            finite = unc[np.isfinite(unc)]
            images['uncertainty.png'] = colorize_uncertainty(unc, float(np.percentile(finite, 99)) if finite.size
                                                             else 1.0)
        if 'focal_stack/image' in self.last:
            img = deserialize_message(self.last['focal_stack/image'], Image)
            arr = ros_io.image_to_array(img)
            if 'focal_stack/camera_info' in self.last:
                h = deserialize_message(self.last['focal_stack/camera_info'], CameraInfo).height
                arr = arr[-h:]          # the last tile: the farthest focus of a near->far sweep
            bgr = ros_io.pixels_to_unit(arr, img.encoding)[..., ::-1] if arr.shape[-1] == 3 else \
                ros_io.pixels_to_unit(arr, img.encoding)
            images['input_frame.png'] = np.clip(np.round(bgr * 255), 0, 255).astype(np.uint8)
        if self.aif_raw:
            img = deserialize_message(self.aif_raw[stamp if stamp in self.aif_raw else max(self.aif_raw)], Image)
            unit = ros_io.pixels_to_unit(ros_io.image_to_array(img), img.encoding)
            bgr = unit[..., ::-1] if unit.shape[-1] == 3 else unit
            images['all_in_focus.png'] = np.clip(np.round(bgr * 255), 0, 255).astype(np.uint8)
        for name, img in images.items():
            path = self.out / name
            cv2.imwrite(str(path), img)
            out.append(path)
        return out
