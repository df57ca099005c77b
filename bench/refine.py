"""Benchmark (not a test): the pipeline's ``upsample`` stage, torch/numpy code vs the numba kernels.

    python -m bench.refine [--repeat 20] [--threads N] [--size 640x480] [--low 256x192] [--frames 5]

What ``DepthPipeline.run(stack, all_in_focus=True)`` does after the network at 640 x 480
input and processing_width 256: the reference frame to gray (``refine.to_gray``), depth and
uncertainty (2 maps, 256 x 192) to 640 x 480 by ``refine.upsample`` (joint bilateral,
guided by the gray frame), and the all-in-focus composite of 5 RGB frames
(``refine.all_in_focus``).  Random frames and maps; "torch" is the reference code (what
runs on CUDA tensors and without numba), "numba" the kernels of
:mod:`ddfs_ros.refine_kernels`.  Each step is timed alternately on the two paths after one
warm-up call each (which compiles the kernels or loads them from the user cache); prints
the medians in milliseconds, their ratio and the largest difference as a Markdown table.
``--threads`` sets torch's and numba's thread counts (default: theirs, the CPU count).
"""
from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np


def _size(text: str) -> tuple[int, int]:
    w, h = text.lower().split('x')
    return int(w), int(h)


@contextmanager
def _torch_path(refine_kernels):
    """The reference code: refine behaves as if numba were not installed."""
    saved = refine_kernels.available
    refine_kernels.available = lambda: False
    try:
        yield
    finally:
        refine_kernels.available = saved


def main() -> None:
    import torch

    from ddfs_ros import refine, refine_kernels

    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--repeat', type=int, default=20)
    ap.add_argument('--size', type=_size, default=(640, 480), help='input W x H')
    ap.add_argument('--low', type=_size, default=(256, 192), help='processing W x h of the maps')
    ap.add_argument('--frames', type=int, default=5)
    ap.add_argument('--threads', type=int, default=0, help='torch and numba threads (0: their default)')
    a = ap.parse_args()
    if not refine_kernels.available():
        raise SystemExit('numba is not installed: nothing to compare')
    if a.threads:
        torch.set_num_threads(a.threads)
        refine_kernels.numba.set_num_threads(a.threads)
    (W, H), (w, h) = a.size, a.low
    rng = np.random.default_rng(0)
    frames = rng.random((a.frames, H, W, 3), dtype=np.float32)
    focus = 1 / np.linspace(1 / 0.5, 1 / 2, a.frames)
    low = torch.from_numpy(rng.uniform(0.5, 2.0, (2, h, w)).astype(np.float32))
    ref = a.frames // 2
    depth = np.asarray(refine.upsample(low, (H, W), 'bilinear')[0])

    def gray():
        return refine.to_gray(torch.from_numpy(frames[ref]).float())

    guide = gray()
    steps = {
        'to_gray (reference frame)': gray,
        f'upsample joint_bilateral (2 maps {w} x {h})': lambda: refine.upsample(low, (H, W), 'joint_bilateral',
                                                                                guide),
        f'all_in_focus ({a.frames} RGB frames)': lambda: refine.all_in_focus(
            frames, depth, focus, [2.0] * a.frames, 0.008, 8.4e-6),
        'upsample guided (not the default; torch but its area step)': lambda: refine.upsample(
            low, (H, W), 'guided', guide),
    }

    def stage():   # the three calls of the pipeline's upsample stage
        g = gray()
        up = refine.upsample(low, (H, W), 'joint_bilateral', g)
        return up, refine.all_in_focus(frames, up[0].numpy(), focus, [2.0] * a.frames, 0.008, 8.4e-6)

    steps['upsample stage (all three)'] = stage

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return (time.perf_counter() - t0) * 1e3, out

    print(f'{W} x {H} output, maps from {w} x {h}, torch threads {torch.get_num_threads()}, '
          f'numba threads {refine_kernels.numba.get_num_threads()}, median of {a.repeat}')
    print()
    print('| step | torch ms | numba ms | torch / numba | max abs diff |')
    print('|---|---|---|---|---|')
    for name, fn in steps.items():
        with _torch_path(refine_kernels):
            _, old_out = timed(fn)
        _, new_out = timed(fn)
        old, new = [], []
        for _ in range(a.repeat):
            with _torch_path(refine_kernels):
                old.append(timed(fn)[0])
            new.append(timed(fn)[0])
        flat = [np.asarray(x, dtype=np.float64) for pair in (old_out, new_out)
                for x in (pair if isinstance(pair, tuple) else (pair,))]
        half = len(flat) // 2
        diff = max(float(np.abs(o - n).max()) for o, n in zip(flat[:half], flat[half:]))
        to, tn = float(np.median(old)), float(np.median(new))
        print(f'| {name} | {to:.1f} | {tn:.1f} | {to / tn:.1f}x | {diff:.1e} |')


if __name__ == '__main__':
    main()
