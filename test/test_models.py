"""The DDFS, DFV and dfv_cv networks: shapes, soft argmin, aggregation, differential volume."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.models import DDFSNet, DFVCostVolumeNet, DFVNet, build_model, count_parameters
from training.models.blocks import differential, expectation
from training.models.ddfs import AdaptiveAggregation

H = W = 64
D = 16
FR = 5


def _cv_inputs(B=2, seed=0, lo=0.2, hi=2.0):
    g = torch.Generator().manual_seed(seed)
    depths = torch.linspace(lo, hi, D).expand(B, D).contiguous()
    return torch.rand(B, 3, H, W, generator=g), torch.rand(B, D, H, W, generator=g), depths


def _stack_inputs(B=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, FR, 3, H, W, generator=g), torch.linspace(0.3, 1.5, FR).expand(B, FR).contiguous()


@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_eval_and_train_outputs(family):
    torch.manual_seed(0)
    m = build_model(family, width=1 / 16, num_hypotheses=D, num_frames=FR).eval()
    args = _stack_inputs() if family == 'dfv' else _cv_inputs()
    lo, hi = (0.3, 1.5) if family == 'dfv' else (0.2, 2.0)
    with torch.no_grad():
        depth, unc = m(*args)
    assert depth.shape == unc.shape == (2, 1, H, W)
    assert torch.all(depth >= lo - 1e-5) and torch.all(depth <= hi + 1e-5)
    assert torch.all(unc >= 0) and torch.all(unc <= (hi - lo))
    m.train()
    out = m(*args)
    assert len(out['multi']) == 4
    if family == 'ddfs':    # 1/8, 1/4, 1/2, 1
        assert [t.shape[-1] for t in out['multi']] == [W // 8, W // 4, W // 2, W]
    sum(t.mean() for t in out['multi']).backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


@pytest.mark.parametrize('family', ['ddfs', 'dfv_cv'])
def test_depth_is_equivariant_to_hypothesis_scale(family):
    """Hypotheses enter only through the soft argmin: scaling them by k scales depth and uncertainty."""
    torch.manual_seed(0)
    m = build_model(family, width=1 / 16, num_hypotheses=D).eval()
    image, cost, depths = _cv_inputs()
    with torch.no_grad():
        d1, u1 = m(image, cost, depths)
        d2, u2 = m(image, cost, depths * 4.5)
    torch.testing.assert_close(d2, d1 * 4.5, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(u2, u1 * 4.5, rtol=1e-4, atol=1e-6)


def test_dfv_depth_is_expectation_over_focus():
    torch.manual_seed(0)
    m = DFVNet(num_frames=FR, width=1 / 16).eval()
    stack, focus = _stack_inputs()
    with torch.no_grad():
        d1, _ = m(stack, focus)
        d2, _ = m(stack, focus * 3.0)
    torch.testing.assert_close(d2, d1 * 3.0, rtol=1e-5, atol=1e-6)


def test_expectation_of_one_hot_is_that_value():
    values = torch.tensor([[0.5, 1.0, 2.0]])
    prob = torch.zeros(1, 3, 2, 2)
    prob[:, 2] = 1.0
    depth, unc = expectation(prob, values)
    assert torch.allclose(depth, torch.full((1, 1, 2, 2), 2.0))
    assert torch.all(unc < 1e-5)


def test_differential_volume():
    v = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 2, 2) ** 2
    d = differential(v)
    torch.testing.assert_close(d[:, :, :2], v[:, :, :2] - v[:, :, 1:])
    torch.testing.assert_close(d[:, :, 2], v[:, :, 2])


def test_use_diff_switch_changes_the_network_input():
    torch.manual_seed(0)
    a = DFVNet(num_frames=FR, width=1 / 16, use_diff=True).eval()
    b = DFVNet(num_frames=FR, width=1 / 16, use_diff=False).eval()
    b.load_state_dict(a.state_dict())
    stack, focus = _stack_inputs()
    with torch.no_grad():
        assert not torch.allclose(a(stack, focus)[0], b(stack, focus)[0])


def test_adaptive_aggregation_starts_as_dilated_box_filter():
    """Zero offsets + uniform weights: the mean of the 9 dilated grid samples (border-clamped)."""
    agg = AdaptiveAggregation(feat_ch=4, dilation=2)
    prob = torch.softmax(torch.randn(1, 6, 12, 10), dim=1)
    out = agg(prob, torch.randn(1, 4, 12, 10))
    padded = F.pad(prob, (2, 2, 2, 2), mode='replicate')
    ref = sum(padded[..., 2 + dy:2 + dy + 12, 2 + dx:2 + dx + 10] for dy in (-2, 0, 2) for dx in (-2, 0, 2)) / 9
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 12, 10), rtol=1e-5, atol=1e-5)


def test_adaptive_aggregation_centre_offset_is_fixed_and_offsets_move_samples():
    agg = AdaptiveAggregation(feat_ch=1, dilation=1)
    with torch.no_grad():
        agg.offset.bias.fill_(0.5)              # every non-centre point moves half a pixel
        agg.weight.bias.copy_(torch.tensor([-50.0] * 4 + [50.0] + [-50.0] * 4))   # weight only the centre
    prob = torch.softmax(torch.randn(1, 5, 8, 8), dim=1)
    out = agg(prob, torch.zeros(1, 1, 8, 8))
    torch.testing.assert_close(out, prob, rtol=1e-4, atol=1e-5)      # centre sample unmoved
    with torch.no_grad():
        agg.weight.bias.zero_()
    moved = agg(prob, torch.zeros(1, 1, 8, 8))
    agg.offset.bias.data.zero_()
    assert not torch.allclose(moved, agg(prob, torch.zeros(1, 1, 8, 8)))


def test_paper_size_structure_and_width_multiplier():
    paper = DDFSNet(num_hypotheses=64, width=1.0)
    convs = [stage[0] for stage in paper.conv]
    assert [c.out_channels for c in convs] == [128, 256, 512, 512, 512]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 3, 3, 3]
    assert paper.down[0][0].stride == (2, 2)
    small = DDFSNet(num_hypotheses=64, width=1 / 8)
    assert [stage[0].out_channels for stage in small.conv] == [16, 32, 64, 64, 64]
    assert count_parameters(paper) > 20 * count_parameters(small)
    for cls in (DFVNet, DFVCostVolumeNet):
        assert count_parameters(cls(width=1.0)) > 10 * count_parameters(cls(width=0.25))


def test_unknown_family():
    with pytest.raises(ValueError, match='unknown model family'):
        build_model('pspnet')
