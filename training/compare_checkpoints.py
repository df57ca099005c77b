"""Score training checkpoints the way the node sees them: exported, at 256 px, on the robustness sources.

    python -m training.compare_checkpoints checkpoints/ddfs_s_bs/best.pt checkpoints/ddfs_s_bs/snap/1100000.pt \\
        --engine engines/ddfs_s.json --source procedural --source rgbd_7scenes --source real_dfd \\
        --variant disk_otf --variant reference

``train_focus`` chooses ``best.pt`` on 96 px validation splits, the size it trains at.
Session 13 measured that this choice can miss what the node sees at its processing width
(a fine-tune improved its 96 px splits by 1-3 % while it lost 3-4 % at 256 px), so a
candidate is chosen among checkpoints here: each is exported (ONNX, manifest; no
``.pt2``, no CPU timing) into a scratch folder and scored with ``ddfs-eval robustness``
on the same rendered validation stacks as the ``--engine`` references (shipped
manifests) and the focus measure.  Prints one markdown table per variant (AbsRel per
stack averaged over every source, and the change against the first reference) and the
mean over the variants.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ddfs_ros.eval.offline import BASELINE_NAME, baseline_predict, load_pipeline, method_names, pipeline_predict
from ddfs_ros.eval.robustness import VARIANTS, robustness_scores


def export_for_scoring(checkpoints: Sequence[str], folder: Path) -> list[Path]:
    """Each checkpoint exported to ``folder/<parent>_<stem>.json`` (+ ONNX); returns the manifests."""
    from .export_focus import export_checkpoint
    out = []
    for c in checkpoints:
        p = Path(c)
        onnx = folder / f'{p.parent.name}_{p.stem}.onnx'
        out.append(export_checkpoint(p, onnx, torch_program=False, cpu_preference=False))
    return out


def comparison_table(scores: dict, reference: Optional[str]) -> str:
    """Markdown: a row per method, a column per variant and their mean; changes against ``reference``."""
    variants = list(scores)
    methods = list(scores[variants[0]])
    mean = {m: [float(np.nanmean(scores[v][m])) for v in variants] for m in methods}
    for m in methods:
        mean[m].append(float(np.mean(mean[m])))
    lines = ['| method | ' + ' | '.join(variants) + ' | mean |', '|---|' + '---|' * (len(variants) + 1)]
    for m in methods:
        cells = []
        for k, a in enumerate(mean[m]):
            r = mean[reference][k] if reference else math.nan
            cells.append(f'{a:.4f}' if m == reference or not math.isfinite(r) else f'{a:.4f} ({(a / r - 1) * 100:+.1f} %)')
        lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('checkpoints', nargs='+', help='train_focus checkpoints (best.pt, last.pt, snapshots)')
    ap.add_argument('--engine', action='append', default=[], help='reference engine manifest(s); the first is '
                    'what the changes are against')
    ap.add_argument('--source', action='append', default=None, help='robustness source(s) (default: procedural, '
                    'rgbd_7scenes, real_dfd)')
    ap.add_argument('--variant', action='append', default=None, choices=sorted(VARIANTS),
                    help='default: disk_otf and reference')
    ap.add_argument('--count', type=int, default=12, help='stacks per source')
    ap.add_argument('--size', type=int, default=None, help='render width (px; default: the sources\' own, 256)')
    ap.add_argument('--backend', default='onnxruntime')
    a = ap.parse_args(argv)
    sources = a.source or ['procedural', 'rgbd_7scenes', 'real_dfd']
    variants = a.variant or ['disk_otf', 'reference']
    with tempfile.TemporaryDirectory(prefix='ddfs_compare_') as tmp:
        manifests = export_for_scoring(a.checkpoints, Path(tmp))
        paths = list(a.engine) + [str(m) for m in manifests]
        methods = {}
        for name, path in zip(method_names(paths), paths):
            predict = pipeline_predict(load_pipeline(path, backend=a.backend, max_relative_uncertainty=0.0))
            methods[name] = lambda s, p=predict: p(s)[0]
        methods[BASELINE_NAME] = lambda s: baseline_predict(s)[0]
        scores = robustness_scores(methods, sources, 'val', a.count, variants, a.size)
    n = len(scores[variants[0]][BASELINE_NAME])
    print(f'{n} stacks per variant ({", ".join(sources)}, validation split), AbsRel averaged per stack')
    print(comparison_table(scores, next(iter(methods)) if a.engine else None))


if __name__ == '__main__':
    main()
