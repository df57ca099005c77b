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
        for backend, precision in (('onnxruntime', 'fp32'), ('tensorrt', 'fp32'), ('torch', 'bf16')):
            key = backend if precision == 'fp32' else f'{backend}_{precision}'
            try:
                e = load_engine(path, backend=backend, device=args.device, fallback=False, precision=precision)
            except EngineError as err:
                row.append(f'{key}: n/a')
                print(f'# {key} not measured: {err}')
                continue
            if precision not in e.description.split():      # e.g. bf16 on a CPU without it
                row.append(f'{key}: n/a ({e.description})')
                continue
            t, d = time_engine(e, x, args.repeat)
            speedup[key] = t_ref / t
            rel = float(((d - d_ref).abs() / d_ref.abs().clamp_min(1e-6)).max())
            row.append(f'{key} {t:8.2f} ms ({t_ref / t:.2f}x, max |d - torch| {float((d - d_ref).abs().max()):.1e} m, '
                       f'relative {rel:.1e})')
        print('  |  '.join(row))
        summary.append(f'{family}={speedup.get("onnxruntime", float("nan")):.2f}')
        for key in ('tensorrt', 'torch_bf16'):
            if key in speedup:
                summary.append(f'{family}_{key}={speedup[key]:.2f}')
    print('backends ' + ' '.join(summary) + f' device={args.device}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
