"""Benchmark: the project's cost volume vs the reference loop, side by side in one run.

    python -m bench.cost_volume [--size 256] [--frames 5] [--depths 64] [--device cpu|cuda]

Input: a focal stack of the built-in real scene (Middlebury motorcycle) rendered by
``ddfs_ros.render`` (RGB, F frames, focus uniform in dioptres over the scene).
Times, on the same input and the same machine:
- the reference loop (``bench.reference``: skimage Wiener per frame, hypothesis and
  channel + scipy Gaussian), once in float64 (the accuracy reference) and once in
  float32 (the precision the project computes in: the like-for-like speedup);
- the project's ``CostVolume`` with its filter bank cached (steady state, as in the
  node: median of ``--repeat`` runs) and cold (first call, building the filters);
- the D * F * C inverse FFTs alone, in the same chunks and buffers the cost volume
  uses: the work no implementation of the method can avoid (interleaved with the
  cost-volume runs so that load from other processes affects both alike).
Last line: ``cost_volume speedup_vs_reference=<x> speedup_vs_reference_f32=<x32>
fft_fraction=<f> max_abs_diff=<y> ms_per_stack=<z> device=<cpu|cuda>`` (speedups against
the float64 and the float32 loop; max_abs_diff against the float64 one).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bench.reference import reference_cost_volume
from ddfs_ros.cost_volume import CostVolume, inverse_rfft2
from ddfs_ros.optics import LensModel, depth_hypotheses, focus_schedule
from ddfs_ros.render import render_focal_stack
from ddfs_ros.scenes import motorcycle_scene


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class InverseFFTs:
    """The D*F*C inverse FFTs alone, chunked and buffered exactly like ``CostVolume.raw_cost``."""

    def __init__(self, cv: CostVolume, frames: torch.Tensor, D: int) -> None:
        B, F, C, H, W = frames.shape
        self.D, self.H, self.W = D, H, W
        self.step = cv.depths_per_chunk(frames.shape)
        self.spec = torch.randn(self.step, B, F, C, H, W // 2 + 1, dtype=torch.complex64, device=frames.device)
        self.out = torch.empty(self.step, B, F, C, H, W, device=frames.device)
        self.half = torch.empty_like(self.spec) if cv.split_ifft else None

    def __call__(self) -> None:
        for j0 in range(0, self.D, self.step):
            d = min(self.step, self.D - j0)
            inverse_rfft2(self.spec[:d], self.out[:d], None if self.half is None else self.half[:d])


def timed(fn, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--frames', type=int, default=5)
    ap.add_argument('--depths', type=int, default=64)
    ap.add_argument('--repeat', type=int, default=7)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--skip-reference', action='store_true', help='GPU runs: skip the slow CPU loop')
    args = ap.parse_args(argv)
    device = torch.device(args.device)

    scene = motorcycle_scene(args.size)
    lens = LensModel(focal_length_m=0.025, f_number=2.0, pixel_pitch_m=21e-6 * 256 / args.size)
    lo, hi = np.percentile(scene.depth_m, [5, 95])
    focus = focus_schedule(float(lo), float(hi), args.frames, 'dioptre')
    frames = render_focal_stack(scene.rgb, scene.depth_m, focus, lens, rng=np.random.default_rng(0))
    depths = depth_hypotheses(float(scene.depth_m.min()) * 0.9, float(scene.depth_m.max()) * 1.1, args.depths)
    fchw = torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, 1))).to(device)
    F, C, H, W = fchw.shape
    print(f'input: motorcycle {H}x{W} RGB, F={F}, D={args.depths}, focus {np.round(focus, 2).tolist()} m, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads, device={device}')

    cv = CostVolume(device=device)
    call = (focus, lens.f_number, lens.focal_length_m, lens.pixel_pitch_m, depths)
    _sync(device)
    t0 = time.perf_counter()
    ours = cv(fchw, *call)
    _sync(device)
    cold = time.perf_counter() - t0
    # Interleaved, so that load from other processes hits both alike.
    iffts = InverseFFTs(cv, fchw[None], args.depths)
    iffts()
    warm, fft = [], []
    for _ in range(args.repeat):
        warm.append(timed(lambda: cv(fchw, *call), device))
        fft.append(timed(iffts, device))
    ours = cv(fchw, *call)
    ms = statistics.median(warm) * 1e3
    fft_s = statistics.median(fft)
    fft_fraction = fft_s * 1e3 / ms
    print(f'ours:      {ms:9.1f} ms/stack (median of {args.repeat}, filters cached), cold {cold * 1e3:.1f} ms')
    print(f'ifft only: {fft_s * 1e3:9.1f} ms  ({args.depths * F * C} inverse FFTs of {H}x{W}) '
          f'-> fft_fraction {fft_fraction:.2f}')

    if args.skip_reference:
        speedup, speedup32, max_diff = float('nan'), float('nan'), float('nan')
    else:
        ref_s, refs = {}, {}
        for dt in (np.float64, np.float32):
            t0 = time.perf_counter()
            refs[dt] = reference_cost_volume(frames.astype(dt), focus, lens.f_number, lens.focal_length_m,
                                             lens.pixel_pitch_m, depths, dtype=dt)
            ref_s[dt] = time.perf_counter() - t0
        diff = np.abs(ours.cpu().double().numpy() - refs[np.float64])
        diff32 = np.abs(refs[np.float32].astype(np.float64) - refs[np.float64])
        max_diff = float(diff.max())
        speedup = ref_s[np.float64] * 1e3 / ms
        speedup32 = ref_s[np.float32] * 1e3 / ms
        n = args.depths * F * C
        print(f'reference: {ref_s[np.float64] * 1e3:9.1f} ms/stack float64 (skimage wiener x {n} + scipy)')
        print(f'reference: {ref_s[np.float32] * 1e3:9.1f} ms/stack float32 (same loop; its max |diff| to float64 '
              f'{diff32.max():.2e})')
        print(f'agreement: median |diff| {np.median(diff):.2e}, p99 {np.percentile(diff, 99):.2e}, max {max_diff:.2e}')
        if np.median(diff) > 1e-3:
            raise SystemExit(f'cost volume disagrees with the reference (median {np.median(diff):.3g})')
    print(f'cost_volume speedup_vs_reference={speedup:.2f} speedup_vs_reference_f32={speedup32:.2f} '
          f'fft_fraction={fft_fraction:.2f} max_abs_diff={max_diff:.2e} ms_per_stack={ms:.1f} device={device.type}')

if __name__ == '__main__':
    main()
