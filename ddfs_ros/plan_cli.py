"""``ddfs-plan``: plan the focus distances of a sweep for a lens and a depth range.

::

    ddfs-plan --near 0.4 --far 3.0 --frames 5 --focal-length 0.025 --f-number 2.0 \\
              --pixel-pitch 3e-6 --width 1920 [--calibration calib.yaml] [--raw-step 1]

Prints the planned distances (and raw values with a calibration), the model's expected
relative depth error next to uniform-in-dioptre and uniform-in-depth schedules, and the
``focus_distances`` line for the capture node (see :mod:`ddfs_ros.planner`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


from .optics import LensModel
from .planner import DEFAULT_PROCESSING_WIDTH, plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ddfs-plan', description='Plan a focus schedule for a lens and depth range.')
    p.add_argument('--near', type=float, required=True, help='nearest depth of interest (m)')
    p.add_argument('--far', type=float, required=True, help='farthest depth of interest (m)')
    p.add_argument('--frames', type=int, default=5, help='frames per sweep')
    p.add_argument('--focal-length', type=float, required=True, help='focal length (m)')
    p.add_argument('--f-number', type=float, required=True)
    p.add_argument('--pixel-pitch', type=float, required=True, help='pixel pitch (m/px) at --width')
    p.add_argument('--width', type=int, default=DEFAULT_PROCESSING_WIDTH,
                   help=f'published frame width (px) the pitch refers to (default {DEFAULT_PROCESSING_WIDTH})')
    p.add_argument('--processing-width', type=int, default=DEFAULT_PROCESSING_WIDTH,
                   help='width the cost volume runs at (px)')
    p.add_argument('--usable-blur', type=float, default=None,
                   help='usable blur diameter (px at processing width; default: the cost volume clamp)')
    p.add_argument('--weighting', choices=('depth', 'dioptre'), default='dioptre',
                   help='depths of interest uniform in dioptres (default) or in metres')
    p.add_argument('--calibration', default=None, help='calibration YAML (ddfs-calibrate output or camera.yaml)')
    p.add_argument('--raw-step', type=float, default=1.0, help='focus control step (raw units)')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cal = None
    try:
        if args.calibration:
            from .calibration import load_calibration_pairs
            from .cameras.v4l2 import FocusCalibration
            pairs = load_calibration_pairs(args.calibration)
            cal = FocusCalibration(pairs[:, 0], pairs[:, 1])
        lens = LensModel(args.focal_length, args.f_number, args.pixel_pitch)
        result = plan(args.near, args.far, args.frames, lens, args.width, args.processing_width, cal,
                      args.raw_step, args.usable_blur, args.weighting)
    except (ValueError, FileNotFoundError) as e:
        print(f'ddfs-plan: {e}', file=sys.stderr)
        return 2
    print('frame  focus (m)  dioptres' + ('  raw' if result.raw is not None else ''))
    for i, s in enumerate(result.focus_m):
        print(f'{i:5d}  {s:9.4f}  {1.0 / s:8.3f}' + (f'  {result.raw[i]:g}' if result.raw is not None else ''))
    c = result.compared
    print(f"model relative depth error: planned {c['planned']:.4f}, uniform in dioptres {c['dioptre']:.4f}, "
          f"uniform in depth {c['depth']:.4f}")
    print('capture node: focus_distances: [' + ', '.join(f'{s:.4f}' for s in result.focus_m) + ']')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
