"""Measured tables for real-camera support: stack alignment on/off, focus-schedule comparison.

::

    python -m bench.real_camera align   [--engine E.json ...] [--size 128] [--scenes 8]
    python -m bench.real_camera plan    [--engine E.json ...] [--size 128] [--scenes 8]

Engines: every ``engines/*.json`` by default (the shipped set changes; the table names
the manifests and their sha256 prefix); an engine that does not load is skipped with
its error, so the script reruns unchanged on whatever is shipped.

Rendered stacks (thin-lens renderer, sensor noise) of known depth; AbsRel on pixels with
finite prediction for every compared condition (the same pixels across a row's columns).
Methods: the classical focus measure (``baselines.focus_measure_depth``, sml) and the
given engine through :class:`ddfs_ros.pipeline.DepthPipeline` (``from_focus`` hypotheses,
uncertainty mask off so all methods are scored on the same pixels).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ddfs_ros import scenes
from ddfs_ros.align import align_stack, misalign_stack
from ddfs_ros.baselines import focus_measure_depth
from ddfs_ros.optics import LensModel, focus_schedule
from ddfs_ros.planner import plan
from ddfs_ros.render import SensorNoise, render_focal_stack
from ddfs_ros.stack import FocalStack

ROOT = Path(__file__).resolve().parents[1]


def _pipeline(engine: str):
    from ddfs_ros.engines import load_engine
    from ddfs_ros.ensemble import make_pipeline
    eng = load_engine(engine, backend='onnxruntime')
    return make_pipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=None)


def _pipelines(engines: list) -> dict:
    """{label: DepthPipeline} for the engines that load; label = manifest stem + sha256 prefix."""
    import json
    out = {}
    for e in engines:
        try:
            sha = str(json.loads(Path(e).read_text()).get('sha256', ''))[:8]
            out[f'{Path(e).stem} ({sha})'] = _pipeline(e)
        except Exception as err:  # noqa: BLE001 - report and go on with the others
            print(f'skipping engine {e}: {type(err).__name__}: {err}', flush=True)
    return out


def _absrel(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    m = mask & np.isfinite(pred) & np.isfinite(gt) & (gt > 0)
    return float(np.mean(np.abs(pred[m] - gt[m]) / gt[m]))


def _scenes(n: int, size: int, depth_range):
    out = [('motorcycle', scenes.motorcycle_scene(size))] if depth_range is None else []
    rng = np.random.default_rng(11)
    while len(out) < n:
        out.append((f'procedural{len(out)}', scenes.procedural_scene(rng, size, depth_range or (0.5, 3.0))))
    return out


def run_align(engines: list, size: int, n_scenes: int, breathing: float, jitter: float) -> None:
    pipes = _pipelines(engines)
    lens = LensModel(0.05, 2.0, 21e-6 * 256 / size)         # config/camera.yaml's lens at this size
    rows = []
    noise = SensorNoise()
    for k, (name, sc) in enumerate(_scenes(n_scenes, size, None)):
        d = sc.depth_m[np.isfinite(sc.depth_m)]
        focus = focus_schedule(float(np.percentile(d, 5)), float(np.percentile(d, 95)), 5)
        clean = render_focal_stack(sc.rgb, sc.depth_m, focus, lens, noise=noise, quantize_bits=8, rng=k)
        mis, _ = misalign_stack(clean, focus, breathing, jitter, rng=100 + k)
        ref = int(np.argmax(focus))
        al = align_stack(mis, ref)
        mask = al.valid                       # score every condition on the pixels alignment keeps
        gt = sc.depth_m
        r = {'scene': name, 'valid': float(mask.mean())}
        r['focus measure'] = [_absrel(focus_measure_depth(x, focus)[0], gt, mask) for x in (clean, mis, al.frames)]
        st = lambda fr: FocalStack(fr, focus, lens)
        for label, pipe in pipes.items():
            pipe.align = 'off'
            vals = [_absrel(pipe.run(st(clean)).depth, gt, mask), _absrel(pipe.run(st(mis)).depth, gt, mask)]
            pipe.align = 'similarity'
            vals.append(_absrel(pipe.run(st(mis)).depth, gt, mask))
            pipe.align = 'off'
            r[label] = vals
        rows.append(r)
        print({k: (np.round(v, 3).tolist() if isinstance(v, list) else v) for k, v in r.items()}, flush=True)
    methods = [k for k in rows[0] if k not in ('scene', 'valid')]
    valid = float(np.mean([r['valid'] for r in rows]))
    print(f'\n{size} px, {breathing * 100:.0f} % breathing, +-{jitter:g} px jitter, {len(rows)} scenes '
          f'(motorcycle + procedural), 5 frames; AbsRel on the pixels alignment keeps ({valid * 100:.0f} %)')
    print('| method | no misalignment | misaligned, `align: off` | misaligned, `align: similarity` |')
    print('|---|---|---|---|')
    for m in methods:
        mean = np.mean([r[m] for r in rows], axis=0)
        print(f'| {m} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} |')


#: The schedule the first planner (commit 09f593d) chose for the default plan problem,
#: kept as a row so the table shows what the model change did.
PREVIOUS_PLAN_M = (0.40, 0.78, 1.26, 1.46, 3.00)


def run_plan(engines: list, size: int, n_scenes: int, near: float, far: float, frames: int) -> None:
    pipes = _pipelines(engines)
    lens = LensModel(0.025, 2.0, 45e-6 * 128 / size)       # largest blur over 0.4-3 m ~ 15 px at 128 px
    p = plan(near, far, frames, lens, size, processing_width_px=size)
    schedules = {'planned': p.focus_m, 'dioptre': focus_schedule(near, far, frames, 'dioptre'),
                 'depth': focus_schedule(near, far, frames, 'depth')}
    if (near, far, frames) == (0.4, 3.0, 5):
        schedules['previous planner'] = np.asarray(PREVIOUS_PLAN_M)
    from ddfs_ros.planner import PlanProblem, expected_relative_error
    prob = PlanProblem(near, far, lens, size, size)
    model = {k: expected_relative_error(v, prob) for k, v in schedules.items()}
    for k, v in schedules.items():
        print(k, np.round(v, 3).tolist(), f'model {model[k]:.4f}')
    methods = ['focus measure'] + list(pipes)
    res = {k: {m: [] for m in methods} for k in schedules}
    noise = SensorNoise()
    for i, (name, sc) in enumerate(_scenes(n_scenes, size, (near, far))):
        gt = sc.depth_m
        inrange = (gt >= near) & (gt <= far)
        for k, focus in schedules.items():
            fr = render_focal_stack(sc.rgb, gt, focus, lens, noise=noise, quantize_bits=8, rng=i)
            res[k]['focus measure'].append(_absrel(focus_measure_depth(fr, focus)[0], gt, inrange))
            for label, pipe in pipes.items():
                res[k][label].append(_absrel(pipe.run(FocalStack(fr, focus, lens)).depth, gt, inrange))
        print(name, {k: [round(v[m][-1], 3) for m in methods] for k, v in res.items()}, flush=True)
    print(f'\n{near}-{far} m, F = {frames}, f = 25 mm, N = 2, {size} px, {n_scenes} procedural scenes; '
          'AbsRel on pixels with depth in range (mean over scenes; in brackets: scenes where the schedule '
          'beats uniform in dioptres)')
    print('| schedule | focus distances (m) | model error | ' + ' | '.join(methods) + ' |')
    print('|---' * (3 + len(methods)) + '|')
    for k, focus in schedules.items():
        cells = []
        for m in methods:
            wins = int(np.sum(np.asarray(res[k][m]) < np.asarray(res['dioptre'][m])))
            cells.append(f'{np.mean(res[k][m]):.3f}' + ('' if k == 'dioptre' else f' ({wins}/{n_scenes})'))
        print(f"| {k} | {', '.join(f'{s:.2f}' for s in focus)} | {model[k]:.4f} | " + ' | '.join(cells) + ' |')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('what', choices=('align', 'plan'))
    ap.add_argument('--engine', nargs='*', default=None,
                    help='engine manifests (default: every engines/*.json); none = focus measure only')
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--scenes', type=int, default=8)
    ap.add_argument('--breathing', type=float, default=0.03)
    ap.add_argument('--jitter-px', type=float, default=3.0)
    ap.add_argument('--near', type=float, default=0.4)
    ap.add_argument('--far', type=float, default=3.0)
    ap.add_argument('--frames', type=int, default=5)
    a = ap.parse_args()
    engines = a.engine if a.engine is not None else sorted(str(p) for p in (ROOT / 'engines').glob('*.json'))
    t = time.time()
    if a.what == 'align':
        run_align(engines, a.size, a.scenes, a.breathing, a.jitter_px)
    else:
        run_plan(engines, a.size, a.scenes, a.near, a.far, a.frames)
    print(f'({time.time() - t:.0f} s)')


if __name__ == '__main__':
    main()
