"""Stack alignment on rendered stacks with known breathing and jitter."""
from __future__ import annotations

import numpy as np
import pytest

from ddfs_ros.align import (Similarity, align_focal_stack, align_stack, breathing_magnifications, misalign_stack,
                            valid_mask)
from ddfs_ros.optics import LensModel, focus_schedule
from ddfs_ros.render import render_focal_stack
from ddfs_ros.scenes import named_texture


@pytest.fixture(scope='module')
def rendered():
    # a slanted textured plane (0.6-1.6 m) swept 0.5-2.0 m: every frame has a different blur
    # (0 to ~6 px) but no occlusion edges, whose blur-dependent growth would bias the truth
    rgb = named_texture('astronaut', 64)
    depth = np.tile(np.linspace(0.6, 1.6, 64, dtype=np.float32), (64, 1))
    focus = focus_schedule(0.5, 2.0, 4)
    lens = LensModel(0.025, 2.0, 45e-6)
    return render_focal_stack(rgb, depth, focus, lens), focus


def test_recovers_breathing_and_jitter(rendered):
    frames, focus = rendered
    mis, truth = misalign_stack(frames, focus, breathing=0.03, jitter_px=3.0, rng=0)
    ref = int(np.argmax(focus))
    res = align_stack(mis, ref)
    for t, e in zip(truth, res.params):
        assert e.scale == pytest.approx(t.scale, abs=0.006)
        assert e.tx_px == pytest.approx(t.tx_px, abs=0.5) and e.ty_px == pytest.approx(t.ty_px, abs=0.5)
    assert res.params[ref] == Similarity(ecc=1.0)
    # the aligned frames match the unwarped renders (given the same equalising low-pass)
    # inside the valid mask far better than before
    import cv2
    from ddfs_ros.align import EQUALISE_SIGMA_PX
    smooth = np.stack([cv2.GaussianBlur(f, (0, 0), EQUALISE_SIGMA_PX, borderType=cv2.BORDER_REFLECT)
                       for f in frames])
    before = np.abs(mis - frames)[:, res.valid].mean()
    after = np.abs(res.frames - smooth)[:, res.valid].mean()
    assert after < 0.4 * before
    assert 0.6 < res.valid.mean() < 1.0            # the jittered border is masked, the centre kept


def test_identity_stack_stays_put(rendered):
    frames, focus = rendered
    res = align_stack(frames, 0)
    for p in res.params:
        assert abs(p.scale - 1) < 2e-3 and abs(p.tx_px) < 0.2 and abs(p.ty_px) < 0.2
    assert res.valid.mean() > 0.9


def test_alignment_does_not_favour_the_reference_frame():
    """Resampling smooths the warped frames; without the common low-pass the unwarped
    reference is the sharpest frame and the focus measure leans to it (the bias measured
    in bench/real_camera.py align).  Sub-pixel shifts only, so every frame but the
    reference is resampled; noisy 8-bit renders, where the bias shows."""
    import cv2

    from ddfs_ros.baselines import focus_measure_depth
    from ddfs_ros.render import SensorNoise
    rgb = named_texture('astronaut', 64)
    depth = np.tile(np.linspace(0.6, 1.6, 64, dtype=np.float32), (64, 1))
    focus = focus_schedule(0.5, 2.0, 4)
    frames = render_focal_stack(rgb, depth, focus, LensModel(0.025, 2.0, 45e-6), noise=SensorNoise(),
                                quantize_bits=8, rng=0)
    ref = int(np.argmax(focus))
    rng = np.random.default_rng(3)
    moved = frames.copy()
    for i in range(len(frames)):
        if i != ref:
            t = Similarity(tx_px=float(rng.uniform(0.3, 0.7)), ty_px=float(rng.uniform(0.3, 0.7)))
            moved[i] = cv2.warpAffine(frames[i], t.matrix(64, 64), (64, 64), flags=cv2.INTER_LANCZOS4,
                                      borderMode=cv2.BORDER_REFLECT)

    def absrel(stack):
        d, _ = focus_measure_depth(stack, focus)
        m = np.s_[8:-8, 8:-8]
        return float(np.mean(np.abs(d[m] - depth[m]) / depth[m]))

    clean = absrel(frames)
    biased = absrel(align_stack(moved, ref, equalise_sigma_px=0.0).frames)
    fixed = absrel(align_stack(moved, ref).frames)
    assert biased > 1.08 * clean                      # the bias is real (so this test can fail) ...
    assert fixed < clean + 0.5 * (biased - clean)     # ... and the common low-pass removes it


def test_aligned_stack_is_returned_untouched():
    frames = np.repeat(named_texture('astronaut', 64)[None].astype(np.float32), 3, axis=0)
    res = align_stack(frames, 2)
    assert np.array_equal(res.frames, frames)         # identity estimates: nothing resampled or smoothed


def test_rotation_optional(rendered):
    frames, focus = rendered
    sim = Similarity(scale=1.01, rotation_deg=1.5, tx_px=1.0, ty_px=-1.0)
    import cv2
    moved = cv2.warpAffine(frames[1], sim.matrix(64, 64), (64, 64), flags=cv2.INTER_CUBIC,
                           borderMode=cv2.BORDER_REFLECT)
    res = align_stack(np.stack([frames[1], moved]), 0, rotation=True)
    assert res.params[1].rotation_deg == pytest.approx(1.5, abs=0.3)
    assert align_stack(np.stack([frames[1], moved]), 0).params[1].rotation_deg == 0.0


def test_breathing_and_mask_helpers():
    m = breathing_magnifications([0.5, 1.0, 2.0], 0.03)
    assert m[0] == pytest.approx(1.03) and m[2] == 1.0 and 1.0 < m[1] < 1.03
    mask = valid_mask([Similarity(tx_px=3.0)], 20, 10)
    assert mask[1:-1, :16].all() and not mask[:, 16:].any()    # 3 px shift + 1 px margin
    assert not mask[0].any() and not mask[-1].any()


def test_pipeline_hook_off_is_a_no_op(rendered):
    from ddfs_ros.stack import FocalStack
    frames, focus = rendered
    st = FocalStack(frames, focus, LensModel(0.025, 2.0, 45e-6))
    same, valid, params = align_focal_stack(st, 0, 'off')
    assert same is st and valid is None and params == []
    with pytest.raises(ValueError, match='align must be'):
        align_focal_stack(st, 0, 'affine')
    moved, valid, params = align_focal_stack(st, 3, 'similarity')
    assert moved.frames.shape == frames.shape and valid.shape == (64, 64) and len(params) == 4


@pytest.mark.slow
def test_pipeline_masks_unseen_pixels(tiny_engines, rendered):
    from ddfs_ros.engines import load_engine
    from ddfs_ros.pipeline import DepthPipeline
    from ddfs_ros.stack import FocalStack
    frames, focus = rendered
    mis, _ = misalign_stack(frames, focus, breathing=0.03, jitter_px=3.0, rng=1)
    st = FocalStack(mis, focus, LensModel(0.025, 2.0, 45e-6))
    eng = load_engine(tiny_engines['ddfs'], backend='onnxruntime')
    res = DepthPipeline(eng, align='similarity', max_relative_uncertainty=None).run(st)
    assert len(res.alignment) == 4
    _, valid, _ = align_focal_stack(st, st.reference_index('farthest'), 'similarity')
    assert np.isnan(res.depth[~valid]).all() and (~valid).any()
    with pytest.raises(ValueError):
        DepthPipeline(eng, align='bogus')


def test_simulated_camera_breathing_and_jitter():
    from ddfs_ros.cameras.simulated import SimulatedCamera
    cam = SimulatedCamera('plane', 64, 64, focal_length_m=0.025, pixel_pitch_m=45e-6, breathing=0.03, jitter_px=3.0)
    a, b = cam.capture_sweep([0.5, 1.0, 2.0]), cam.capture_sweep([0.5, 1.0, 2.0])
    assert np.array_equal(a.frames[2], b.frames[2])            # the farthest-focused frame is the anchor
    assert np.abs(a.frames[0] - b.frames[0]).mean() > 0.01     # fresh shake every sweep
    res = align_stack(a.frames, 2)
    assert res.params[0].scale == pytest.approx(1.03, abs=0.006)
