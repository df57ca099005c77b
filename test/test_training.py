"""Synthetic data and the training loop: determinism, held-out settings, loss falls, resume."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import CachedDataset, DataConfig, build_cache, draw_camera, make_sample
from training.losses import ddfs_loss, dfv_loss
from training.train import train

TINY = dict(size=64, num_hypotheses=16, d_min=0.1, d_max=3.0, frames=(2, 6), source_weights={'procedural': 1.0})


def test_samples_are_deterministic_and_well_formed():
    cfg = DataConfig(**TINY, want_stack=False, want_cost=True)
    a = make_sample(cfg, 'train', 5, 3)
    b = make_sample(cfg, 'train', 5, 3)
    c = make_sample(cfg, 'train', 5, 4)
    for k in ('gt', 'image', 'cost', 'depths'):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a['gt'], c['gt'])
    assert a['cost'].shape == (16, 64, 64) and a['image'].shape == (3, 64, 64)
    assert 0.0 <= a['cost'].min() and a['cost'].max() <= 1.0 + 1e-6
    k = a['meta']['k']
    np.testing.assert_allclose(a['depths'], np.linspace(0.1, 3.0, 16) * k, rtol=1e-6)
    # the scene lies inside the (scaled) hypothesis range
    assert a['gt'].min() >= 0.1 * k * 0.999 and a['gt'].max() <= 3.0 * k * 1.001
    # reference frame = farthest focus (or the sharpest aperture of an aperture pair)
    assert 2 <= a['meta']['F'] <= 6


def test_dfv_samples_have_sorted_fixed_size_stacks():
    cfg = DataConfig(**dict(TINY, frames=5), want_stack=True, want_cost=False)
    for i in range(4):
        s = make_sample(cfg, 'val', 0, i)
        assert s['stack'].shape == (5, 3, 64, 64)
        assert np.all(np.diff(s['focus_sorted']) > 0)
        np.testing.assert_allclose(np.sort(s['focus']), s['focus_sorted'])


def test_validation_holds_out_camera_settings():
    cfg = DataConfig(**TINY)
    depth = np.full((8, 8), 1.0)
    lo_n, hi_n = cfg.holdout_f_number
    lo_f, hi_f = cfg.holdout_focal_length_mm
    for i in range(200):
        tr = draw_camera(cfg, 'train', depth, np.random.default_rng(i))['lens']
        va = draw_camera(cfg, 'val', depth, np.random.default_rng(i))['lens']
        assert not lo_n <= tr.f_number <= hi_n
        assert lo_n <= va.f_number <= hi_n
        # the focal length may only be clamped below the near focus, never moved into the band
        assert not lo_f <= tr.focal_length_m * 1e3 <= hi_f
        assert va.focal_length_m * 1e3 <= hi_f + 1e-9


def test_blur_spans_the_requested_pixels():
    cfg = DataConfig(**TINY, max_coc_px=(6.0, 6.0))
    from ddfs_ros.optics import coc_px
    rng = np.random.default_rng(0)
    depth = np.linspace(0.5, 2.0, 64).reshape(8, 8)
    cam = draw_camera(cfg, 'train', depth, rng)
    lens = cam['lens']
    d = np.percentile(depth, [0.5, 50, 99.5])
    biggest = coc_px(d[:, None], cam['focus_m'][None], lens.focal_length_m, lens.f_number, lens.pixel_pitch_m).max()
    assert biggest == pytest.approx(6.0, rel=1e-6)


def test_losses_are_zero_at_ground_truth_and_masked():
    gt = torch.full((2, 1, 16, 16), 1.0)
    gt[:, :, :4] = 10.0                       # outside both ranges: ignored
    depths = torch.linspace(0.5, 2.0, 8).expand(2, 8)
    focus = torch.linspace(0.5, 2.0, 5).expand(2, 5)
    exact = [torch.where(gt > 5, torch.zeros_like(gt), gt)] * 4
    assert float(ddfs_loss(exact, gt, depths)) == pytest.approx(0.0, abs=1e-7)
    assert float(dfv_loss(exact, gt, focus)) == pytest.approx(0.0, abs=1e-7)
    off = [e + 0.2 for e in exact]
    # L1 of 0.2 m at 4 scales, normalised by the farthest hypothesis (2 m)
    assert float(ddfs_loss(off, gt, depths)) == pytest.approx(4 * 0.2 / 2.0, rel=1e-5)


def _read_log(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.parametrize('family', ['ddfs', 'dfv'])
def test_tiny_training_loss_falls_and_resumes(tmp_path, family):
    # 4 samples of 32 x 32, batch 4: every step sees the same scenes (up to flips), so the
    # loss of a working loop must fall well within 30 steps
    data = dict(TINY, size=32, cache=str(tmp_path / 'cache'), train_count=4, val_count=2, seed=0,
                frames=(2, 6) if family != 'dfv' else 4)
    conf = {'name': f'tiny_{family}', 'model': {'family': family, 'width': 1 / 16}, 'data': data,
            'train': {'steps': 30, 'batch': 4, 'lr': 3e-3, 'val_every': 30, 'log_every': 5, 'threads': 1}}
    out = tmp_path / 'run'
    summary = train(conf, family, out, progress=False)
    rows = _read_log(out / 'log.csv')
    losses = [float(r['loss']) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert summary['steps'] == 30 and summary['sec_per_step'] > 0
    assert np.isfinite(summary['final_val']['absrel'])
    assert (out / 'best.pt').exists() and (out / 'last.pt').exists()
    # resume continues from step 30 to 33
    summary2 = train(conf, family, out, resume=True, steps=33, progress=False)
    assert summary2['steps'] == 33
    ck = torch.load(out / 'last.pt', weights_only=False)
    assert ck['step'] == 33 and ck['family'] == family


def test_cached_dataset_flips_every_array_alike(tmp_path):
    cfg = DataConfig(**dict(TINY, frames=4), want_stack=True, want_cost=True)
    build_cache(cfg, 'train', 2, tmp_path, seed=0, progress=False)
    meta = json.loads((tmp_path / 'train_meta.json').read_text())
    assert meta['count'] == 2 and len(meta['samples']) == 2
    plain = CachedDataset(tmp_path / 'train.npz')[0]
    flipped = None
    ds = CachedDataset(tmp_path / 'train.npz', augment=True, seed=1)
    for _ in range(20):
        s = ds[0]
        if not torch.equal(s['gt'], plain['gt']):
            flipped = s
            break
    assert flipped is not None
    # whatever flip happened to gt happened to the cost volume and the stack
    for dims in ([-1], [-2], [-2, -1]):
        if torch.equal(flipped['gt'], plain['gt'].flip(dims)):
            assert torch.equal(flipped['cost'], plain['cost'].flip(dims))
            assert torch.equal(flipped['stack'], plain['stack'].flip(dims))
            assert torch.equal(flipped['image'], plain['image'].flip(dims))
            break
    else:
        pytest.fail('unexpected transform')
