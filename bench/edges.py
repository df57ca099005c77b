"""Benchmark (a measurement, not a test): edge-aware upsampling and the all-in-focus image.

    python -m bench.edges [--bags BAG ...] [--engines engines/*.json] [--stacks 3] [--out bench/out_edges]

1. Upsampling: every stack of every bag (default: the shared ``motorcycle_sweep``,
   256 x 256, and a non-square 640 x 480 bag made on the fly with
   ``ddfs-bag make --source motorcycle --camera motorcycle_vga``) through
   :class:`~ddfs_ros.pipeline.DepthPipeline` with each upsampling method
   (bilinear, guided, joint_bilateral), the node's defaults otherwise
   (``hypothesis_mode`` from_focus, processing_width 256); AbsRel, edge AbsRel and
   boundary F (``ddfs_ros.eval.boundary``) averaged over stacks, per engine.
2. All-in-focus: the motorcycle scene rendered at 640 x 480 (the VGA camera, with
   sensor noise); PSNR / SSIM against the source image (the true all-in-focus image)
   of the composite at the estimated depth, at the true depth (oracle), and of the
   sharpest single frame.

Prints Markdown tables (paste into bench/RESULTS.md).
"""
from __future__ import annotations

import argparse
import glob
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED_BAG = ROOT.parent / 'shared' / 'data' / 'sample_bags' / 'motorcycle_sweep'
METHODS = ('bilinear', 'guided', 'joint_bilateral')


def make_vga_bag(folder: Path, stacks: int) -> Path:
    out = folder / 'motorcycle_vga'
    if not out.exists():
        subprocess.run([sys.executable, '-c', 'import sys; from ddfs_ros.eval.bag_cli import main; '
                        'sys.exit(main(sys.argv[1:]))', 'make', str(out), '--source', 'motorcycle',
                        '--camera', 'motorcycle_vga', '--stacks', str(stacks)], check=True, cwd=ROOT)
    return out


def upsampling_table(bags, engines, stacks: int, processing_width: int) -> str:
    from ddfs_ros.engines import load_engine
    from ddfs_ros.eval.bags import read_bag
    from ddfs_ros.eval.metrics import compute_metrics
    from ddfs_ros.ensemble import make_pipeline
    rows = ['| bag | size | engine | upsampling | AbsRel | edge AbsRel | boundary F | upsample ms |',
            '|---|---|---|---|---|---|---|---|']
    for bag in bags:
        items = [b for b in read_bag(bag) if b.ok and b.depth_gt is not None][:stacks]
        for eng_path in engines:
            eng = load_engine(eng_path, backend='onnxruntime', device='cpu')
            for method in METHODS:
                pipe = make_pipeline(eng, hypothesis_mode='from_focus', processing_width=processing_width,
                                     upsample=method)
                ms, per = [], []
                for b in items:
                    res = pipe.run(b.stack)
                    ms.append(res.timings['upsample'])
                    per.append(compute_metrics(res.depth, b.depth_gt, res.uncertainty))
                agg = {k: float(np.nanmean([p[k] for p in per])) for k in ('absrel', 'edge_absrel', 'boundary_f')}
                s = items[0].stack
                rows.append(f'| {Path(bag).name} | {s.width}x{s.height} | {eng.manifest.name} | {method} | '
                            f'{agg["absrel"]:.4f} | {agg["edge_absrel"]:.4f} | {agg["boundary_f"]:.3f} | '
                            f'{np.median(ms):.0f} |')
                print(rows[-1], flush=True)
    return '\n'.join(rows)


def aif_table(engines, processing_width: int) -> str:
    from skimage.metrics import peak_signal_noise_ratio as psnr
    from skimage.metrics import structural_similarity as ssim

    from ddfs_ros import refine
    from ddfs_ros.cameras.simulated import SimulatedCamera
    from ddfs_ros.engines import load_engine
    from ddfs_ros.eval.bag_cli import CAMERA_PRESETS
    from ddfs_ros.optics import focus_schedule
    from ddfs_ros.ensemble import make_pipeline
    from ddfs_ros.stack import FocalStack
    c = CAMERA_PRESETS['motorcycle_vga']
    cam = SimulatedCamera('motorcycle', c['width'], c['height'], c['focal_length'], c['f_number'], c['pixel_pitch'],
                          noise={'full_well': 2000.0, 'read_noise': 2.0}, seed=3)
    lo, hi = cam.depth_percentiles(5, 95)
    focus = focus_schedule(lo, hi, 5, 'dioptre')
    sweep = cam.capture_sweep(focus)
    stack = FocalStack(sweep.frames, focus, cam.lens)
    truth = cam.rgb

    def score(img):
        return psnr(truth, img, data_range=1.0), ssim(truth, img, data_range=1.0, channel_axis=2)

    rows = ['| image (motorcycle 640x480, F = 5) | PSNR dB | SSIM |', '|---|---|---|']
    best = max(range(len(focus)), key=lambda i: score(sweep.frames[i])[0])
    p, s = score(sweep.frames[best])
    rows.append(f'| sharpest single frame (#{best}, focus {focus[best]:.2f} m) | {p:.2f} | {s:.3f} |')
    oracle = refine.all_in_focus(sweep.frames, cam.depth, focus, [cam.lens.f_number] * 5,
                                 cam.lens.focal_length_m, cam.lens.pixel_pitch_m)
    p, s = score(oracle)
    rows.append(f'| composite at the true depth (oracle) | {p:.2f} | {s:.3f} |')
    for eng_path in engines:
        eng = load_engine(eng_path, backend='onnxruntime', device='cpu')
        pipe = make_pipeline(eng, hypothesis_mode='from_focus', processing_width=processing_width)
        res = pipe.run(stack, all_in_focus=True)
        p, s = score(res.all_in_focus)
        rows.append(f'| composite at the depth of {eng.manifest.name} | {p:.2f} | {s:.3f} |')
        print(rows[-1], flush=True)
    return '\n'.join(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--bags', nargs='*', default=None)
    ap.add_argument('--engines', nargs='*', default=sorted(glob.glob(str(ROOT / 'engines' / '*.json'))))
    ap.add_argument('--stacks', type=int, default=3)
    ap.add_argument('--processing-width', type=int, default=256)
    args = ap.parse_args(argv)
    t0 = time.time()
    bags = args.bags or [str(SHARED_BAG), str(make_vga_bag(Path(tempfile.mkdtemp(prefix='ddfs_edges_')),
                                                          args.stacks))]
    print(upsampling_table(bags, args.engines, args.stacks, args.processing_width))
    print()
    print(aif_table(args.engines, args.processing_width))
    print(f'\n{time.time() - t0:.0f} s')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
