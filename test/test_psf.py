"""Anti-aliased disk PSFs and their spectra."""
import numpy as np
import pytest
import torch
from skimage.restoration import uft

from ddfs_ros.psf import disk_psf, disk_psfs, kernels_to_spectra, laplacian_spectrum, psf_spectra


@pytest.mark.parametrize('r', [0.0, 0.3, 0.5, 0.9, 1.7, 3.2, 6.0])
def test_psf_sums_to_one_and_is_symmetric(r):
    k = disk_psf(r)
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(k, k[::-1, :]) and np.allclose(k, k.T)
    assert k.shape[0] % 2 == 1


def test_small_radius_is_a_delta():
    for r in (0.0, 0.2, 0.49):
        k = disk_psf(r)
        c = k.shape[0] // 2
        assert k[c, c] == 1.0 and k.sum() == 1.0


def test_area_grows_as_r_squared():
    # Before normalisation the kernel integrates to the disk area pi r^2; after it,
    # the centre value is 1 / (pi r^2) for radii well above a pixel.
    for r in (2.0, 4.0, 8.0):
        k = disk_psf(r)
        c = k.shape[0] // 2
        assert 1.0 / k[c, c] == pytest.approx(np.pi * r * r, rel=1e-3)
    # rim pixels are fractional (anti-aliased), interior ones full
    k = disk_psf(3.3)
    vals = np.unique(np.round(k / k.max(), 6))
    assert 0.0 < vals[1] < 1.0 and len(vals) > 3


def test_batch_matches_single():
    radii = [0.2, 1.1, 2.6]
    batch = disk_psfs(radii)
    for r, b in zip(radii, batch):
        single = disk_psf(r)
        pad = (b.shape[0] - single.shape[0]) // 2
        assert np.allclose(b[pad:pad + single.shape[0], pad:pad + single.shape[0]], single)


def test_spectra_match_skimage_ir2tf():
    shape = (32, 40)
    k = disk_psf(2.4)
    ours = psf_spectra(np.array([2.4]), shape, dtype=torch.float64)[0].numpy()
    ref = uft.ir2tf(k, shape, is_real=True)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    lap_ref = uft.laplacian(2, shape, is_real=True)[0]
    np.testing.assert_allclose(laplacian_spectrum(shape, dtype=torch.float64).numpy(), lap_ref, atol=1e-12)


def test_kernel_larger_than_image_is_rejected():
    with pytest.raises(ValueError):
        kernels_to_spectra(torch.ones(9, 9), (8, 8))


@pytest.mark.parametrize('r', [0.0, 0.3, 1.2, 3.0, 7.5])
def test_gaussian_psf_has_the_disks_second_moment(r):
    from ddfs_ros.psf import gaussian_psfs

    g = gaussian_psfs([r])[0]
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(g, g[::-1, :]) and np.allclose(g, g.T)
    if r < 0.5:
        c = g.shape[0] // 2
        assert g[c, c] == 1.0
        return
    d = disk_psf(r)
    for k in (g, d):
        assert k.shape[0] % 2 == 1
    def var(k):
        R = k.shape[0] // 2
        x = np.arange(-R, R + 1, dtype=np.float64)
        return float((k * x[None, :] ** 2).sum())
    # std r / 2 (the disk's own second moment r^2 / 4), up to pixel integration (+1/12)
    assert var(g) == pytest.approx(r ** 2 / 4 + 1 / 12, rel=0.03)
    assert var(g) == pytest.approx(var(d), rel=0.12)
    # a different shape: the Gaussian is peakier and has tails beyond the disk's rim
    assert g.max() > d.max() and g[g.shape[0] // 2, 0] > 0


def _nyquist_gain(kernel: np.ndarray) -> float:
    """Response of a kernel to the horizontal Nyquist pattern (+1, -1, +1, ...)."""
    c = kernel.shape[0] // 2
    x = np.arange(-c, c + 1)
    return float((kernel * np.cos(np.pi * x)[None, :]).sum())


def test_band_limited_disk_has_no_dead_zone_below_half_a_pixel():
    from ddfs_ros.psf import disk_otf, disk_otf_psfs

    radii = [0.0, 0.15, 0.3, 0.45, 0.7, 1.0]
    ks = disk_otf_psfs(radii)
    for k in ks:
        assert k.sum() == pytest.approx(1.0, abs=1e-9)
        assert np.allclose(k, k[::-1, :]) and np.allclose(k, k.T)
    c = ks.shape[1] // 2
    assert ks[0][c, c] == pytest.approx(1.0, abs=1e-9)           # r = 0 is the delta
    gains = [_nyquist_gain(k) for k in ks]
    assert all(a > b for a, b in zip(gains, gains[1:]))          # every sub-pixel defocus softens
    # ... where the pixel-area disk is a delta up to r = 0.5
    assert [_nyquist_gain(disk_psf(r)) for r in (0.15, 0.3, 0.45)] == [1.0, 1.0, 1.0]
    # the continuous disk's OTF at Nyquist: 2 J1(pi r) / (pi r)
    from scipy.special import j1
    assert gains[2] == pytest.approx(2 * j1(np.pi * 0.3) / (np.pi * 0.3), abs=0.02)
    assert disk_otf(0.3, (8, 8))[0, 4] == pytest.approx(2 * j1(np.pi * 0.3) / (np.pi * 0.3))


@pytest.mark.parametrize('r', [3.0, 6.0])
def test_band_limited_disk_matches_the_pixel_disk_for_large_blur(r):
    from ddfs_ros.psf import disk_otf_psfs

    k = disk_otf_psfs([r])[0]
    d = disk_psf(r)
    m = (k.shape[0] - d.shape[0]) // 2
    inner = k[m:m + d.shape[0], m:m + d.shape[0]]
    assert np.abs(inner - d).max() < 0.15 * d.max()
    assert np.abs(k).sum() - inner.sum() < 0.1                   # the band limit rings a little (Gibbs)


@pytest.mark.parametrize('shape', ['disk', 'disk_otf', 'gaussian'])
def test_a_kernel_does_not_depend_on_the_radii_computed_with_it(shape):
    # The renderer fills its PSF table with whatever radii a stack is missing; a kernel cut
    # at the batch's largest radius made renders depend on what the process drew before.
    from ddfs_ros.psf import PSF_SHAPES

    make = PSF_SHAPES[shape]
    for r in (0.3, 0.8, 2.4):
        alone = make([r])[0]
        batch = make([r, 9.0])[0]
        m = (batch.shape[0] - alone.shape[0]) // 2
        assert m > 0
        np.testing.assert_array_equal(batch[m:m + alone.shape[0], m:m + alone.shape[0]], alone)
        assert np.abs(batch).sum() == pytest.approx(np.abs(alone).sum(), rel=1e-12)   # nothing outside


def test_shape_names_without_torch_match_the_renderers_shapes():
    from ddfs_ros.optics import PSF_SHAPE_NAMES
    from ddfs_ros.psf import PSF_SHAPES

    assert tuple(PSF_SHAPES) == PSF_SHAPE_NAMES
