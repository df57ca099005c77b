"""Benchmark: peak memory (RSS, and GPU memory where there is one) per stack size.

    python -m bench.memory [--engine engines/ddfs_s.json] [--sizes 128 256 512] [--frames 5]

A stack of the built-in scene is rendered per size; each size then runs in a fresh
subprocess (peak RSS is per process): load the engine, read the stack (uint8, as on
the wire), run the depth pipeline (``make_pipeline``: an ensemble too) three times,
report ``ru_maxrss`` after loading and at the end.  Last line:
``memory engine=<name> <size>x<size>:F=<F>:peak_mb=<m>:stack_mb=<s> ... device=<cpu|cuda>``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    """Peak RSS of this process in MB: VmHWM (ru_maxrss survives exec and would carry
    the parent's peak from rendering into the child)."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def render_to(path: Path, size: int, frames: int) -> None:
    """Render one stack of the built-in scene to ``path`` (.npz), outside the measured process."""
    import numpy as np

    from ddfs_ros.optics import LensModel, focus_schedule
    from ddfs_ros.render import render_focal_stack
    from ddfs_ros.scenes import motorcycle_scene

    scene = motorcycle_scene(size)
    lens = LensModel(0.05, 2.0, 21e-6 * 256 / size)
    focus = focus_schedule(2.2, 4.5, frames, 'dioptre')
    stack = render_focal_stack(scene.rgb, scene.depth_m, focus, lens, rng=np.random.default_rng(0))
    np.savez(path, frames=(stack * 255).round().astype(np.uint8), focus=focus,
             lens=np.array([lens.focal_length_m, lens.f_number, lens.pixel_pitch_m]))


def measure(engine: str, stack_path: str) -> dict:
    """In a fresh process: peak RSS (MB) after loading the engine and after three stacks."""
    import numpy as np
    import torch

    from ddfs_ros.engines import load_engine
    from ddfs_ros.ensemble import make_pipeline
    from ddfs_ros.optics import LensModel
    from ddfs_ros.stack import FocalStack

    eng = load_engine(engine, backend='auto')
    pipe = make_pipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=0.0)
    loaded = _peak_mb()
    z = np.load(stack_path)
    stack = FocalStack(frames=z['frames'].astype(np.float32) / 255.0, focus_m=z['focus'], lens=LensModel(*z['lens']))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        pipe.run(stack)
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {'size': stack.width, 'frames': stack.num_frames, 'stack_mb': z['frames'].nbytes / 2**20,
            'loaded_mb': loaded, 'peak_mb': _peak_mb(), 'gpu_peak_mb': gpu,
            'engine': eng.manifest.name, 'backend': eng.backend_name}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--engine', default=str(ROOT / 'engines' / 'ddfs_s.json'))
    ap.add_argument('--sizes', type=int, nargs='+', default=[128, 256, 512])
    ap.add_argument('--frames', type=int, default=5)
    ap.add_argument('--child', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.engine, args.child)))
        return
    from ddfs_ros.engines import load_manifest
    from ddfs_ros.ensemble import is_ensemble_manifest, load_ensemble_manifest
    # a member with a fixed F (dfv) sets the stack so that every member of an ensemble takes it
    paths = load_ensemble_manifest(args.engine).members if is_ensemble_manifest(args.engine) else [args.engine]
    frames = next((f for f in (load_manifest(p).num_frames for p in paths) if f), None) or args.frames
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix='ddfs_mem_'))
    for size in args.sizes:
        render_to(tmp / f'{size}.npz', size, frames)
        out = subprocess.run([sys.executable, '-m', 'bench.memory', '--engine', args.engine,
                              '--child', str(tmp / f'{size}.npz')],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        gpu = '' if row['gpu_peak_mb'] is None else f", GPU peak {row['gpu_peak_mb']:.0f} MB"
        print(f"{size}x{size} F={row['frames']} ({row['stack_mb']:.1f} MB rgb8 stack): "
              f"RSS after load {row['loaded_mb']:.0f} MB, peak {row['peak_mb']:.0f} MB{gpu} "
              f"[{row['engine']} on {row['backend']}]")
    cells = ' '.join(f"{r['size']}x{r['size']}:F={r['frames']}:peak_mb={r['peak_mb']:.0f}:stack_mb={r['stack_mb']:.1f}"
                     for r in rows)
    device = 'cuda' if rows and rows[0]['gpu_peak_mb'] is not None else 'cpu'
    print(f"memory engine={rows[0]['engine']} {cells} device={device}")


if __name__ == '__main__':
    main()
