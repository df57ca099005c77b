"""Boundary metrics on a synthetic step; edge-aware upsampling and the all-in-focus composite."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddfs_ros import refine
from ddfs_ros.eval.boundary import boundary_scores, depth_discontinuities, edge_region
from ddfs_ros.eval.metrics import METRIC_KEYS, compute_metrics


def _step(H=48, W=64, col=30, near=1.0, far=2.0):
    d = np.full((H, W), far, np.float32)
    d[:, :col] = near
    return d


def test_discontinuities_and_edge_region_of_a_step():
    gt = _step()
    e = depth_discontinuities(gt)
    assert e[:, 29].all() and e[:, 30].all() and e.sum() == 2 * 48
    region = edge_region(gt)                     # within 3 px of the two edge columns
    assert region[:, 26:34].all() and not region[:, :26].any() and not region[:, 34:].any()
    gt[5, 5] = np.nan                            # a hole is not an edge
    assert not depth_discontinuities(gt)[4:7, 4:7].any()


def test_edge_metrics_on_exact_smeared_and_shifted_steps():
    gt = _step()
    exact = compute_metrics(gt, gt)
    assert exact['edge_absrel'] == 0.0 and exact['boundary_f'] == 1.0
    assert {'edge_absrel', 'boundary_f'} <= set(METRIC_KEYS)
    # a 10-px linear ramp across the edge (what bilinear upsampling of a coarse map does)
    ramp = gt.copy()
    ramp[:, 25:35] = np.linspace(1.0, 2.0, 10)[None]
    m = compute_metrics(ramp, gt)
    assert m['edge_absrel'] > 0.05 and m['boundary_f'] < 0.6   # measured 0.57
    assert m['absrel'] < m['edge_absrel']        # the error sits at the edge
    p, r, f = boundary_scores(np.roll(gt, 3, axis=1), gt)
    assert p == 0.0 and r == 0.0 and f == 0.0    # 3 px off is beyond the 1 px tolerance
    flat = compute_metrics(np.full_like(gt, 1.5), gt)
    assert flat['boundary_f'] == 0.0
    assert math.isnan(compute_metrics(gt, np.full_like(gt, 2.0))['edge_absrel'])   # no true edge


def _textured_step(H=96, W=128, col=61, seed=0):
    """A step in depth that is also a step in intensity (a dark near object on a bright wall)."""
    rng = np.random.default_rng(seed)
    img = np.full((H, W), 0.8, np.float32)
    img[:, :col] = 0.2
    img += rng.normal(0, 0.01, img.shape).astype(np.float32)
    return _step(H, W, col), np.clip(img, 0, 1)


@pytest.mark.parametrize('method', ['joint_bilateral', 'guided'])
def test_edge_aware_upsampling_beats_bilinear_on_a_step(method):
    gt, guide = _textured_step()
    # the network's view: the step at half resolution, softened over a couple of pixels
    low = torch.from_numpy(gt[None])
    low = torch.nn.functional.interpolate(low[None], size=(48, 64), mode='area')[0]
    low = torch.nn.functional.avg_pool2d(low[None], 3, 1, 1, count_include_pad=False)[0]
    bil = refine.upsample(low, (96, 128), 'bilinear')[0].numpy()
    edge = refine.upsample(low, (96, 128), method, torch.from_numpy(guide))[0].numpy()
    mb, me = compute_metrics(bil, gt), compute_metrics(edge, gt)
    assert me['edge_absrel'] < 0.7 * mb['edge_absrel'], (me['edge_absrel'], mb['edge_absrel'])
    if method == 'joint_bilateral':
        assert me['boundary_f'] > mb['boundary_f']
    assert edge.shape == (96, 128) and np.isfinite(edge).all()


def test_upsample_keeps_a_constant_and_validates_the_method():
    low = torch.full((2, 12, 16), 1.5)
    guide = torch.rand(48, 64)
    for method in refine.UPSAMPLE_METHODS:
        np.testing.assert_allclose(refine.upsample(low, (48, 64), method, guide).numpy(), 1.5, rtol=1e-4)
    with pytest.raises(ValueError):
        refine.upsample(low, (48, 64), 'nearest', guide)


def test_all_in_focus_is_sharper_than_any_single_frame():
    """Two depth layers, each in focus in a different frame: the composite recovers both."""
    from ddfs_ros.optics import LensModel
    from ddfs_ros.render import render_focal_stack
    from skimage.metrics import peak_signal_noise_ratio as psnr
    rng = np.random.default_rng(1)
    H, W = 48, 64
    rgb = rng.random((H, W, 3)).astype(np.float32)
    depth = np.full((H, W), 0.5, np.float32)
    depth[:, W // 2:] = 1.5
    lens = LensModel(0.01, 1.4, 10e-6)
    focus = np.array([0.4, 0.5, 0.8, 1.5, 2.5])
    frames = render_focal_stack(rgb, depth, focus, lens)
    aif = refine.all_in_focus(frames, depth, focus, [1.4] * 5, 0.01, 10e-6)
    single = max(psnr(rgb, f, data_range=1.0) for f in frames)
    got = psnr(rgb, aif, data_range=1.0)
    assert got > single + 3.0, (got, single)
    w = refine.focus_weights(depth, focus, [1.4] * 5, 0.01, 10e-6)
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-5)
    assert (w.argmax(0)[:, :W // 2] == 1).all() and (w.argmax(0)[:, W // 2:] == 3).all()
    assert w[1, :, :W // 2].min() > 0.5 and w[3, :, W // 2:].min() > 0.5


# --- the numba kernels of ddfs_ros.refine_kernels against the torch/numpy reference -----------

def _reference(monkeypatch, fn, *args, **kwargs):
    """``fn`` on refine's torch/numpy code (as without numba, the CUDA path's code)."""
    with monkeypatch.context() as m:
        m.setattr(refine.refine_kernels, 'available', lambda: False)
        return fn(*args, **kwargs)


def _scene_guide(H, W, rng):
    """A gray guide with edges, smooth shading and noise."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    g = 0.3 + 0.4 * (xx > W * 0.4) - 0.2 * (yy > H * 0.6) + 0.1 * np.sin(xx / 3.0)
    return np.clip(g + rng.normal(0, 0.03, (H, W)), 0, 1).astype(np.float32)


@pytest.mark.skipif(not refine.refine_kernels.available(), reason='numba not installed')
@pytest.mark.parametrize('low_hw, out_hw, radius', [((12, 16), (30, 40), 2), ((13, 17), (40, 50), 2),
                                                     ((16, 16), (32, 48), 1), ((10, 14), (25, 37), 3)])
def test_joint_bilateral_kernel_equals_torch(monkeypatch, low_hw, out_hw, radius):
    rng = np.random.default_rng(3)
    guide = torch.from_numpy(_scene_guide(*out_hw, rng))
    low = torch.from_numpy(rng.uniform(0.2, 3.0, (2,) + low_hw).astype(np.float32))
    for kw in ({'radius': radius}, {'radius': radius, 'sigma_space': 0.7, 'sigma_range': 0.13}):
        got = refine.joint_bilateral_upsample(low, guide, **kw)
        ref = _reference(monkeypatch, refine.joint_bilateral_upsample, low, guide, **kw)
        assert got.dtype == torch.float32 and got.shape == (2,) + out_hw
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # a non-contiguous map (the pipeline crops the network's padded output) and a given guide_low
    wide = torch.from_numpy(rng.uniform(0.2, 3.0, (2, low_hw[0] + 3, low_hw[1] + 5)).astype(np.float32))
    crop = wide[:, :low_hw[0], :low_hw[1]]
    gl = torch.from_numpy(rng.random(low_hw, dtype=np.float32))
    torch.testing.assert_close(refine.joint_bilateral_upsample(crop, guide, gl),
                               _reference(monkeypatch, refine.joint_bilateral_upsample, crop, guide, gl),
                               rtol=1e-5, atol=1e-6)
    # and through the public entry point the pipeline uses
    torch.testing.assert_close(refine.upsample(crop, out_hw, 'joint_bilateral', guide),
                               _reference(monkeypatch, refine.upsample, crop, out_hw, 'joint_bilateral', guide),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not refine.refine_kernels.available(), reason='numba not installed')
@pytest.mark.parametrize('channels', [3, 1, 2])
def test_all_in_focus_kernel_equals_reference(monkeypatch, channels):
    rng = np.random.default_rng(4)
    F, H, W = 4, 9, 23
    frames = rng.random((F, H, W, channels), dtype=np.float32) * 1.1      # some values to clamp
    depth = rng.uniform(0.3, 3.0, (H, W)).astype(np.float32)
    depth[0, :4] = [np.nan, np.inf, -1.0, 0.0]                            # no depth: equal weights
    focus, n = [0.4, 0.7, 1.2, 2.5], [1.4, 2.0, 2.0, 2.8]                  # per-frame f-numbers
    args = (focus, n, 0.012, 6e-6)
    w = refine.focus_weights(depth, *args)
    w_ref = _reference(monkeypatch, refine.focus_weights, depth, *args)
    assert w.dtype == np.float32 and w.shape == (F, H, W)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w[:, 0, :4], 1.0 / F, rtol=1e-6)
    for tau in (refine.AIF_TAU_PX, 3.0):
        aif = refine.all_in_focus(frames, depth, *args, tau_px=tau)
        ref = _reference(monkeypatch, refine.all_in_focus, frames, depth, *args, tau_px=tau)
        assert aif.dtype == np.float32 and aif.shape == (H, W, channels)
        np.testing.assert_allclose(aif, ref, rtol=1e-5, atol=1e-6)
        assert aif.min() >= 0.0 and aif.max() <= 1.0


@pytest.mark.skipif(not refine.refine_kernels.available(), reason='numba not installed')
def test_kernel_exp_matches_torch():
    x = np.concatenate([np.linspace(-100.0, 10.0, 200001), [0.0, -87.3, -87.4, -200.0, 88.0]]).astype(np.float32)
    got, ref = refine.refine_kernels.exp32(x), torch.exp(torch.from_numpy(x)).numpy()
    normal = ref >= np.finfo(np.float32).tiny
    np.testing.assert_allclose(got[normal], ref[normal], rtol=2.5e-7, atol=0)   # ~2 ulp
    assert (got[~normal] == 0.0).all() and got[x == 0.0][0] == 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_joint_bilateral_matches_the_cpu_kernel():
    rng = np.random.default_rng(5)
    guide = torch.from_numpy(_scene_guide(60, 80, rng))
    low = torch.from_numpy(rng.uniform(0.2, 3.0, (2, 24, 32)).astype(np.float32))
    cpu = refine.upsample(low, (60, 80), 'joint_bilateral', guide)
    gpu = refine.upsample(low.cuda(), (60, 80), 'joint_bilateral', guide.cuda())
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not refine.refine_kernels.available(), reason='numba not installed')
@pytest.mark.parametrize('big, small', [((30, 40), (12, 16)), ((37, 50), (13, 17)), ((24, 32), (12, 16))])
def test_gray_and_area_kernels_equal_torch(monkeypatch, big, small):
    rng = np.random.default_rng(6)
    rgb = torch.from_numpy(rng.random(big + (4,), dtype=np.float32))[..., :3]   # a strided view
    g = refine.to_gray(rgb)
    torch.testing.assert_close(g, _reference(monkeypatch, refine.to_gray, rgb), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(refine._area(g, small), _reference(monkeypatch, refine._area, g, small),
                               rtol=1e-6, atol=1e-7)
