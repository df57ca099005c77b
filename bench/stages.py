"""Benchmark (not a test): milliseconds per pipeline stage for each shipped engine, no ROS.

    python -m bench.stages [--engines engines/*.json] [--repeat 3]

Random F = 5 stacks at 128 x 128 and 640 x 480 (processing_width 256 and 160) through
``DepthPipeline.run(stack, all_in_focus=True)`` on the default backend (auto: the manifest's
measured CPU preference; ``--backend`` to choose), after one warm-up run;
prints the median of each stage's time (``DepthResult.timings``) as a Markdown table.
"""
from __future__ import annotations

import argparse
import glob
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CASES = ((128, 128, 256), (480, 640, 256), (480, 640, 160))
STAGES = ('cost_volume', 'infer', 'upsample', 'total')


def main() -> None:
    from ddfs_ros.engines import load_engine
    from ddfs_ros.optics import LensModel
    from ddfs_ros.ensemble import make_pipeline
    from ddfs_ros.stack import FocalStack

    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--engines', nargs='*', default=sorted(glob.glob(str(ROOT / 'engines' / '*.json'))))
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--backend', default='auto')
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    print('| engine | input | processing_width | ' + ' | '.join(f'{s} ms' for s in STAGES) + ' |')
    print('|---|---|---|' + '---|' * len(STAGES))
    for path in a.engines:
        engine = load_engine(path, backend=a.backend)
        print(f'# {engine.manifest.name}: {engine.description}')
        for H, W, pw in CASES:
            stack = FocalStack(rng.random((5, H, W, 3), dtype=np.float32), 1 / np.linspace(1 / 0.5, 1 / 2, 5),
                               LensModel(0.008, 2.0, 8.4e-6))
            # an ensemble reports its members' stages summed
            pipe = make_pipeline(engine, hypothesis_mode='from_focus', processing_width=pw)
            pipe.run(stack, all_in_focus=True)
            runs = [pipe.run(stack, all_in_focus=True).timings for _ in range(a.repeat)]
            cells = [f'{np.median([t.get(s, 0.0) for t in runs]):.0f}' for s in STAGES]
            print(f'| {Path(path).stem} | {W} x {H} | {pw} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
