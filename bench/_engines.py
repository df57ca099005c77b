"""Which engine a benchmark runs: the shipped one when built, else untrained tiny ones (said so)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

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
    """Deterministic inputs of the manifest's shapes: random images / cost volumes,
    ascending hypotheses 0.1-3 m, focus distances 0.3-2 m."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in manifest.inputs.items():
        if name == 'depths':
            out[name] = torch.linspace(0.1, 3.0, shape[1])[None]
        elif name == 'focus':
            out[name] = torch.linspace(0.3, 2.0, shape[1])[None]
        else:
            out[name] = torch.rand(*shape, generator=g)
    return out
