"""Thin-lens focal-stack renderer: sharpness at focus, disk blur, occlusion, noise, quantisation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ddfs_ros.optics import LensModel
from ddfs_ros.psf import disk_psf
from ddfs_ros.render import (SensorNoise, linear_to_srgb, plan_layers, render_focal_stack, render_stack,
                             srgb_to_linear)
from ddfs_ros.scenes import fronto_parallel_plane, named_texture, real_dfd_scenes, resolve_data_dir, \
    REAL_DFD_DEFAULT_ROOT, two_plane_scene
from ddfs_ros.stack import FocalStack

LENS = LensModel(focal_length_m=0.025, f_number=2.0, pixel_pitch_m=40e-6)


def to_linear(x: np.ndarray) -> np.ndarray:
    return srgb_to_linear(torch.as_tensor(x)).numpy()


def to_srgb(x: np.ndarray) -> np.ndarray:
    return linear_to_srgb(torch.as_tensor(x)).numpy()


def test_srgb_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(to_srgb(to_linear(x)), x, atol=2e-6)
    assert to_linear(np.float32(0.5)) == pytest.approx(0.21404, abs=1e-4)


def test_scene_at_the_focus_distance_stays_sharp():
    scene = fronto_parallel_plane(48, 0.8, 'astronaut')
    out = render_focal_stack(scene.rgb, scene.depth_m, [0.8], LENS)
    assert out.shape == (1, 48, 48, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], scene.rgb, atol=1e-5)


def test_in_focus_layer_stays_sharp_next_to_a_blurred_one():
    scene = two_plane_scene(64, near_m=0.5, far_m=1.5)
    near = scene.meta['near_mask']
    out = render_focal_stack(scene.rgb, scene.depth_m, [1.5], LENS)[0]
    radius = LENS.coc_px(0.5, 1.5) / 2
    far_of_edge = ndimage.distance_transform_edt(~near) > radius + 1.5
    assert far_of_edge.sum() > 300
    np.testing.assert_allclose(out[far_of_edge], scene.rgb[far_of_edge], atol=1e-4)
    # ... while the near square really is blurred.
    assert np.abs(out[near] - scene.rgb[near]).mean() > 0.02


@pytest.mark.parametrize('radius', [0.8, 2.3, 4.0])
def test_uniform_depth_equals_disk_convolution(radius):
    size, focus = 64, 1.0
    # Depth whose blur diameter is exactly 2 * radius.
    slope = LENS.focal_length_m ** 2 * focus / (LENS.f_number * (focus - LENS.focal_length_m) * LENS.pixel_pitch_m)
    depth = 1.0 / (1.0 / focus + 2 * radius / slope)
    assert LENS.coc_px(depth, focus) / 2 == pytest.approx(radius)
    rgb = named_texture('astronaut', size)
    out = render_focal_stack(rgb, np.full((size, size), depth, np.float32), [focus], LENS)[0]
    lin = to_linear(rgb)
    kernel = disk_psf(radius)
    expected = to_srgb(np.stack([ndimage.convolve(lin[..., c], kernel, mode='reflect') for c in range(3)], -1))
    border = int(np.ceil(radius)) + 1
    inner = (slice(border, -border), slice(border, -border))
    # Interpolated PSF table: well below one 8-bit level.
    np.testing.assert_allclose(out[inner], expected[inner], atol=2e-3)
    # Reflect padding: the borders follow scipy's 'reflect' too.
    np.testing.assert_allclose(out, expected, atol=2e-3)


def test_gaussian_spot_equals_gaussian_convolution_and_unknown_shapes_are_rejected():
    from ddfs_ros.psf import gaussian_psfs

    size, focus, radius = 64, 1.0, 2.3
    slope = LENS.focal_length_m ** 2 * focus / (LENS.f_number * (focus - LENS.focal_length_m) * LENS.pixel_pitch_m)
    depth = np.full((size, size), 1.0 / (1.0 / focus + 2 * radius / slope), np.float32)
    rgb = named_texture('astronaut', size)
    out = render_focal_stack(rgb, depth, [focus], LENS, psf='gaussian')[0]
    disk = render_focal_stack(rgb, depth, [focus], LENS)[0]
    lin = to_linear(rgb)
    kernel = gaussian_psfs([radius])[0]
    expected = to_srgb(np.stack([ndimage.convolve(lin[..., c], kernel, mode='reflect') for c in range(3)], -1))
    np.testing.assert_allclose(out, expected, atol=2e-3)
    assert np.abs(out - disk).mean() > 2e-3            # another shape, not the disk again
    with pytest.raises(ValueError, match='psf'):
        render_focal_stack(rgb, depth, [focus], LENS, psf='airy')


def test_band_limited_disk_softens_a_sub_pixel_defocus_the_pixel_disk_leaves_sharp():
    from ddfs_ros.psf import disk_otf

    size, focus, radius = 64, 1.0, 0.35
    slope = LENS.focal_length_m ** 2 * focus / (LENS.f_number * (focus - LENS.focal_length_m) * LENS.pixel_pitch_m)
    depth = np.full((size, size), 1.0 / (1.0 / focus + 2 * radius / slope), np.float32)
    rgb = named_texture('astronaut', size)
    disk = render_focal_stack(rgb, depth, [focus], LENS)[0]
    otf = render_focal_stack(rgb, depth, [focus], LENS, psf='disk_otf')[0]
    np.testing.assert_allclose(disk, np.clip(rgb, 0, 1), atol=2e-3)          # r < 0.5: a delta
    lin = to_linear(rgb)
    kernel = np.fft.fftshift(np.real(np.fft.ifft2(disk_otf(radius, (41, 41)))))   # its tails uncropped
    expected = to_srgb(np.clip(np.stack([ndimage.convolve(lin[..., c], kernel, mode='reflect')
                                         for c in range(3)], -1), 0, 1))
    np.testing.assert_allclose(otf[8:-8, 8:-8], expected[8:-8, 8:-8], atol=3e-3)
    assert np.abs(otf - disk).mean() > 2e-3


@pytest.mark.parametrize('psf', ['disk', 'disk_otf', 'gaussian'])
def test_a_render_does_not_depend_on_what_was_rendered_before(psf):
    # The process-wide PSF table of a canvas size is filled with whatever radii a stack is
    # missing; here once from a fresh table, once after an earlier stack of the same
    # canvas size filled every row up to 12 px in one go.
    from ddfs_ros.render import _TABLES, _spectrum_table

    scene = two_plane_scene(48, 0.6, 2.5)
    _TABLES.clear()
    fresh = render_focal_stack(scene.rgb, scene.depth_m, [0.62, 2.4], LENS, psf=psf)
    (shape, _, _), = [k for k in _TABLES if k[2] == psf]
    _TABLES.clear()
    _spectrum_table(shape, torch.device('cpu'), psf).locate(np.linspace(0.0, 12.0, 400))
    after = render_focal_stack(scene.rgb, scene.depth_m, [0.62, 2.4], LENS, psf=psf)
    _TABLES.clear()
    np.testing.assert_array_equal(after, fresh)


def test_psf_table_interpolates_disk_spectra():
    from ddfs_ros.psf import kernels_to_spectra
    from ddfs_ros.render import _spectrum_table
    radii = np.array([0.0, 0.3, 0.77, 1.9, 2.06, 5.3])
    table = _spectrum_table((48, 40), torch.device('cpu'))
    got = table.lookup(radii).numpy()
    exact = kernels_to_spectra(torch.as_tensor(np.stack([np.pad(disk_psf(r), 6 - int(np.ceil(max(r, 0.5))))
                                                        for r in radii]), dtype=torch.float32), (48, 40))
    exact = exact.real.numpy()
    np.testing.assert_allclose(got[..., :21], exact, atol=4e-3)  # rfft half of the full grid
    np.testing.assert_allclose(got[0], 1.0, atol=1e-6)           # delta
    np.testing.assert_allclose(got[1], 1.0, atol=1e-6)           # r < 0.5 is a delta too


def test_grey_input_gives_grey_frames():
    scene = two_plane_scene(32, 0.5, 1.5)
    grey = scene.rgb.mean(-1)
    out = render_focal_stack(grey, scene.depth_m, [0.5, 1.5], LENS)
    assert out.shape == (2, 32, 32, 1)
    rgb = render_focal_stack(np.repeat(grey[..., None], 3, -1), scene.depth_m, [0.5, 1.5], LENS)
    np.testing.assert_allclose(out[..., 0], rgb[..., 0], atol=1e-5)


def _square_scene(size, near_m, far_m, near_value, far_value):
    rgb = np.full((size, size, 3), far_value, np.float32)
    depth = np.full((size, size), far_m, np.float32)
    q = size // 4
    rgb[q:-q, q:-q] = near_value
    depth[q:-q, q:-q] = near_m
    return rgb, depth, q


def test_occlusion_near_blur_spreads_over_sharp_far():
    size, near_m, far_m = 64, 0.5, 1.5
    rgb, depth, q = _square_scene(size, near_m, far_m, near_value=0.9, far_value=0.1)
    out = to_linear(render_focal_stack(rgb, depth, [far_m], LENS)[0, :, :, 0])
    near_lin, far_lin = to_linear(np.float32(0.9)), to_linear(np.float32(0.1))
    r = LENS.coc_px(near_m, far_m) / 2
    row = out[size // 2]
    edge = q  # first column of the square
    # Just outside the square the near object's blur covers the far plane ...
    outside = row[edge - int(r) + 1:edge]
    assert np.all(outside > far_lin + 0.02)
    # ... and fades to the far colour beyond its radius.
    assert row[edge - int(np.ceil(r)) - 2] == pytest.approx(far_lin, abs=1e-4)
    # No sharp halo: the edge is a smooth ramp, about half way at the boundary, and the
    # inner side of the rim already lets the background through.
    mid = 0.5 * (row[edge - 1] + row[edge])
    assert mid == pytest.approx(0.5 * (near_lin + far_lin), abs=0.08)
    assert row[edge + 1] < near_lin - 0.05
    assert np.all(np.diff(row[edge - int(r) - 1:edge + int(r) + 1]) >= -1e-5)
    assert np.abs(np.diff(row)).max() < 2.5 * (near_lin - far_lin) / (2 * r)


def test_occlusion_far_blur_does_not_bleed_over_sharp_near():
    size, near_m, far_m = 64, 0.5, 1.5
    tex = named_texture('astronaut', size)
    rgb, depth, q = _square_scene(size, near_m, far_m, near_value=0.0, far_value=0.9)
    rgb[q:-q, q:-q] = tex[q:-q, q:-q]
    out = render_focal_stack(rgb, depth, [near_m], LENS)[0]
    # The whole near square, rim included, is exactly the sharp input.
    np.testing.assert_allclose(out[q:-q, q:-q], rgb[q:-q, q:-q], atol=1e-4)
    # The in-focus near object's dark colours do not spread onto the blurred far plane
    # either: a far pixel next to it integrates far light only (hidden parts included).
    np.testing.assert_allclose(out[q:-q, q - 2], 0.9, atol=2e-3)


def test_continuous_slanted_surface_is_not_dimmed_at_layer_boundaries():
    size = 64
    rgb = named_texture('astronaut', size)
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    depth = np.broadcast_to(0.5 + 1.5 * yy, (size, size)).astype(np.float32)
    lens = LensModel(0.025, 2.0, 80e-6)
    focus = [0.6, 1.2]
    layered = render_focal_stack(rgb, depth, focus, lens)
    plan = plan_layers(torch.as_tensor(depth), np.array(focus), lens, np.full(2, 2.0))
    assert len(plan.layers) >= 3
    # A slanted plane does not occlude itself: one additive layer is the truth.
    additive = render_focal_stack(rgb, depth, focus, lens, occlusion_step_px=1e6, max_step_px=0.125)
    err = np.abs(layered - additive) * 255
    # (measured: mean 0.18, p99 2.0 grey levels; plain "over" between all layers: 0.30, 4.1)
    assert err.mean() < 0.25 and np.percentile(err, 99) < 3.0


def test_noise_statistics_follow_poisson_gaussian():
    size, grey = 96, 0.6
    rgb = np.full((size, size, 3), grey, np.float32)
    depth = np.full((size, size), 1.0, np.float32)
    noise = SensorNoise(full_well=400.0, read_noise=4.0)
    out = render_focal_stack(rgb, depth, [1.0, 2.0], LENS, noise=noise, rng=7)
    lin = to_linear(out)
    level = float(to_linear(np.float32(grey)))
    assert lin.mean() == pytest.approx(level, rel=0.01)
    assert lin.var() == pytest.approx(noise.variance(level), rel=0.08)
    # Seeded: same seed, same noise; another seed, other noise.
    again = render_focal_stack(rgb, depth, [1.0, 2.0], LENS, noise=noise, rng=7)
    other = render_focal_stack(rgb, depth, [1.0, 2.0], LENS, noise=noise, rng=8)
    np.testing.assert_array_equal(out, again)
    assert np.abs(out - other).mean() > 1e-3


def test_quantisation_to_bits():
    scene = fronto_parallel_plane(32, 0.7, 'coffee')
    for bits in (8, 4):
        levels = 2 ** bits - 1
        out = render_focal_stack(scene.rgb, scene.depth_m, [0.5, 1.0], LENS, quantize_bits=bits)
        np.testing.assert_allclose(out * levels, np.round(out * levels), atol=1e-4)
        assert len(np.unique(np.round(out * levels))) <= levels + 1
    free = render_focal_stack(scene.rgb, scene.depth_m, [0.5, 1.0], LENS)
    q8 = render_focal_stack(scene.rgb, scene.depth_m, [0.5, 1.0], LENS, quantize_bits=8)
    assert np.abs(free - q8).max() <= 0.5 / 255 + 1e-6


def test_render_stack_carries_the_optics_and_per_frame_f_numbers():
    scene = fronto_parallel_plane(40, 0.8, 'astronaut')
    stack = render_stack(scene.rgb, scene.depth_m, [0.5, 0.5], LENS, f_numbers=[8.0, 1.4])
    assert isinstance(stack, FocalStack)
    stack.validate()
    np.testing.assert_array_equal(stack.focus_m, [0.5, 0.5])
    np.testing.assert_array_equal(stack.per_frame_f_numbers(), [8.0, 1.4])
    assert stack.lens == LENS and stack.frames.shape == (2, 40, 40, 3)

    def sharpness(img):
        return np.mean(np.abs(np.diff(img, axis=1)))
    # Wide aperture, more blur.
    assert sharpness(stack.frames[1]) < 0.8 * sharpness(stack.frames[0])


def test_frames_follow_the_given_focus_order():
    scene = two_plane_scene(48, 0.4, 1.2)
    a = render_focal_stack(scene.rgb, scene.depth_m, [0.4, 1.2, 0.7], LENS)
    b = render_focal_stack(scene.rgb, scene.depth_m, [1.2, 0.7, 0.4], LENS)
    np.testing.assert_allclose(a[[1, 2, 0]], b, atol=1e-6)


def test_rejects_invalid_depth_and_focus():
    rgb = np.zeros((16, 16, 3), np.float32)
    depth = np.ones((16, 16), np.float32)
    bad = depth.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match='finite'):
        render_focal_stack(rgb, bad, [1.0], LENS)
    with pytest.raises(ValueError, match='focal length'):
        render_focal_stack(rgb, depth, [0.01], LENS)
    with pytest.raises(ValueError, match='does not match'):
        render_focal_stack(rgb, depth[:8], [1.0], LENS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu():
    scene = two_plane_scene(64, 0.5, 1.5)
    cpu = render_focal_stack(scene.rgb, scene.depth_m, [0.5, 1.0, 1.5], LENS)
    gpu = render_focal_stack(scene.rgb, scene.depth_m, [0.5, 1.0, 1.5], LENS, device='cuda')
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)


# --------------------------------------------------------------------------- real data
def _gradient_energy(img: np.ndarray) -> np.ndarray:
    import cv2
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1)
    return cv2.blur(gx * gx + gy * gy, (15, 15))


@pytest.mark.slow
def test_renderer_reproduces_real_f2_8_blur_from_f8_and_depth():
    """Real lens blur: f/8 image + depth rendered at f/2.8 is closer to the real f/2.8 shot.

    Centre 256 x 256 crops at full resolution (the blur is physical there), compared on
    the pixels the thin lens blurs by more than 3 px.  Scenes are taken in file order,
    keeping those whose blur stays under 15 px and covers at least 20% of the crop:
    larger blurs come from objects within a metre of the camera, where the depth
    sensor's registration to the DSLR is poorest.
    """
    if resolve_data_dir(REAL_DFD_DEFAULT_ROOT) is None:
        pytest.skip(f'real DFD data not found at {REAL_DFD_DEFAULT_ROOT} (see ../shared/data/README.md)')
    checked = 0
    for s8, s28 in zip(real_dfd_scenes(aperture='f8'), real_dfd_scenes(aperture='f2.8')):
        assert s8.name == s28.name
        h, w = s8.shape
        crop = (slice((h - 256) // 2, (h + 256) // 2), slice((w - 256) // 2, (w + 256) // 2))
        rgb8, rgb28, depth = s8.rgb[crop], s28.rgb[crop], s8.depth_m[crop]
        lens = LensModel(s8.meta['focal_length_m'], 2.8, s8.meta['pixel_pitch_m'])
        blur = lens.coc_px(depth, s8.meta['focus_m'])
        region = blur > 3.0
        if blur.max() > 15.0 or region.mean() < 0.2:
            continue
        rendered = render_focal_stack(rgb8, depth, [s8.meta['focus_m']], lens)[0]
        gain = rgb28.mean() / rgb8.mean()  # the two shots differ slightly in exposure
        mse_f8 = np.mean((rgb8 * gain - rgb28)[region] ** 2)
        mse_rendered = np.mean((rendered * gain - rgb28)[region] ** 2)
        e28 = np.log(_gradient_energy(rgb28) + 1e-4)
        ge_f8 = np.mean(np.abs(np.log(_gradient_energy(rgb8) + 1e-4) - e28)[region])
        ge_rendered = np.mean(np.abs(np.log(_gradient_energy(rendered) + 1e-4) - e28)[region])
        print(f'{s8.name}: MSE to real f/2.8: f/8 {mse_f8:.2e}, rendered {mse_rendered:.2e}; '
              f'log gradient-energy L1: f/8 {ge_f8:.3f}, rendered {ge_rendered:.3f}')
        assert mse_rendered < 0.8 * mse_f8
        assert ge_rendered < 0.9 * ge_f8
        checked += 1
        if checked == 3:
            break
    assert checked == 3
