"""Which engine a benchmark runs: the shipped one when built, else untrained tiny ones (said so)."""
from __future__ import annotations

import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {'ddfs': 'ddfs_s', 'dfv': 'dfv_s'}


def bench_engines(families=('ddfs', 'dfv')) -> tuple[dict, str]:
    """({family: manifest path}, note).  Shipped engines/NAME_s.json where present."""
    found = {f: ROOT / 'engines' / f'{SHIPPED[f]}.json' for f in families}
    found = {f: p for f, p in found.items() if p.is_file()}
    if len(found) == len(families):
        return found, 'shipped engines'
    import sys
    sys.path.insert(0, str(ROOT / 'test'))
    from conftest import build_tiny_engines
    tiny = build_tiny_engines(Path(tempfile.mkdtemp(prefix='ddfs_bench_')))
    out = {f: found.get(f, tiny[f]) for f in families}
    missing = [f for f in families if f not in found]
    return out, f'untrained tiny 64x64 engines for {missing} (shipped ones not built yet)'


def example_inputs(manifest, seed: int = 0) -> dict:
    """Deterministic random inputs of the manifest's shapes at its ``image_size``
    (:func:`ddfs_ros.engines.cpu_preference.timing_inputs`: images and volumes uniform in
    [0, 1], the training hypotheses, focus distances over the training range)."""
    from ddfs_ros.engines.cpu_preference import timing_inputs
    return timing_inputs(manifest, manifest.image_size, seed=seed)
