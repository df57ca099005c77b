"""Benchmark: each inference backend vs torch eager on the same model and input.

    python -m bench.backends [--repeat 20] [--device cpu|cuda]

For every engine family (the shipped engines/*_s.json, or untrained tiny engines when
those are not built yet), the same random input goes through the torch program
(eager; the reference), onnxruntime and, on a GPU with TensorRT, the TensorRT plan.
Prints median ms and the speed ratio vs torch eager side by side, plus the largest
depth difference to torch.  Last line:
``backends <family>=<onnxruntime speedup vs torch> ... device=<cpu|cuda>``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench._engines import bench_engines, example_inputs
from ddfs_ros.engines import EngineError, available_backends, load_engine




def time_engine(engine, inputs, repeat: int) -> tuple[float, torch.Tensor]:
    x = {k: v.to(engine.device) for k, v in inputs.items()}
    depth = engine.infer(x)[0]          # warm-up (allocations, autotuning)
    times = []
    for _ in range(repeat):
        if engine.device.type == 'cuda':
            torch.cuda.synchronize(engine.device)
        t = time.perf_counter()
        depth = engine.infer(x)[0]
        if engine.device.type == 'cuda':
            torch.cuda.synchronize(engine.device)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), depth.float().cpu()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--repeat', type=int, default=20)
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = ap.parse_args(argv)
    engines, note = bench_engines()
    print(f'# {note}; device {args.device}; torch {torch.__version__}; backends here: {available_backends()}')
    summary = []
    for family, path in engines.items():
        ref = load_engine(path, backend='torch', device=args.device, fallback=False)
        x = example_inputs(ref.manifest)
        t_ref, d_ref = time_engine(ref, x, args.repeat)
        row = [f'{family:7s} {ref.manifest.name:14s} {ref.manifest.height}x{ref.manifest.width}  '
               f'torch eager {t_ref:8.2f} ms (1.00x)']
        speedup = {}
        for backend in ('onnxruntime', 'tensorrt'):
            try:
                e = load_engine(path, backend=backend, device=args.device, fallback=False)
            except EngineError as err:
                row.append(f'{backend}: n/a')
                print(f'# {backend} not measured: {err}')
                continue
            t, d = time_engine(e, x, args.repeat)
            speedup[backend] = t_ref / t
            row.append(f'{e.description.split(" ")[0]} {t:8.2f} ms ({t_ref / t:.2f}x, '
                       f'max |d - torch| {float((d - d_ref).abs().max()):.1e} m)')
        print('  |  '.join(row))
        summary.append(f'{family}={speedup.get("onnxruntime", float("nan")):.2f}')
        if 'tensorrt' in speedup:
            summary.append(f'{family}_tensorrt={speedup["tensorrt"]:.2f}')
    print('backends ' + ' '.join(summary) + f' device={args.device}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
