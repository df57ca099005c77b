"""The user cache (issue 12, item 10): a second process finds the numba kernels compiled."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ddfs_ros import cost_kernels, user_cache

ROOT = Path(__file__).resolve().parents[1]

#: One small cost volume through the fused kernel; prints where numba cached it and the
#: dispatcher's cache hits / misses for its signatures.
_RUN = r'''
import json, numba, numpy as np
from ddfs_ros import cost_kernels
from ddfs_ros.cost_volume import CostVolume
from ddfs_ros.optics import depth_hypotheses
frames = np.random.default_rng(0).random((3, 3, 24, 32), dtype=np.float32)
CostVolume(fused='on', max_coc_px=4.0)(frames, [0.2, 0.4, 0.9], 2.0, 0.01, 1e-5, depth_hypotheses(0.1, 1.5, 6))
st = cost_kernels._fused_cost.stats
print(json.dumps({'hits': sum(st.cache_hits.values()), 'misses': sum(st.cache_misses.values()),
                  'config_cache_dir': numba.config.CACHE_DIR}))
'''


def _run(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ('NUMBA_CACHE_DIR', 'DDFS_CACHE_DIR', 'XDG_CACHE_HOME')}
    env.update(env_extra)
    out = subprocess.run([sys.executable, '-c', _RUN], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv('DDFS_CACHE_DIR', raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert user_cache.cache_root() == tmp_path / 'xdg' / 'ddfs_ros'
    monkeypatch.setenv('DDFS_CACHE_DIR', str(tmp_path / 'mine'))
    assert user_cache.cache_root() == tmp_path / 'mine'
    assert user_cache.numba_cache_dir() == tmp_path / 'mine' / 'numba'
    from ddfs_ros.engines.tensorrt_backend import cache_dir
    monkeypatch.delenv('DDFS_TRT_CACHE', raising=False)
    assert cache_dir() == tmp_path / 'mine' / 'trt'
    monkeypatch.setenv('DDFS_TRT_CACHE', str(tmp_path / 'plans'))
    assert cache_dir() == tmp_path / 'plans'


@pytest.mark.slow
@pytest.mark.skipif(not cost_kernels.available(), reason='numba not installed')
def test_second_process_loads_the_compiled_kernel_from_the_user_cache(tmp_path):
    cache = tmp_path / 'cache'
    first = _run({'DDFS_CACHE_DIR': str(cache)})
    assert first['misses'] >= 1 and first['hits'] == 0, first      # compiled, nothing to load
    written = sorted(p.name for p in (cache / 'numba').rglob('*') if p.suffix in ('.nbi', '.nbc'))
    assert any(n.startswith('cost_kernels._fused_cost') and n.endswith('.nbi') for n in written), written
    assert any(n.endswith('.nbc') for n in written), written
    # the setting is confined to the kernels' decoration: other numba users keep their cache
    assert first['config_cache_dir'] == ''
    second = _run({'DDFS_CACHE_DIR': str(cache)})
    assert second['hits'] >= 1 and second['misses'] == 0, second   # warm: loaded, not compiled


@pytest.mark.slow
@pytest.mark.skipif(not cost_kernels.available(), reason='numba not installed')
def test_an_explicit_numba_cache_dir_wins(tmp_path):
    mine = tmp_path / 'numba_mine'
    _run({'DDFS_CACHE_DIR': str(tmp_path / 'ddfs'), 'NUMBA_CACHE_DIR': str(mine)})
    assert any(p.suffix == '.nbi' for p in mine.rglob('*'))
    assert not (tmp_path / 'ddfs' / 'numba').exists()
