"""Camera-setting shift of the shipped engines: settings outside what they were trained on.

    python -m training.camera_shift --engines engines/ddfs_s.json engines/dfv_s.json \
        --out out/camera_shift --md training/RESULTS_camera_shift.md

The DDFS claim is that a network that sees the camera only through the cost volume
degrades less than a frame-based one when the camera changes.  The engines here were
trained on random cameras (F, focus schedule, blur range: ``training/configs``), so the
shifts are taken *outside* those draws, on the same test-split scenes (procedural
scenes textured with the test-split photographs and 7-Scenes test frames,
:mod:`ddfs_ros.data_splits`), 128 x 128, noise and 8 bits:

- ``matched``: F = 5, focus uniform in dioptres over the scene's 5th-95th depth
  percentiles, largest blur 6 px (inside the training draws);
- ``blur_18px`` (lens): as matched with the largest blur 18 px (training: at most 12);
- ``blur_1px``: largest blur 1 px: a lens shift for engines trained on 1.5-12 px only;
  inside the draws of the extra training parts since session 3 (0.5-4 / 0.7-12 px), so
  for the current engines it measures how much a small blur costs, not a shift;
- ``narrow_sweep`` (schedule): focus over the middle 40 % (in dioptres) of that range,
  so much of the scene lies outside the sweep;
- ``frames_10`` (schedule): F = 10 (training: at most 8; fixed-F engines refuse);
- ``frames_3``: F = 3 (inside the cost-volume family's draws; fixed-F engines refuse).

Every setting renders the same scenes into a bag; every engine and both baselines are
scored offline through the node's pipeline (``from_focus`` hypotheses, every pixel
scored: no uncertainty mask), and the table gives AbsRel per setting and its ratio to
``matched``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

#: name -> (F, largest blur px, fraction of the dioptric sweep kept, description)
SETTINGS = {
    'matched': (5, 6.0, 1.0, 'F 5, dioptre sweep over the 5th-95th percentiles, blur <= 6 px'),
    'blur_18px': (5, 18.0, 1.0, 'lens shift: blur <= 18 px (training <= 12)'),
    'blur_1px': (5, 1.0, 1.0, 'small blur: <= 1 px (inside the extra training parts, 0.5-4 / 0.7-12 px)'),
    'narrow_sweep': (5, 6.0, 0.4, 'schedule shift: sweep over the middle 40 % in dioptres'),
    'frames_10': (10, 6.0, 1.0, 'schedule shift: F = 10 (training F <= 8)'),
    'frames_3': (3, 6.0, 1.0, 'F = 3'),
}


def scenes(count: int, size: int, seed: int) -> list:
    """Test-split scenes (rgb, depth m), reproducible."""
    from .stack_data import StackDataConfig, draw_scene
    cfg = StackDataConfig(size=size, sources={'procedural': 0.7, 'rgbd_7scenes': 0.3})
    rng = np.random.default_rng(seed)
    return [draw_scene(cfg, 'test', rng)[:2] for _ in range(count)]


def camera(depth: np.ndarray, setting: str):
    """Focus distances (m, near to far) and lens for one scene and setting."""
    from ddfs_ros.optics import LensModel, coc_m
    F, blur, keep, _ = SETTINGS[setting]
    lo, hi = np.percentile(depth, [5, 95])
    u_near, u_far = 1.0 / lo, 1.0 / max(hi, lo * 1.2)
    mid, half = 0.5 * (u_near + u_far), 0.5 * keep * (u_near - u_far)
    focus = 1.0 / np.linspace(mid + half, mid - half, F)
    f, N = min(0.016, 0.5 * focus.min()), 2.0
    d = np.percentile(depth, [0.5, 99.5])
    cmax = float(np.max(coc_m(d[:, None], focus[None, :], f, N)))
    return focus, LensModel(f, N, cmax / blur)


def make_bags(out: Path, count: int, size: int, seed: int) -> dict:
    from ddfs_ros.eval.bag_cli import START_STAMP_NS
    from ddfs_ros.eval.bags import StackBagWriter
    from ddfs_ros.render import SensorNoise, render_stack
    scene_list = None
    bags = {}
    for name in SETTINGS:
        bag = out / 'bags' / name
        bags[name] = bag
        if bag.exists():
            continue
        scene_list = scene_list or scenes(count, size, seed)
        bag.parent.mkdir(parents=True, exist_ok=True)
        with StackBagWriter(bag) as w:
            for k, (rgb, depth) in enumerate(scene_list):
                focus, lens = camera(depth, name)
                st = render_stack(rgb, depth, focus, lens, noise=SensorNoise(full_well=3000.0, read_noise=2.0),
                                  quantize_bits=8, rng=seed * 7919 + k, stamp_ns=START_STAMP_NS + k * 500_000_000)
                w.write(st, depth_gt=depth)
    return bags


def run(engines: Sequence[str], out: Path, count: int = 16, size: int = 128, seed: int = 11) -> list:
    from ddfs_ros.eval.offline import evaluate_offline
    from ddfs_ros.eval.report import write_report
    bags = make_bags(out, count, size, seed)
    rows = []
    for name, bag in bags.items():
        runs, samples = evaluate_offline(bag, list(engines), baseline=True, hypothesis_mode='from_focus',
                                         grid_stacks=2, max_relative_uncertainty=0.0)
        for r in write_report(out / name, str(bag), runs, samples, has_gt=True,
                              mode=f'offline; camera-shift setting {name}', info={'setting': SETTINGS[name][3]}):
            r['setting'] = name
            rows.append(r)
    return rows


def table(rows: Sequence[dict], count: int, size: int) -> str:
    methods = list(dict.fromkeys(r['method'] for r in rows))
    get = {(r['method'], r['setting']): r for r in rows}
    head = ['method'] + [f'{s}' for s in SETTINGS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m in methods:
        base = get.get((m, 'matched'), {}).get('absrel')
        cells = [f'`{m}`']
        for s in SETTINGS:
            r = get.get((m, s))
            v = None if r is None or not r.get('n') else r.get('absrel')
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append('refused')
            elif s == 'matched' or not base:
                cells.append(f'{v:.3f}')
            else:
                cells.append(f'{v:.3f} ({v / base:.2f}x)')
        lines.append('| ' + ' | '.join(cells) + ' |')
    desc = '\n'.join(f'- `{k}`: {v[3]}' for k, v in SETTINGS.items())
    return (f'AbsRel on {count} test-split scenes at {size} x {size} per setting (every pixel scored, '
            f'`from_focus` hypotheses); in brackets the ratio to `matched`.\n\n{desc}\n\n' + '\n'.join(lines) + '\n')


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--engines', nargs='+', required=True)
    ap.add_argument('--out', default='out/camera_shift')
    ap.add_argument('--md', default=None, help='also write the table to this Markdown file')
    ap.add_argument('--count', type=int, default=16)
    ap.add_argument('--size', type=int, default=128)
    a = ap.parse_args(argv)
    out = Path(a.out)
    rows = run(a.engines, out, a.count, a.size)
    md = table(rows, a.count, a.size)
    (out / 'camera_shift.md').write_text(md)
    (out / 'camera_shift.json').write_text(json.dumps(rows, indent=1, default=str))
    if a.md:
        Path(a.md).write_text('# Camera-setting shift of the shipped engines\n\n'
                              f'`python -m training.camera_shift --engines {" ".join(a.engines)} --md {a.md}`\n\n' + md)
    print(md)


if __name__ == '__main__':
    main()
