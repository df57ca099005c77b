"""The focus networks' data, core and export (issue 9): small sizes, real checks."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddfs_ros import data_splits
from ddfs_ros.focus_volume import focus_curve_weights, focus_volume, predicted_sharpness
from ddfs_ros.optics import LensModel, hypotheses_from_focus_span
from ddfs_ros.render import render_focal_stack
from ddfs_ros.scenes import fronto_parallel_plane
from ddfs_ros.stack import reference_index

#: Training scenes are textured with the shared photographs; without them the data tests cannot run.
needs_textures = pytest.mark.skipif(not data_splits.texture_paths('train'),
                                    reason='../shared/data/textures is absent (see ../shared/data/README.md)')


def test_shared_data_is_found_from_an_installed_package(tmp_path, monkeypatch):
    # the environment wins; else ../shared/data beside the working directory when the
    # package's own location (site-packages) has none beside it
    monkeypatch.setenv('DDFS_SHARED_DATA', str(tmp_path / 'elsewhere'))
    assert data_splits.shared_data_dir() == tmp_path / 'elsewhere'
    monkeypatch.delenv('DDFS_SHARED_DATA')
    (tmp_path / 'shared' / 'data').mkdir(parents=True)
    (tmp_path / 'repo').mkdir()
    monkeypatch.chdir(tmp_path / 'repo')
    monkeypatch.setattr(data_splits, '__file__', str(tmp_path / 'venv' / 'site' / 'ddfs_ros' / 'data_splits.py'))
    assert data_splits.shared_data_dir() == (tmp_path / 'shared' / 'data').resolve()


def test_splits_are_disjoint_and_keep_shared_bag_scenes_out_of_training():
    assert data_splits.real_dfd_split(0) == 'test' and data_splits.real_dfd_split(1) == 'test'
    splits = [data_splits.real_dfd_split(i) for i in range(81)]
    assert splits.count('test') == 12 and splits.count('val') == 10
    assert data_splits.rgbd_7scenes_split(610) is None and data_splits.rgbd_7scenes_split(800) is None
    names = [f'bsds500/img_{i}.jpg' for i in range(400)]
    counts = {s: sum(data_splits.texture_split(n) == s for n in names) for s in data_splits.SPLITS}
    assert counts['train'] > 250 and counts['val'] > 20 and counts['test'] > 20
    # a path is in exactly one split, and the same one every time
    assert all(data_splits.texture_split(n) == data_splits.texture_split(n) for n in names[:20])


def test_reference_frame_rule_breaks_aperture_pair_ties_by_f_number():
    assert reference_index([1.7, 1.7], [2.8, 8.0]) == 1
    assert reference_index([1.7, 1.7], [8.0, 2.8]) == 0
    assert reference_index([0.5, 2.0, 1.0], 2.0) == 1
    assert reference_index([0.5, 2.0, 1.0], 2.0, 'nearest') == 0


def test_focus_span_hypotheses_cover_the_focus_range_uniformly_in_dioptres():
    focus = [0.5, 0.8, 2.0]
    h = hypotheses_from_focus_span(focus, 16)
    assert np.all(np.diff(h) > 0) and h.min() < 0.5 and h.max() > 2.0
    np.testing.assert_allclose(np.diff(1.0 / h), np.diff(1.0 / h)[0], rtol=1e-9)
    # scale identity: k times the focus distances gives k times the hypotheses
    np.testing.assert_allclose(hypotheses_from_focus_span(np.array(focus) * 3, 16), 3 * h, rtol=1e-12)
    # one focus distance (aperture pair) still gives an open range around it
    a = hypotheses_from_focus_span([1.7, 1.7], 8)
    assert a.min() < 1.7 < a.max()


def test_focus_volume_peaks_at_the_depth_of_a_textured_plane():
    lens = LensModel(0.012, 1.8, 6e-6)
    focus = 1.0 / np.linspace(1 / 0.4, 1 / 2.0, 6)
    hyps = hypotheses_from_focus_span(focus, 24)
    for depth in (0.55, 1.1):
        scene = fronto_parallel_plane(64, depth, 'astronaut')
        frames = render_focal_stack(scene.rgb, scene.depth_m, focus, lens)
        chw = np.moveaxis(np.asarray(frames, np.float32), -1, 1)
        v = focus_volume(chw, focus, 1.8, lens.focal_length_m, lens.pixel_pitch_m, hyps)
        assert v.shape == (24, 64, 64)
        best = hyps[int(torch.median(v[:, 8:-8, 8:-8].argmax(dim=0)))]
        assert abs(1 / best - 1 / depth) < 0.35 * (1 / focus.min() - 1 / focus.max()) / 5, (depth, best)


def test_focus_curve_peaks_where_the_focus_measure_parabola_does():
    from ddfs_ros.baselines import focus_measure_depth

    lens = LensModel(0.025, 2.0, 8e-6)
    focus = 1.0 / np.linspace(1 / 2.2, 1 / 4.7, 5)        # blur <= ~7 px (below 1 px the renderer's disk is a delta)
    hyps = hypotheses_from_focus_span(focus, 64)
    for depth in (2.5, 3.3):
        scene = fronto_parallel_plane(64, depth, 'astronaut')
        frames = render_focal_stack(scene.rgb, scene.depth_m, focus, lens)
        chw = np.moveaxis(np.asarray(frames, np.float32), -1, 1)
        both = focus_volume(chw, focus, 2.0, lens.focal_length_m, lens.pixel_pitch_m, hyps,
                            modes=('thin_lens', 'focus_curve'))
        assert both.shape == (128, 64, 64)
        np.testing.assert_array_equal(both[:64].numpy(), focus_volume(chw, focus, 2.0, lens.focal_length_m,
                                                                      lens.pixel_pitch_m, hyps).numpy())
        curve = both[64:, 8:-8, 8:-8]
        best = float(np.median(hyps[curve.argmax(dim=0).numpy()]))
        fm, _ = focus_measure_depth(frames, focus)
        ref = float(np.median(fm[8:-8, 8:-8]))
        spacing = (1 / focus.min() - 1 / focus.max()) / 4
        assert abs(1 / best - 1 / depth) < 0.25 * spacing, (depth, best)
        assert abs(1 / best - 1 / ref) < 0.2 * spacing, (best, ref)


def test_focus_curve_weights_interpolate_in_dioptres_and_are_scale_free():
    focus = np.array([3.0, 1.0, 2.0])                     # any frame order
    hyps = np.array([0.8, 1.0, 1.2, 2.0, 2.5, 4.0])
    W = focus_curve_weights(focus, hyps)
    inside = (1 / hyps >= 1 / 3.0) & (1 / hyps <= 1.0)
    np.testing.assert_allclose(W[inside].sum(axis=1), 1.0)           # Lagrange weights sum to 1
    u = 1 / focus
    np.testing.assert_allclose(W[inside] @ u, 1 / hyps[inside])      # and reproduce a linear curve
    np.testing.assert_allclose(W[hyps == 2.0][0], [0, 0, 1], atol=1e-12)
    assert W[0, 1] == pytest.approx(1 - 0.5 * (1 / 0.8 - 1) / (1 - 1 / 3)) and W[0, [0, 2]].sum() == 0
    np.testing.assert_allclose(focus_curve_weights(3 * focus, 3 * hyps), W, atol=1e-9)   # only dioptre ratios enter
    # an aperture pair has no focus curve; frames sharing a focus distance are summed
    assert not focus_curve_weights([1.7, 1.7], [1.0, 1.7, 3.0]).any()
    Wd = focus_curve_weights([1.0, 2.0, 2.0], [1.0, 2.0])
    np.testing.assert_allclose(Wd, [[1, 0, 0], [0, 1, 1]], atol=1e-12)
    with pytest.raises(ValueError, match='modes'):
        focus_volume(np.zeros((2, 3, 8, 8), np.float32), [1.0, 2.0], 2.0, 0.01, 1e-5, hyps, modes=('sharpest',))


def test_a_grown_network_starts_as_the_old_one():
    from training.train_focus import build, load_grown

    kw = {'num_hypotheses': 8, 'widths': (8, 8, 8, 8)}
    torch.manual_seed(0)
    old = build('ddfs', kw).eval()
    new = build('ddfs', {**kw, 'focus_curve': True}).eval()
    assert new.focus_volume_modes == ('thin_lens', 'focus_curve')
    assert load_grown(new, old.state_dict()) and not load_grown(build('ddfs', kw), old.state_dict())
    img, cv, fv = torch.rand(2, 3, 16, 16), torch.rand(2, 8, 16, 16), torch.rand(2, 8, 16, 16)
    d = torch.as_tensor(hypotheses_from_focus_span([0.5, 2.0], 8), dtype=torch.float32)[None].repeat(2, 1)
    with torch.no_grad():
        a = old(img, cv, d, fv)[0]
        b = new(img, cv, d, torch.cat([fv, torch.rand(2, 8, 16, 16)], 1))[0]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match='cannot grow'):
        load_grown(old, new.state_dict())


def test_volume_skip_starts_as_the_old_network_and_hands_a_curve_to_the_logits():
    from training.models.focusnets import SKIP_GAIN
    from training.train_focus import build, load_grown

    kw = {'num_hypotheses': 8, 'widths': (8, 8, 8, 8), 'focus_curve': True}
    torch.manual_seed(0)
    old = build('ddfs', kw).eval()
    new = build('ddfs', {**kw, 'volume_skip': True}).eval()
    assert load_grown(new, old.state_dict())
    img, cv, fv = torch.rand(2, 3, 16, 16), torch.rand(2, 8, 16, 16), torch.rand(2, 16, 16, 16)
    d = torch.as_tensor(hypotheses_from_focus_span([0.5, 2.0], 8), dtype=torch.float32)[None].repeat(2, 1)
    with torch.no_grad():
        torch.testing.assert_close(old(img, cv, d, fv)[0], new(img, cv, d, fv)[0])
        # a large weight on the focus-curve block: the depth is that block's argmax
        new.skip.copy_(torch.tensor([0.0, 0.0, 5.0]))
        curve = torch.zeros(2, 8, 16, 16)
        curve[:, 6] = 1.0
        depth = new(img, cv, d, torch.cat([fv[:, :8], curve], 1))[0]
    assert SKIP_GAIN * 5.0 >= 50.0
    torch.testing.assert_close(depth, d[:, 6].view(2, 1, 1, 1).expand_as(depth), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match='only'):
        load_grown(build('ddfs', kw), {k: v for k, v in old.state_dict().items() if k != 'net.head.bias'})


def test_learned_focus_curves_start_as_the_old_network_ignore_padding_and_follow_the_sharpest_frame():
    from ddfs_ros.network_inputs import frame_inputs_of
    from training.train_focus import build, load_grown

    kw = {'num_hypotheses': 8, 'widths': (8, 8, 8, 8), 'focus_curve': True, 'volume_skip': True}
    torch.manual_seed(0)
    old = build('ddfs', kw).eval()
    new = build('ddfs', {**kw, 'frame_features': 2}).eval()
    assert new.uses_frames and not old.uses_frames and load_grown(new, old.state_dict())
    img, cv, fv = torch.rand(1, 3, 16, 16), torch.rand(1, 8, 16, 16), torch.rand(1, 16, 16, 16)
    hyps = hypotheses_from_focus_span([0.5, 2.0], 8)
    d = torch.as_tensor(hyps, dtype=torch.float32)[None]
    focus = 1.0 / np.linspace(1 / 0.5, 1 / 2.0, 4)
    frames = torch.rand(4, 3, 16, 16)
    x = {k: v[None] for k, v in frame_inputs_of(frames, focus, hyps).items()}
    padded = {k: v[None] for k, v in frame_inputs_of(frames, focus, hyps, pad_frames=7).items()}
    assert padded['frames'].shape == (1, 7, 3, 16, 16) and not padded['curve_weights'][0, :, 4:].any()
    with torch.no_grad():
        torch.testing.assert_close(old(img, cv, d, fv)[0], new(img, cv, d, fv, x['frames'], x['curve_weights'])[0])
        v = new.learned_focus_curves(x['frames'], x['curve_weights'])
        torch.testing.assert_close(v, new.learned_focus_curves(padded['frames'], padded['curve_weights']))
        # a per-frame score that singles out frame 2 (brightness through identity-like layers):
        # the learned curve peaks at that frame's focus distance
        new.frame_net[2].weight.zero_()
        new.frame_net[2].bias.zero_()
        lifted = x['frames'].clone()
        lifted[:, 2] += 1.0
        new.frame_net[0][0].weight.zero_()
        new.frame_net[0][0].weight[:, :, 1, 1] = 1.0
        new.frame_net[1][0].weight.zero_()
        new.frame_net[1][0].weight[:, :, 1, 1] = torch.eye(new.frame_net[1][0].weight.shape[0])
        new.frame_net[2].weight[:, :, 1, 1] = 1.0
        peak = new.learned_focus_curves(lifted, x['curve_weights'])[0, :8, 8, 8].argmax()
    assert abs(1 / hyps[int(peak)] - 1 / focus[2]) <= 0.5 * abs(1 / hyps[1] - 1 / hyps[0]) + 1e-9
    # an aperture pair has no focus curve: the learned block is zero, not NaN
    pair = {k: v[None] for k, v in frame_inputs_of(frames[:2], [1.7, 1.7], hyps).items()}
    with torch.no_grad():
        z = new.learned_focus_curves(pair['frames'], pair['curve_weights'])
    assert torch.isfinite(z).all() and not z.any()
    # in training too: a batch with no frame taking part leaves the batch-norm statistics alone
    new.train()
    assert not new.learned_focus_curves(pair['frames'], pair['curve_weights']).any()
    assert all(torch.isfinite(b).all() for b in new.frame_net.buffers())


def test_grown_parameters_get_their_own_learning_rate_group():
    from training.train_focus import build, param_groups

    model = build('dfv', {'num_frames': 3, 'widths': (8, 8, 8, 8), 'feat': 4, 'agg': 4, 'extrapolate': 1})
    names = {id(p): k for k, p in model.named_parameters()}
    old, new = param_groups(model, 10.0)
    assert new['lr_scale'] == 10.0 and old['lr_scale'] == 1.0
    assert {names[id(p)] for p in new['params']} == {k for k in names.values() if k.startswith('extrap.')}
    # one group: the model's own order, which a saved optimiser state refers to
    (one,) = param_groups(model, 1.0)
    assert [id(p) for p in one['params']] == [id(p) for p in model.parameters()]


def test_extrapolated_focus_bins_are_uniform_in_dioptres_and_stop_short_of_infinity():
    from ddfs_ros.focus_bins import extrapolated_focus

    focus = torch.tensor([[1.0, 1.25, 5.0 / 3.0, 2.5]], dtype=torch.float64)     # 1, 0.8, 0.6, 0.4 D
    b = extrapolated_focus(focus, 2)
    assert b.shape == (1, 8) and torch.all(b[0, 1:] > b[0, :-1])
    torch.testing.assert_close(b[0, 2:6], focus[0])
    torch.testing.assert_close(1 / b[0, :2], torch.tensor([1.4, 1.2], dtype=torch.float64))
    # beyond: 0.2 D, then max(0.0, 0.4 / 4) = 0.1 D instead of infinity
    torch.testing.assert_close(1 / b[0, 6:], torch.tensor([0.2, 0.1], dtype=torch.float64))
    assert extrapolated_focus(focus, 0) is focus
    torch.testing.assert_close(extrapolated_focus(3 * focus, 2), 3 * b)          # scale identity


def test_dfv_extrapolation_starts_near_the_old_network_and_can_leave_the_sweep():
    from training.train_focus import build, load_grown, output_range

    kw = {'num_frames': 3, 'widths': (8, 8, 8, 8), 'feat': 4, 'agg': 4}
    torch.manual_seed(0)
    old = build('dfv', kw).eval()
    new = build('dfv', {**kw, 'extrapolate': 2}).eval()
    assert load_grown(new, old.state_dict())
    stack = torch.rand(2, 3, 3, 16, 16)
    focus = torch.tensor([[1.0, 1.5, 2.0]]).repeat(2, 1)
    with torch.no_grad():
        a, b = old(stack, focus)[0], new(stack, focus)[0]
        torch.testing.assert_close(a, b, rtol=0.02, atol=0)
        assert float(a.max()) <= 2.0 + 1e-5
        new.extrap[2].bias.copy_(torch.tensor([-50.0, -50.0, -50.0, 50.0]))      # all mass on the farthest bin
        far = new(stack, focus)[0]
    lo, hi = output_range('dfv', {'focus': focus}, new)
    assert float(hi.max()) > 2.0 and float(lo.min()) < 1.0
    torch.testing.assert_close(far, hi.expand_as(far))


def test_predicted_sharpness_prefers_the_smaller_aperture_away_from_focus():
    q = predicted_sharpness([1.7, 1.7], [2.8, 8.0], 0.035, 36e-6, [0.5, 1.7, 6.0])
    np.testing.assert_allclose(q.sum(axis=0), 1.0)
    assert q[1, 0] > q[0, 0] and q[1, 2] > q[0, 2] and abs(q[0, 1] - 0.5) < 1e-6


@needs_textures
@pytest.mark.parametrize('family', ['ddfs', 'dfv'])
def test_samples_shards_and_a_training_step(tmp_path, family):
    from training.stack_data import ShardDataset, StackDataConfig, make_sample, write_shard
    from training.train_focus import build, forward, output_range, relative_l1

    cfg = StackDataConfig(family=family, size=32, frames=(2, 4) if family == 'ddfs' else 3, num_hypotheses=8,
                          sources={'procedural': 1.0})
    s = make_sample(cfg, 'train', 0, 3)
    assert s['frames'].dtype == np.uint8 and s['gt'].shape == (32, 32)
    if family == 'dfv':
        assert np.all(np.diff(s['focus']) > 0)
    else:
        assert s['cost'].shape == (8, 32, 32) and s['depths'].shape == (8,)
    write_shard(cfg, 'train', 0, 0, tmp_path, shard_size=4)
    data = ShardDataset(tmp_path, 'train', family, crop=24)
    assert len(data) == 4
    item = data[0]
    assert item['gt'].shape == (24, 24)
    kwargs = ({'num_hypotheses': 8, 'widths': (8, 8, 8, 8)} if family == 'ddfs'
              else {'num_frames': 3, 'widths': (8, 8, 8, 8), 'feat': 4, 'agg': 4})
    torch.manual_seed(0)
    model = build(family, kwargs)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in item}
    losses = []
    for _ in range(15):
        o = forward(model, family, batch)
        lo, hi = output_range(family, batch)
        loss = relative_l1(o['depth'], batch['gt'], lo, hi)
        assert torch.all(o['depth'] >= lo - 1e-4) and torch.all(o['depth'] <= hi + 1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]



def test_extra_training_parts_change_only_their_fields_and_get_their_own_seed(tmp_path):
    from training.stack_data import data_parts

    data = {'cache': str(tmp_path / 'a'), 'family': 'ddfs', 'size': 32, 'max_blur_px': [1.5, 12.0], 'seed': 3,
            'extra_train': [{'cache': str(tmp_path / 'b'), 'max_blur_px': [0.7, 12.0], 'aperture_pair_prob': 0.2}]}
    (base, fa, sa), (extra, fb, sb) = data_parts(data)
    assert (fa, fb) == (tmp_path / 'a', tmp_path / 'b') and (sa, sb) == (3, 4)
    assert base.max_blur_px == (1.5, 12.0) and extra.max_blur_px == (0.7, 12.0)
    assert extra.aperture_pair_prob == 0.2 and base.aperture_pair_prob != 0.2
    assert extra.size == base.size == 32 and extra.family == 'ddfs'



def test_sweeps_can_end_inside_the_scene_and_val_parts_are_listed():
    from training.stack_data import StackDataConfig, draw_camera, validation_parts

    depth = np.linspace(1.0, 4.0, 64 * 64).reshape(64, 64)
    default, inner = StackDataConfig(family='dfv', frames=5), \
        StackDataConfig(family='dfv', frames=5, sweep_percentiles=((10, 20), (80, 90)))
    for seed in range(5):
        a = draw_camera(default, depth, np.random.default_rng(seed))['focus_m']
        b = draw_camera(inner, depth, np.random.default_rng(seed))['focus_m']
        outside = np.mean((depth < b.min()) | (depth > b.max()))
        assert 0.2 <= outside <= 0.4 + 1e-6, outside
        assert np.mean((depth < a.min()) | (depth > a.max())) <= 0.1 + 1e-6
    data = {'cache': 'a', 'extra_train': [{'cache': 'b'}, {'cache': 'c', 'val': True}]}
    assert validation_parts(data) == [0, 2]


def _frame_sharpness(frames) -> float:
    return float(np.abs(np.diff(frames.astype(np.float32), axis=-1)).mean())


def _small_sample_config():
    from training.stack_data import StackDataConfig
    return StackDataConfig(family='ddfs', size=32, frames=3, num_hypotheses=8, sources={'procedural': 1.0},
                           noise_prob=0.0, aperture_pair_prob=0.0, unsorted_prob=0.0)


def _sample_with(base, index: int = 1, **changes) -> dict:
    """``make_sample`` of ``base`` with some fields changed (split train, seed 0)."""
    from training.stack_data import StackDataConfig, make_sample
    return make_sample(StackDataConfig(**{**base.__dict__, **changes}), 'train', 0, index)


def _sample_unchanged_by(base, **off) -> dict:
    """The sample of ``base``, checked to be the same when ``off`` (an option at its default) is set:
    an option left off draws no random number, so existing shards stay as they are."""
    exact = _sample_with(base)
    np.testing.assert_array_equal(exact['frames'], _sample_with(base, **off)['frames'])
    return exact


@needs_textures
def test_a_miscalibrated_blur_renders_other_frames_under_the_nominal_lens():
    base = _small_sample_config()
    exact = _sample_unchanged_by(base, blur_scale=(1.0, 1.0))
    blurrier = _sample_with(base, blur_scale=(1.6, 1.6))
    sharper = _sample_with(base, blur_scale=(0.6, 0.6))
    for s in (blurrier, sharper):
        # same scene and nominal lens; the cost volume is built from that lens and these frames
        np.testing.assert_array_equal(s['gt'], exact['gt'])
        np.testing.assert_array_equal(s['lens'], exact['lens'])
        np.testing.assert_array_equal(s['focus'], exact['focus'])
        assert not np.array_equal(s['cost'], exact['cost'])
    assert blurrier['meta']['blur_scale'] == 1.6 and exact['meta']['blur_scale'] == 1.0
    assert _frame_sharpness(blurrier['frames']) < _frame_sharpness(exact['frames']) < _frame_sharpness(sharper['frames'])


@needs_textures
def test_band_limited_share_draws_the_otf_disk_and_leaves_other_configs_unchanged():
    base = _small_sample_config()
    exact = _sample_unchanged_by(base, psf_otf_prob=0.0)
    otf = _sample_with(base, psf_otf_prob=1.0)
    assert exact['meta']['psf'] == 'disk' and otf['meta']['psf'] == 'disk_otf'
    np.testing.assert_array_equal(otf['gt'], exact['gt'])
    assert not np.array_equal(otf['frames'], exact['frames'])


@needs_textures
def test_a_soft_scene_blurs_every_frame_alike_and_leaves_other_configs_unchanged():
    base = _small_sample_config()
    exact = _sample_unchanged_by(base, scene_blur_prob=0.0)
    soft = _sample_with(base, scene_blur_prob=1.0, scene_blur_px=(1.2, 1.2))
    assert exact['meta']['scene_blur_px'] == 0.0 and soft['meta']['scene_blur_px'] == 1.2
    np.testing.assert_array_equal(soft['gt'], exact['gt'])
    assert all(_frame_sharpness(a) < _frame_sharpness(b) for a, b in zip(soft['frames'], exact['frames']))


@needs_textures
def test_thin_structures_change_the_scene_only_when_asked():
    base = _small_sample_config()
    exact = _sample_unchanged_by(base, thin_prob=0.0)
    assert not np.array_equal(_sample_with(base, thin_prob=1.0)['gt'], exact['gt'])
    # (the draw of the share moves every later draw: other scenes, with more depth edges)
    edges = lambda gt: int((np.abs(np.diff(gt, axis=-1)) > 0.05 * gt[..., 1:]).sum())
    plain = sum(edges(_sample_with(base, i)['gt']) for i in range(6))
    assert sum(edges(_sample_with(base, i, thin_prob=1.0, thin_count=(6, 6))['gt']) for i in range(6)) > 1.3 * plain


def test_a_restarted_schedule_warms_up_and_anneals_from_its_start():
    from training.train_focus import lr_at
    assert lr_at(0, 1.0, 100_000, 4000) == pytest.approx(0.1)
    assert lr_at(50_000, 1.0, 100_000, 4000) == lr_at(50_000, 1.0, 100_000, 4000, start=0)
    # restarted at 1.0M: the same curve shifted there
    for k in (0, 1000, 4000, 20_000, 40_000):
        assert lr_at(1_000_000 + k, 1.0, 1_040_000, 4000, start=1_000_000) == pytest.approx(lr_at(k, 1.0, 40_000, 4000))
    assert lr_at(1_040_000, 1.0, 1_040_000, 4000, start=1_000_000) == pytest.approx(0.05)
    assert lr_at(1_002_000, 1.0, 1_040_000, 4000, start=1_000_000) < lr_at(1_004_000, 1.0, 1_040_000, 4000,
                                                                           start=1_000_000) == pytest.approx(1.0)


needs_real_dfd = pytest.mark.skipif(not (data_splits.SHARED_DATA / 'real_dfd_indoor_train' / 'pairs.csv').is_file(),
                                    reason='../shared/data/real_dfd_indoor_train is absent (see ../shared/data/README.md)')


@needs_real_dfd
def test_real_aperture_pairs_come_from_the_split_and_scale_the_world_without_changing_the_blur():
    from ddfs_ros.optics import coc_m
    from training.stack_data import StackDataConfig, _real_pairs, make_sample

    splits = [data_splits.real_dfd_split(i) for i in range(81)]
    names = ('train', 'val', 'test')
    assert [len(_real_pairs(s)) for s in names] == [splits.count(s) for s in names]
    base = StackDataConfig(family='ddfs', size=32, num_hypotheses=8, real_pair_prob=1.0,
                           real_pair_world_scale=(1.0, 1.0))
    one = make_sample(base, 'val', 0, 3)
    assert one['meta']['source'] == 'real_dfd_pair' and one['frames'].shape == (2, 3, 32, 32)
    np.testing.assert_allclose(sorted(one['f_numbers']), [2.8, 8.0])
    assert one['focus'][0] == one['focus'][1]
    assert one['f_numbers'][one['ref']] == 8.0                 # the node's rule: ties to the larger f-number
    twice = make_sample(StackDataConfig(**{**base.__dict__, 'real_pair_world_scale': (2.0, 2.0)}), 'val', 0, 3)
    # same real shots; every length doubled, so the blur in pixels the lens values say is unchanged
    np.testing.assert_array_equal(twice['frames'], one['frames'])
    np.testing.assert_allclose(twice['gt'], 2.0 * one['gt'], rtol=1e-6)
    np.testing.assert_allclose(twice['depths'], 2.0 * one['depths'], rtol=1e-5)

    def blur_px(s):
        coc = coc_m(s['gt'][None], s['focus'][:, None, None], s['lens'][0], s['f_numbers'][:, None, None])
        return coc / s['lens'][1]
    np.testing.assert_allclose(blur_px(twice), blur_px(one), rtol=1e-5)
    np.testing.assert_allclose(twice['cost'].astype(np.float32), one['cost'].astype(np.float32), atol=2e-3)
    # the default draws no real pairs and leaves the other parts' samples as they were
    assert make_sample(StackDataConfig(family='ddfs', size=32, num_hypotheses=8, sources={'rgbd_7scenes': 1.0}),
                       'val', 0, 3)['meta']['source'] == 'rgbd_7scenes'


def test_parts_marked_train_false_are_validated_but_not_trained_on():
    from training.stack_data import data_parts, training_parts, validation_parts

    data = {'cache': 'a', 'train': False, 'extra_train': [{'cache': 'b', 'train': False, 'val': True},
                                                          {'cache': 'c', 'psf_otf_prob': 1.0, 'val': True},
                                                          {'cache': 'd'}]}
    assert training_parts(data) == [2, 3] and validation_parts(data) == [0, 1, 2]
    assert [p[1].name for p in data_parts(data)] == ['a', 'b', 'c', 'd']
    assert data_parts(data)[2][0].psf_otf_prob == 1.0 and data_parts(data)[3][0].psf_otf_prob == 0.0
    assert training_parts({'cache': 'a'}) == [0]


def test_aperture_pairs_focus_where_the_config_says():
    from training.stack_data import StackDataConfig, draw_camera

    depth = np.linspace(1.0, 4.0, 64 * 64).reshape(64, 64)
    lo, hi = np.percentile(depth, [5, 95])
    for where, check in ((None, lambda u: lo < u < hi), ((1.0, 1.0), lambda u: u < 1.1 * lo)):
        cfg = StackDataConfig(family='ddfs', aperture_pair_prob=1.0, aperture_pair_focus=where)
        for seed in range(5):
            cam = draw_camera(cfg, depth, np.random.default_rng(seed))
            assert cam['schedule'] == 'aperture_pair' and cam['focus_m'][0] == cam['focus_m'][1]
            assert cam['f_numbers'][0] != cam['f_numbers'][1] and check(cam['focus_m'][0]), (where, cam)

@needs_textures
def test_shards_of_several_folders_make_one_dataset_and_a_bf16_step_learns(tmp_path):
    from training.stack_data import ShardDataset, StackDataConfig, write_shard
    from training.train_focus import build, forward, output_range, relative_l1

    cfg = StackDataConfig(family='dfv', size=32, frames=3, sources={'procedural': 1.0})
    write_shard(cfg, 'train', 0, 0, tmp_path / 'a', shard_size=2)
    write_shard(cfg, 'train', 1, 0, tmp_path / 'b', shard_size=2)
    data = ShardDataset([tmp_path / 'a', tmp_path / 'b'], 'train', 'dfv', crop=24)
    assert len(data) == 4 and data.num_shards == 2
    assert not np.array_equal(data.arrays['gt'][0], data.arrays['gt'][2])   # other seed, other scenes
    torch.manual_seed(0)
    model = build('dfv', {'num_frames': 3, 'widths': (8, 8, 8, 8), 'feat': 4, 'agg': 4})
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in data[0]}
    losses = []
    for _ in range(15):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            o = forward(model, 'dfv', batch)
        assert o['depth'].dtype == torch.float32          # the expectation stays fp32
        lo, hi = output_range('dfv', batch)
        loss = relative_l1(o['depth'], batch['gt'], lo, hi)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

@pytest.mark.slow
@needs_textures
@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'ddfs_curve', 'dfv_extrapolate', 'ddfs_frames'])
def test_export_is_dynamic_in_height_and_width_and_matches_eager(tmp_path, family):
    from ddfs_ros.engines.manifest import load_manifest
    from training.export_focus import export_checkpoint
    from training.stack_data import StackDataConfig, write_shard
    from training.train_focus import build

    frames = family == 'ddfs_frames'
    curve, extrapolate = family in ('ddfs_curve', 'ddfs_frames'), family == 'dfv_extrapolate'
    family = {'ddfs_curve': 'ddfs', 'dfv_extrapolate': 'dfv', 'ddfs_frames': 'ddfs'}.get(family, family)
    cfg = StackDataConfig(family=family, size=32, frames=(2, 4) if family == 'ddfs' else 3, num_hypotheses=8,
                          sources={'procedural': 1.0})
    write_shard(cfg, 'val', 0, 0, tmp_path / 'cache', shard_size=3)
    kwargs = ({'num_hypotheses': 8, 'widths': [8, 8, 8, 8], **({'focus_curve': True, 'volume_skip': True} if curve else {}),
               **({'frame_features': 2} if frames else {})}
              if family == 'ddfs' else {'num_frames': 3, 'widths': [8, 8, 8, 8], 'feat': 4, 'agg': 4,
                                        **({'extrapolate': 2} if extrapolate else {})})
    model = build(family, kwargs)
    with torch.no_grad():    # non-zero skip weights and far bins that win: the export must carry both
        if curve:
            model.skip.copy_(torch.tensor([0.1, 0.2, 0.3]))
        if frames:
            model.skip_frames.copy_(torch.tensor([0.4, -0.2]))
        if extrapolate:
            model.extrap[2].bias.copy_(torch.tensor([-5.0, -5.0, -5.0, 8.0]))
    conf = {'name': 'tiny', 'model': {'family': family, 'arch': 'x', 'kwargs': kwargs},
            'data': {'cache': str(tmp_path / 'cache'), 'size': 32}}
    torch.save({'model': model.state_dict(), 'config': conf, 'family': family, 'samples': 0,
                'val': {'abs_rel': 0.5}}, tmp_path / 'best.pt')
    man = export_checkpoint(tmp_path / "best.pt", tmp_path / "engines" / "tiny.onnx", torch_program=True)
    m = json.loads(man.read_text())
    assert m['dynamic_size'] and m['size_multiple'] == 8
    assert max(m['onnx_vs_torch_max_abs_diff_m'].values()) < 1e-3
    assert set(m['onnx_vs_torch_max_abs_diff_m']) == ({'64x64x5f', '96x128x3f', '480x640x8f'} if frames
                                                      else {'64x64', '96x128', '480x640'})
    loaded = load_manifest(man)
    assert loaded.dynamic_size and (family != 'ddfs' or 'focus_volume' in loaded.inputs)
    if family == 'ddfs':
        modes = ['thin_lens', 'focus_curve'] if curve else ['thin_lens']
        assert m['focus_volume_modes'] == modes and list(loaded.focus_volume_modes) == modes
        assert loaded.inputs['focus_volume'][1] == 8 * len(modes)
        assert (loaded.max_frames, 'frames' in loaded.inputs) == ((32, True) if frames else (None, False))
    # the node's pipeline feeds it (focus volume included) on a non-square stack, both backends
    from ddfs_ros.engines import load_engine
    from ddfs_ros.pipeline import DepthPipeline
    from ddfs_ros.stack import FocalStack
    rng = np.random.default_rng(0)
    F = 4 if family == 'ddfs' else 3        # the frames engine was exported with F = 5: its F axis is free
    stack = FocalStack(rng.random((F, 48, 72, 3), dtype=np.float32), 1.0 / np.linspace(2.0, 0.5, F),
                       LensModel(0.01, 2.0, 10e-6))
    results = []
    for backend in ('onnxruntime', 'torch'):
        pipe = DepthPipeline(load_engine(man, backend=backend), hypothesis_mode='from_focus',
                             max_relative_uncertainty=None)
        r = pipe.run(stack)
        assert r.depth.shape == (48, 72) and np.isfinite(r.depth).mean() > 0.99
        results.append(r.depth)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-3)
    assert loaded.extrapolate_bins == (2 if extrapolate else 0)
    if frames:      # the frame axis is free, but the same on both frame inputs and within max_frames
        from ddfs_ros.engines import EngineError, EngineInputError
        from ddfs_ros.engines.cpu_preference import timing_inputs
        engine = load_engine(man, backend='onnxruntime')
        x = timing_inputs(loaded, (16, 24))
        assert x['frames'].shape[1] == 5 and engine.infer(x)[0].shape == (1, 1, 16, 24)
        for bad in ({**x, 'curve_weights': x['curve_weights'][..., :4]},
                    {**x, 'frames': torch.rand(1, 33, 3, 16, 24), 'curve_weights': torch.rand(1, 8, 33)}):
            with pytest.raises(EngineInputError, match='frames'):
                engine.infer(bad)
        from ddfs_ros.stack import StackError
        many = FocalStack(rng.random((33, 48, 72, 3), dtype=np.float32), 1.0 / np.linspace(2.0, 0.5, 33),
                          LensModel(0.01, 2.0, 10e-6))
        with pytest.raises(StackError, match='at most 32 frames'):
            DepthPipeline(engine, hypothesis_mode='from_focus').run(many)
        broken = json.loads(man.read_text())
        del broken['max_frames']
        man.write_text(json.dumps(broken))
        with pytest.raises(EngineError, match='max_frames'):
            load_manifest(man, verify_sha256=False)
    if extrapolate:      # depth past the farthest focus survives the node's range mask
        assert np.nanmedian(results[0]) > 1.02 * stack.focus_m.max()


def test_focus_measure_scores_nothing_on_a_split_of_aperture_pairs_and_says_so_in_json():
    import json

    from training.train_focus import focus_measure_on

    class Pairs:            # the arrays a ShardDataset holds, two aperture pairs
        arrays = {'nframes': np.array([2, 2]), 'focus': np.full((2, 2), 1.7, np.float32),
                  'frames': np.zeros((2, 2, 3, 8, 8), np.uint8), 'gt': np.full((2, 8, 8), 2.0, np.float32)}

        def __len__(self):
            return 2
    fm = focus_measure_on(Pairs())
    assert fm == {'abs_rel': None, 'delta1': None, 'count': 0}
    assert 'NaN' not in json.dumps(fm)
