"""Any size, any aspect: processing geometry, dynamic-size engines, round blur disks."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as Fnn

from ddfs_ros.cost_volume import CostVolume
from ddfs_ros.engines import EngineInputError, load_engine, load_manifest
from ddfs_ros.optics import LensModel
from ddfs_ros.pipeline import DepthPipeline, processing_geometry
from ddfs_ros.render import render_focal_stack
from ddfs_ros.scenes import fronto_parallel_plane
from ddfs_ros.stack import FocalStack

# the strong-defocus camera of test_cost_volume's argmin test (f 2.9 mm at f/1), at 128 px
F_M, N = 0.0029, 1.0
PITCH_128 = 3.1e-3 / 1024
FOCUS = np.array([0.1, 0.15, 0.3, 0.7, 1.5])


@pytest.fixture(scope='module')
def argmin(cost_argmin_engines):
    return {k: load_engine(v, backend='onnxruntime', device='cpu') for k, v in cost_argmin_engines.items()}


def test_manifest_size_fields(cost_argmin_engines, tiny_engines):
    dyn = load_manifest(cost_argmin_engines['dynamic'])
    assert dyn.dynamic_size and dyn.size_multiple == 8 and dyn.validated_size == ((16, 16), (256, 256))
    assert dyn.train_processing_width == 64 and dyn.coc_reference_width == 64
    old = load_manifest(tiny_engines['ddfs'])        # a fixed-size manifest without the new keys
    assert not old.dynamic_size and old.size_multiple == 32 and old.validated_size is None
    assert old.coc_reference_width == old.width


def test_processing_geometry(cost_argmin_engines, tiny_engines):
    dyn = load_manifest(cost_argmin_engines['dynamic'])
    g = processing_geometry(480, 640, dyn, 256)
    assert (g.height, g.width, g.padded_height, g.padded_width, g.crop_h, g.crop_w) == (192, 256, 192, 256, 480, 640)
    g = processing_geometry(720, 1280, dyn, 256)
    assert (g.height, g.width, g.padded_height) == (144, 256, 144)
    g = processing_geometry(75, 100, dyn, 256)       # never upsampled beyond the input: 96 x 72
    assert (g.width, g.height, g.padded_height) == (96, 72, 72) and g.scale == pytest.approx(0.96)
    g = processing_geometry(100, 130, dyn, 64)       # 64 x 49.2 -> 49 rows, padded to 56
    assert (g.width, g.height, g.padded_height) == (64, 49, 56)
    fixed = load_manifest(tiny_engines['ddfs'])      # 64 x 64: a 4:3 input is centre-cropped to 1:1
    g = processing_geometry(480, 640, fixed, 256)
    assert (g.y0, g.x0, g.crop_h, g.crop_w, g.height, g.width) == (0, 80, 480, 480, 64, 64)
    g = processing_geometry(640, 480, fixed, 256)
    assert (g.y0, g.x0, g.crop_h, g.crop_w) == (80, 0, 480, 480)
    # a scale view: a fraction of min(processing width, input width), then the multiple
    g = processing_geometry(480, 640, dyn, 256, scale=0.5)
    assert (g.width, g.height) == (128, 96)
    g = processing_geometry(256, 256, dyn, 512, scale=0.75)
    assert (g.width, g.height) == (192, 192)
    with pytest.raises(ValueError, match='scale'):
        processing_geometry(480, 640, dyn, 256, scale=1.5)
    with pytest.raises(ValueError, match='fixed-size'):
        processing_geometry(480, 640, fixed, 256, scale=0.5)


def test_dynamic_engine_rejects_sizes_off_the_multiple(argmin):
    x = {'image': torch.rand(1, 3, 44, 64), 'cost_volume': torch.rand(1, 16, 44, 64),
         'depths': torch.linspace(0.1, 0.6, 16)[None]}
    with pytest.raises(EngineInputError):
        argmin['dynamic'].infer(x)
    x = {'image': torch.rand(1, 3, 40, 72), 'cost_volume': torch.rand(1, 16, 40, 72),
         'depths': torch.linspace(0.1, 0.6, 16)[None]}
    d, u = argmin['dynamic'].infer(x)
    assert d.shape == (1, 1, 40, 72) and u.shape == (1, 1, 40, 72)


def test_non_square_stack_end_to_end_matches_the_stages_by_hand(argmin):
    """A 100 x 130 stack at processing_width 64: 64 x 49 (+7 padded rows), pitch * 130 / 64."""
    eng = argmin['dynamic']
    rng = np.random.default_rng(3)
    frames = rng.random((5, 100, 130, 3), dtype=np.float32)
    stack = FocalStack(frames, FOCUS, LensModel(F_M, N, PITCH_128))
    pipe = DepthPipeline(eng, 'fixed', max_relative_uncertainty=None, processing_width=64, upsample='bilinear')
    res = pipe.run(stack, all_in_focus=True)
    assert res.depth.shape == res.uncertainty.shape == (100, 130) and res.all_in_focus.shape == (100, 130, 3)
    assert np.isfinite(res.depth).all() and np.isfinite(res.all_in_focus).all()
    import cv2       # the pipeline's area resampling on a CPU (exact pixel areas)
    x = torch.from_numpy(np.stack([cv2.resize(f, (64, 49), interpolation=cv2.INTER_AREA) for f in frames]))
    x = x.permute(0, 3, 1, 2).contiguous()
    x = Fnn.pad(x, (0, 0, 0, 7), mode='reflect')
    hyp = eng.manifest.train_hypotheses()
    cv = CostVolume(max_coc_px=10.0)(x, FOCUS, stack.per_frame_f_numbers(), F_M, PITCH_128 * 130 / 64, hyp)
    d, u = eng.infer({'image': x[4:5], 'cost_volume': cv[None], 'depths': torch.as_tensor(hyp, dtype=torch.float32)[None]})
    back = Fnn.interpolate(torch.cat([d, u], 1)[:, :, :49], size=(100, 130), mode='bilinear', align_corners=False)
    np.testing.assert_allclose(res.depth, back[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(res.uncertainty, back[0, 1].numpy(), atol=1e-5)
    # processing_width above the input width: runs at the input width (64 x 48 at 64 px)
    small = FocalStack(frames[:, :48, :64], FOCUS, stack.lens)
    assert DepthPipeline(eng, 'fixed', processing_width=512).run(small).geometry.width == 64


def test_an_aperture_pair_runs_at_its_own_width_unless_told_otherwise(argmin):
    """A sweep runs at processing_width; a one-focus-distance pair at the input width
    (pair_processing_width 0), or at pair_processing_width when one is set."""
    eng = argmin['dynamic']
    frames = np.random.default_rng(4).random((2, 96, 128, 3), dtype=np.float32)
    lens = LensModel(F_M, N, PITCH_128)
    sweep = FocalStack(frames, [0.3, 0.5], lens)
    pair = FocalStack(frames, [0.4, 0.4], lens, f_numbers=[2.0, 8.0])
    assert pair.aperture_only and not sweep.aperture_only
    pipe = DepthPipeline(eng, 'fixed', processing_width=64)
    assert pipe.run(sweep).geometry.width == 64
    res = pipe.run(pair)
    assert res.geometry.width == 128 and res.depth.shape == (96, 128) and np.isfinite(res.depth).any()
    pipe.pair_processing_width = 96
    assert pipe.run(pair).geometry.width == 96 and pipe.run(sweep).geometry.width == 64
    with pytest.raises(ValueError, match='pair_processing_width'):
        DepthPipeline(eng, 'fixed', pair_processing_width=4)


def _plane_stack(depth_m: float, rows: int, pitch: float = PITCH_128) -> FocalStack:
    plane = fronto_parallel_plane(128, depth_m)
    frames = render_focal_stack(plane.rgb, plane.depth_m, FOCUS, LensModel(F_M, N, pitch))
    y0 = (128 - rows) // 2
    return FocalStack(frames[:, y0:y0 + rows], FOCUS, LensModel(F_M, N, pitch))


def _centre_depth(res) -> float:
    H, W = res.depth.shape
    return float(np.nanmedian(res.depth[H // 4:3 * H // 4, W // 4:3 * W // 4]))


@pytest.mark.slow      # ~10 s per depth on a loaded 2-core machine (5 renders + 4-6 pipeline runs)
@pytest.mark.parametrize('depth_m', [0.15, 0.25])
def test_round_disk_same_depth_at_4_3_as_at_1_1(argmin, depth_m):
    """A rendered fronto-parallel plane gives the same depth at 128 x 96 as at 128 x 128.

    Both go through the dynamic engine at processing_width 64 (64 x 48 and 64 x 64), so
    the blur disks are halved on both axes; the engine's soft-argmin follows the cost
    volume, so its depth is the cost volume's.  The fixed 64 x 64 engine centre-crops
    the 4:3 frame and must agree as well.  A wrong pitch scale moves the estimate by
    several bins (checked below), so the test can fail.
    """
    bin_w = 0.5 / 15
    pipe = DepthPipeline(argmin['dynamic'], 'fixed', max_relative_uncertainty=None, processing_width=64)
    square, wide = pipe.run(_plane_stack(depth_m, 128)), pipe.run(_plane_stack(depth_m, 96))
    assert wide.geometry.height == 48 and square.geometry.height == 64
    a, b = _centre_depth(square), _centre_depth(wide)
    assert abs(a - b) < 0.3 * bin_w, (a, b)
    assert abs(a - depth_m) < bin_w and abs(b - depth_m) < bin_w, (a, b, depth_m)
    crop = DepthPipeline(argmin['fixed'], 'fixed', max_relative_uncertainty=None).run(_plane_stack(depth_m, 96))
    assert np.isnan(crop.depth[:, :16]).all() and np.isfinite(crop.depth[:, 16:112]).all()
    assert abs(_centre_depth(crop) - depth_m) < bin_w     # another processing scale (2/3): within a bin
    if depth_m == 0.25:
        # controls, so the test can fail: the 4:3 frames squashed into 128 x 128 (elliptic
        # disks; measured 0.273 m against 0.253 m) and a pitch off by 1.5 (0.329 m)
        import cv2
        s43 = _plane_stack(depth_m, 96)
        squashed = np.stack([cv2.resize(f, (128, 128), interpolation=cv2.INTER_LINEAR) for f in s43.frames])
        assert abs(_centre_depth(pipe.run(FocalStack(squashed, FOCUS, s43.lens))) - a) > 0.3 * bin_w
        wrong = pipe.run(FocalStack(s43.frames, FOCUS, LensModel(F_M, N, PITCH_128 * 1.5)))
        assert abs(_centre_depth(wrong) - depth_m) > 2 * bin_w
