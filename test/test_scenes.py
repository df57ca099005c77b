"""Built-in, procedural, file and real-data scenes."""
from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from ddfs_ros import data_splits
from ddfs_ros.scenes import (REAL_DFD_DEFAULT_ROOT, Scene, fill_depth_holes, fronto_parallel_plane, load_rgbd,
                             motorcycle_scene, paint_nearest, procedural_scene, real_dfd_scenes, resolve_data_dir,
                             thin_structure_mask, two_plane_scene)


def _check_scene(scene: Scene, size: int) -> None:
    assert scene.rgb.shape == (size, size, 3) and scene.rgb.dtype == np.float32
    assert scene.depth_m.shape == (size, size) and scene.depth_m.dtype == np.float32
    assert 0.0 <= scene.rgb.min() and scene.rgb.max() <= 1.0
    assert np.all(np.isfinite(scene.depth_m)) and scene.depth_m.min() > 0


def test_motorcycle_scene_has_real_metric_depth():
    scene = motorcycle_scene(128)
    _check_scene(scene, 128)
    p5, p50, p95 = np.percentile(scene.depth_m, [5, 50, 95])
    assert 2.1 < p5 < 2.4 and 4.2 < p95 < 4.8 and p5 < p50 < p95
    lo, hi = scene.depth_range
    assert 2.0 < lo and hi < 5.1  # disparity 7.2..59.9 px -> 2.11..5.02 m
    assert scene.fx_px == pytest.approx(994.978 * 128 / 500)
    assert scene.rgb.std() > 0.1  # a real photograph, not a blank
    # The motorcycle (centre) is nearer than the wall behind it (top of the image).
    assert np.median(scene.depth_m[50:90, 40:90]) < np.median(scene.depth_m[:15])


def test_procedural_scenes_are_deterministic_given_the_seed():
    a = procedural_scene(np.random.default_rng(11), 64, (0.3, 3.0))
    b = procedural_scene(11, 64, (0.3, 3.0))
    c = procedural_scene(12, 64, (0.3, 3.0))
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth_m, b.depth_m)
    assert not np.array_equal(a.depth_m, c.depth_m)


@pytest.mark.parametrize('seed', range(4))
def test_procedural_scenes_are_textured_layered_and_in_range(seed):
    near, far = 0.5, 2.0
    scene = procedural_scene(seed, 64, (near, far))
    _check_scene(scene, 64)
    assert near - 1e-5 <= scene.depth_m.min() and scene.depth_m.max() <= far + 1e-5
    # Several surfaces: depth jumps between neighbours (occlusion edges) and spread.
    jumps = np.abs(np.diff(scene.depth_m, axis=1)) > 0.05
    assert jumps.sum() > 20
    assert scene.depth_m.std() > 0.05
    # Textured: local contrast well above zero nearly everywhere.
    grey = scene.rgb.mean(-1)
    local = cv2.blur(np.abs(grey - cv2.blur(grey, (5, 5))), (9, 9))
    assert np.median(local) > 0.005


@pytest.mark.parametrize('size', [32, 96, 256])
def test_thin_structures_are_a_few_pixels_wide(size):
    lin = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    grid = np.meshgrid(lin, lin, indexing='ij')
    for seed in range(12):
        mask = thin_structure_mask(np.random.default_rng(seed), grid, size).astype(np.uint8)
        if mask.sum() == 0:        # placed off the image
            continue
        # nothing survives an erosion by a square wider than the widest stroke (6 px)
        assert not cv2.erode(mask, np.ones((8, 8), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).any()


def test_thin_structures_add_depth_edges_and_none_changes_no_scene():
    plain = procedural_scene(5, 96, (0.5, 2.0))
    np.testing.assert_array_equal(plain.depth_m, procedural_scene(5, 96, (0.5, 2.0), n_thin=0).depth_m)
    thin = procedural_scene(5, 96, (0.5, 2.0), n_thin=8)
    _check_scene(thin, 96)
    assert thin.meta['n_thin'] == 8 and plain.meta['n_thin'] == 0
    # the same scene underneath, plus narrow strokes in front of parts of it
    changed = (thin.depth_m != plain.depth_m).astype(np.uint8)
    assert changed.sum() > 50
    assert np.all(thin.depth_m[changed.astype(bool)] < plain.depth_m[changed.astype(bool)])
    assert not cv2.erode(changed, np.ones((8, 8), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0).any()
    edges = lambda d: (np.abs(np.diff(d, axis=1)) > 0.05).sum()
    assert edges(thin.depth_m) > edges(plain.depth_m)


def test_surfaces_are_z_buffered():
    rgb = np.zeros((4, 4, 3), np.float32)
    depth = np.full((4, 4), 2.0, np.float32)
    mask = np.zeros((4, 4), bool)
    mask[:, :2] = True
    # Behind the current surface on the left, in front of it on the right half of the mask.
    obj_depth = np.array([[3.0, 1.0, 1.0, 1.0]] * 4, np.float32)
    owned = paint_nearest(rgb, depth, np.ones((4, 4, 3), np.float32), obj_depth, mask)
    np.testing.assert_array_equal(owned[:, 0], False)
    np.testing.assert_array_equal(owned[:, 1], True)
    np.testing.assert_array_equal(owned[:, 2:], False)  # outside its mask
    np.testing.assert_array_equal(depth[:, 1], 1.0)
    np.testing.assert_array_equal(depth[:, 0], 2.0)
    np.testing.assert_array_equal(rgb[:, 1], 1.0)
    np.testing.assert_array_equal(rgb[:, 0], 0.0)
    # A later, farther surface cannot cover a nearer one.
    paint_nearest(rgb, depth, np.full((4, 4, 3), 0.5, np.float32), np.full((4, 4), 1.5, np.float32),
                  np.ones((4, 4), bool))
    np.testing.assert_array_equal(depth[:, 1], 1.0)
    np.testing.assert_array_equal(rgb[:, 1], 1.0)
    np.testing.assert_array_equal(depth[:, 0], 1.5)


def test_fill_depth_holes_takes_the_background_side():
    d = np.array([[1.0, 1.0, 0.0, 0.0, 3.0, 3.0],
                  [np.nan, 2.0, 2.0, np.inf, 2.5, 2.5]])
    filled = fill_depth_holes(d)
    np.testing.assert_allclose(filled[0], [1, 1, 3, 3, 3, 3])
    np.testing.assert_allclose(filled[1], [2, 2, 2, 2.5, 2.5, 2.5])


def test_load_rgbd_reads_millimetres_and_fills_holes(tmp_path):
    rgb = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    depth_mm = np.full((20, 30), 1500, np.uint16)
    depth_mm[:, 15:] = 2500
    depth_mm[5, 14:16] = 0  # a hole on the edge between the two
    cv2.imwrite(str(tmp_path / 'rgb.png'), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / 'depth.png'), depth_mm)
    scene = load_rgbd(tmp_path / 'rgb.png', tmp_path / 'depth.png')
    np.testing.assert_allclose(scene.rgb, rgb / 255.0, atol=1e-6)
    assert scene.depth_m[0, 0] == pytest.approx(1.5) and scene.depth_m[0, 29] == pytest.approx(2.5)
    assert scene.depth_m[5, 14] == pytest.approx(2.5) and scene.depth_m[5, 15] == pytest.approx(2.5)
    raw = load_rgbd(tmp_path / 'rgb.png', tmp_path / 'depth.png', fill_holes=False)
    assert np.isnan(raw.depth_m[5, 14])
    np.save(tmp_path / 'depth.npy', np.full((20, 30), 0.8, np.float32))
    assert load_rgbd(tmp_path / 'rgb.png', tmp_path / 'depth.npy').depth_m.max() == pytest.approx(0.8)
    with pytest.raises(ValueError, match='differ in size'):
        cv2.imwrite(str(tmp_path / 'small.png'), depth_mm[:10])
        load_rgbd(tmp_path / 'rgb.png', tmp_path / 'small.png')


def test_small_helper_scenes():
    plane = fronto_parallel_plane(32, 0.7, 'brick')
    _check_scene(plane, 32)
    assert np.all(plane.depth_m == np.float32(0.7))
    noise = fronto_parallel_plane(32, 1.0, 'noise')
    assert noise.rgb.std() > 0.05
    two = two_plane_scene(40, 0.5, 2.0)
    _check_scene(two, 40)
    near = two.meta['near_mask']
    assert np.all(two.depth_m[near] == np.float32(0.5)) and np.all(two.depth_m[~near] == np.float32(2.0))
    assert 0.2 < near.mean() < 0.3


def test_real_dfd_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='pairs.csv'):
        next(real_dfd_scenes(tmp_path / 'nowhere'))


def test_real_dfd_scenes_pair_through_pairs_csv():
    root = resolve_data_dir(REAL_DFD_DEFAULT_ROOT)
    if root is None:
        pytest.skip(f'real DFD data not found at {REAL_DFD_DEFAULT_ROOT} (see ../shared/data/README.md)')
    with open(root / 'pairs.csv', newline='') as fh:
        rows = list(csv.DictReader(fh))
    scenes = list(real_dfd_scenes(root, aperture='f8', limit=2))
    assert len(scenes) == 2
    for scene, row in zip(scenes, rows):
        assert scene.name == row['rgb_file'].rsplit('.', 1)[0]
        assert scene.meta['depth_file'] == row['depth_file']
        assert scene.shape == (432, 645)
        assert 0.2 < scene.depth_m.min() and scene.depth_m.max() < 10.0
        assert scene.meta['focus_m'] == 1.7 and scene.meta['f_number'] == 8.0
        assert scene.meta['pixel_pitch_m'] == pytest.approx(36e-6)
    wide = next(real_dfd_scenes(root, aperture='f2.8'))
    assert wide.name == scenes[0].name and wide.meta['f_number'] == 2.8
    np.testing.assert_array_equal(wide.depth_m, scenes[0].depth_m)


@pytest.mark.skipif(not data_splits.texture_paths('val'),
                    reason='../shared/data/textures is absent (see ../shared/data/README.md)')
def test_crisp_photo_textures_are_never_magnified_and_so_sharper():
    """``crisp`` crops at least the texture size from the photograph: on average sharper than the
    default crops (30-100 % of the shorter side, mostly magnified at 256 px), same draws."""
    from ddfs_ros.scenes import split_photo_texture

    def sharpness(t: np.ndarray) -> float:
        """Laplacian energy over the variance: the share of the finest scale, not contrast."""
        g = cv2.cvtColor(t, cv2.COLOR_RGB2GRAY)
        return float((cv2.Laplacian(g, cv2.CV_32F) ** 2).mean() / (g.var() + 1e-6))
    soft, crisp = split_photo_texture('val'), split_photo_texture('val', crisp=True)
    s = [sharpness(soft(np.random.default_rng(i), 256)) for i in range(40)]
    c = [sharpness(crisp(np.random.default_rng(i), 256)) for i in range(40)]
    assert crisp(np.random.default_rng(0), 256).shape == (256, 256, 3)
    assert np.mean(c) > 1.2 * np.mean(s)
    with pytest.raises(ValueError, match='shorter side'):
        crisp(np.random.default_rng(0), 4096)
