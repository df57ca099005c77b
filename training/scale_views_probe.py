"""Which scale views help an engine: validation AbsRel per processing width and per combination.

Session 12's probe behind ``engines/ddfs_ms_s.json`` (training/README.md).  Per validation stack
of the robustness protocol (``ddfs_ros.eval.robustness``: sources procedural, rgbd_7scenes,
real_dfd; 256 px wide) and per member engine: depth and uncertainty at processing widths 128,
192 and 256 px (the pipeline's area downscale, pitch scaled) and at 320 / 384 px (frames
upsampled bicubic, pitch scaled, outputs area-averaged back to 256 px), then every
combination in the table by inverse variance, for each member alone and for all members
together.  The stacks are rendered in one pass over the sources, so their noise draws differ
from ``ddfs-eval robustness``'s (which restarts per source): compare rows within one run.

    PYTHONPATH=. python -m training.scale_views_probe --variant disk_otf [--engines ddfs_s,dfv_s]
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import cv2
import numpy as np

WIDTHS = (128, 192, 256, 320, 384)
COMBOS = ((256,), (128,), (192,), (320,), (384,), (192, 256), (128, 256), (256, 320), (256, 384),
          (192, 256, 320), (128, 192, 256), (128, 256, 384), (192, 256, 384), WIDTHS)


def area_back(a: np.ndarray, H: int, W: int) -> np.ndarray:
    """H x W area average of a larger map; NaN where any covered pixel is NaN."""
    ok = np.isfinite(a)
    r = cv2.resize(np.where(ok, a, 0).astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    k = cv2.resize(ok.astype(np.float32), (W, H), interpolation=cv2.INTER_AREA)
    return np.where(k > 0.999, r / np.maximum(k, 1e-6), np.nan)


def run_at(pipe, width: int, stack) -> tuple[np.ndarray, np.ndarray]:
    """(depth, uncertainty) of ``stack`` with ``pipe`` (its processing_width = ``width``), at the stack's size."""
    H, W = stack.height, stack.width
    if width <= W:
        r = pipe.run(stack)
        return r.depth, r.uncertainty
    s = width / W
    h = int(round(H * s))
    fr = np.stack([cv2.resize(f, (width, h), interpolation=cv2.INTER_CUBIC).reshape(h, width, -1)
                   for f in stack.frames])
    lens = dataclasses.replace(stack.lens, pixel_pitch_m=stack.lens.pixel_pitch_m / s)
    r = pipe.run(dataclasses.replace(stack, frames=np.clip(fr, 0, 1).astype(np.float32), lens=lens))
    return area_back(r.depth, H, W), area_back(r.uncertainty, H, W)


def main(argv=None) -> None:
    from ddfs_ros.ensemble import combine_inverse_variance
    from ddfs_ros.eval.offline import load_pipeline
    from ddfs_ros.eval.robustness import render_variant, scenes_of, stack_abs_rel
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--variant', default='disk_otf')
    ap.add_argument('--sources', default='procedural,rgbd_7scenes,real_dfd')
    ap.add_argument('--scenes', type=int, default=12)
    ap.add_argument('--engines', default='ddfs_s,dfv_s', help='engine names in engines/')
    a = ap.parse_args(argv)
    sources, members = a.sources.split(','), a.engines.split(',')
    pipes = {(m, w): load_pipeline(f'engines/{m}.json', max_relative_uncertainty=0.0, processing_width=w)
             for m in members for w in WIDTHS}
    groups = [(m, [m]) for m in members] + ([('all', members)] if len(members) > 1 else [])
    scores: dict = {}
    k = 0
    for src in sources:
        t0 = time.time()
        for rgb, gt, rdepth, lens, focus, noise in scenes_of(src, 'val', a.scenes, None, 0):
            stack = render_variant(a.variant, rgb, rdepth, focus, lens, noise, seed=k)
            k += 1
            res = {(m, w): run_at(pipes[(m, w)], w, stack) for m in members for w in WIDTHS}
            for c in COMBOS:
                for name, ms in groups:
                    ds = [res[(m, w)][0] for m in ms for w in c]
                    us = [res[(m, w)][1] for m in ms for w in c]
                    d = combine_inverse_variance(ds, us)[0] if len(ds) > 1 else ds[0]
                    scores.setdefault((src, name, c), []).append(stack_abs_rel(d, gt))
        print(f'{src}: {time.time() - t0:.0f} s', flush=True)
    print(f'\n| {a.variant}: engine, source | ' + ' | '.join('+'.join(map(str, c)) for c in COMBOS) + ' |')
    print('|---|' + '---|' * len(COMBOS))
    for name, _ in groups:
        for src in sources + ['mean']:
            cells = [np.mean([np.nanmean(scores[(s, name, c)]) for s in (sources if src == 'mean' else [src])])
                     for c in COMBOS]
            print(f'| {name}, {src} | ' + ' | '.join(f'{v:.4f}' for v in cells) + ' |')


if __name__ == '__main__':
    main()
