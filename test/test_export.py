"""ONNX export, manifest, torch.export program and the TensorRT builder's failure path.

Tolerance of onnxruntime vs torch eager: 1e-4 m absolute on depth and uncertainty
(float32 graphs of the same ops; the measured difference is ~1e-6 m, from summation
order in convolutions and the soft argmin).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.build_engine import EXIT_UNAVAILABLE, main as build_main
from training.export import example_inputs, export_model, onnx_max_abs_diff
from training.models import build_model

ORT_TOLERANCE_M = 1e-4
CONTRACT_KEYS = ('name', 'family', 'onnx', 'sha256', 'torch_program', 'inputs', 'outputs', 'image_size',
                 'num_hypotheses', 'num_frames', 'hypotheses', 'train_focus_range', 'reference_frame',
                 'max_coc_px', 'batch', 'params', 'training', 'validation')
EXPECTED_INPUTS = {'ddfs': ['image', 'cost_volume', 'depths'], 'dfv_cv': ['image', 'cost_volume', 'depths'],
                   'dfv': ['stack', 'focus']}


@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_manifest_and_onnx_follow_the_contract(tiny_engines, family):
    man_path = tiny_engines[family]
    m = json.loads(Path(man_path).read_text())
    for key in CONTRACT_KEYS:
        assert key in m, key
    assert m['family'] == family
    onnx_path = man_path.with_name(m['onnx'])
    assert hashlib.sha256(onnx_path.read_bytes()).hexdigest() == m['sha256']
    model = onnx.load(str(onnx_path))
    names = [i.name for i in model.graph.input]
    assert names == EXPECTED_INPUTS[family]
    for inp in model.graph.input:       # static shapes equal to the manifest's
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == m['inputs'][inp.name]
    assert [o.name for o in model.graph.output] == ['depth', 'uncertainty']
    assert m['image_size'] == [64, 64] and m['batch'] == 1
    assert (m['num_frames'] == 5) if family == 'dfv' else (m['num_hypotheses'] == 16 and m['num_frames'] is None)
    assert m['reference_frame'] == 'farthest'
    assert m['max_coc_px'] == pytest.approx(10.0 * 64 / 256)


@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_torch_program_matches_onnxruntime(tiny_engines, family):
    m = json.loads(tiny_engines[family].read_text())
    assert m['torch_program'], 'torch.export failed for this family'
    prog = torch.export.load(str(tiny_engines[family].with_name(m['torch_program']))).module()
    inputs = example_inputs(family, m['inputs'], m['hypotheses'], seed=7)
    sess = ort.InferenceSession(str(tiny_engines[family].with_name(m['onnx'])), providers=['CPUExecutionProvider'])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ref = prog(*inputs.values())
    for g, r in zip(got, ref):
        assert g.shape == tuple(r.shape) == (1, 1, 64, 64)
        assert np.abs(g - r.numpy()).max() < ORT_TOLERANCE_M


@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_onnxruntime_matches_torch_eager(tmp_path, family):
    torch.manual_seed(3)
    model = build_model(family, width=1 / 16, num_hypotheses=16, num_frames=4)
    # non-trivial BatchNorm statistics, so that folding them is exercised
    for mod in model.modules():
        if isinstance(mod, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 2.0)
    hyps = {'d_min': 0.2, 'd_max': 2.5, 'spacing': 'inverse'}
    man = export_model(model, family, tmp_path / f'{family}.onnx', image_size=(64, 96), num_hypotheses=16,
                       num_frames=4, hypotheses=hyps, train_focus_range=(0.3, 2.0), training={}, validation={},
                       torch_program=False)
    m = json.loads(man.read_text())
    assert m['torch_program'] is None and m['image_size'] == [64, 96]
    inputs = example_inputs(family, m['inputs'], hyps, seed=11)
    diff = onnx_max_abs_diff(tmp_path / f'{family}.onnx', model, inputs)
    print(f'{family}: onnxruntime vs torch eager max abs diff {diff:.2e} m')
    assert diff < ORT_TOLERANCE_M


def test_onnx_graph_has_no_device_or_training_ops(tiny_engines):
    model = onnx.load(str(tiny_engines['ddfs'].with_name('tiny_ddfs.onnx')))
    ops = {n.op_type for n in model.graph.node}
    assert 'GridSample' in ops                       # adaptive aggregation survived export
    assert not ops & {'BatchNormalization', 'Dropout'}   # folded / absent in eval mode
    assert model.opset_import[0].version == 17


@pytest.mark.skipif(__import__('importlib').util.find_spec('tensorrt') is not None and torch.cuda.is_available(),
                    reason='TensorRT and a GPU are present: the failure path does not apply')
def test_build_engine_fails_clearly_without_tensorrt_or_gpu(tiny_engines, capsys):
    onnx_path = tiny_engines['ddfs'].with_name('tiny_ddfs.onnx')
    assert build_main([str(onnx_path)]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert 'build_engine: error:' in err
    assert ('TensorRT is not installed' in err) or ('no CUDA GPU' in err)
    proc = subprocess.run([sys.executable, '-m', 'training.build_engine', str(onnx_path), '--fp16'],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == EXIT_UNAVAILABLE and 'build_engine: error:' in proc.stderr


def test_build_engine_reports_missing_onnx(tmp_path, capsys):
    assert build_main([str(tmp_path / 'nope.onnx')]) == EXIT_UNAVAILABLE
    assert 'does not exist' in capsys.readouterr().err     # the manifest beside it


def test_exported_fp32_cast_runs_under_bf16_autocast():
    """torch.export guards ``x.float()`` with a dtype assert that bf16 autocast trips; the torch
    backend drops the guards and keeps the cast (softmax and expectation stay fp32)."""
    import io

    from ddfs_ros.engines.torch_backend import drop_metadata_asserts

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return torch.softmax(self.conv(x).float(), dim=1)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.rand(1, 3, 16, 16)
    buf = io.BytesIO()
    torch.export.save(torch.export.export(net, (x,)), buf)
    module = drop_metadata_asserts(torch.export.load(io.BytesIO(buf.getvalue())).module())
    assert not any('assert_tensor_metadata' in str(n.target) for n in module.graph.nodes)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        got = module(x)
        want = net(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        torch.testing.assert_close(module(x), net(x))          # fp32 unchanged
