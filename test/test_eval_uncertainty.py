"""Median-oracle baseline, uncertainty calibration, sparsification/AUSE and beats_oracle_px (issue 9)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ddfs_ros.eval import bag_cli, cli
from ddfs_ros.eval.metrics import (SPARSIFICATION_PERCENTS, aggregate, ause, compute_metrics,
                                   sparsification)
from ddfs_ros.eval.offline import median_oracle_predict, parse_baselines
from ddfs_ros.optics import LensModel
from ddfs_ros.stack import FocalStack, StackError


def _two_level_gt(size: int = 64) -> np.ndarray:
    """Top half 1 m, bottom half 4 m, with a NaN hole and a 0 (unknown) hole of equal size in each half."""
    gt = np.ones((size, size), dtype=np.float32)
    gt[size // 2:] = 4.0
    gt[2:6, 2:6] = np.nan
    gt[size - 6:size - 2, 2:6] = 0.0
    return gt


def _stack(size: int = 64) -> FocalStack:
    frames = np.full((2, size, size, 3), 0.5, dtype=np.float32)
    return FocalStack(frames=frames, focus_m=np.array([1.0, 2.0]), lens=LensModel(0.025, 2.0, 2e-5))


def test_median_oracle_matches_hand_computed_absrel():
    gt = _two_level_gt()
    depth, unc = median_oracle_predict(_stack(), gt)
    assert unc is None and depth.shape == gt.shape and depth.dtype == np.float32
    # as many 1 m as 4 m pixels are valid -> median 2.5 m; AbsRel = (1.5 / 1 + 1.5 / 4) / 2
    assert np.all(depth == 2.5)
    m = compute_metrics(depth, gt)
    assert m['absrel'] == pytest.approx((1.5 / 1.0 + 1.5 / 4.0) / 2.0)
    assert m['mae'] == pytest.approx(1.5)
    # 2.5 / 1 = 2.5 > 1.25^3 (the 1 m half is outside delta3); 4 / 2.5 = 1.6 < 1.25^3 (the 4 m half is inside)
    assert m['delta3'] == pytest.approx(50.0) and m['delta1'] == 0.0
    assert m['beats_oracle_px'] == 0.0  # nothing beats itself: the comparison is strict


def test_median_oracle_needs_ground_truth():
    with pytest.raises(StackError):
        median_oracle_predict(_stack(), None)
    with pytest.raises(StackError):
        median_oracle_predict(_stack(), np.full((64, 64), np.nan, dtype=np.float32))


def test_calibration_of_a_perfect_and_of_a_half_honest_predictor():
    gt = _two_level_gt()
    assert compute_metrics(gt.copy(), gt, np.zeros_like(gt))['unc_cal'] == 1.0
    pred = np.where(np.isfinite(gt) & (gt > 0), gt + 0.1, np.nan).astype(np.float64)
    unc = np.full(gt.shape, 0.05)
    assert compute_metrics(pred, gt, unc)['unc_cal'] == 0.0
    unc[:, ::2] = 0.2                       # honest on every other column
    assert compute_metrics(pred, gt, unc)['unc_cal'] == pytest.approx(0.5)
    # no uncertainty: calibration and AUSE are undefined, not 0
    m = compute_metrics(pred, gt)
    assert math.isnan(m['unc_cal']) and math.isnan(m['ause'])


def test_sparsification_by_hand():
    err = np.array([0.4, 0.1, 0.3, 0.2, 0.0, 0.5, 0.6, 0.7, 0.8, 0.9])
    # the ranking puts the errors in order 0.9, 0.8, ... (worst first): the curve is the mean of the worst k
    worst_first = -err
    curve = sparsification(err, worst_first)
    assert curve[0] == pytest.approx(0.9)
    assert curve[1] == pytest.approx((0.9 + 0.8) / 2)
    assert curve[-1] == pytest.approx(err.mean())
    oracle = sparsification(err, err)
    assert oracle[0] == pytest.approx(0.0) and oracle[2] == pytest.approx(0.1)
    assert np.all(np.diff(oracle) >= 0) and oracle[-1] == pytest.approx(err.mean())
    # area between: trapezoids over the fractions 0.1 .. 1.0
    d = curve - oracle
    assert ause(curve, oracle) == pytest.approx(sum((d[i] + d[i + 1]) * 0.05 for i in range(9)))
    assert ause(oracle, oracle) == 0.0


def test_uncertainty_equal_to_error_gives_the_oracle_curve():
    rng = np.random.default_rng(3)
    gt = rng.uniform(0.5, 3.0, size=(64, 64))
    pred = gt * (1.0 + rng.normal(0.0, 0.2, size=gt.shape))
    pred = np.abs(pred) + 0.05
    rel = np.abs(pred - gt) / gt
    # ranking is by unc / depth: an uncertainty of |error| * pred / gt ranks exactly by the true relative error
    m = compute_metrics(pred, gt, rel * pred)
    for x in SPARSIFICATION_PERCENTS:
        assert m[f'spars_{x}'] == pytest.approx(m[f'spars_oracle_{x}'])
    assert m['ause'] == pytest.approx(0.0, abs=1e-12)
    assert m['spars_100'] == pytest.approx(m['absrel'])
    # an uncertainty unrelated to the error ranks worse than the oracle: AUSE clearly > 0
    m_rand = compute_metrics(pred, gt, rng.uniform(0.0, 1.0, size=gt.shape))
    assert m_rand['ause'] > 0.02
    # the mean curves over images and the mean AUSE agree (AUSE is linear in the curves)
    agg = aggregate([m, m_rand])
    c = np.array([agg[f'spars_{x}'] for x in SPARSIFICATION_PERCENTS])
    o = np.array([agg[f'spars_oracle_{x}'] for x in SPARSIFICATION_PERCENTS])
    assert ause(c, o) == pytest.approx(agg['ause'])


def test_beats_oracle_counts_masked_pixels_as_not_beating():
    gt = np.array([[1.0, 2.0, 3.0, 4.0]])           # median 2.5
    pred = np.array([[1.1, 2.0, np.nan, 2.0]])      # |err| 0.1 < 1.5, 0 < 0.5, masked, 2 > 1.5
    m = compute_metrics(pred, gt)
    assert m['beats_oracle_px'] == pytest.approx(50.0)
    assert m['coverage'] == pytest.approx(0.75)
    assert compute_metrics(np.full((1, 4), np.nan), gt)['beats_oracle_px'] == 0.0


def test_parse_baselines():
    assert parse_baselines([]) == ['focus-measure', 'median-oracle']
    assert parse_baselines(True) == ['focus-measure', 'median-oracle']
    assert parse_baselines(['median-oracle']) == ['median-oracle']
    assert parse_baselines(['none']) == [] and parse_baselines(False) == []
    with pytest.raises(ValueError):
        parse_baselines(['constant'])


def test_offline_report_has_both_baselines_and_the_new_columns(tmp_path):
    bag = tmp_path / 'bag'
    assert bag_cli.main(['make', str(bag), '--source', 'procedural', '--stacks', '2', '--size', '64x64',
                         '--focus', '0.6,1.0,2.0', '--seed', '2']) == 0
    assert cli.main(['offline', str(bag), '--report', str(tmp_path / 'r'), '--json', str(tmp_path / 'r.json'),
                     '--grid-stacks', '1']) == 0
    rows = {r['method']: r for r in json.loads((tmp_path / 'r.json').read_text())['rows']}
    assert set(rows) == {'focus-measure (baseline)', 'median-oracle (baseline)'}
    oracle = rows['median-oracle (baseline)']
    assert oracle['n'] == 2 and oracle['beats_oracle_px'] == 0.0 and oracle['coverage'] == 1.0
    assert 0.0 <= rows['focus-measure (baseline)']['beats_oracle_px'] <= 100.0
    report = (tmp_path / 'r' / 'report.md').read_text()
    assert 'median-oracle (baseline)' in report and '| unc_cal | AUSE |' in report
    # no method with an uncertainty: no sparsification plot
    assert not (tmp_path / 'r' / 'sparsification.png').exists()
    # --baseline none: no rows at all -> usage error
    assert cli.main(['offline', str(bag), '--baseline', 'none', '--report', str(tmp_path / 'r2')]) == 2


def test_report_plots_sparsification_for_an_engine(tmp_path, cost_argmin_engines):
    bag = tmp_path / 'bag'
    assert bag_cli.main(['make', str(bag), '--source', 'procedural', '--stacks', '2', '--size', '64x64',
                         '--focus', '0.6,1.0,2.0', '--seed', '2']) == 0
    engine = next(iter(cost_argmin_engines.values()))
    assert cli.main(['offline', str(bag), '--engine', str(engine), '--backend', 'onnxruntime',
                     '--baseline', 'median-oracle', '--max-relative-uncertainty', '0',
                     '--report', str(tmp_path / 'r'), '--json', str(tmp_path / 'r.json'), '--grid-stacks', '1']) == 0
    rows = json.loads((tmp_path / 'r.json').read_text())['rows']
    eng = rows[0]
    assert 0.0 <= eng['unc_cal'] <= 1.0 and eng['ause'] is not None and eng['ause'] >= -1e-9
    assert (tmp_path / 'r' / 'sparsification.png').stat().st_size > 1000


SHARED = __import__('ddfs_ros.data_splits', fromlist=['SHARED_DATA']).SHARED_DATA


def test_rgbd_7scenes_test_bag_keeps_holes_as_nan_and_the_data_k(tmp_path):
    import cv2
    from ddfs_ros.data_splits import rgbd_7scenes_frames
    from ddfs_ros.eval.bags import read_bag
    root = SHARED / 'rgbd_7scenes'
    if not root.is_dir():
        pytest.skip(f'{root} is absent (shared data not mounted)')
    bag = tmp_path / 's'
    assert bag_cli.main(['make', str(bag), '--source', 'rgbd_7scenes', '--split', 'test', '--stacks', '1',
                         '--size', '64x48', '--no-noise']) == 0
    (item,) = list(read_bag(bag))
    assert item.ok and item.stack.frames.shape == (5, 48, 64, 3)
    # K of the data (fx = 585 px at 640 px) scaled to 64 px, and the lens agrees with it: f = fx * pitch
    fx = float(item.stack.meta['K'][0, 0])
    assert fx == pytest.approx(58.5)
    assert item.stack.lens.focal_length_m == pytest.approx(fx * item.stack.lens.pixel_pitch_m)
    # the first test frame; its 0 (no reading) pixels are NaN in depth_gt, nearest-resized like the bag
    frame = rgbd_7scenes_frames('test', root)[0]
    raw = cv2.imread(str(root / f'frame-{frame:06d}.depth.png'), cv2.IMREAD_ANYDEPTH)
    small = cv2.resize(raw, (64, 48), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(np.isnan(item.depth_gt), small == 0) and (small == 0).any()
    assert np.allclose(item.depth_gt[small > 0], small[small > 0] / 1000.0, atol=1e-6)
    # focus: 5 distances uniform in dioptres between the 5th and 95th percentile of the depth
    d = item.depth_gt[np.isfinite(item.depth_gt)]
    inv = 1.0 / item.stack.focus_m
    assert np.allclose(np.diff(inv), np.diff(inv)[0])
    assert item.stack.focus_m.min() == pytest.approx(np.percentile(d, 5), rel=1e-5)


def test_real_dfd_test_split_is_the_held_out_scenes():
    from ddfs_ros.data_splits import real_dfd_split
    from ddfs_ros.eval.bag_cli import _real_dfd_split_scenes
    if not (SHARED / 'real_dfd_indoor_train' / 'pairs.csv').is_file():
        pytest.skip('real_dfd_indoor_train is absent (shared data not mounted)')
    test = _real_dfd_split_scenes(None, 'test')
    val = _real_dfd_split_scenes(None, 'val')
    rows = [ld.args[1]['rgb_file'] for ld in test]
    assert len(rows) == sum(real_dfd_split(i) == 'test' for i in range(81)) == 12
    assert not set(rows) & {ld.args[1]['rgb_file'] for ld in val}
    rgb, depth, render_depth, name, fx = test[0]()
    assert render_depth is None and fx is None and np.isfinite(depth).all() and rgb.shape[:2] == depth.shape


def test_acceptance_table_reduction_and_means():
    from ddfs_ros.eval.acceptance import add_reduction, markdown_table, mean_rows, reduction_vs
    assert reduction_vs(0.06, 0.08) == pytest.approx(25.0)
    assert reduction_vs(0.10, 0.08) == pytest.approx(-25.0)
    assert math.isnan(reduction_vs(None, 0.08)) and math.isnan(reduction_vs(0.05, None))
    fm, mo = 'focus-measure (baseline)', 'median-oracle (baseline)'
    bag_a = add_reduction([{'method': 'e', 'n': 3, 'absrel': 0.05, 'delta1': 90.0, 'coverage': 0.9},
                           {'method': fm, 'n': 3, 'absrel': 0.10, 'delta1': 80.0, 'coverage': 1.0},
                           {'method': mo, 'n': 3, 'absrel': 0.20, 'delta1': 50.0, 'coverage': 1.0}])
    bag_b = add_reduction([{'method': 'e', 'n': 0, 'absrel': None},     # refused every stack of this bag
                           {'method': fm, 'n': 2, 'absrel': 0.30, 'delta1': 60.0, 'coverage': 1.0}])
    assert [r['vs_focus'] for r in bag_a] == pytest.approx([50.0, 0.0, -100.0])
    means = {r['method']: r for r in mean_rows({'a': bag_a, 'b': bag_b})}
    # the engine's mean is over the one bag it scored; the focus measure's over both
    assert means['e']['absrel'] == pytest.approx(0.05) and means['e']['n'] == 3
    assert means[fm]['absrel'] == pytest.approx(0.20) and means[fm]['n'] == 5
    assert means['e']['vs_focus'] == pytest.approx(75.0)
    table = markdown_table({'a': bag_a, 'b': bag_b})
    assert '| a | e | 3 | 0.0500 | 90.0 | 90.0 |' in table and '+50.0 %' in table
    assert 'mean of the 2 bags' in table


def test_acceptance_processing_width_is_a_replay_node_parameter():
    from ddfs_ros.eval.acceptance import build_parser, main
    assert build_parser().parse_args(['--out', 'x.md', '--processing-width', '224']).processing_width == 224
    with pytest.raises(SystemExit) as e:       # offline scoring has no node to set it on
        main(['--out', 'x.md', '--offline', '--processing-width', '224'])
    assert e.value.code == 2
