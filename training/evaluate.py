"""Evaluate exported engines (ONNX via onnxruntime) and the classical baseline on held-out settings.

    python -m training.evaluate --engines engines/*.json [more manifests] \
        --settings heldout shift_matched shift_focus shift_focus_f2 shift_lens shift_both \
        --out training/RESULTS.md [--count 48]

Every *setting* is a test set rendered (and cached under ``.cache/data/eval_<name>``)
with camera settings the training never used:

* ``heldout``: random scenes (procedural, motorcycle, held-out real scenes), F = 5,
  focal length 10-14 mm and f-number 3.2-4.0 (bands the training split never
  samples), k = 1; the shipped engines' validation protocol.
* ``heldout_scaled``: as ``heldout`` but the world scaled by k in {2, ..., 9}; the
  cost-volume engines then run with the node's ``from_focus`` hypotheses.
* camera-shift protocol of the DDFS paper (scenes 0.1-1.5 m; the ``shift_*`` models
  were trained on focus {0.1, 0.3, 1.5} m with f = 10 mm, N = 2, pitch 65 um):
  ``shift_matched`` (the training camera), ``shift_focus`` (focus {0.15, 0.324, 0.7} m:
  0.15 and 0.7 plus their geometric mean, so that F = 3 DFV engines can run),
  ``shift_focus_f2`` (exactly {0.15, 0.7} m, F = 2: cost-volume engines and the
  baseline only), ``shift_lens`` (training focus, other lens: f = 16 mm, N = 2.8,
  pitch 40 um) and ``shift_both``.

Engines run where their input shapes fit (a DFV engine needs the stack's F).  The
cost volume is built per engine with its own hypotheses by
``ddfs_ros.cost_volume.CostVolume`` (the node's code) and the reference frame is the
farthest focus.  The baseline is ``ddfs_ros.baselines.focus_measure_depth``.  Metrics
(DESIGN.md section 8, ``ddfs_ros.eval.metrics``) are per image on every pixel with
ground truth, averaged over images.  Writes a Markdown table and a JSON file next to it.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .data import DataConfig, build_cache

CACHE_ROOT = Path('.cache/data')
SHIFT_SCENES = dict(size=128, num_hypotheses=32, d_min=0.1, d_max=1.5, spacing='inverse',
                    scene_near=(0.1, 0.4), scene_ratio=(2.0, 8.0), scale_aug=(), want_stack=True,
                    want_cost=False)
TRAIN_LENS = {'focal_length_m': 0.01, 'f_number': 2.0, 'pixel_pitch_m': 6.5e-5}
OTHER_LENS = {'focal_length_m': 0.016, 'f_number': 2.8, 'pixel_pitch_m': 4.0e-5}
TRAIN_FOCUS = (0.1, 0.3, 1.5)
SHIFT_FOCUS = (0.15, round(math.sqrt(0.15 * 0.7), 4), 0.7)

SETTINGS: dict = {
    'heldout': (dict(size=128, frames=5, scale_aug=(1.0,), want_stack=True, want_cost=False), 'fixed',
                'F=5, f 10-14 mm, N 3.2-4.0 (never in training), k=1'),
    'heldout_scaled': (dict(size=128, frames=5, scale_aug=tuple(np.arange(2.0, 9.01, 0.5).tolist()),
                            want_stack=True, want_cost=False), 'from_focus',
                       'as heldout, world scaled by k in {2..9}; cost-volume engines use from_focus hypotheses'),
    'shift_matched': (dict(SHIFT_SCENES, fixed_focus=TRAIN_FOCUS, fixed_lens=TRAIN_LENS), 'fixed',
                      'focus {0.1, 0.3, 1.5} m, f 10 mm N 2 p 65 um (the shift models\' training camera)'),
    'shift_focus': (dict(SHIFT_SCENES, fixed_focus=SHIFT_FOCUS, fixed_lens=TRAIN_LENS), 'fixed',
                    f'focus {{{", ".join(str(s) for s in SHIFT_FOCUS)}}} m, training lens'),
    'shift_focus_f2': (dict(SHIFT_SCENES, fixed_focus=(0.15, 0.7), fixed_lens=TRAIN_LENS), 'fixed',
                       'focus {0.15, 0.7} m (F=2), training lens'),
    'shift_lens': (dict(SHIFT_SCENES, fixed_focus=TRAIN_FOCUS, fixed_lens=OTHER_LENS), 'fixed',
                   'training focus, other lens: f 16 mm, N 2.8, p 40 um'),
    'shift_both': (dict(SHIFT_SCENES, fixed_focus=SHIFT_FOCUS, fixed_lens=OTHER_LENS), 'fixed',
                   'focus {0.15, 0.324, 0.7} m and the other lens'),
}


def setting_config(name: str) -> DataConfig:
    return DataConfig(**SETTINGS[name][0])


def load_setting(name: str, count: int, seed: int = 1000, workers: int = 1) -> dict:
    """The cached test set of ``name`` (rendered on first use): arrays + per-sample meta."""
    folder = CACHE_ROOT / f'eval_{name}_{count}'
    path = folder / 'test.npz'
    if not path.exists():
        build_cache(setting_config(name), 'test', count, folder, seed=seed, workers=workers)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads((folder / 'test_meta.json').read_text())['samples']
    return {'arrays': arrays, 'meta': meta}


class OnnxEngine:
    """An exported engine run with onnxruntime (CPU), fed like the node feeds it."""

    def __init__(self, manifest_path: Path | str) -> None:
        import onnxruntime as ort

        self.manifest_path = Path(manifest_path)
        self.m = json.loads(self.manifest_path.read_text())
        self.name = self.m['name']
        self.family = self.m['family']
        self.session = ort.InferenceSession(str(self.manifest_path.with_name(self.m['onnx'])),
                                            providers=['CPUExecutionProvider'])
        self._cv = None

    def hypotheses(self, focus: np.ndarray, mode: str) -> np.ndarray:
        from ddfs_ros.optics import depth_hypotheses, scale_hypotheses_to_focus

        h = self.m['hypotheses']
        base = depth_hypotheses(h['d_min'], h['d_max'], int(self.m['num_hypotheses']), h['spacing'])
        if mode == 'from_focus':
            return scale_hypotheses_to_focus(base, self.m['train_focus_range'], focus)
        return base

    def accepts(self, num_frames: int) -> bool:
        return self.family != 'dfv' or int(self.m['num_frames']) == num_frames

    def run(self, stack: np.ndarray, focus: np.ndarray, meta: dict, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """stack F x 3 x H x W sorted near -> far, focus F (m) -> depth, uncertainty H x W."""
        if self.family == 'dfv':
            feeds = {'stack': stack[None].astype(np.float32), 'focus': focus[None].astype(np.float32)}
        else:
            from ddfs_ros.cost_volume import CostVolume

            if self._cv is None:
                self._cv = CostVolume('cpu')
            hyps = self.hypotheses(focus, mode)
            cost = self._cv(stack.astype(np.float32), focus, meta['f_number'], meta['focal_length_m'],
                            meta['pixel_pitch_m'], hyps).numpy()
            feeds = {'image': stack[int(np.argmax(focus))][None].astype(np.float32), 'cost_volume': cost[None],
                     'depths': hyps[None].astype(np.float32)}
        depth, unc = self.session.run(['depth', 'uncertainty'], feeds)
        return depth[0, 0], unc[0, 0]


def baseline(stack: np.ndarray, focus: np.ndarray) -> tuple[np.ndarray, None]:
    from ddfs_ros.baselines import focus_measure_depth

    depth, _conf = focus_measure_depth(np.moveaxis(stack, 1, -1), focus)
    return np.asarray(depth, dtype=np.float64), None


def evaluate(engines: Sequence[OnnxEngine], settings: Sequence[str], count: int, workers: int = 1,
             with_baseline: bool = True) -> list[dict]:
    """Rows {setting, model, family, n, metrics..., ms_per_image}."""
    from ddfs_ros.eval.metrics import aggregate, compute_metrics

    rows = []
    for name in settings:
        data = load_setting(name, count, workers=workers)
        stacks = data['arrays']['stack'].astype(np.float32)
        focus = data['arrays']['focus_sorted']
        gts = data['arrays']['gt']
        F = stacks.shape[1]
        mode = SETTINGS[name][1]
        runners = [(e.name, e.family, (lambda s, f, mt, e=e: e.run(s, f, mt, mode))) for e in engines if e.accepts(F)]
        if with_baseline:
            runners.append(('focus_measure (classical)', 'baseline', lambda s, f, mt: baseline(s, f)))
        for label, family, fn in runners:
            per, t0 = [], time.perf_counter()
            for i in range(len(gts)):
                depth, unc = fn(stacks[i], focus[i], data['meta'][i])
                per.append(compute_metrics(depth, gts[i], unc))
            ms = (time.perf_counter() - t0) / len(gts) * 1e3
            agg = aggregate(per)
            rows.append({'setting': name, 'model': label, 'family': family, 'F': F, 'ms_per_image': ms, **agg})
            print(f'{name:16s} {label:28s} absrel {agg["absrel"]:.4f} rms {agg["rms"]:.4f} '
                  f'delta1 {agg["delta1"]:.1f}', flush=True)
    return rows


def markdown(rows: Sequence[dict], count: int) -> str:
    lines = ['| setting | model | family | F | AbsRel | RMS (m) | δ1 (%) | MAE (m) | avgUnc (m) |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        unc = '' if not math.isfinite(r.get('avg_unc', math.nan)) else f'{r["avg_unc"]:.3f}'
        lines.append(f'| {r["setting"]} | {r["model"]} | {r["family"]} | {r["F"]} | {r["absrel"]:.3f} | '
                     f'{r["rms"]:.3f} | {r["delta1"]:.1f} | {r["mae"]:.3f} | {unc} |')
    used = sorted({r['setting'] for r in rows}, key=list(SETTINGS).index)
    lines += ['', f'{count} images per setting, 128 x 128; metrics per image on all pixels with ground truth, '
              'averaged over images (ddfs_ros.eval.metrics).', '', 'Settings:']
    lines += [f'- `{s}`: {SETTINGS[s][2]}' for s in used]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description='Evaluate engines and the classical baseline on held-out settings.')
    ap.add_argument('--engines', nargs='*', default=[], help='engine manifests (NAME.json)')
    ap.add_argument('--settings', nargs='+', default=['heldout'], choices=list(SETTINGS))
    ap.add_argument('--count', type=int, default=48, help='images per setting')
    ap.add_argument('--out', default='training/RESULTS.md')
    ap.add_argument('--workers', type=int, default=1, help='render workers for missing test sets')
    ap.add_argument('--no-baseline', action='store_true')
    ap.add_argument('--title', default='Validation on camera settings the training never used')
    a = ap.parse_args(argv)
    engines = [OnnxEngine(p) for p in a.engines]
    rows = evaluate(engines, a.settings, a.count, workers=a.workers, with_baseline=not a.no_baseline)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f'# {a.title}\n\n' + markdown(rows, a.count))
    out.with_suffix('.json').write_text(json.dumps(rows, indent=1))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
