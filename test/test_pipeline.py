"""DepthPipeline: resize + pitch scaling, hypothesis modes, stack checks, DFV ordering, sanity mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as Fnn

from ddfs_ros.cost_volume import CostVolume
from ddfs_ros.engines import load_engine
from ddfs_ros.optics import LensModel, depth_hypotheses, scale_hypotheses_to_focus
from ddfs_ros.pipeline import DepthPipeline, sanity_mask
from ddfs_ros.stack import FocalStack, StackError

from conftest import PLANE_DEPTH_M, rendered_plane_stack, shipped_engine, validation_absrel


@pytest.fixture(scope='module')
def engines(tiny_engines):
    return {k: load_engine(v, backend='onnxruntime', device='cpu') for k, v in tiny_engines.items()}


def _stack(F=5, H=64, W=64, seed=0, focus=None, f_numbers=None):
    rng = np.random.default_rng(seed)
    focus = np.geomspace(0.3, 2.0, F) if focus is None else focus
    return FocalStack(rng.random((F, H, W, 3), dtype=np.float32), focus, LensModel(0.01, 2.0, 20e-6),
                      f_numbers=f_numbers)


def test_resize_and_pitch_scaling_match_the_stages_run_by_hand(engines):
    """A 4:3 stack on a fixed 64 x 64 engine: centre crop to 1:1, never squashed."""
    eng = engines['ddfs']
    pipe = DepthPipeline(eng, hypothesis_mode='fixed', max_relative_uncertainty=None, upsample='bilinear')
    stack = _stack(H=96, W=128, seed=1)
    res = pipe.run(stack)
    assert res.depth.shape == (96, 128) and res.uncertainty.shape == (96, 128)
    # the same stages by hand: centre crop 96 x 96, area resize, pitch * 96 / 64, cost volume,
    # infer, bilinear back into the crop, NaN outside it
    import cv2       # the pipeline's area resampling on a CPU (exact pixel areas)
    crop = stack.frames[:, :, 16:112]
    frames = torch.from_numpy(np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in crop]))
    frames = frames.permute(0, 3, 1, 2).contiguous()
    hyp = eng.manifest.train_hypotheses()
    cv = CostVolume(max_coc_px=eng.manifest.max_coc_px)(frames, stack.focus_m, stack.per_frame_f_numbers(), 0.01,
                                                      20e-6 * 96 / 64, hyp)
    ref = stack.reference_index('farthest')
    d, u = eng.infer({'image': frames[ref:ref + 1], 'cost_volume': cv[None],
                      'depths': torch.as_tensor(hyp, dtype=torch.float32)[None]})
    back = Fnn.interpolate(torch.cat([d, u], 1), size=(96, 96), mode='bilinear', align_corners=False)[0].numpy()
    np.testing.assert_allclose(res.depth[:, 16:112], back[0], atol=1e-5)
    np.testing.assert_allclose(res.uncertainty[:, 16:112], back[1], atol=1e-5)
    assert np.isnan(res.depth[:, :16]).all() and np.isnan(res.depth[:, 112:]).all()
    assert set(res.timings) >= {'validate', 'resize', 'cost_volume', 'infer', 'upsample', 'post', 'total'}
    assert res.backend == 'onnxruntime'


def test_hypothesis_modes(engines):
    eng = engines['ddfs']
    focus = np.array([3.0, 5.0, 8.0])
    train = depth_hypotheses(0.1, 3.0, 16)
    np.testing.assert_allclose(DepthPipeline(eng, 'fixed').hypotheses_for(focus), train)
    np.testing.assert_allclose(DepthPipeline(eng, 'from_focus').hypotheses_for(focus),
                               scale_hypotheses_to_focus(train, (0.3, 2.0), focus))
    np.testing.assert_allclose(DepthPipeline(eng, [1.0, 8.0]).hypotheses_for(focus), depth_hypotheses(1, 8, 16))
    for bad in ('auto', [2.0, 1.0]):
        with pytest.raises(ValueError):
            DepthPipeline(eng, bad)


def test_from_focus_gives_metric_depth_in_the_stack_range(engines):
    """A stack focused at 3..8 m gets depth in the scaled range, not the 0.1..3 m training range."""
    pipe = DepthPipeline(engines['ddfs'], 'from_focus', max_relative_uncertainty=None)
    stack = _stack(focus=np.geomspace(3.0, 8.0, 5))
    stack = FocalStack(stack.frames, stack.focus_m, LensModel(0.05, 2.0, 20e-6))
    res = pipe.run(stack)
    lo, hi = res.depth_range
    assert lo > 0.5 and hi > 10.0
    assert np.nanmin(res.depth) >= lo - 1e-3 and np.nanmax(res.depth) <= hi + 1e-3


@pytest.mark.parametrize('case,reason', [
    ('duplicate', 'duplicate_frame'), ('nan_focus', 'nan_lens'), ('inside_f', 'focus_inside_focal_length'),
    ('one_frame', 'too_few_frames')])
def test_invalid_stacks_raise_reasons(engines, case, reason):
    s = _stack(F=4)
    if case == 'duplicate':
        s.focus_m[2] = s.focus_m[1]
    elif case == 'nan_focus':
        s.focus_m[0] = np.nan
    elif case == 'inside_f':
        s.focus_m[0] = 0.005
    elif case == 'one_frame':
        s = _stack(F=1)
    with pytest.raises(StackError) as e:
        DepthPipeline(engines['ddfs']).run(s)
    assert e.value.reason == reason


def test_aperture_only_stack_is_valid(engines):
    s = _stack(F=2, focus=np.array([1.0, 1.0]), f_numbers=[2.0, 8.0])
    res = DepthPipeline(engines['dfv_cv'], 'fixed').run(s)
    assert res.depth.shape == (64, 64)


def test_fixed_f_engine_rejects_other_frame_counts(engines):
    with pytest.raises(StackError) as e:
        DepthPipeline(engines['dfv']).run(_stack(F=4))
    assert e.value.reason == 'frame_count_mismatch'


def test_dfv_gets_frames_near_to_far(engines):
    pipe = DepthPipeline(engines['dfv'], max_relative_uncertainty=None)
    s = _stack(seed=4)
    order = np.array([3, 0, 4, 1, 2])
    shuffled = FocalStack(s.frames[order], s.focus_m[order], s.lens)
    a, b = pipe.run(s), pipe.run(shuffled)
    np.testing.assert_allclose(a.depth, b.depth, atol=1e-6)
    assert b.reference_index == int(np.argmax(shuffled.focus_m))
    assert np.nanmin(a.depth) >= s.focus_m.min() - 1e-3 and np.nanmax(a.depth) <= s.focus_m.max() + 1e-3


def test_sanity_mask_counts():
    depth = np.array([[1.0, 2.0, np.nan, 5.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    unc = np.array([[0.1, 1.5, 0.1, 0.1], [0.6, 0.2, np.inf, 0.05]], np.float32)
    bad_range, bad_unc = sanity_mask(depth, unc, 0.5, 3.0, max_uncertainty=1.0, max_relative_uncertainty=0.5)
    assert bad_range.tolist() == [[False, False, True, True], [False] * 4]
    assert bad_unc.tolist() == [[False, True, False, False], [True, False, True, False]]
    off_range, off_unc = sanity_mask(depth, unc, 0.5, 3.0)
    assert off_unc.sum() == 1          # only the inf uncertainty


def test_uncertainty_threshold_blanks_and_counts(engines):
    s = _stack(seed=2)
    everything = DepthPipeline(engines['ddfs'], 'fixed', max_uncertainty=1e-6).run(s)
    assert np.isnan(everything.depth).all() and everything.n_uncertain == 64 * 64
    assert np.isfinite(everything.uncertainty).all()
    nothing = DepthPipeline(engines['ddfs'], 'fixed', max_uncertainty=None, max_relative_uncertainty=None).run(s)
    assert nothing.valid_fraction == 1.0 and nothing.n_uncertain == 0


def test_warm_up_runs(engines):
    assert DepthPipeline(engines['dfv']).warm_up(runs=1) > 0


def test_shipped_engine_on_a_rendered_plane():
    """A textured plane inside the sweep is no harder than the engine's held-out validation set."""
    path = shipped_engine('ddfs_s')
    bound = validation_absrel(path)
    eng = load_engine(path, backend='onnxruntime', device='cpu')
    res = DepthPipeline(eng, 'from_focus', max_relative_uncertainty=None).run(rendered_plane_stack())
    absrel = np.nanmean(np.abs(res.depth - PLANE_DEPTH_M) / PLANE_DEPTH_M)
    assert absrel < bound, (absrel, bound)
