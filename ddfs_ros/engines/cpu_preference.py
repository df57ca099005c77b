"""The measured CPU preference of an engine: manifest field ``cpu_preference``.

    python -m ddfs_ros.engines.cpu_preference engines/ddfs_s.json [engines/dfv_s.json ...] [--dry-run]

On a CPU the fastest way to run an engine depends on the network: a 2D U-Net runs
about twice as fast as the onnxruntime fp32 graph when its ``torch.export`` program
runs under bf16 autocast on a CPU with AVX512-BF16 / AMX, while 3D convolutions are
slow in torch at any precision.  So it is measured, per engine, and written into the
manifest:

- time onnxruntime fp32, torch fp32 and torch bf16 (when this CPU has fast bf16,
  :func:`~ddfs_ros.engines.torch_backend.cpu_has_fast_bf16`) on one
  :data:`TIMING_SIZE` input (``warmup`` runs each, then ``runs`` rounds that run every
  option once, so that a change in the machine's load hits all alike; the median per
  option; each backend's default thread count, which is what the node uses).  Time on
  an otherwise idle machine;
- measure the relative depth difference ``|d_bf16 - d_fp32| / d_fp32`` of bf16 to
  fp32 (median / p99 / max over pixels) on realistic inputs: the first
  :data:`VALIDATION_STACKS` validation stacks of the manifest's training data
  (``training.config.data.cache``/val) at their own size; random inputs of the timing
  size when that data is not on this machine (the record says which);
- choose (:func:`choose`) the fastest option whose p99 relative difference is <=
  :data:`MAX_REL_DIFF_P99` (fp32 options always qualify), but keep onnxruntime fp32
  unless that option is at least :data:`MIN_SPEEDUP_OVER_ONNXRUNTIME` times faster.

The record::

    "cpu_preference": {"backend": "torch", "precision": "bf16", "rule": "...",
                       "measured": {"onnxruntime_fp32_ms": ..., "torch_fp32_ms": ..., "torch_bf16_ms": ...,
                                    "bf16_rel_diff_median": ..., "bf16_rel_diff_p99": ..., "bf16_rel_diff_max": ...,
                                    "machine": "...", "date": "..."}}

How ``load_engine`` uses it (:func:`resolve_cpu_choice`): on a CPU device with
``backend='auto'`` the preferred backend goes first and the others follow as
fallbacks; with ``precision='auto'`` the preferred backend runs the preferred
precision and every other one fp32.  A bf16 preference on a CPU without fast bf16
falls back to the fastest measured fp32 option.  Without the field nothing changes.

Writing the field changes only the JSON: the manifest's artefact hashes cover the ONNX,
``.pt2`` (and FP16 ONNX) bytes, not the JSON itself, so they stay valid.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..focus_volume import focus_curve_weights
from .manifest import EngineError, EngineManifest, load_manifest
from . import torch_backend

PREFERENCE_KEY = 'cpu_preference'
#: (H, W) of the timing input: the node's default ``processing_width`` (256) at 4:3.
TIMING_SIZE = (192, 256)
#: bf16 is chosen only if its p99 relative depth difference to fp32 is at most this.
MAX_REL_DIFF_P99 = 0.01
#: Validation stacks the bf16 difference is measured on.
VALIDATION_STACKS = 8
#: (backend, precision) options, in the order a tie is resolved.
OPTIONS = (('onnxruntime', 'fp32'), ('torch', 'fp32'), ('torch', 'bf16'))
#: onnxruntime stays the CPU default (the project's rule: much faster than torch eager
#: for 3D convolutions) unless another option measures at least this much faster.
MIN_SPEEDUP_OVER_ONNXRUNTIME = 1.25


@dataclass
class CpuChoice:
    """What ``load_engine`` does on a CPU: backend first in the chain, its precision, why."""

    backend: str
    precision: str
    note: str = ''


def read_preference(manifest: EngineManifest) -> tuple[Optional[dict], str]:
    """``(the manifest's cpu_preference dict or None, note)``; a malformed one is ignored with a note."""
    pref = manifest.raw.get(PREFERENCE_KEY)
    if pref is None:
        return None, ''
    if (not isinstance(pref, dict) or (pref.get('backend'), pref.get('precision')) not in OPTIONS):
        return None, (f'engine {manifest.name}: ignoring malformed {PREFERENCE_KEY} {pref!r} '
                      f'(backend/precision must be one of {list(OPTIONS)})')
    return pref, ''


def resolve_cpu_choice(pref: dict, fast_bf16: bool) -> CpuChoice:
    """The preference as it applies on this CPU.

    A bf16 preference needs fast bf16 here; without it the fastest *measured* fp32
    option is used (onnxruntime when the record has no fp32 timings).
    """
    backend, precision = pref['backend'], pref['precision']
    if precision != 'bf16' or fast_bf16:
        return CpuChoice(backend, precision)
    m = pref.get('measured') or {}
    fp32 = {b: m.get(f'{b}_fp32_ms') for b in ('onnxruntime', 'torch')}
    fp32 = {b: float(t) for b, t in fp32.items() if isinstance(t, (int, float))}
    best = min(fp32, key=fp32.get) if fp32 else 'onnxruntime'
    return CpuChoice(best, 'fp32', f'{PREFERENCE_KEY} prefers {backend} bf16, but this CPU has no fast bf16 '
                                   f'(AVX512-BF16 / AMX): using the fastest measured fp32 option, {best}')


# -- measuring ---------------------------------------------------------------------------------
def timing_inputs(manifest: EngineManifest, size: Sequence[int] = TIMING_SIZE, seed: int = 0) -> dict:
    """Random inputs of the manifest's shapes at ``size`` (H, W) for a dynamic engine.

    Images and volumes uniform in [0, 1]; ``depths`` the training hypotheses; ``focus``
    F distances uniform in inverse depth over the training focus range (``curve_weights``:
    their focus-curve weights on the hypotheses).
    """
    H, W = (int(v) for v in size) if manifest.dynamic_size else manifest.image_size
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in manifest.inputs.items():
        if name == 'depths':
            out[name] = torch.as_tensor(manifest.train_hypotheses(), dtype=torch.float32)[None]
        elif name in ('focus', 'curve_weights'):
            near, far = manifest.train_focus_range or (manifest.hypotheses.get('d_min', 0.5),
                                                       manifest.hypotheses.get('d_max', 2.0))
            inv = np.linspace(1 / float(near), 1 / float(far), shape[-1])
            if name == 'focus':
                out[name] = torch.as_tensor(1 / inv, dtype=torch.float32)[None]
            else:       # the focus curve's weights of F frames on the training hypotheses
                w = focus_curve_weights(1 / inv, manifest.train_hypotheses())
                out[name] = torch.as_tensor(w, dtype=torch.float32)[None]
        else:
            out[name] = torch.rand(*shape[:-2], H, W, generator=g)
    return out


def _validation_shard(manifest: EngineManifest) -> Optional[Path]:
    """The first validation shard of the manifest's training data, if it is on this machine."""
    data = (((manifest.raw.get('training') or {}).get('config') or {}).get('data') or {})
    cache = data.get('cache')
    if not cache:
        return None
    c = Path(cache)
    roots = [c] if c.is_absolute() else [Path.cwd() / c, manifest.path.parent.parent / c]
    for root in roots:
        shards = sorted((root / 'val').glob('shard_[0-9][0-9][0-9][0-9].npz'))
        if shards:
            return shards[0]
    return None


def validation_inputs(manifest: EngineManifest, count: int = VALIDATION_STACKS) -> tuple[list[dict], str]:
    """``(list of single-stack input dicts, description)`` from the validation shard; ``([], why)`` if none.

    The inputs are built as training builds them (:func:`ddfs_ros.network_inputs.stack_inputs`,
    which ``training/stack_data.ShardDataset`` uses too).
    """
    shard = _validation_shard(manifest)
    if shard is None:
        return [], 'no validation shard of the training data on this machine'
    needed = ['frames', 'focus', 'f_numbers', 'nframes', 'lens', 'ref', 'depths', 'cost']
    with np.load(shard) as z:
        if manifest.family == 'dfv':
            needed = ['frames', 'focus', 'nframes']
        if not set(needed) <= set(z.files):
            return [], f'{shard} lacks {sorted(set(needed) - set(z.files))}'
        a = {k: z[k][:count] for k in needed}
    from ..network_inputs import stack_inputs
    out = []
    for i in range(len(a['nframes'])):
        F = int(a['nframes'][i])
        if manifest.family == 'dfv' and F != manifest.num_frames:
            continue
        if manifest.family != 'dfv' and len(a['depths'][i]) != manifest.num_hypotheses:
            continue
        x = stack_inputs(manifest.family, a['frames'][i, :F].astype(np.float32) / 255.0, a['focus'][i, :F],
                         a['f_numbers'][i, :F] if 'f_numbers' in a else None,
                         a['lens'][i] if 'lens' in a else None, int(a['ref'][i]) if 'ref' in a else 0,
                         a['depths'][i] if 'depths' in a else None, a['cost'][i] if 'cost' in a else None,
                         manifest.focus_volume_modes if 'focus_volume' in manifest.inputs else None,
                         frame_inputs='frames' in manifest.inputs)
        out.append({k: v[None] for k, v in x.items()})
    if not out:
        return [], f'no stack in {shard} matches the engine (F / D)'
    h, w = out[0]['stack' if manifest.family == 'dfv' else 'image'].shape[-2:]
    return out, f'{len(out)} validation stacks of {_short(shard.parent)} at {h}x{w}'


def _short(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (no machine paths in manifests)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _relative_diff(engine_a, engine_b, batches: list[dict]) -> np.ndarray:
    """Per-pixel |a - b| / |b| of the depth, over all ``batches`` (finite, positive b)."""
    diffs = []
    for x in batches:
        da = engine_a.infer(x)[0].double()
        db = engine_b.infer(x)[0].double()
        ok = torch.isfinite(da) & torch.isfinite(db) & (db > 0)
        diffs.append(((da - db).abs() / db)[ok].numpy())
    return np.concatenate(diffs) if diffs else np.zeros(0)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return model


def machine_description() -> str:
    """CPU model, logical CPUs and whether it has fast bf16, for the record."""
    return f'{cpu_model()}, {os.cpu_count()} logical CPUs, fast bf16: {"yes" if torch_backend.cpu_has_fast_bf16() else "no"}'


def choose(measured: dict, max_rel_diff_p99: float = MAX_REL_DIFF_P99,
           min_speedup: float = MIN_SPEEDUP_OVER_ONNXRUNTIME) -> tuple[str, str]:
    """The (backend, precision) of ``measured`` the node should run on a CPU.

    onnxruntime fp32 unless the fastest other option is at least ``min_speedup`` times
    faster; bf16 only if its p99 relative depth difference to fp32 qualifies.
    """
    cands = []
    for backend, precision in OPTIONS:
        t = measured.get(f'{backend}_{precision}_ms')
        if t is None:
            continue
        if precision == 'bf16':
            p99 = measured.get('bf16_rel_diff_p99')
            if p99 is None or not p99 <= max_rel_diff_p99:
                continue
        cands.append((float(t), backend, precision))
    if not cands:
        raise EngineError('no backend could be timed')
    t, backend, precision = min(cands, key=lambda c: c[0])     # min keeps the first of equal times
    t_ort = measured.get('onnxruntime_fp32_ms')
    if backend != 'onnxruntime' and t_ort is not None and float(t_ort) < min_speedup * t:
        return 'onnxruntime', 'fp32'
    return backend, precision


def measure(manifest_path: str | Path, size: Sequence[int] = TIMING_SIZE, runs: int = 5, warmup: int = 2,
            stacks: int = VALIDATION_STACKS, max_rel_diff_p99: float = MAX_REL_DIFF_P99,
            say=print) -> dict:
    """Time the CPU options of one engine and return its ``cpu_preference`` record (nothing written)."""
    from . import load_engine
    manifest = load_manifest(manifest_path)
    x = timing_inputs(manifest, size)
    H, W = x['stack' if manifest.family == 'dfv' else 'image'].shape[-2:]
    # Other work on the CPU skews the small-thread torch timings most (measured: torch 780 ms
    # vs 66 ms idle while a second export ran), so the record says how busy the machine was.
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else None
    cores = os.cpu_count() or 1
    if load is not None and load > 0.5 * cores:
        say(f'{manifest.name}: warning: load average {load:.1f} on {cores} CPUs while timing: the choice may '
            f'not hold on an idle machine (rerun python -m ddfs_ros.engines.cpu_preference {manifest_path} then)')
    measured: dict = {}
    engines = {}
    bf16 = torch_backend.cpu_has_fast_bf16()
    for backend, precision in OPTIONS:
        key = f'{backend}_{precision}_ms'
        measured[key] = None
        if precision == 'bf16' and not bf16:
            say(f'{manifest.name}: {backend} {precision}: skipped, this CPU has no fast bf16')
            continue
        try:
            e = load_engine(manifest.path, backend=backend, device='cpu', fallback=False, precision=precision)
            for _ in range(max(1, warmup)):
                e.infer(x)
        except EngineError as err:
            say(f'{manifest.name}: {backend} {precision}: cannot run: {err}')
            continue
        engines[(backend, precision)] = e
    # round robin, so that a change in the machine's load hits every option alike
    times: dict = {k: [] for k in engines}
    for _ in range(runs):
        for k, e in list(engines.items()):
            t0 = time.perf_counter()
            try:
                e.infer(x)
            except EngineError as err:
                say(f'{manifest.name}: {k[0]} {k[1]}: failed to run: {err}')
                del engines[k], times[k]
                continue
            times[k].append((time.perf_counter() - t0) * 1e3)
    for (backend, precision), ts in times.items():
        key = f'{backend}_{precision}_ms'
        measured[key] = round(float(statistics.median(ts)), 2)
        say(f'{manifest.name}: {engines[(backend, precision)].description}: {measured[key]:.1f} ms at {H}x{W} '
            f'(runs {", ".join(f"{t:.0f}" for t in ts)})')
    if ('torch', 'bf16') in engines and ('torch', 'fp32') in engines:
        batches, what = validation_inputs(manifest, stacks)
        if not batches:
            what = f'random inputs at {H}x{W} ({what})'
            batches = [timing_inputs(manifest, size, seed=s) for s in range(1, 3)]
        r = _relative_diff(engines[('torch', 'bf16')], engines[('torch', 'fp32')], batches)
        measured.update({'bf16_rel_diff_median': float(np.median(r)),
                         'bf16_rel_diff_p99': float(np.percentile(r, 99)),
                         'bf16_rel_diff_max': float(r.max()), 'bf16_rel_diff_input': what})
        say(f'{manifest.name}: bf16 vs fp32 relative depth difference on {what}: median '
            f'{measured["bf16_rel_diff_median"]:.2e}, p99 {measured["bf16_rel_diff_p99"]:.2e}, '
            f'max {measured["bf16_rel_diff_max"]:.2e}')
    backend, precision = choose(measured, max_rel_diff_p99)
    measured.update({
        'input_size': [int(H), int(W)], 'runs': runs, 'warmup': warmup,
        'threads': {'torch': torch.get_num_threads(), 'onnxruntime': 'default (physical cores)'},
        'torch': torch.__version__, 'onnxruntime': _ort_version(), 'machine': machine_description(),
        'load_average_1min': None if load is None else round(load, 2), 'cpus': cores,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    })
    rule = rule_text(H, W, runs, warmup, max_rel_diff_p99)
    say(f'{manifest.name}: preferred on this CPU: {backend} {precision}')
    return {'backend': backend, 'precision': precision, 'rule': rule, 'measured': measured}


def rule_text(H: int, W: int, runs: int, warmup: int, max_rel_diff_p99: float = MAX_REL_DIFF_P99,
              min_speedup: float = MIN_SPEEDUP_OVER_ONNXRUNTIME) -> str:
    """The ``rule`` string of a record: how :func:`choose` picked."""
    return (f'onnxruntime fp32 unless the fastest of {", ".join(f"{b} {p}" for b, p in OPTIONS)} on one '
            f'{H}x{W} input (median of {runs} round-robin runs after {warmup} warm-up runs each) is >= '
            f'{min_speedup:g}x faster; bf16 only if its p99 relative depth difference to fp32 is <= '
            f'{max_rel_diff_p99:g}')


def _ort_version() -> Optional[str]:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return None


def write_preference(manifest_path: str | Path, record: dict) -> Path:
    """Set ``cpu_preference`` in an existing manifest; every other key is kept as it was."""
    path = Path(manifest_path)
    raw = json.loads(path.read_text())
    raw[PREFERENCE_KEY] = record
    path.write_text(json.dumps(raw, indent=1, default=str))
    return path


def measure_and_write(manifest_path: str | Path, **kwargs) -> dict:
    record = measure(manifest_path, **kwargs)
    write_preference(manifest_path, record)
    return record


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description='(Re)measure the CPU preference of engines and write it into their '
                                             'manifests (see the module docstring).')
    ap.add_argument('manifests', nargs='+', help='engines/NAME.json')
    ap.add_argument('--size', type=int, nargs=2, default=list(TIMING_SIZE), metavar=('H', 'W'))
    ap.add_argument('--runs', type=int, default=5)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--stacks', type=int, default=VALIDATION_STACKS, help='validation stacks for the bf16 check')
    ap.add_argument('--max-rel-diff-p99', type=float, default=MAX_REL_DIFF_P99)
    ap.add_argument('--dry-run', action='store_true', help='print the record, write nothing')
    a = ap.parse_args(argv)
    for path in a.manifests:
        try:
            record = measure(path, a.size, a.runs, a.warmup, a.stacks, a.max_rel_diff_p99)
        except EngineError as e:
            print(f'{path}: {e}')
            return 1
        if a.dry_run:
            print(json.dumps({PREFERENCE_KEY: record}, indent=1))
        else:
            write_preference(path, record)
            print(f'wrote {PREFERENCE_KEY} into {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
