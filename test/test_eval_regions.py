"""AbsRel per scene region (ddfs_ros.eval.regions)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ddfs_ros.eval.regions import REGIONS, region_masks, score_regions, texture_map


def _scene(size: int = 32):
    rng = np.random.default_rng(0)
    gt = np.linspace(1.0, 4.0, size * size).reshape(size, size)
    frames = np.full((3, size, size, 3), 0.5, np.float32)
    frames[:, :, size // 2:] += 0.3 * rng.standard_normal((3, size, size // 2, 1)).astype(np.float32)
    return np.clip(frames, 0, 1), np.array([1.5, 2.5, 3.5]), gt


def test_masks_split_the_scene_by_sweep_and_texture():
    frames, focus, gt = _scene()
    m = region_masks(focus, frames, gt, low_fraction=0.3)
    assert m['all'].all()
    parts = m['inside sweep'].astype(int) + m['nearer than the nearest focus'] + m['beyond the farthest focus']
    assert (parts == 1).all()
    assert np.array_equal(m['nearer than the nearest focus'], gt < 1.5)
    assert np.array_equal(m['beyond the farthest focus'], gt > 3.5)
    assert (m['low texture'] ^ m['textured']).all()
    assert abs(m['low texture'].mean() - 0.3) < 0.05
    # the flat left half is where the low-texture pixels are
    assert m['low texture'][:, :12].mean() > 0.5 and not m['low texture'][:, 20:].any()
    tex = texture_map(frames)
    assert tex.shape == gt.shape and tex[:, 20:].min() > tex[:, :8].max()


def test_scores_pool_pixels_and_count_missing_depth():
    frames, focus, gt = _scene()
    item = SimpleNamespace(stack=SimpleNamespace(focus_m=focus, frames=frames), depth_gt=gt)

    def clamp_to_sweep(stack):
        d = np.clip(gt, 1.5, 3.5)
        d[0, 0] = np.nan
        return d
    score, share = score_regions([item, item], clamp_to_sweep)
    assert score.abs_rel('inside sweep') == 0.0
    far = gt > 3.5
    expected = float(np.mean((gt[far] - 3.5) / gt[far]))
    assert abs(score.abs_rel('beyond the farthest focus') - expected) < 1e-12
    assert score.coverage('all') == 1 - 1 / gt.size
    assert abs(sum(share[r] for r in REGIONS[1:4]) - 1.0) < 1e-12


def test_regions_command_on_the_shared_bag(capsys):
    import pytest

    from ddfs_ros.eval import cli
    from ddfs_ros.scenes import resolve_data_dir
    bag = resolve_data_dir('../shared/data/sample_bags/motorcycle_sweep')
    if bag is None:
        pytest.skip('../shared/data/sample_bags is absent (see ../shared/data/README.md)')
    assert cli.main(['regions', str(bag), '--stacks', '1']) == 0
    out = capsys.readouterr().out
    rows = {line.split('|')[1].strip(): line for line in out.splitlines() if line.startswith('| ')}
    assert 'focus-measure (baseline)' in rows and 'median-oracle (baseline)' in rows
    cells = [float(c.split()[0]) for c in rows['focus-measure (baseline)'].split('|')[2:-1]]
    assert len(cells) == 6 and all(0 < c < 1 for c in cells)
