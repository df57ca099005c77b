"""Issue 9's acceptance table: every engine and both baselines on the held-out test bags, in one table.

::

    python -m ddfs_ros.eval.acceptance --out out/eval/acceptance.md      # (make eval-table)
        [--engine engines/X.json ...]    # default: every engines/*.json
        [--bag BAG ...]                  # default: the three test bags below
        [--pairs-bag BAG]                # default: ../shared/data/sample_bags/dfd_aperture_pairs
        [--max-relative-uncertainty R]   # the node's sanity mask (default: the node's own, 0.5)

Test bags (never trained on nor used for selection, :mod:`ddfs_ros.data_splits`): the shared
``sample_bags/motorcycle_sweep``, ``out/bags/real_dfd_test`` and ``out/bags/rgbd_7scenes_test``
(``make eval-bags``).  Every engine is replayed through the real inference node
(:func:`~ddfs_ros.eval.replay.replay_bag`, loopback DDS, one stack at a time); the focus
measure and the median oracle run in this process on the same stacks.

The table has per bag and method: AbsRel, δ1, coverage, unc_cal, AUSE, beats_oracle_px and
"AbsRel vs focus measure" = the % reduction of AbsRel against the focus-measure row of the
same bag (positive = better than the focus measure; issue 9 asks >= 25 % of every engine,
>= 40 % of the best), then the mean over the test bags of each column.  A second table
gives the same on the aperture-pair bag, where ``beats_oracle_px`` (% of ground-truth
pixels whose |error| is below the median oracle's; pixels without a depth do not count)
is the criterion (>= 50 %).  Per-bag reports (``report.md``, ``sparsification.png``,
grids, CSV) go next to ``--out``, in ``<out stem>_reports/<bag>/``; ``--json`` writes every row.
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data_splits import SHARED_DATA
from .offline import BASELINE_NAME, MEDIAN_ORACLE_NAME, DEFAULT_HYPOTHESIS_MODE, evaluate_offline
from .report import write_json, write_report

LOG = logging.getLogger('ddfs-acceptance')

ROOT = Path(__file__).resolve().parents[2]
#: The test bags of issue 9's acceptance table.
TEST_BAGS = (SHARED_DATA / 'sample_bags' / 'motorcycle_sweep', ROOT / 'out' / 'bags' / 'real_dfd_test',
             ROOT / 'out' / 'bags' / 'rgbd_7scenes_test')
PAIRS_BAG = SHARED_DATA / 'sample_bags' / 'dfd_aperture_pairs'
#: Columns: (row key, header, format).
COLUMNS = (('n', 'n', '{:d}'), ('absrel', 'AbsRel', '{:.4f}'), ('delta1', 'δ1 %', '{:.1f}'),
           ('coverage', 'coverage %', '{:.1f}'), ('unc_cal', 'unc_cal', '{:.3f}'), ('ause', 'AUSE', '{:.4f}'),
           ('beats_oracle_px', 'beats oracle %', '{:.1f}'), ('vs_focus', 'AbsRel vs focus measure', '{:+.1f} %'))


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float, np.number)) else math.nan


def reduction_vs(value: float, reference: float) -> float:
    """% reduction of ``value`` against ``reference`` (AbsRel): 100 * (ref - value) / ref; NaN if undefined."""
    value, reference = _num(value), _num(reference)
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return math.nan
    return 100.0 * (reference - value) / reference


def add_reduction(rows: Sequence[dict]) -> list[dict]:
    """Copies of one bag's rows with ``vs_focus`` (% AbsRel reduction against the focus-measure row)."""
    ref = next((r.get('absrel') for r in rows if r['method'] == BASELINE_NAME), None)
    return [dict(r, vs_focus=reduction_vs(r.get('absrel'), ref)) for r in rows]


def mean_rows(per_bag: dict) -> list[dict]:
    """Per method, the mean over bags of every column (bags where the method scored nothing are skipped;
    ``n`` is the total of stacks scored); ``vs_focus`` is recomputed from the mean AbsRel."""
    methods = list(dict.fromkeys(r['method'] for rows in per_bag.values() for r in rows))
    out = []
    for m in methods:
        rows = [r for rows in per_bag.values() for r in rows if r['method'] == m and r.get('n')]
        row = {'method': m, 'n': int(sum(r['n'] for r in rows)), 'bags': len(rows)}
        for key, _, _ in COLUMNS:
            if key in ('n', 'vs_focus'):
                continue
            vals = np.array([_num(r.get(key)) for r in rows])
            vals = vals[np.isfinite(vals)]
            row[key] = float(vals.mean()) if vals.size else math.nan
        out.append(row)
    return add_reduction(out)


def _cell(key: str, fmt: str, v) -> str:
    if key == 'n':
        return str(int(v or 0))
    v = _num(v)
    if not math.isfinite(v):
        return '–'
    return fmt.format(v * 100.0 if key == 'coverage' else v)


def markdown_table(per_bag: dict, with_mean: bool = True) -> str:
    """One Markdown table: a block of rows per bag (``{bag label: rows with vs_focus}``), then the means."""
    head = ['bag', 'method'] + [h for _, h, _ in COLUMNS]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    blocks = list(per_bag.items())
    if with_mean and len(per_bag) > 1:
        blocks.append((f'mean of the {len(per_bag)} bags', mean_rows(per_bag)))
    for label, rows in blocks:
        for r in rows:
            cells = [label, r['method']] + [_cell(k, f, r.get(k)) for k, _, f in COLUMNS]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def score_bag(bag: Path, engines: Sequence, report_dir: Path, backend: str = 'auto',
              hypothesis_mode=DEFAULT_HYPOTHESIS_MODE, max_relative_uncertainty: Optional[float] = None,
              replay: bool = True, grid_stacks: int = 2, processing_width: Optional[int] = None) -> list[dict]:
    """Engines (through the node, or offline) and both baselines on one bag; writes its report; returns rows.

    ``processing_width`` (px): the node's parameter for the replay (default: the node's).
    """
    from .bags import open_bag_info
    info = open_bag_info(bag)
    if replay and engines:
        from .replay import ReplayOptions, replay_bag
        params = {} if max_relative_uncertainty is None else {'max_relative_uncertainty': max_relative_uncertainty}
        if processing_width:
            params['processing_width'] = int(processing_width)
        runs, samples = replay_bag(bag, engines, ReplayOptions(backend=backend, hypothesis_mode=hypothesis_mode,
                                                               namespace=info.namespace, grid_stacks=grid_stacks,
                                                               node_params=params))
        b_runs, b_samples = evaluate_offline(bag, (), baseline=True, namespace=info.namespace,
                                             grid_stacks=grid_stacks)
        runs += b_runs
        samples.update(b_samples)
    else:
        runs, samples = evaluate_offline(bag, engines, backend=backend, baseline=True, namespace=info.namespace,
                                         hypothesis_mode=hypothesis_mode, grid_stacks=grid_stacks,
                                         max_relative_uncertainty=max_relative_uncertainty)
    mask = 'node default (0.5)' if max_relative_uncertainty is None else max_relative_uncertainty
    return write_report(report_dir, str(bag), runs, samples, has_gt=info.has_depth_gt,
                        mode='replay through the inference node' if replay else 'offline',
                        info={'hypotheses': hypothesis_mode, 'backend requested': backend,
                              'max_relative_uncertainty': mask})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='python -m ddfs_ros.eval.acceptance', description=__doc__.split('\n')[0])
    p.add_argument('--out', required=True, help='Markdown file for the table')
    p.add_argument('--engine', action='append', default=None, metavar='MANIFEST',
                   help='engine manifest; repeat (default: every engines/*.json)')
    p.add_argument('--bag', action='append', default=None, help='test bag; repeat (default: the three test bags)')
    p.add_argument('--pairs-bag', default=str(PAIRS_BAG), help="aperture-pair bag ('' to leave out)")
    p.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'))
    p.add_argument('--hypotheses', default=DEFAULT_HYPOTHESIS_MODE)
    p.add_argument('--max-relative-uncertainty', type=float, default=None, metavar='R',
                   help="the node's sanity mask (default: the node's 0.5; 0 = off, every pixel scored)")
    p.add_argument('--offline', action='store_true', help='score through the pipeline, without ROS')
    p.add_argument('--processing-width', type=int, default=None, metavar='PX',
                   help="the node's processing_width for the replay (default: the node's)")
    p.add_argument('--json', default=None, help='also write every row as JSON')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .offline import parse_hypothesis_mode
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.offline and args.processing_width:
        parser.error('--processing-width sets a node parameter: it needs the replay (no --offline)')
    engines = args.engine if args.engine is not None else sorted(str(p) for p in (ROOT / 'engines').glob('*.json'))
    bags = [Path(b) for b in (args.bag or TEST_BAGS)]
    missing = [str(b) for b in bags if not b.exists()]
    if missing:
        print(f'acceptance: missing bag(s) {missing} (make eval-bags writes out/bags/)', file=sys.stderr)
        return 2
    out = Path(args.out)
    reports = out.parent / f'{out.stem}_reports'
    mode = parse_hypothesis_mode(args.hypotheses)
    per_bag, all_rows = {}, []
    for bag in bags:
        LOG.info('scoring %s', bag)
        rows = score_bag(bag, engines, reports / bag.name, args.backend, mode, args.max_relative_uncertainty,
                         replay=not args.offline, processing_width=args.processing_width)
        per_bag[bag.name] = add_reduction(rows)
        all_rows += [dict(r, bag=bag.name) for r in per_bag[bag.name]]
    pairs = {}
    if args.pairs_bag:
        pb = Path(args.pairs_bag)
        rows = score_bag(pb, engines, reports / pb.name, args.backend, mode, args.max_relative_uncertainty,
                         replay=not args.offline, processing_width=args.processing_width)
        pairs[pb.name] = add_reduction(rows)
        all_rows += [dict(r, bag=pb.name) for r in pairs[pb.name]]
    mask = ("the node's default (uncertainty <= 0.5 x depth)" if args.max_relative_uncertainty is None
            else f'max_relative_uncertainty {args.max_relative_uncertainty:g}' if args.max_relative_uncertainty
            else 'off (every pixel scored)')
    lines = ['# Issue 9 acceptance table', '',
             f'Engines: {", ".join(Path(e).stem for e in engines) or "none"}; '
             f'{"offline pipeline" if args.offline else "replayed through the inference node"}, backend '
             f'{args.backend}, hypotheses {args.hypotheses}, processing_width '
             f'{args.processing_width or "the node default"}; sanity mask: {mask}. Baselines: '
             f'{BASELINE_NAME}, {MEDIAN_ORACLE_NAME} (a constant at each stack\'s median ground truth).', '',
             'Metrics per stack on the pixels with ground truth and a depth, averaged over stacks; coverage = % '
             'of ground-truth pixels with a depth; unc_cal = fraction of those with |error| <= uncertainty; '
             'AUSE = area between the sparsification curve (by uncertainty / depth) and its oracle; beats oracle '
             '= % of ground-truth pixels with |error| below the median oracle\'s (no depth = not beating); '
             'AbsRel vs focus measure = % reduction against the focus-measure row (positive = better).', '',
             '## Test bags', '', markdown_table(per_bag), '']
    if pairs:
        lines += ['## Real aperture pairs (f/2.8 + f/8, one focus distance)', '',
                  markdown_table(pairs, with_mean=False), '',
                  'The focus measure needs a focus sweep: it refuses these stacks (n = 0).', '']
    lines += [f'Per-bag reports (sparsification.png, grids, CSV): `{reports}/`.', '']
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text('\n'.join(lines))
    if args.json:
        write_json(args.json, ', '.join(str(b) for b in bags), all_rows)
    print(out.read_text())
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
