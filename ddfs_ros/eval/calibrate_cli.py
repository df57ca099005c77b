"""``ddfs-calibrate``: focus calibration from a rosbag2 of a planar target.

::

    ddfs-calibrate focus BAG --out calib.yaml [--plot calib.png] [--namespace /camera]

The bag (mcap or sqlite3, read with the pure-Python ``rosbags`` library) holds, per
frame, ``<ns>/calibration/image`` (sensor_msgs/Image: mono8, mono16, rgb8, bgr8 or
32FC1) and ``<ns>/calibration/lens_state`` (sensor_msgs/JointState with named positions
``focus_raw`` and ``target_distance`` in metres), with the identical header stamp.  The
capture node's ``mode: calibrate`` publishes exactly this; ``ros2 bag record`` of the two
topics makes the bag.  ``ddfs-bag calibration`` renders one with a known lens curve.

Output: ``calib.yaml``, a parameter file for the capture node (``calibration:`` table),
the fit residual in dioptres on stdout and a PNG plot of the points and the fit.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ..calibration import (CalibrationError, SimulatedFocusMotor, centre_focus_score, fit_calibration,
                           peaks_from_samples, plot_calibration, write_calibration_yaml)
from .bags import image_to_float, normalize_namespace, offered_qos, stamp_to_ns, typestore

TOPIC_CAL_IMAGE = 'calibration/image'
TOPIC_CAL_LENS = 'calibration/lens_state'


@dataclass
class CalibrationFrame:
    """One calibration frame: H x W x C float32 image in [0, 1], raw focus value, target distance (m)."""

    stamp_ns: int
    image: np.ndarray
    focus_raw: float
    target_m: float


def _namespace(topics: Sequence[str], namespace: Optional[str]) -> str:
    if namespace is not None:
        return normalize_namespace(namespace)
    found = sorted({t[:-len(TOPIC_CAL_IMAGE)].rstrip('/') for t in topics if t.endswith('/' + TOPIC_CAL_IMAGE)
                    or t == TOPIC_CAL_IMAGE})
    if not found:
        raise CalibrationError(f'no */{TOPIC_CAL_IMAGE} topic in the bag (topics: {sorted(topics)})')
    if len(found) > 1:
        raise CalibrationError(f'several calibration namespaces {found}: pick one with --namespace')
    return normalize_namespace(found[0])


def _deserialize(reader, raw: bytes, msgtype: str):
    """``reader.deserialize``, tolerating bytes after the end of the message.

    rosbags refuses CDR payloads with more than 3 bytes past the message's end; the
    rmw_fastrtps build in this project's environment serialises a JointState whose last
    sequences are empty with 4-8 such bytes (Fast CDR aligns for the absent doubles), so
    ``ros2 bag record`` of ``calibration/lens_state`` made here would not be readable.
    The message itself is complete; the surplus is ignored.
    """
    from rosbags.highlevel import AnyReaderError
    try:
        return reader.deserialize(raw, msgtype)
    except AnyReaderError:
        if len(raw) < 4 or bytes(raw[:2]) not in (b'\x00\x00', b'\x00\x01'):
            raise
        ts = typestore()
        msgdef = ts.get_msgdef(msgtype)
        func = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
        return func(memoryview(raw)[4:], 0, msgdef.cls, ts)[0]


def read_calibration_bag(path, namespace: Optional[str] = None) -> Iterator[CalibrationFrame]:
    """Calibration frames of a bag, paired by exact header stamp, in stamp order.

    Frames whose image or lens state is missing, or whose lens state lacks ``focus_raw``
    or ``target_distance``, are skipped with a warning on stderr.
    """
    from rosbags.highlevel import AnyReader
    with AnyReader([Path(path)], default_typestore=typestore()) as reader:
        ns = _namespace([c.topic for c in reader.connections], namespace)
        want = {f'{ns}/{TOPIC_CAL_IMAGE}': 'image', f'{ns}/{TOPIC_CAL_LENS}': 'lens'}
        conns = [c for c in reader.connections if c.topic in want]
        if {want[c.topic] for c in conns} != {'image', 'lens'}:
            raise CalibrationError(f'bag lacks {ns}/{TOPIC_CAL_IMAGE} or {ns}/{TOPIC_CAL_LENS}')
        groups: dict = {}
        for conn, _, raw in reader.messages(connections=conns):
            msg = _deserialize(reader, raw, conn.msgtype)
            groups.setdefault(stamp_to_ns(msg.header.stamp), {})[want[conn.topic]] = msg
    skipped = 0
    for stamp in sorted(groups):
        g = groups[stamp]
        if 'image' not in g or 'lens' not in g:
            skipped += 1
            continue
        named = dict(zip(list(g['lens'].name), np.asarray(g['lens'].position, dtype=np.float64).tolist()))
        if 'focus_raw' not in named or 'target_distance' not in named:
            skipped += 1
            continue
        yield CalibrationFrame(stamp, image_to_float(g['image']), float(named['focus_raw']),
                               float(named['target_distance']))
    if skipped:
        print(f'ddfs-calibrate: skipped {skipped} incomplete frame(s) (image without lens_state, or no '
              'focus_raw / target_distance)', file=sys.stderr)


def calibrate_bag(path, namespace: Optional[str] = None, degree: Optional[int] = None):
    """Read a calibration bag and fit it; returns a :class:`~ddfs_ros.calibration.CalibrationFit`."""
    raws, targets, scores = [], [], []
    for fr in read_calibration_bag(path, namespace):
        raws.append(fr.focus_raw)
        targets.append(fr.target_m)
        scores.append(centre_focus_score(fr.image))
    if not raws:
        raise CalibrationError(f'{path}: no complete calibration frames')
    return fit_calibration(peaks_from_samples(raws, targets, scores), degree)


def write_calibration_bag(out, distances_m: Sequence[float], raws: Sequence[float],
                          motor: SimulatedFocusMotor = SimulatedFocusMotor(), size: tuple = (64, 64),
                          focal_length_m: float = 0.008, f_number: float = 2.0, pixel_pitch_m: float = 5e-6,
                          encoding: str = 'rgb8', namespace: str = '/camera', storage: str = 'mcap',
                          texture: str = 'astronaut', noise: bool = True, seed: int = 0) -> int:
    """Render a calibration bag: a textured plane at each distance, swept over ``raws``.

    The lens focuses at ``motor.distance_m(raw)``; frames go through the thin-lens
    renderer (:mod:`ddfs_ros.render`) with optional sensor noise.  Returns the frame count.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ..optics import LensModel
    from ..render import SensorNoise, render_focal_stack
    from ..scenes import named_texture
    from .bags import frames_to_image_bytes
    W, H = int(size[0]), int(size[1])
    lens = LensModel(focal_length_m, f_number, pixel_pitch_m)
    rgb = named_texture(texture, max(W, H))[:H, :W]
    ts = typestore()
    T = ts.types
    ns = normalize_namespace(namespace)
    writer = Writer(Path(out), version=Writer.VERSION_LATEST,
                    storage_plugin=StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3)
    qos = [offered_qos(5)]
    n = 0
    t0 = 1_700_000_000 * 1_000_000_000
    with writer:
        c_img = writer.add_connection(f'{ns}/{TOPIC_CAL_IMAGE}', 'sensor_msgs/msg/Image', typestore=ts,
                                      offered_qos_profiles=qos)
        c_lens = writer.add_connection(f'{ns}/{TOPIC_CAL_LENS}', 'sensor_msgs/msg/JointState', typestore=ts,
                                       offered_qos_profiles=qos)
        for k, d in enumerate(distances_m):
            focus = motor.distance_m(np.asarray(raws, dtype=np.float64))
            with warnings.catch_warnings():
                # far out of focus the blur exceeds half the frame and the renderer caps it
                # (and says so); those frames are flat either way, the peak is unaffected
                warnings.simplefilter('ignore', RuntimeWarning)
                frames = render_focal_stack(rgb, np.full((H, W), float(d), np.float32), focus, lens,
                                            noise=SensorNoise() if noise else None, quantize_bits=8,
                                            rng=seed * 1000 + k)
            for raw, frame in zip(raws, frames):
                sec, nsec = divmod(t0 + n * 50_000_000, 1_000_000_000)
                header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=sec, nanosec=nsec),
                                                  frame_id='camera_optical_frame')
                arr, step = frames_to_image_bytes(frame[None], encoding)
                img = T['sensor_msgs/msg/Image'](header=header, height=H, width=W, encoding=encoding,
                                                 is_bigendian=0, step=step, data=arr.reshape(-1).view(np.uint8))
                js = T['sensor_msgs/msg/JointState'](header=header, name=['focus_raw', 'target_distance'],
                                                     position=np.array([float(raw), float(d)]),
                                                     velocity=np.zeros(0), effort=np.zeros(0))
                stamp = t0 + n * 50_000_000
                writer.write(c_img, stamp, bytes(ts.serialize_cdr(img, 'sensor_msgs/msg/Image')))
                writer.write(c_lens, stamp, bytes(ts.serialize_cdr(js, 'sensor_msgs/msg/JointState')))
                n += 1
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ddfs-calibrate', description='Calibrate a focus-sweeping camera.')
    sub = p.add_subparsers(dest='cmd', required=True)
    f = sub.add_parser('focus', help='raw focus value -> distance table from a bag of a planar target')
    f.add_argument('bag')
    f.add_argument('--out', default='calib.yaml', help='parameter file to write (default calib.yaml)')
    f.add_argument('--plot', default=None, help='PNG of the points and the fit (default: OUT with .png)')
    f.add_argument('--namespace', default=None, help='namespace of the calibration topics (default: the only one)')
    f.add_argument('--degree', type=int, default=None, help='polynomial degree in dioptres (default min(3, K-2))')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        fit = calibrate_bag(args.bag, args.namespace, args.degree)
    except (CalibrationError, FileNotFoundError) as e:
        print(f'ddfs-calibrate: {e}', file=sys.stderr)
        return 2
    write_calibration_yaml(fit, args.out, str(args.bag))
    plot = args.plot or str(Path(args.out).with_suffix('.png'))
    plot_calibration(fit, plot)
    print(f'{len(fit.peaks)} target distances, raw {fit.raw_range[0]:.1f}..{fit.raw_range[1]:.1f}')
    print('target (m)  best raw  fit (m)   residual (D)')
    for p, r in zip(fit.peaks, fit.residuals_d()):
        print(f'{p.target_m:9.3f}  {p.raw:8.2f}  {float(fit.distance_m(p.raw)):7.3f}  {r:+.4f}')
    print(f'residual: rms {fit.residual_rms_d:.4f} D, max {fit.residual_max_d:.4f} D')
    print(f'wrote {args.out} (capture node: --params-file {args.out}) and {plot}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
