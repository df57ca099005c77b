"""Ensembles of engines (ddfs_ros/ensemble.py): the combination, the manifest, the pipeline, the node."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ddfs_ros.engines import EngineError, load_engine
from ddfs_ros.ensemble import (VIEWS, EnsembleEngine, EnsemblePipeline, combine_inverse_variance,
                               is_ensemble_manifest, load_ensemble_manifest, make_pipeline, mirror_result, mirrored)
from ddfs_ros.pipeline import DepthPipeline
from ddfs_ros.stack import FocalStack, StackError

from conftest import TINY_SIZE, SHIPPED_DIR


def _ensemble(folder, members, **extra) -> Path:
    path = folder / 'ens.json'
    path.write_text(json.dumps(dict({'name': 'ens', 'family': 'ensemble', 'members': members}, **extra)))
    return path


@pytest.fixture()
def tiny_ensemble(tiny_engines, tmp_path):
    """An ensemble of the tiny ddfs and dfv engines, written next to copies of their manifests' paths."""
    return _ensemble(tmp_path, [str(tiny_engines['ddfs']), str(tiny_engines['dfv'])])


def _stack(F: int = 5, seed: int = 0) -> FocalStack:
    from ddfs_ros.optics import LensModel
    rng = np.random.default_rng(seed)
    frames = rng.random((F, TINY_SIZE, TINY_SIZE, 3), dtype=np.float32)
    return FocalStack(frames, np.geomspace(0.4, 1.6, F), LensModel(0.01, 2.0, 10e-6))


def test_equal_uncertainties_average_in_dioptres():
    d = [np.full((2, 3), 1.0), np.full((2, 3), 3.0)]
    s = [np.full((2, 3), 0.1) * x ** 2 for x in (1.0, 3.0)]      # the same 0.1 dioptre spread each
    depth, unc = combine_inverse_variance(d, s)
    np.testing.assert_allclose(depth, 1.0 / (0.5 * (1.0 + 1.0 / 3.0)), rtol=1e-6)
    # mixture spread in dioptres: sqrt(0.1^2 + (1/3)^2) (the two disagree by 2/3 dioptre)
    u = 0.5 * (1.0 + 1.0 / 3.0)
    np.testing.assert_allclose(unc, np.sqrt(0.01 + (1.0 - u) ** 2) / u ** 2, rtol=1e-5)
    assert depth.dtype == np.float32 and unc.dtype == np.float32


def test_the_confident_member_weighs_more_and_missing_members_drop_out():
    d = [np.array([[1.0, 2.0, np.nan]]), np.array([[2.0, np.nan, np.nan]])]
    s = [np.array([[0.01, 0.5, 0.1]]), np.array([[0.4, 0.1, 0.1]])]
    depth, unc = combine_inverse_variance(d, s)
    assert abs(depth[0, 0] - 1.0) < 0.01                 # 40x less uncertain in metres at 1 m vs 2 m
    assert depth[0, 1] == pytest.approx(2.0) and unc[0, 1] == pytest.approx(0.5, rel=1e-5)
    assert np.isnan(depth[0, 2]) and np.isnan(unc[0, 2])


def test_agreeing_members_keep_their_depth_and_a_zero_spread_is_floored():
    d = [np.full((1, 2), 2.5)] * 2
    depth, unc = combine_inverse_variance(d, [np.zeros((1, 2)), np.full((1, 2), 0.2)])
    np.testing.assert_allclose(depth, 2.5, rtol=1e-6)
    assert np.all(np.isfinite(unc)) and np.all(unc > 0)


@pytest.mark.parametrize('members, extra, match', [
    (['a.json'], {}, 'at least two'),
    (None, {'views': ['identity', 'rot90']}, '"views" must list'),
    (None, {'views': []}, '"views" must list'),
    (None, {'views': ['hflip', 'identity']}, 'start with "identity"'),
    (None, {'views': ['identity', 'hflip', 'hflip']}, 'not repeat'),
    (None, {'scales': [0.5, 1.0]}, '"scales" must start with 1'),
    (None, {'scales': [1.0, 1.0]}, 'not repeat'),
    (None, {'scales': [1.0, 0.1]}, r'lie in \[0.25, 1\]'),
    (None, {'scales': [1.0, '0.5']}, '"scales" must list numbers'),
    (None, {'scales': []}, '"scales" must list numbers'),
    (['missing.json', 'missing2.json'], {}, 'does not exist'),
    (None, {'combine': 'vote'}, 'unknown combine'),
    (None, {'sigma_scales': [1.0]}, 'one finite positive number per member'),
    (None, {'sigma_scales': [1.0, 0.0]}, 'one finite positive number per member'),
    (None, {'sigma_scales': [1.0, True]}, 'one finite positive number per member'),
    (None, {'sigma_scales': {'a': 1.0}}, 'one finite positive number per member'),
])
def test_bad_ensemble_manifests_are_refused(tiny_engines, tmp_path, members, extra, match):
    members = members or [str(tiny_engines['ddfs']), str(tiny_engines['dfv'])]
    with pytest.raises(EngineError, match=match):
        load_ensemble_manifest(_ensemble(tmp_path, members, **extra))


def test_nested_ensembles_and_unreadable_files_are_refused(tiny_engines, tmp_path):
    inner = _ensemble(tmp_path, [str(tiny_engines['ddfs']), str(tiny_engines['dfv'])])
    outer = tmp_path / 'outer.json'
    outer.write_text(json.dumps({'family': 'ensemble', 'members': [str(inner), str(tiny_engines['dfv'])]}))
    with pytest.raises(EngineError, match='is an ensemble'):
        load_ensemble_manifest(outer)
    broken = tmp_path / 'broken.json'
    broken.write_text('{"family": "ensemble", ')
    assert not is_ensemble_manifest(broken)
    with pytest.raises(EngineError):
        load_engine(broken)                  # read as a single engine: not valid JSON either way


def test_a_corrupt_member_fails_the_load(tiny_engines, tmp_path):
    import shutil
    for f in tiny_engines['dfv'].parent.glob('tiny_dfv.*'):
        shutil.copy(f, tmp_path / f.name)
    onnx = tmp_path / 'tiny_dfv.onnx'
    onnx.write_bytes(onnx.read_bytes()[:-100])
    ens = _ensemble(tmp_path, [str(tiny_engines['ddfs']), 'tiny_dfv.json'])
    with pytest.raises(EngineError):
        load_engine(ens, backend='onnxruntime', fallback=False).members[1].infer({})


def test_pipeline_combines_its_members_outputs(tiny_ensemble, tiny_engines):
    eng = load_engine(tiny_ensemble, backend='onnxruntime')
    assert isinstance(eng, EnsembleEngine) and eng.backend_name == 'onnxruntime+onnxruntime'
    assert 'tiny_ddfs' in eng.description and 'tiny_dfv' in eng.description
    pipe = make_pipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=None)
    assert isinstance(pipe, EnsemblePipeline)
    stack = _stack()
    res = pipe.run(stack, all_in_focus=True)
    singles = [DepthPipeline(load_engine(tiny_engines[k], backend='onnxruntime'), hypothesis_mode='from_focus',
                             max_relative_uncertainty=None).run(stack) for k in ('ddfs', 'dfv')]
    want_d, want_u = combine_inverse_variance([r.depth for r in singles], [r.uncertainty for r in singles])
    finite = np.isfinite(res.depth)
    assert finite.mean() > 0.9
    np.testing.assert_allclose(res.depth[finite], want_d[finite], rtol=1e-4)
    np.testing.assert_allclose(res.uncertainty, want_u, rtol=1e-4)
    assert res.all_in_focus.shape == stack.frames.shape[1:]
    assert res.backend == 'tiny_ddfs:onnxruntime+tiny_dfv:onnxruntime'


def test_sigma_scales_reweigh_the_members(tiny_engines, tmp_path):
    """A member's uncertainty is multiplied by its sigma_scale before the combination."""
    ens = _ensemble(tmp_path, [str(tiny_engines['ddfs']), str(tiny_engines['dfv'])], sigma_scales=[1.0, 3.0])
    pipe = make_pipeline(load_engine(ens, backend='onnxruntime'), hypothesis_mode='from_focus',
                         max_relative_uncertainty=None)
    stack = _stack()
    res = pipe.run(stack)
    singles = [DepthPipeline(load_engine(tiny_engines[k], backend='onnxruntime'), hypothesis_mode='from_focus',
                             max_relative_uncertainty=None).run(stack) for k in ('ddfs', 'dfv')]
    want_d, want_u = combine_inverse_variance([r.depth for r in singles],
                                              [singles[0].uncertainty, 3.0 * singles[1].uncertainty])
    plain_d, _ = combine_inverse_variance([r.depth for r in singles], [r.uncertainty for r in singles])
    finite = np.isfinite(res.depth)
    np.testing.assert_allclose(res.depth[finite], want_d[finite], rtol=1e-4)
    np.testing.assert_allclose(res.uncertainty, want_u, rtol=1e-4)
    # the second member lost weight: the result moved towards the first member's depth
    gap = lambda d: np.nanmean(np.abs(1 / d - 1 / singles[0].depth))
    assert gap(res.depth) < gap(plain_d)
    lo = min(r.hypotheses.min() for r in singles)
    hi = max(r.hypotheses.max() for r in singles)
    assert res.depth_range == pytest.approx((lo, hi))
    assert res.timings['total'] >= res.timings['infer'] > 0


@pytest.mark.parametrize('view', sorted(VIEWS))
def test_a_view_is_its_own_inverse_and_keeps_the_optics(view):
    from ddfs_ros.pipeline import DepthResult
    stack = _stack()
    seen = mirrored(stack, view)
    assert seen.frames.shape == stack.frames.shape and seen.frames.flags['C_CONTIGUOUS']
    assert (seen.frames == stack.frames).all() == (view == 'identity')
    np.testing.assert_array_equal(seen.focus_m, stack.focus_m)
    assert seen.lens == stack.lens
    np.testing.assert_array_equal(mirrored(seen, view).frames, stack.frames)
    # a "depth" that is the reference frame's red channel mirrors back onto the stack's pixels
    r = DepthResult(depth=seen.frames[0, ..., 0], uncertainty=seen.frames[1, ..., 0], hypotheses=np.ones(2),
                    all_in_focus=seen.frames[2])
    back = mirror_result(r, view)
    np.testing.assert_array_equal(back.depth, stack.frames[0, ..., 0])
    np.testing.assert_array_equal(back.uncertainty, stack.frames[1, ..., 0])
    np.testing.assert_array_equal(back.all_in_focus, stack.frames[2])


def test_views_run_every_member_on_the_mirrored_stack(tiny_engines, tmp_path):
    """One member and two views: the combination of its run on the stack and of its run on the
    left-right mirrored stack mirrored back (the tiny network is not mirror-symmetric)."""
    ens = _ensemble(tmp_path, [str(tiny_engines['ddfs'])], views=['identity', 'hflip'])
    eng = load_engine(ens, backend='onnxruntime')
    assert eng.manifest.views == ['identity', 'hflip']
    pipe = make_pipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=None)
    stack = _stack(seed=3)
    single = DepthPipeline(eng.members[0], hypothesis_mode='from_focus', max_relative_uncertainty=None)
    plain = single.run(stack)
    flipped = single.run(mirrored(stack, 'hflip'))
    assert not np.allclose(flipped.depth[:, ::-1], plain.depth, equal_nan=True)
    want_d, want_u = combine_inverse_variance([plain.depth, flipped.depth[:, ::-1]],
                                              [plain.uncertainty, flipped.uncertainty[:, ::-1]])
    res = pipe.run(stack, all_in_focus=True)
    finite = np.isfinite(res.depth)
    assert finite.mean() > 0.9
    np.testing.assert_allclose(res.depth[finite], want_d[finite], rtol=1e-4)
    np.testing.assert_allclose(res.uncertainty, want_u, rtol=1e-4)
    assert res.backend == 'tiny_ddfs:onnxruntime' and res.all_in_focus.shape == stack.frames.shape[1:]


def test_scales_run_every_member_at_a_fraction_of_the_processing_width(cost_argmin_engines, tmp_path):
    """One dynamic-size member and scales [1, 0.5]: the combination of its run at the processing
    width and of its run at half of it (both brought back to the input size)."""
    ens = _ensemble(tmp_path, [str(cost_argmin_engines['dynamic'])], scales=[1.0, 0.5])
    eng = load_engine(ens, backend='onnxruntime')
    assert eng.manifest.scales == [1.0, 0.5]
    pipe = make_pipeline(eng, hypothesis_mode='from_focus', max_relative_uncertainty=None, processing_width=64)
    from ddfs_ros.optics import LensModel
    rng = np.random.default_rng(5)
    stack = FocalStack(rng.random((5, 48, 96, 3), dtype=np.float32), np.geomspace(0.15, 0.5, 5),
                       LensModel(0.01, 2.0, 10e-6))
    single = DepthPipeline(eng.members[0], hypothesis_mode='from_focus', max_relative_uncertainty=None,
                           processing_width=64)
    full, half = single.run(stack), single.run(stack, scale=0.5)
    assert (full.geometry.width, half.geometry.width) == (64, 32)
    assert half.depth.shape == full.depth.shape == (48, 96)
    assert not np.allclose(full.depth, half.depth, equal_nan=True)
    want_d, want_u = combine_inverse_variance([full.depth, half.depth], [full.uncertainty, half.uncertainty])
    res = pipe.run(stack)
    finite = np.isfinite(res.depth)
    assert finite.mean() > 0.9
    np.testing.assert_allclose(res.depth[finite], want_d[finite], rtol=1e-4)
    np.testing.assert_allclose(res.uncertainty, want_u, rtol=1e-4)
    assert res.geometry.width == 64 and pipe.warm_up(runs=1) > 0


def test_scales_need_dynamic_size_members(tiny_engines, tmp_path):
    ens = _ensemble(tmp_path, [str(tiny_engines['ddfs'])], scales=[1.0, 0.5])
    with pytest.raises(EngineError, match='dynamic-size'):
        load_engine(ens, backend='onnxruntime')


def test_a_stack_one_member_refuses_goes_to_the_others(tiny_ensemble):
    pipe = make_pipeline(load_engine(tiny_ensemble, backend='onnxruntime'), hypothesis_mode='from_focus')
    res = pipe.run(_stack(F=3))                             # tiny_dfv takes exactly 5 frames
    assert res.backend == 'tiny_ddfs:onnxruntime'


def test_no_member_takes_it_raises_the_first_reason(tiny_engines, tmp_path):
    ens = _ensemble(tmp_path, [str(tiny_engines['dfv']), str(tiny_engines['dfv'])])
    pipe = make_pipeline(load_engine(ens, backend='onnxruntime'), hypothesis_mode='from_focus')
    with pytest.raises(StackError) as e:
        pipe.run(_stack(F=3))
    assert e.value.reason == 'frame_count_mismatch'


def test_settings_reach_every_member_and_thresholds_stay_on_the_ensemble(tiny_ensemble):
    pipe = make_pipeline(load_engine(tiny_ensemble, backend='onnxruntime'), hypothesis_mode='from_focus',
                         max_relative_uncertainty=0.5)
    default = make_pipeline(pipe.engine)           # the same default thresholds as one engine's pipeline
    assert default.max_relative_uncertainty == DepthPipeline(pipe.engine.members[0]).max_relative_uncertainty
    pipe.processing_width = 32
    pipe.upsample = 'bilinear'
    assert pipe.processing_width == 32 and all(m.processing_width == 32 for m in pipe.members)
    assert all(m.upsample == 'bilinear' and m.max_relative_uncertainty is None for m in pipe.members)
    res = pipe.run(_stack())                             # (the tiny engines are fixed-size: 64 px)
    assert res.n_uncertain == int(np.sum(np.isnan(res.depth))) - res.n_out_of_range
    assert pipe.warm_up(runs=1) > 0
    pipe.align = 'similarity'
    res = pipe.run(_stack(), all_in_focus=True)
    assert all(m.align == 'similarity' for m in pipe.members)
    assert len(res.alignment) == 5 and res.all_in_focus.shape == (TINY_SIZE, TINY_SIZE, 3)


def test_shipped_ensembles_name_shipped_members():
    for path in sorted(SHIPPED_DIR.glob('*.json')):
        if is_ensemble_manifest(path):
            m = load_ensemble_manifest(path)
            assert all(p.parent == SHIPPED_DIR and p.is_file() for p in m.members), path


def test_experimental_ensembles_name_shipped_members():
    for path in sorted((SHIPPED_DIR / 'experimental').glob('*.json')):
        m = load_ensemble_manifest(path)
        assert all(p.resolve().parent == SHIPPED_DIR.resolve() and p.is_file() for p in m.members), path


@pytest.mark.ros
def test_node_runs_an_ensemble(tiny_ensemble):
    """The inference node loads an ensemble manifest and publishes its depth (loopback DDS)."""
    import threading

    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import Image

    from conftest import stack_publishers, wait_until
    from ddfs_ros import ros_io
    from ddfs_ros.nodes.common import subscription_qos
    from ddfs_ros.nodes.inference_node import InferenceNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    ex = MultiThreadedExecutor(num_threads=3, context=ctx)
    params = {'engine': str(tiny_ensemble), 'backend': 'onnxruntime', 'device': 'cpu', 'warmup_runs': 1,
              'hypothesis_mode': 'from_focus', 'max_relative_uncertainty': 0.0}
    node = InferenceNode(namespace='/ens', context=ctx,
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    peer = Node('ens_peer', namespace='/ens', context=ctx)
    pubs = stack_publishers(peer)
    got = []
    peer.create_subscription(Image, 'depth/image', got.append, subscription_qos('reliable', 10))
    for n in (node, peer):
        ex.add_node(n)
    th = threading.Thread(target=ex.spin, daemon=True)
    th.start()
    try:
        assert node.stats()['backend'] == 'onnxruntime+onnxruntime'
        assert isinstance(node.pipeline, EnsemblePipeline)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 10.0)
        stack = _stack()
        stack.stamp_ns, stack.frame_id = 1_700_000_000_000_000_000, 'cam_optical'
        image, info, lens = ros_io.stack_to_msgs(stack, 'rgb8')
        for k, m in (('camera_info', info), ('lens_state', lens), ('image', image)):
            pubs[k].publish(m)
        assert wait_until(lambda: bool(got), 30.0), node.stats()
        depth = np.frombuffer(bytes(got[0].data), dtype=np.float32).reshape(got[0].height, got[0].width)
        assert got[0].encoding == '32FC1' and depth.shape == (TINY_SIZE, TINY_SIZE)
        want = node.pipeline.run(ros_io.msgs_to_stack(image, info, lens)).depth
        np.testing.assert_allclose(depth, want, rtol=1e-5)
        assert node.stats()['processed'] == 1
    finally:
        ex.shutdown(timeout_sec=2.0)
        for n in (node, peer):
            n.destroy_node()
        rclpy.try_shutdown(context=ctx)
        th.join(timeout=5.0)


def test_memory_bench_measures_an_ensemble_with_a_stack_every_member_takes(tiny_ensemble, capsys):
    from bench import memory
    memory.main(['--engine', str(tiny_ensemble), '--sizes', str(TINY_SIZE)])
    out = capsys.readouterr().out
    # the dfv member takes F = 5 only: the bench must have rendered 5 frames and run both members
    assert f'{TINY_SIZE}x{TINY_SIZE} F=5' in out and '[ens on ' in out and '+' in out.split('[ens on ')[1]
    assert 'memory engine=ens ' in out and 'peak_mb=' in out
