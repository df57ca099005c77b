"""Classical focus-measure depth from focus on rendered stacks."""
from __future__ import annotations

import numpy as np
import pytest

from ddfs_ros.baselines import focus_measure, focus_measure_depth
from ddfs_ros.optics import LensModel, focus_schedule
from ddfs_ros.render import render_focal_stack
from ddfs_ros.scenes import fronto_parallel_plane, two_plane_scene

LENS = LensModel(focal_length_m=0.025, f_number=2.0, pixel_pitch_m=60e-6)
FOCUS = focus_schedule(0.4, 1.6, 7)


@pytest.mark.parametrize('measure', ['sml', 'lapvar'])
def test_recovers_depth_ordering_of_two_planes(measure):
    scene = two_plane_scene(64, near_m=0.5, far_m=1.2)
    frames = render_focal_stack(scene.rgb, scene.depth_m, FOCUS, LENS, quantize_bits=8)
    depth, confidence = focus_measure_depth(frames, FOCUS, measure=measure)
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    near = scene.meta['near_mask']
    core_near = np.zeros_like(near)
    core_near[24:40, 24:40] = True
    core_far = np.zeros_like(near)
    core_far[:8] = True
    d_near, d_far = np.median(depth[core_near]), np.median(depth[core_far])
    assert d_near < d_far
    assert d_near == pytest.approx(0.5, rel=0.1) and d_far == pytest.approx(1.2, rel=0.1)
    assert 0.0 <= confidence.min() and confidence.max() < 1.0 and confidence.mean() > 0.2


@pytest.mark.parametrize('depth_m', [0.55, 0.8, 1.1])
def test_absolute_error_on_a_fronto_parallel_plane(depth_m):
    plane = fronto_parallel_plane(64, depth_m, 'astronaut')
    frames = render_focal_stack(plane.rgb, plane.depth_m, FOCUS, LENS, quantize_bits=8)
    depth, _ = focus_measure_depth(frames, FOCUS)
    rel = np.abs(depth - depth_m) / depth_m
    assert np.median(rel) < 0.05
    assert rel.mean() < 0.1


def test_sub_frame_interpolation_lands_between_frames():
    focus = focus_schedule(0.4, 1.6, 5)
    mid = 1.0 / (0.5 * (1.0 / focus[1] + 1.0 / focus[2]))  # half way in dioptres
    plane = fronto_parallel_plane(64, mid, 'astronaut')
    frames = render_focal_stack(plane.rgb, plane.depth_m, focus, LENS)
    depth, _ = focus_measure_depth(frames, focus)
    est = np.median(depth)
    assert focus[1] < est < focus[2]
    assert est == pytest.approx(mid, rel=0.05)
    assert np.mean(np.isin(depth, focus.astype(np.float32))) < 0.5  # not snapped to frames


def test_frame_order_does_not_matter():
    scene = two_plane_scene(48, 0.5, 1.2)
    frames = render_focal_stack(scene.rgb, scene.depth_m, FOCUS, LENS)
    order = np.array([3, 0, 6, 1, 5, 2, 4])
    d_sorted, c_sorted = focus_measure_depth(frames, FOCUS)
    d_shuffled, c_shuffled = focus_measure_depth(frames[order], FOCUS[order])
    np.testing.assert_array_equal(d_sorted, d_shuffled)
    np.testing.assert_array_equal(c_sorted, c_shuffled)


def test_two_frames_and_gray_input():
    scene = two_plane_scene(48, 0.5, 1.2)
    frames = render_focal_stack(scene.rgb, scene.depth_m, [1.2, 0.5], LENS)
    depth, _ = focus_measure_depth(frames.mean(-1), [1.2, 0.5])
    near = scene.meta['near_mask']
    assert np.median(depth[near]) == pytest.approx(0.5)
    assert np.median(depth[~near]) == pytest.approx(1.2)


def test_rejects_unusable_stacks():
    frames = np.zeros((3, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match='distinct'):
        focus_measure_depth(frames, [0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match='focus distances'):
        focus_measure_depth(frames, [0.5, 1.0])
    with pytest.raises(ValueError, match='measure'):
        focus_measure(frames[0, ..., 0], 'nope')


def test_focus_measure_prefers_sharp_texture():
    rng = np.random.default_rng(0)
    sharp = rng.random((32, 32)).astype(np.float32)
    import cv2
    blurred = cv2.GaussianBlur(sharp, (0, 0), 2.0)
    for m in ('sml', 'lapvar'):
        assert np.all(focus_measure(sharp, m) > focus_measure(blurred, m))
