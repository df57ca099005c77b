"""Depth metrics against values worked out by hand on small arrays."""
import math

import numpy as np
import pytest

from ddfs_ros.eval.metrics import METRIC_KEYS, aggregate, bumpiness_map, compute_metrics

NAN = np.nan


def _example():
    # Valid pairs (pred, gt): (1, 1), (2, 1), (4, 5).  The other pixels are
    # invalid for one reason each: gt NaN, gt 0, pred NaN (gt valid), pred <= 0 (gt valid).
    pred = np.array([[1.0, 2.0, 4.0],
                     [3.0, 3.0, NAN],
                     [-1.0, 7.0, 8.0]])
    gt = np.array([[1.0, 1.0, 5.0],
                   [NAN, 0.0, 2.0],
                   [2.0, NAN, NAN]])
    unc = np.array([[0.1, 0.2, 0.3],
                    [9.0, 9.0, 9.0],
                    [9.0, 9.0, 9.0]])
    return pred, gt, unc


def test_metrics_hand_computed():
    pred, gt, unc = _example()
    m = compute_metrics(pred, gt, unc)
    assert m['n_valid'] == 3
    assert m['mse'] == pytest.approx(2.0 / 3.0)
    assert m['rms'] == pytest.approx(math.sqrt(2.0 / 3.0))
    assert m['mae'] == pytest.approx(2.0 / 3.0)
    assert m['absrel'] == pytest.approx((0.0 + 1.0 + 0.2) / 3.0)
    assert m['sqrel'] == pytest.approx((0.0 + 1.0 + 0.2) / 3.0)
    assert m['log_rms'] == pytest.approx(math.sqrt((math.log(2.0) ** 2 + math.log(0.8) ** 2) / 3.0))
    # ratios max(p/g, g/p) = 1, 2, 1.25; the threshold is strict (1.25 is not < 1.25)
    assert m['delta1'] == pytest.approx(100.0 / 3.0)
    assert m['delta2'] == pytest.approx(200.0 / 3.0)
    assert m['delta3'] == pytest.approx(200.0 / 3.0)  # 2 > 1.25**3 = 1.953
    # avgUnc over the 5 pixels with ground truth, predicted or not: 0.1, 0.2, 0.3, 9, 9
    assert m['avg_unc'] == pytest.approx((0.6 + 18.0) / 5.0)
    # gt valid at 5 pixels (1, 1, 5, 2, 2), prediction usable at 3 of them
    assert m['coverage'] == pytest.approx(3.0 / 5.0)


def test_metrics_mask_and_no_gt():
    pred, gt, unc = _example()
    mask = np.zeros_like(pred, dtype=bool)
    mask[0, 0] = mask[0, 1] = True
    m = compute_metrics(pred, gt, mask=mask)
    assert m['n_valid'] == 2
    assert m['absrel'] == pytest.approx(0.5)
    assert math.isnan(m['avg_unc'])

    # Without ground truth only coverage (finite positive predictions over all pixels) and avgUnc.
    m = compute_metrics(pred, None, unc)
    assert m['coverage'] == pytest.approx(7.0 / 9.0)
    assert m['avg_unc'] == pytest.approx((0.6 + 9.0 * 6) / 9.0)
    assert math.isnan(m['absrel']) and math.isnan(m['rms'])


def test_bumpiness_of_a_quadratic_error():
    # error e = a * x^2: the Scharr derivative (x+1) - (x-1) gives 4 a x, twice gives 8 a;
    # the cross and y derivatives vanish, so the Hessian norm is 8 a away from the borders.
    a = 0.001
    x = np.arange(16, dtype=np.float64)
    err = np.tile(a * x ** 2, (12, 1))
    bm = bumpiness_map(err)
    np.testing.assert_allclose(bm[:, 3:-3], 8 * a, rtol=1e-12)

    gt = np.full((12, 16), 2.0)
    # a constant offset is perfectly flat
    assert compute_metrics(gt + 0.3, gt)['bumpiness'] == pytest.approx(0.0, abs=1e-12)
    # a steep bowl clips at 0.05 everywhere (borders included: >= 3a there) -> 0.05 * 100
    assert compute_metrics(gt + 0.1 * x ** 2, gt)['bumpiness'] == pytest.approx(5.0)


def test_aggregate_averages_over_images():
    pred, gt, unc = _example()
    m1 = compute_metrics(pred, gt, unc)
    m2 = compute_metrics(gt * 1.1, gt)  # absrel 0.1 everywhere valid
    empty = compute_metrics(np.full((3, 3), NAN), gt)  # no valid pixel: skipped per key
    agg = aggregate([m1, m2, empty])
    assert agg['n'] == 3 and agg['n_scored'] == 2
    assert agg['absrel'] == pytest.approx((0.4 + 0.1) / 2)
    assert agg['delta1'] == pytest.approx((100.0 / 3.0 + 100.0) / 2)
    assert agg['avg_unc'] == pytest.approx(18.6 / 5.0)  # only m1 had an uncertainty
    assert agg['coverage'] == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert set(METRIC_KEYS) <= set(agg)
