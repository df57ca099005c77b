"""Measured tables for real-camera support: stack alignment on/off, focus-schedule comparison.

::

    python -m bench.real_camera align   [--engine engines/dfv_cv_s.json] [--size 128] [--scenes 4]
    python -m bench.real_camera plan    [--engine engines/dfv_cv_s.json] [--size 128] [--scenes 4]

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
    from ddfs_ros.pipeline import DepthPipeline
    eng = load_engine(engine, backend='onnxruntime')
    return DepthPipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=None)


def _absrel(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    m = mask & np.isfinite(pred) & np.isfinite(gt) & (gt > 0)
    return float(np.mean(np.abs(pred[m] - gt[m]) / gt[m]))


def _scenes(n: int, size: int, depth_range):
    out = [('motorcycle', scenes.motorcycle_scene(size))] if depth_range is None else []
    rng = np.random.default_rng(11)
    while len(out) < n:
        out.append((f'procedural{len(out)}', scenes.procedural_scene(rng, size, depth_range or (0.5, 3.0))))
    return out


def run_align(engine: str, size: int, n_scenes: int, breathing: float, jitter: float) -> None:
    pipe = _pipeline(engine)
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
        r = {'scene': name}
        r['fm_clean'] = _absrel(focus_measure_depth(clean, focus)[0], gt, mask)
        r['fm_mis'] = _absrel(focus_measure_depth(mis, focus)[0], gt, mask)
        r['fm_aligned'] = _absrel(focus_measure_depth(al.frames, focus)[0], gt, mask)
        st = lambda fr: FocalStack(fr, focus, lens)
        r['net_clean'] = _absrel(pipe.run(st(clean)).depth, gt, mask)
        r['net_mis'] = _absrel(pipe.run(st(mis)).depth, gt, mask)
        pipe.align = 'similarity'
        r['net_aligned'] = _absrel(pipe.run(st(mis)).depth, gt, mask)
        pipe.align = 'off'
        r['valid'] = float(mask.mean())
        rows.append(r)
        print(r, flush=True)
    keys = ['fm_clean', 'fm_mis', 'fm_aligned', 'net_clean', 'net_mis', 'net_aligned', 'valid']
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    print(f'\n{size} px, {breathing * 100:.0f} % breathing, +-{jitter:g} px jitter, {len(rows)} scenes, '
          f'engine {Path(engine).stem}; AbsRel on the pixels alignment keeps ({mean["valid"] * 100:.0f} %)')
    print('| method | aligned stacks (no misalignment) | misaligned, align off | misaligned, align similarity |')
    print('|---|---|---|---|')
    print(f"| focus measure | {mean['fm_clean']:.3f} | {mean['fm_mis']:.3f} | {mean['fm_aligned']:.3f} |")
    print(f"| {Path(engine).stem} | {mean['net_clean']:.3f} | {mean['net_mis']:.3f} | {mean['net_aligned']:.3f} |")


def run_plan(engine: str, size: int, n_scenes: int, near: float, far: float, frames: int) -> None:
    pipe = _pipeline(engine)
    lens = LensModel(0.025, 2.0, 45e-6 * 128 / size)       # largest blur over 0.4-3 m ~ 15 px at 128 px
    p = plan(near, far, frames, lens, size, processing_width_px=size)
    schedules = {'planned': p.focus_m, 'dioptre': focus_schedule(near, far, frames, 'dioptre'),
                 'depth': focus_schedule(near, far, frames, 'depth')}
    for k, v in schedules.items():
        print(k, np.round(v, 3).tolist(), f"model {p.compared[k]:.4f}")
    res = {k: {'fm': [], 'net': []} for k in schedules}
    noise = SensorNoise()
    for i, (name, sc) in enumerate(_scenes(n_scenes, size, (near, far))):
        gt = sc.depth_m
        inrange = (gt >= near) & (gt <= far)
        for k, focus in schedules.items():
            fr = render_focal_stack(sc.rgb, gt, focus, lens, noise=noise, quantize_bits=8, rng=i)
            res[k]['fm'].append(_absrel(focus_measure_depth(fr, focus)[0], gt, inrange))
            res[k]['net'].append(_absrel(pipe.run(FocalStack(fr, focus, lens)).depth, gt, inrange))
        print(name, {k: (round(v['fm'][-1], 3), round(v['net'][-1], 3)) for k, v in res.items()}, flush=True)
    print(f'\n{near}-{far} m, F = {frames}, f = 25 mm, N = 2, {size} px, {n_scenes} procedural scenes, '
          f'engine {Path(engine).stem}; AbsRel on pixels with depth in range')
    print('| schedule | focus distances (m) | model error | focus measure | ' + Path(engine).stem + ' |')
    print('|---|---|---|---|---|')
    for k, focus in schedules.items():
        print(f"| {k} | {', '.join(f'{s:.2f}' for s in focus)} | {p.compared[k]:.4f} | "
              f"{np.mean(res[k]['fm']):.3f} | {np.mean(res[k]['net']):.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument('what', choices=('align', 'plan'))
    ap.add_argument('--engine', default=str(ROOT / 'engines' / 'dfv_cv_s.json'))
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--scenes', type=int, default=4)
    ap.add_argument('--breathing', type=float, default=0.03)
    ap.add_argument('--jitter-px', type=float, default=3.0)
    ap.add_argument('--near', type=float, default=0.4)
    ap.add_argument('--far', type=float, default=3.0)
    ap.add_argument('--frames', type=int, default=5)
    a = ap.parse_args()
    t = time.time()
    if a.what == 'align':
        run_align(a.engine, a.size, a.scenes, a.breathing, a.jitter_px)
    else:
        run_plan(a.engine, a.size, a.scenes, a.near, a.far, a.frames)
    print(f'({time.time() - t:.0f} s)')


if __name__ == '__main__':
    main()
