"""Engine manifest checks, backend agreement, fallback along tensorrt > onnxruntime > torch.

Backend agreement tolerance: onnxruntime (CPU, FP32) and the torch program must give
the same depth and uncertainty within 1e-4 m absolute + 1e-4 relative (FP32 kernels
sum in different orders; the untrained tiny nets are far from ill-conditioned).
TensorRT FP16 is held to 2 % of the hypothesis span.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench._engines import example_inputs
from ddfs_ros.engines import (EngineError, EngineInputError, available_backends, load_engine, load_manifest)
from ddfs_ros.engines.tensorrt_backend import plan_key

BACKEND_ATOL = 1e-4
BACKEND_RTOL = 1e-4




def _copy_engine(src_json, dst_dir):
    m = json.loads(src_json.read_text())
    for key in ('onnx', 'torch_program'):
        shutil.copy(src_json.parent / m[key], dst_dir / m[key])
    dst = dst_dir / src_json.name
    dst.write_text(json.dumps(m))
    return dst, m


def test_manifest_loads_and_checks_shapes(tiny_engines):
    m = load_manifest(tiny_engines['ddfs'])
    assert m.family == 'ddfs' and m.image_size == (64, 64) and m.num_hypotheses == 16
    assert m.train_hypotheses()[0] == pytest.approx(0.1) and m.train_hypotheses()[-1] == pytest.approx(3.0)
    d = load_manifest(tiny_engines['dfv'])
    assert d.num_frames == 5 and not d.uses_cost_volume


@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_onnxruntime_and_torch_agree(tiny_engines, family):
    ort = load_engine(tiny_engines[family], backend='onnxruntime', fallback=False)
    pt = load_engine(tiny_engines[family], backend='torch', fallback=False)
    assert (ort.backend_name, pt.backend_name) == ('onnxruntime', 'torch')
    x = example_inputs(ort.manifest)
    d1, u1 = ort.infer(x)
    d2, u2 = pt.infer(x)
    assert d1.shape == (1, 1, 64, 64) and u1.shape == (1, 1, 64, 64)
    torch.testing.assert_close(d1, d2, atol=BACKEND_ATOL, rtol=BACKEND_RTOL)
    torch.testing.assert_close(u1, u2, atol=BACKEND_ATOL, rtol=BACKEND_RTOL)


def test_auto_picks_best_available_and_logs(tiny_engines):
    events = []
    e = load_engine(tiny_engines['ddfs'], backend='auto', on_event=events.append)
    expected = 'tensorrt' if 'tensorrt' in available_backends() else 'onnxruntime'
    assert e.backend_name == expected
    assert any(expected in ev for ev in events)


def test_sha_mismatch_falls_back_to_torch_or_fails_clearly(tiny_engines, tmp_path):
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    onnx = tmp_path / m['onnx']
    onnx.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])      # truncated model
    with pytest.raises(EngineError, match='sha256'):
        load_manifest(path)
    with pytest.raises(EngineError, match='sha256'):
        load_engine(path, backend='onnxruntime', fallback=False)
    events = []
    e = load_engine(path, backend='onnxruntime', on_event=events.append)
    assert e.backend_name == 'torch'
    assert any('sha256' in ev for ev in events)


def test_truncated_onnx_with_matching_sha_is_a_clear_onnxruntime_error(tiny_engines, tmp_path):
    path, m = _copy_engine(tiny_engines['dfv'], tmp_path)
    onnx = tmp_path / m['onnx']
    onnx.write_bytes(onnx.read_bytes()[:1000])
    from ddfs_ros.engines import sha256_file
    m['sha256'] = sha256_file(onnx)          # a manifest re-hashed over a broken file
    path.write_text(json.dumps(m))
    with pytest.raises(EngineError, match='onnxruntime cannot load'):
        load_engine(path, backend='onnxruntime', fallback=False)


def test_missing_and_corrupt_files(tiny_engines, tmp_path):
    with pytest.raises(EngineError, match='does not exist'):
        load_engine(tmp_path / 'nope.json')
    bad = tmp_path / 'bad.json'
    bad.write_text('{"family": "ddfs", ')
    with pytest.raises(EngineError, match='not valid JSON'):
        load_engine(bad)
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    (tmp_path / m['torch_program']).write_bytes(b'PK\x03\x04 not a zip')
    (tmp_path / m['onnx']).unlink()
    with pytest.raises(EngineError) as e:
        load_engine(path)
    assert 'does not exist' in str(e.value) and 'torch program' in str(e.value)
    m['inputs']['cost_volume'] = [1, 8, 64, 64]
    path.write_text(json.dumps(m))
    with pytest.raises(EngineError, match='contradict'):
        load_engine(path)


def test_run_time_failure_falls_back_and_reports_backend(tiny_engines):
    e = load_engine(tiny_engines['dfv_cv'], backend='onnxruntime')
    x = example_inputs(e.manifest, seed=3)
    reference = load_engine(tiny_engines['dfv_cv'], backend='torch').infer(x)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError('CUDA out of memory (injected fault)')

    e.active.session.run = out_of_memory       # fault injection into the live session
    depth, unc = e.infer(x)
    assert e.backend_name == 'torch'
    assert any('failed at run time' in ev for ev in e.events)
    torch.testing.assert_close(depth, reference[0])
    torch.testing.assert_close(unc, reference[1])


def test_wrong_input_shape_does_not_fall_back(tiny_engines):
    e = load_engine(tiny_engines['ddfs'], backend='onnxruntime')
    x = example_inputs(e.manifest)
    x['cost_volume'] = x['cost_volume'][:, :8]
    with pytest.raises(EngineInputError, match='shape'):
        e.infer(x)
    assert e.backend_name == 'onnxruntime'


def test_plan_cache_key_changes_with_what_invalidates_a_plan():
    base = plan_key('ab' * 32, '10.3.0', (8, 9), 'fp16')
    assert base != plan_key('cd' * 32, '10.3.0', (8, 9), 'fp16')
    assert base != plan_key('ab' * 32, '10.4.0', (8, 9), 'fp16')
    assert base != plan_key('ab' * 32, '10.3.0', (9, 0), 'fp16')
    assert base != plan_key('ab' * 32, '10.3.0', (8, 9), 'fp32')


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _has_tensorrt(), reason='needs TensorRT and a CUDA GPU')
@pytest.mark.parametrize('family', ['ddfs', 'dfv', 'dfv_cv'])
def test_tensorrt_agrees_with_onnxruntime(tiny_engines, family, tmp_path, monkeypatch):
    monkeypatch.setenv('DDFS_TRT_CACHE', str(tmp_path))
    trt_engine = load_engine(tiny_engines[family], backend='tensorrt', device='cuda', fallback=False)
    ort = load_engine(tiny_engines[family], backend='onnxruntime', device='cpu', fallback=False)
    x = example_inputs(ort.manifest)
    d1, u1 = trt_engine.infer({k: v.cuda() for k, v in x.items()})
    d2, u2 = ort.infer(x)
    span = 3.0 - 0.1
    torch.testing.assert_close(d1.cpu(), d2, atol=0.02 * span, rtol=0)
    torch.testing.assert_close(u1.cpu(), u2, atol=0.02 * span, rtol=0)
    assert list(tmp_path.glob('*.plan'))     # cached for the next start
    again = load_engine(tiny_engines[family], backend='tensorrt', device='cuda', fallback=False)
    torch.testing.assert_close(again.infer({k: v.cuda() for k, v in x.items()})[0], d1)
