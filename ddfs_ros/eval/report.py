"""Evaluation results and reports: per-stack records, summary rows, Markdown/CSV/JSON, image grid.

A run of one method over a bag is a :class:`MethodRun` holding one
:class:`StackResult` per stamp.  :func:`summary_row` turns it into the row of the
metrics table (metrics averaged over scored stacks, latency percentiles, drops);
:func:`write_report` writes ``report.md``, ``per_stack.csv``, ``summary.csv`` and the
image grids (``grid.png`` for the first method, ``grid_<method>.png`` for each).
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .metrics import METRIC_KEYS, NO_GT_KEYS, SPARSIFICATION_PERCENTS, aggregate, ause

#: How many stacks the grid shows.
GRID_STACKS = 3

_LABELS = {'absrel': 'AbsRel', 'sqrel': 'SqRel', 'mse': 'MSE', 'rms': 'RMS', 'log_rms': 'logRMS',
           'mae': 'MAE', 'delta1': 'δ1 %', 'delta2': 'δ2 %', 'delta3': 'δ3 %', 'bumpiness': 'Bump',
           'avg_unc': 'avgUnc', 'coverage': 'Cover', 'edge_absrel': 'edge AbsRel', 'boundary_f': 'bound. F',
           'unc_cal': 'unc_cal', 'ause': 'AUSE', 'beats_oracle_px': 'beats oracle %'}


@dataclass
class StackResult:
    """One stamp of one method.

    Attributes:
        status: 'ok' (a depth came out), 'rejected' (the stack is invalid; ``reason``
            says why), 'dropped' (a valid stack gave no output in time) or 'error'.
        metrics: :func:`~ddfs_ros.eval.metrics.compute_metrics` output ({} unless ok).
        latency_ms: stack in -> depth out (ms); None when there was no output.
        depth, uncertainty: H x W metres (kept for the grid only, may be None).
    """

    index: int
    stamp_ns: int
    status: str
    reason: str = ''
    message: str = ''
    metrics: dict = field(default_factory=dict)
    latency_ms: Optional[float] = None
    depth: Optional[np.ndarray] = None
    uncertainty: Optional[np.ndarray] = None


@dataclass
class MethodRun:
    """All stamps of one method on one bag."""

    method: str
    backend: str = ''
    results: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def ok(self) -> list:
        return [r for r in self.results if r.status == 'ok']


def _percentile(values: Sequence[float], q: float) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.percentile(v, q)) if v else math.nan


def summary_row(run: MethodRun) -> dict:
    """The table/JSON row of one method: every metric, n, latency stats, dropped, rejected."""
    ok = run.ok()
    agg = aggregate([r.metrics for r in ok])
    lat = [r.latency_ms for r in ok]
    row = {'method': run.method, 'backend': run.backend, 'n': len(ok)}
    row.update({k: agg[k] for k in METRIC_KEYS})
    row['n_scored'] = agg['n_scored']
    row['latency_ms_p50'] = _percentile(lat, 50)
    row['latency_ms_p95'] = _percentile(lat, 95)
    row['latency_ms_mean'] = float(np.mean(lat)) if lat else math.nan
    row['dropped'] = sum(1 for r in run.results if r.status == 'dropped')
    row['rejected'] = sum(1 for r in run.results if r.status == 'rejected')
    row['errors'] = sum(1 for r in run.results if r.status == 'error')
    row['stacks'] = len(run.results)
    row.update(run.extra)
    return row


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (np.floating,)):
        return _json_safe(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_json(path, bag: str, rows: Sequence[dict], **extra) -> Path:
    """``{"bag": ..., "rows": [...], ...extra}`` with NaN written as null (strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {'bag': str(bag), 'rows': list(rows)}
    doc.update(extra)
    path.write_text(json.dumps(_json_safe(doc), indent=2) + '\n')
    return path


def _fmt(key: str, v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return '–'
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if key.startswith('delta') or key == 'coverage' or key == 'beats_oracle_px':
        return f'{v * 100:.1f}' if key == 'coverage' else f'{v:.1f}'
    if key.startswith('latency'):
        return f'{v:.1f}'
    if key == 'bumpiness':
        return f'{v:.2f}'
    if key == 'unc_cal':
        return f'{v:.3f}'
    return f'{v:.4f}'


def metrics_table(rows: Sequence[dict], has_gt: bool = True, first_col: str = 'method',
                  extra_cols: Sequence[str] = ()) -> str:
    """Markdown table of summary rows (coverage shown in %)."""
    keys = ['absrel', 'edge_absrel', 'boundary_f', 'sqrel', 'rms', 'log_rms', 'mae', 'delta1', 'delta2', 'delta3',
            'bumpiness', 'avg_unc', 'coverage', 'unc_cal', 'ause', 'beats_oracle_px'] if has_gt else list(NO_GT_KEYS)
    head = [first_col, *extra_cols, 'backend', 'n'] + [_LABELS[k] + (' %' if k == 'coverage' else '')
                                                        for k in keys]
    head += ['p50 ms', 'p95 ms', 'dropped', 'rejected']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [str(r.get(first_col, '')), *[str(r.get(c, '')) for c in extra_cols], str(r.get('backend', '')),
                 _fmt('n', r.get('n'))]
        cells += [_fmt(k, r.get(k)) for k in keys]
        cells += [_fmt('latency', r.get('latency_ms_p50')), _fmt('latency', r.get('latency_ms_p95')),
                  _fmt('n', r.get('dropped')), _fmt('n', r.get('rejected'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_per_stack_csv(path, runs: Sequence[MethodRun]) -> Path:
    path = Path(path)
    cols = ['method', 'index', 'stamp_ns', 'status', 'reason', 'latency_ms', 'n_valid', *METRIC_KEYS, 'message']
    with path.open('w', newline='') as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for run in runs:
            for r in run.results:
                m = r.metrics
                w.writerow([run.method, r.index, r.stamp_ns, r.status, r.reason,
                            '' if r.latency_ms is None else f'{r.latency_ms:.3f}', m.get('n_valid', '')]
                           + ['' if k not in m or not math.isfinite(m[k]) else repr(float(m[k])) for k in METRIC_KEYS]
                           + [r.message])
    return path


def write_summary_csv(path, rows: Sequence[dict]) -> Path:
    path = Path(path)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with path.open('w', newline='') as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ('' if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return path


def slug(name: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('_') or 'method'


def save_grid(path, samples: Sequence[dict], title: str = '') -> Optional[Path]:
    """PNG grid, one row per sample: first frame, ground truth, prediction, error, uncertainty.

    Each sample is ``{'frame': H x W x C [0,1], 'gt': H x W or None, 'depth': H x W,
    'uncertainty': H x W or None, 'label': str}``.  Depth panels share one colour range
    per row (2nd-98th percentile of the ground truth, else of the prediction); the
    error is ``pred - gt`` on a symmetric diverging scale.  Every panel has a colour bar.
    """
    if not samples:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    cols = ['first frame', 'ground truth (m)', 'prediction (m)', 'error pred − gt (m)', 'uncertainty (m)']
    fig, axes = plt.subplots(len(samples), 5, figsize=(17, 3.2 * len(samples) + 0.6), squeeze=False)
    for i, s in enumerate(samples):
        gt, depth, unc = s.get('gt'), s.get('depth'), s.get('uncertainty')
        ref = gt if gt is not None and np.isfinite(gt).any() else depth
        finite = ref[np.isfinite(ref)] if ref is not None else np.array([])
        vmin, vmax = (np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0))
        if vmax <= vmin:
            vmax = vmin + 1e-3
        ax = axes[i]
        frame = np.clip(s['frame'], 0, 1)
        ax[0].imshow(frame[..., 0] if frame.shape[-1] == 1 else frame, cmap='gray')
        ax[0].set_ylabel(s.get('label', ''), fontsize=8)
        panels = [(1, gt, 'turbo_r', vmin, vmax), (2, depth, 'turbo_r', vmin, vmax)]
        if gt is not None and depth is not None:
            err = depth.astype(np.float64) - gt
            fe = np.abs(err[np.isfinite(err)])
            lim = float(np.percentile(fe, 98)) if fe.size else 1.0
            panels.append((3, err, 'coolwarm', -max(lim, 1e-3), max(lim, 1e-3)))
        else:
            panels.append((3, None, None, 0, 1))
        if unc is not None:
            fu = unc[np.isfinite(unc)]
            panels.append((4, unc, 'magma', 0.0, float(np.percentile(fu, 98)) if fu.size else 1.0))
        else:
            panels.append((4, None, None, 0, 1))
        for j, img, cmap, lo, hi in panels:
            if img is None:
                ax[j].text(0.5, 0.5, 'n/a', ha='center', va='center', transform=ax[j].transAxes)
                continue
            cm = plt.get_cmap(cmap).with_extremes(bad='black')
            im = ax[j].imshow(np.ma.masked_invalid(img), cmap=cm, vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax[j], fraction=0.046, pad=0.03)
        for j in range(5):
            ax[j].set_xticks([])
            ax[j].set_yticks([])
            if i == 0:
                ax[j].set_title(cols[j], fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    # fixed margins: tight_layout costs seconds per figure on a small CPU
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.02, top=1 - 0.6 / fig.get_figheight(),
                        wspace=0.25, hspace=0.12)
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def sparsification_curves(runs: Sequence[MethodRun]) -> dict:
    """method -> (curve, oracle): the mean sparsification curves (AbsRel at x = 10..100 % kept,
    float64 arrays) over the stacks that have them; methods without uncertainty are left out."""
    out = {}
    for run in runs:
        agg = aggregate([r.metrics for r in run.ok()])
        curve = np.array([agg.get(f'spars_{x}', math.nan) for x in SPARSIFICATION_PERCENTS])
        oracle = np.array([agg.get(f'spars_oracle_{x}', math.nan) for x in SPARSIFICATION_PERCENTS])
        if np.isfinite(curve).all() and np.isfinite(oracle).all():
            out[run.method] = (curve, oracle)
    return out


def save_sparsification(path, runs: Sequence[MethodRun], title: str = '') -> Optional[Path]:
    """PNG of the sparsification curves (solid: ranked by predicted uncertainty / depth; dashed:
    the oracle, ranked by the true error) of every method with an uncertainty; None if none has one."""
    curves = sparsification_curves(runs)
    if not curves:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    x = np.asarray(SPARSIFICATION_PERCENTS, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for k, (method, (curve, oracle)) in enumerate(curves.items()):
        colour = f'C{k % 10}'
        ax.plot(x, curve, '-o', color=colour, ms=3, label=f'{method} (AUSE {ause(curve, oracle):.4f})')
        ax.plot(x, oracle, '--', color=colour, lw=1, label=f'{method}: oracle')
    ax.set_xlabel('most confident pixels kept (%)')
    ax.set_ylabel('AbsRel of the kept pixels')
    ax.set_xlim(5, 105)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def machine_line() -> str:
    """Short description of this machine for report headers."""
    from ..engines.cpu_preference import cpu_model
    return f'{platform.system()} {platform.machine()}, {cpu_model()}, {os.cpu_count()} logical CPUs'


def write_report(out_dir, bag: str, runs: Sequence[MethodRun], samples: dict, has_gt: bool,
                 mode: str, notes: Sequence[str] = (), info: Optional[dict] = None) -> list:
    """Write report.md, summary.csv, per_stack.csv and the grids into ``out_dir``; return the rows.

    ``samples`` maps method -> list of grid samples (see :func:`save_grid`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary_row(r) for r in runs]
    write_summary_csv(out / 'summary.csv', rows)
    write_per_stack_csv(out / 'per_stack.csv', runs)
    grids = []
    for run in runs:
        smp = samples.get(run.method) or []
        if not smp:
            continue
        p = save_grid(out / f'grid_{slug(run.method)}.png', smp, title=f'{run.method} on {Path(bag).name}')
        grids.append(p)
        if len(grids) == 1:
            shutil.copyfile(p, out / 'grid.png')
    spars_png = save_sparsification(out / 'sparsification.png', runs,
                                    title=f'sparsification on {Path(bag).name}') if has_gt else None

    lines = [f'# Depth evaluation: {Path(bag).name}', '',
             f'- bag: `{bag}`',
             f'- mode: {mode}',
             f'- date: {_dt.datetime.now().isoformat(timespec="seconds")}',
             f'- machine: {machine_line()}']
    for k, v in (info or {}).items():
        lines.append(f'- {k}: {v}')
    lines += ['', '## Metrics' if has_gt else '## Latency and coverage (the bag has no depth_gt)', '',
              metrics_table(rows, has_gt), '',
              'Metrics per stack on valid pixels (ground truth finite and > 0, prediction finite and > 0), '
              'averaged over the stacks that produced a depth (n). δk: % of pixels with '
              'max(pred/gt, gt/pred) < 1.25^k. Bump: DFV bumpiness (x100). Cover: % of ground-truth pixels '
              'with a prediction. unc_cal: fraction of scored pixels with |error| <= predicted uncertainty. '
              'AUSE: area between the sparsification curve (AbsRel of the x % of pixels with the lowest '
              'uncertainty / depth, x = 10..100) and its oracle (pixels ranked by true error). beats oracle: % '
              'of ground-truth pixels whose |error| is below that of a constant at the median ground truth '
              '(pixels without a depth do not count). Latency: stack in -> depth out. dropped: valid stacks '
              'without an output; rejected: invalid stacks (listed below).', '']
    bad = [(run.method, r) for run in runs for r in run.results if r.status in ('rejected', 'error', 'dropped')]
    if bad:
        lines += ['## Stacks without a depth', '', '| method | # | stamp (ns) | status | reason | detail |',
                  '|---|---|---|---|---|---|']
        for method, r in bad:
            msg = r.message.replace('|', '/').replace('\n', ' ')[:160]
            lines.append(f'| {method} | {r.index} | {r.stamp_ns} | {r.status} | {r.reason} | {msg} |')
        lines.append('')
    for n in notes:
        lines.append(f'- {n}')
    if notes:
        lines.append('')
    lines += ['## Files', '', '- `summary.csv`: the table above, every column',
              '- `per_stack.csv`: one line per method and stack']
    if grids:
        lines.append('- `grid.png`' + ''.join(f', `{p.name}`' for p in grids)
                     + ': first frame, ground truth, prediction, error, uncertainty')
        lines += ['', '![grid](grid.png)']
    if spars_png is not None:
        lines += ['', '- `sparsification.png`: sparsification curves and their oracles', '',
                  '![sparsification](sparsification.png)']
    (out / 'report.md').write_text('\n'.join(lines) + '\n')
    return rows
