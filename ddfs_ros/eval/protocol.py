"""The camera-setting-shift protocol of DDFS as one command (``ddfs-eval protocol camera-shift``).

Train settings: focus {0.1, 0.3, 1.5} m with one lens (f = 10 mm, N = 2, pitch 65 um
at 128 px), scenes 0.1-1.5 m.  Test settings: the focus distances {0.15, 0.7} m of the
DDFS paper (as a 2-frame stack, and with their geometric mean added so that 3-frame
DFV engines can run too), another lens (f = 16 mm, N = 2.8, pitch 40 um at 128 px),
and both shifts at once.  The settings are those of ``training/evaluate.py`` and of
the ``training/configs/shift_*.yaml`` models.

Every setting becomes a bag (``OUT/bags/<setting>``) of the *same* procedural scenes
(nearest depth 0.1-0.4 m, far/near 2-8), rendered with that setting's camera and
sensor noise, so only the camera differs between rows.  Every engine (and the
baseline) is scored on every bag, offline through the node's pipeline or, with
``replay=True``, through the node over ROS; one table goes to
``OUT/camera_shift.md`` (+ ``.csv``), per-setting reports to ``OUT/<setting>/``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..optics import LensModel
from .bags import StackBagWriter
from .bag_cli import START_STAMP_NS
from .report import metrics_table, write_report, write_summary_csv

TRAIN_FOCUS = (0.1, 0.3, 1.5)
SHIFT_FOCUS = (0.15, round(math.sqrt(0.15 * 0.7), 4), 0.7)
SHIFT_FOCUS_F2 = (0.15, 0.7)
#: Lenses as (f m, N, pitch m/px at 128 px width).
TRAIN_LENS = (0.010, 2.0, 6.5e-5)
OTHER_LENS = (0.016, 2.8, 4.0e-5)
SCENE_NEAR = (0.1, 0.4)
SCENE_RATIO = (2.0, 8.0)

SETTINGS = {
    'train': (TRAIN_FOCUS, TRAIN_LENS, 'train settings: focus {0.1, 0.3, 1.5} m, f 10 mm, N 2, p 65 um'),
    'test_focus': (SHIFT_FOCUS, TRAIN_LENS, 'focus {0.15, 0.324, 0.7} m, training lens'),
    'test_focus_f2': (SHIFT_FOCUS_F2, TRAIN_LENS, 'focus {0.15, 0.7} m (F = 2), training lens'),
    'test_lens': (TRAIN_FOCUS, OTHER_LENS, 'training focus, other lens: f 16 mm, N 2.8, p 40 um'),
    'test_both': (SHIFT_FOCUS, OTHER_LENS, 'focus {0.15, 0.324, 0.7} m and the other lens'),
}


def protocol_scenes(count: int, size: int, seed: int) -> list:
    """The protocol's procedural scenes: (rgb H x W x 3, depth H x W m) pairs, reproducible."""
    from .. import scenes
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        near = rng.uniform(*SCENE_NEAR)
        far = near * rng.uniform(*SCENE_RATIO)
        sc = scenes.procedural_scene(rng, size, (near, far))
        rgb = np.asarray(sc.rgb, dtype=np.float32)
        if rgb.max() > 1.5:
            rgb = rgb / 255.0
        out.append((rgb, np.asarray(sc.depth_m, dtype=np.float32)))
    return out


def make_setting_bag(path, setting: str, scene_list: list, size: int, seed: int, storage: str = 'mcap') -> Path:
    """Render the protocol scenes with one setting's camera into a bag at ``path``."""
    from ..render import SensorNoise, render_stack
    focus, (f, n, pitch128), _ = SETTINGS[setting]
    lens = LensModel(f, n, pitch128 * 128.0 / size)
    noise = SensorNoise(full_well=2000.0, read_noise=2.0)
    with StackBagWriter(path, storage=storage) as w:
        for k, (rgb, depth) in enumerate(scene_list):
            stack = render_stack(rgb, depth, focus, lens, noise=noise, quantize_bits=8, rng=seed * 7919 + k,
                                 stamp_ns=START_STAMP_NS + k * 500_000_000)
            w.write(stack, depth_gt=depth)
    return Path(path)


def run_camera_shift(out, engines: Sequence = (), backend: str = 'auto', baseline=True,
                     hypothesis_mode='fixed', stacks: int = 16, size: int = 128, seed: int = 7,
                     replay: bool = False, settings: Optional[Sequence[str]] = None,
                     grid_stacks: int = 2, max_relative_uncertainty: float = 0.0) -> list:
    """Render the setting bags (reused when present), score every method, write the table.

    Returns the rows (one per method and setting, with a ``setting`` key).  ``baseline``:
    True = every baseline (focus measure and median oracle), False = none, or a list of
    ``--baseline`` names.  ``grid_stacks``
    stacks per method and setting go into the image grids (0: no grids).
    ``max_relative_uncertainty`` is the node's uncertainty mask; the protocol's default
    0 scores every pixel, so that all methods are compared on the same pixels.
    """
    from .offline import evaluate_offline
    out = Path(out)
    (out / 'bags').mkdir(parents=True, exist_ok=True)
    names = list(settings or SETTINGS)
    scene_list = None
    rows = []
    for name in names:
        bag = out / 'bags' / name
        if not bag.exists():
            if scene_list is None:
                scene_list = protocol_scenes(stacks, size, seed)
            make_setting_bag(bag, name, scene_list, size, seed)
        if replay and engines:
            from .replay import ReplayOptions, replay_bag
            runs, samples = replay_bag(bag, engines, ReplayOptions(
                backend=backend, hypothesis_mode=hypothesis_mode, grid_stacks=grid_stacks,
                node_params={'max_relative_uncertainty': float(max_relative_uncertainty)}))
            if baseline:
                b_runs, b_samples = evaluate_offline(bag, (), baseline=baseline, grid_stacks=grid_stacks)
                runs += b_runs
                samples.update(b_samples)
        else:
            runs, samples = evaluate_offline(bag, engines, backend=backend, baseline=baseline,
                                             hypothesis_mode=hypothesis_mode, grid_stacks=grid_stacks,
                                             max_relative_uncertainty=max_relative_uncertainty)
        desc = SETTINGS[name][2]
        setting_rows = write_report(out / name, str(bag), runs, samples, has_gt=True,
                                    mode=('replay' if replay else 'offline') + f'; camera-shift setting {name}',
                                    info={'setting': desc, 'hypotheses': hypothesis_mode,
                                          'max_relative_uncertainty': max_relative_uncertainty or 'off'})
        for r in setting_rows:
            r['setting'] = name
            rows.append(r)
    write_summary_csv(out / 'camera_shift.csv', rows)
    lines = ['# Camera-setting shift (DDFS protocol)', '',
             f'{stacks} procedural scenes (nearest depth 0.1-0.4 m, far/near 2-8) at {size} x {size}, '
             f'rendered per setting; hypotheses: {hypothesis_mode}; uncertainty mask: '
             f'{max_relative_uncertainty or "off (every pixel scored)"}.', '']
    for name in names:
        lines.append(f'- `{name}`: {SETTINGS[name][2]}')
    lines += ['', metrics_table(rows, True, first_col='method', extra_cols=('setting',)), '',
              'Rows with n = 0 are engines that cannot take the setting (e.g. a DFV engine trained on F = 3 '
              'gets a 2-frame stack); see the per-setting report for the reason.']
    (out / 'camera_shift.md').write_text('\n'.join(lines) + '\n')
    return rows
