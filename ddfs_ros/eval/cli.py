"""``ddfs-eval``: score depth engines on focal-stack bags.

::

    ddfs-eval replay BAG --engine engines/ddfs_s.json [--engine E2 ...] [--backend auto]
                         [--baseline focus-measure|median-oracle|none] [--rate R] [--external]
                         --report DIR [--json PATH]
    ddfs-eval offline BAG --engine ... --report DIR [--json PATH]      # same scoring, no ROS
    ddfs-eval protocol camera-shift --engine ... --out DIR              # DDFS camera-setting shift
    ddfs-eval regions BAG [BAG ...] --engine ...                        # AbsRel per scene region
    ddfs-eval robustness --engine ... [--split val]                     # other optics than our renderer's

``replay`` plays the bag through the real inference node over ROS topics (in this
process, or ``--external`` for a node already running in the bag's namespace);
``offline`` runs the node's core (:class:`~ddfs_ros.pipeline.DepthPipeline`) directly.
Both write ``report.md``, ``summary.csv``, ``per_stack.csv`` and ``grid.png`` into
``--report`` and, with ``--json``, ``{"bag": ..., "rows": [{"method", "n", "absrel",
"rms", "delta1", ..., "latency_ms_p50", "dropped"}]}`` for scripts to gate on.
Without ``--baseline`` every table has both baselines as rows: the classical focus
measure and the median oracle (a constant at each stack's median ground-truth depth);
``--baseline none`` leaves them out.
Exit status: 0, or 1 when no stack of the bag could be scored by any method.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .bags import open_bag_info
from .offline import BASELINES, DEFAULT_HYPOTHESIS_MODE, parse_baselines, parse_hypothesis_mode
from .report import write_json, write_report
from .robustness import SOURCES as ROBUSTNESS_SOURCES

LOG = logging.getLogger('ddfs-eval')


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument('bag', help='rosbag2 folder (mcap or sqlite3) or a single .mcap/.db3 file')
    p.add_argument('--engine', action='append', default=[], metavar='MANIFEST',
                   help='engine manifest (.json) or ONNX; repeat for one row per engine')
    p.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'))
    p.add_argument('--baseline', action='append', default=[], choices=(*BASELINES, 'none'),
                   help='baseline rows (repeat; default: all of them, the classical focus measure and the '
                        'median oracle; none: no baseline)')
    p.add_argument('--hypotheses', default=DEFAULT_HYPOTHESIS_MODE,
                   help="depth hypotheses: from_focus (the node's default), fixed, or DMIN,DMAX in metres")
    p.add_argument('--max-relative-uncertainty', type=float, default=None, metavar='R',
                   help="mask depth whose uncertainty exceeds R x depth (the node parameter; default the node's "
                        '0.5; 0 = no mask)')
    p.add_argument('--namespace', default=None, help='namespace of the focal_stack topics (default: detected)')
    p.add_argument('--report', required=True, metavar='DIR', help='folder for report.md, CSVs and grid.png')
    p.add_argument('--json', default=None, metavar='PATH', help='also write the summary as JSON')
    p.add_argument('--grid-stacks', type=int, default=3, help='stacks shown in grid.png')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ddfs-eval', description='Score depth-from-focus engines on bags.')
    sub = p.add_subparsers(dest='cmd', required=True)
    r = sub.add_parser('replay', help='play a bag through the real inference node over ROS topics')
    _add_common(r)
    r.add_argument('--rate', type=float, default=None,
                   help='publish at this many stacks/s (default: each stack once the previous one is out)')
    r.add_argument('--external', action='store_true',
                   help='use an inference node already running in the namespace (--engine only labels the row)')
    r.add_argument('--timeout', type=float, default=30.0, help='seconds to wait for a stack\'s depth')
    o = sub.add_parser('offline', help='the same scoring through the pipeline, without ROS')
    _add_common(o)
    o.add_argument('--processing-width', type=int, default=None, metavar='PX',
                   help="width the engines run at (the node parameter processing_width; default the node's)")
    pr = sub.add_parser('protocol', help='run an evaluation protocol')
    pr.add_argument('name', choices=('camera-shift',))
    pr.add_argument('--engine', action='append', default=[], metavar='MANIFEST')
    pr.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'))
    pr.add_argument('--baseline', action='append', default=[], choices=(*BASELINES, 'none'),
                    help='baseline rows (default: all; none: no baseline)')
    pr.add_argument('--hypotheses', default='fixed',
                    help='depth hypotheses (default fixed: the protocol keeps the scene range of training)')
    pr.add_argument('--out', required=True, metavar='DIR', help='folder for the bags, reports and table')
    pr.add_argument('--stacks', type=int, default=16, help='stacks per setting')
    pr.add_argument('--size', type=int, default=128, help='frame width = height (px)')
    pr.add_argument('--seed', type=int, default=7)
    pr.add_argument('--max-relative-uncertainty', type=float, default=0.0, metavar='R',
                    help='the node\'s uncertainty mask (default 0: off, every pixel scored for every method)')
    pr.add_argument('--replay', action='store_true', help='score through the ROS node instead of offline')
    pr.add_argument('--json', default=None, metavar='PATH')
    rg = sub.add_parser('regions', help='AbsRel per scene region: inside / outside the sweep, low texture / textured')
    rg.add_argument('bags', nargs='+', type=Path)
    rg.add_argument('--engine', action='append', default=[], metavar='MANIFEST',
                    help='engine manifest; repeat for one row per engine (the baselines are always rows)')
    rg.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'))
    rg.add_argument('--stacks', type=int, default=None, help='first N stacks of each bag (default all)')
    rb = sub.add_parser('robustness', help='AbsRel when the stack comes from other optics than our renderer '
                        '(PSF shape, sRGB blur, no occlusions, miscalibrated blur)')
    rb.add_argument('--engine', action='append', default=[], metavar='MANIFEST',
                    help='engine manifest; repeat for one column per engine (the focus measure is always a column)')
    rb.add_argument('--source', action='append', default=[], choices=sorted(ROBUSTNESS_SOURCES),
                    help='scene source; repeat (default: rgbd_7scenes and real_dfd)')
    rb.add_argument('--split', default='val', choices=('train', 'val', 'test'),
                    help='split of the real sources (default val: not a test figure)')
    rb.add_argument('--scenes', type=int, default=12, help='scenes per source (default 12)')
    rb.add_argument('--variant', action='append', default=[], help='render variant; repeat (default all)')
    rb.add_argument('--size', type=int, default=None, help='frame width (px; default the source camera\'s)')
    rb.add_argument('--backend', default='auto', choices=('auto', 'tensorrt', 'onnxruntime', 'torch'))
    rb.add_argument('--max-relative-uncertainty', type=float, default=0.0, metavar='R',
                    help="the node's uncertainty mask (default 0: off, every pixel scored)")
    return p


def _print_rows(rows: Sequence[dict], has_gt: bool) -> None:
    from .report import metrics_table
    print(metrics_table(rows, has_gt))


def cmd_score(args) -> int:
    baselines = parse_baselines(args.baseline)
    if not args.engine and not baselines:
        print('ddfs-eval: give at least one --engine or a --baseline', file=sys.stderr)
        return 2
    try:
        info = open_bag_info(args.bag, args.namespace)
    except (FileNotFoundError, ValueError) as exc:
        print(f'ddfs-eval: {exc}', file=sys.stderr)
        return 2
    if not info.has_depth_gt and not args.baseline:
        baselines = [b for b in baselines if b != 'median-oracle']   # an oracle needs ground truth
    mode = parse_hypothesis_mode(args.hypotheses)
    notes = []
    if args.cmd == 'replay':
        from .offline import evaluate_offline
        from .replay import ReplayOptions, replay_bag
        opts = ReplayOptions(backend=args.backend, hypothesis_mode=mode, rate=args.rate, timeout_s=args.timeout,
                             external=args.external, namespace=info.namespace, grid_stacks=args.grid_stacks,
                             node_params={} if args.max_relative_uncertainty is None else
                             {'max_relative_uncertainty': float(args.max_relative_uncertainty)})
        runs, samples = replay_bag(args.bag, args.engine, opts)
        if baselines:
            # the baselines have no node: they run in this process on the same stacks
            b_runs, b_samples = evaluate_offline(args.bag, (), baseline=baselines, namespace=info.namespace,
                                                 grid_stacks=args.grid_stacks)
            runs += b_runs
            samples.update(b_samples)
            notes.append(f'{", ".join(BASELINES[b] for b in baselines)}: computed in this process (no node), '
                         'latency = compute time.')
        mode_text = ('replay through an external node' if args.external else
                     'replay through the inference node (in-process, loopback DDS)') + \
            (f', paced at {args.rate:g} stacks/s' if args.rate else ', one stack at a time')
    else:
        from .offline import evaluate_offline
        runs, samples = evaluate_offline(args.bag, args.engine, backend=args.backend, baseline=baselines,
                                         namespace=info.namespace, hypothesis_mode=mode,
                                         grid_stacks=args.grid_stacks, progress=sys.stderr.isatty(),
                                         max_relative_uncertainty=args.max_relative_uncertainty,
                                         processing_width=args.processing_width)
        mode_text = 'offline (DepthPipeline, no ROS)' + \
            (f', processing_width {args.processing_width} px' if args.processing_width else '')
    rows = write_report(args.report, str(args.bag), runs, samples, has_gt=info.has_depth_gt, mode=mode_text,
                        notes=notes, info={'namespace': info.namespace, 'storage': info.storage,
                                           'hypotheses': args.hypotheses, 'backend requested': args.backend,
                                           'max_relative_uncertainty': 'node default (0.5)'
                                           if args.max_relative_uncertainty is None
                                           else args.max_relative_uncertainty})
    if args.json:
        write_json(args.json, str(args.bag), rows, mode=args.cmd, has_depth_gt=info.has_depth_gt)
    _print_rows(rows, info.has_depth_gt)
    print(f'report: {Path(args.report) / "report.md"}')
    return 0 if any(r['n'] > 0 for r in rows) else 1


def cmd_protocol(args) -> int:
    from .protocol import run_camera_shift
    baselines = parse_baselines(args.baseline)
    if not args.engine and not baselines:
        print('ddfs-eval: give at least one --engine or a --baseline', file=sys.stderr)
        return 2
    rows = run_camera_shift(args.out, args.engine, backend=args.backend, baseline=baselines,
                            hypothesis_mode=parse_hypothesis_mode(args.hypotheses), stacks=args.stacks,
                            size=args.size, seed=args.seed, replay=args.replay,
                            max_relative_uncertainty=args.max_relative_uncertainty)
    if args.json:
        write_json(args.json, str(Path(args.out) / 'bags'), rows, protocol='camera-shift')
    print((Path(args.out) / 'camera_shift.md').read_text())
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
    args = build_parser().parse_args(argv)
    if args.cmd == 'protocol':
        return cmd_protocol(args)
    if args.cmd == 'robustness':
        from .robustness import VARIANTS, run
        bad = [v for v in args.variant if v not in VARIANTS]
        if bad:
            print(f'ddfs-eval: unknown variant(s) {bad}; known: {", ".join(VARIANTS)}', file=sys.stderr)
            return 2
        print(run(args.engine, args.source or ('rgbd_7scenes', 'real_dfd'), args.split, args.scenes,
                  args.variant or tuple(VARIANTS), args.backend, args.max_relative_uncertainty, args.size))
        return 0
    if args.cmd == 'regions':
        from .regions import regions_table
        for bag in args.bags:
            print(regions_table(bag, args.engine, args.stacks, args.backend), '\n', flush=True)
        return 0
    return cmd_score(args)


if __name__ == '__main__':
    raise SystemExit(main())
