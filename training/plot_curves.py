"""Learning curves of the focus networks: validation AbsRel against samples seen.

    python -m training.plot_curves --runs ddfs_s dfv_s --out training/learning_curves.png

Reads ``checkpoints/<run>/curve.csv`` (written by ``training.train_focus``) and the
focus measure scored on the same validation stacks (``focus_measure_val.json``),
merges the curve into ``training/curves/<run>.csv`` (committed, so the curve survives the
session; :func:`merged_rows`), copies the focus measure next to it and
draws one line per run with the focus measure as a dashed horizontal line of the same
colour (each family has its own validation split: the cost-volume family's includes
other F and aperture pairs).  Where a run also validated on the split of extra parts
(``val: true``, since session 4), the pooled selection AbsRel is drawn dotted.  Prints a
Markdown table of the curve.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

CURVES = Path('training/curves')


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline='') as fh:
        return list(csv.DictReader(fh))


def merged_rows(committed: list[dict], new: list[dict]) -> list[dict]:
    """The committed curve up to where the checkpoint's curve starts, then the checkpoint's.

    A run resumed in a fresh clone (from ``training/weights``) starts a new ``curve.csv``
    at the samples it resumed from; copying it over the committed one would lose the
    history before that.
    """
    if not new:
        return committed
    start = int(new[0]['samples'])
    return [r for r in committed if int(r['samples']) < start] + new


def load(run: str) -> tuple[list[dict], Optional[dict]]:
    src = Path('checkpoints') / run
    CURVES.mkdir(parents=True, exist_ok=True)
    path = CURVES / f'{run}.csv'
    rows, new = _read_rows(path), _read_rows(src / 'curve.csv')
    if new:
        rows = merged_rows(rows, new)
        with path.open('w', newline='') as fh:
            w = csv.DictWriter(fh, fieldnames=list(new[0]), extrasaction='ignore', restval='', lineterminator='\n')
            w.writeheader()
            w.writerows(rows)
    for name, dst in (('focus_measure_val.json', f'{run}_focus_measure_val.json'),
                      ('focus_measure_selection.json', f'{run}_focus_measure_selection.json')):
        if (src / name).exists():
            shutil.copyfile(src / name, CURVES / dst)
    fm_path = CURVES / f'{run}_focus_measure_val.json'
    fm = json.loads(fm_path.read_text()) if fm_path.exists() else None
    return rows, fm


def main(argv: Optional[Sequence[str]] = None) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--runs', nargs='+', default=['ddfs_s', 'dfv_s'])
    ap.add_argument('--out', default='training/learning_curves.png')
    a = ap.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    table = ['| run | samples seen | val AbsRel | val δ1 % | focus measure (same stacks) AbsRel / δ1 % '
             '| selection AbsRel (all val splits) |',
             '|---|---|---|---|---|---|']
    for i, run in enumerate(a.runs):
        rows, fm = load(run)
        if not rows:
            continue
        color = f'C{i}'
        x = [int(r['samples']) for r in rows]
        y = [float(r['val_abs_rel']) for r in rows]
        ax.plot(x, y, '-o', ms=3, color=color, label=f'{run} (validation)')
        sel = [(int(r['samples']), float(r['selection_abs_rel'])) for r in rows if r.get('selection_abs_rel')]
        if sel:
            ax.plot(*zip(*sel), ':', marker='.', color=color, label=f'{run} (selection: + extra val splits)')
        if fm:
            ax.axhline(fm['abs_rel'], color=color, ls='--', lw=1, label=f'focus measure on {run} validation')
        picks = sorted(set(range(0, len(rows), max(1, len(rows) // 8))) | {len(rows) - 1})
        for r in (rows[i] for i in picks):
            table.append(f'| {run} | {int(r["samples"]):,} | {float(r["val_abs_rel"]):.4f} | '
                         f'{float(r["val_delta1"]):.1f} | '
                         + (f'{fm["abs_rel"]:.4f} / {fm["delta1"]:.1f}' if fm else 'n/a') + ' | '
                         + (f'{float(r["selection_abs_rel"]):.4f}' if r.get('selection_abs_rel') else '') + ' |')
    ax.set_xlabel('training samples seen')
    ax.set_ylabel('validation AbsRel')
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title('Focus networks: validation AbsRel (96 px, held-out textures and scenes)')
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print('\n'.join(table))
    print(f'wrote {a.out}')


if __name__ == '__main__':
    main()
