"""Engine manifest checks, backend agreement, fallback along tensorrt > onnxruntime > torch.

Backend agreement tolerance: onnxruntime (CPU, FP32) and the torch program must give
the same depth and uncertainty within 1e-4 m absolute + 1e-4 relative (FP32 kernels
sum in different orders; the untrained tiny nets are far from ill-conditioned).
TensorRT FP16 is held to 2 % of the hypothesis span.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from bench._engines import example_inputs
from ddfs_ros.engines import (EngineError, EngineInputError, available_backends, load_engine, load_manifest,
                              sha256_file)
from ddfs_ros.engines.tensorrt_backend import plan_key

from conftest import shipped_engine_params

ROOT = Path(__file__).resolve().parents[1]
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


def test_extrapolate_bins_only_for_frame_based_engines(tiny_engines, tmp_path):
    assert load_manifest(tiny_engines['dfv']).extrapolate_bins == 0
    for family, value, ok in (('dfv', 2, True), ('dfv', -1, False), ('ddfs', 2, False)):
        folder = tmp_path / f'{family}{value}'
        folder.mkdir()
        path, m = _copy_engine(tiny_engines[family], folder)
        path.write_text(json.dumps({**m, 'extrapolate_bins': value}))
        if ok:
            assert load_manifest(path).extrapolate_bins == value
        else:
            with pytest.raises(EngineError, match='extrapolate_bins'):
                load_manifest(path)


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


# -- artefact integrity (issue 12, item 7) ---------------------------------------------------
def test_torch_program_needs_its_sha256_in_the_manifest(tiny_engines, tmp_path):
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    assert m['torch_program_sha256'] == sha256_file(tmp_path / m['torch_program'])
    assert load_engine(path, backend='torch', fallback=False).backend_name == 'torch'
    del m['torch_program_sha256']                       # a manifest that does not vouch for the .pt2
    path.write_text(json.dumps(m))
    with pytest.raises(EngineError, match="no 'torch_program_sha256'.*not loaded"):
        load_engine(path, backend='torch', fallback=False)
    # a corrupt ONNX must not fall back to weights nobody verified
    onnx = tmp_path / m['onnx']
    onnx.write_bytes(onnx.read_bytes()[:-7])
    with pytest.raises(EngineError) as e:
        load_engine(path, backend='onnxruntime')
    assert 'sha256' in str(e.value) and 'torch_program_sha256' in str(e.value)


def test_tampered_torch_program_is_refused(tiny_engines, tmp_path):
    path, m = _copy_engine(tiny_engines['dfv'], tmp_path)
    pt2 = tmp_path / m['torch_program']
    data = bytearray(pt2.read_bytes())
    data[len(data) // 2] ^= 0xFF                         # one flipped byte, still the same size
    pt2.write_bytes(bytes(data))
    with pytest.raises(EngineError, match='sha256 of torch program'):
        load_engine(path, backend='torch', fallback=False)


def test_add_artifact_hashes_covers_every_artefact(tiny_engines, tmp_path):
    from ddfs_ros.engines.manifest import add_artifact_hashes
    path, m = _copy_engine(tiny_engines['dfv_cv'], tmp_path)
    shutil.copy(tmp_path / m['onnx'], tmp_path / 'half.onnx')
    raw = dict(m, sha256='0' * 64, torch_program_sha256=None, onnx_fp16='half.onnx')
    out = add_artifact_hashes(raw, tmp_path)
    assert out['sha256'] == sha256_file(tmp_path / m['onnx'])
    assert out['torch_program_sha256'] == sha256_file(tmp_path / m['torch_program'])
    assert out['onnx_fp16_sha256'] == sha256_file(tmp_path / 'half.onnx')
    assert add_artifact_hashes(dict(m, torch_program=None), tmp_path)['torch_program_sha256'] is None


@pytest.mark.parametrize('path', shipped_engine_params())
def test_shipped_engines_run_the_pt2_only_when_the_manifest_hashes_it(path):
    raw = json.loads(path.read_text())
    if not raw.get('torch_program'):
        pass        # ONNX only: nothing for the torch backend to load
    elif raw.get('torch_program_sha256'):
        assert load_engine(path, backend='torch', fallback=False).backend_name == 'torch'
    else:       # manifests exported before the field existed: ONNX only, the .pt2 is refused
        with pytest.raises(EngineError, match='torch_program_sha256'):
            load_engine(path, backend='torch', fallback=False)
    assert load_engine(path, backend='onnxruntime', fallback=False).backend_name == 'onnxruntime'


# -- TensorRT without a GPU: a fake ``tensorrt`` module records the calls (issue 12, item 8) --
class _Rec:
    """Recorder of calls made on the fake TensorRT objects."""

    def __init__(self):
        self.calls = []


def make_fake_tensorrt(version: str = '10.3.0', dynamic: bool = False):
    """A module with the TensorRT 10/11 Python API surface the builder and backend use.

    TensorRT 11 dropped ``BuilderFlag.FP16`` and ``platform_has_fast_fp16``: the fake has
    neither, so code that still uses them fails here.
    """
    import enum
    import types
    rec = _Rec()
    trt = types.ModuleType('tensorrt')
    trt.__version__ = version
    trt.rec = rec

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class MemoryPoolType(enum.IntEnum):
        WORKSPACE = 0

    class DataType(enum.IntEnum):
        FLOAT = 0
        HALF = 1

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse(self, data):
            rec.calls.append(('parse', hashlib.sha256(data).hexdigest()))
            for name in trt.input_names:
                shape = [1, 3, -1, -1] if dynamic and name in ('image', 'cost_volume') else [1, 3, 64, 64]
                self.network.inputs.append(Tensor(name, shape))
            return True

        def get_error(self, i):
            return ''

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            rec.calls.append(('set_shape', name, list(lo), list(opt), list(hi)))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(('memory_pool', pool, size))

        def add_optimization_profile(self, profile):
            rec.calls.append(('add_profile',))

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(('create_network', flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.calls.append(('build',))
            return b'PLAN' + bytes([network.flags])

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            rec.calls.append(('deserialize', bytes(data)))
            return object()

    for obj in (NetworkDefinitionCreationFlag, MemoryPoolType, DataType, Logger, OnnxParser, Builder, Runtime):
        setattr(trt, obj.__name__, obj)
    trt.input_names = ('image', 'cost_volume', 'depths')
    return trt


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    monkeypatch.setenv('DDFS_TRT_CACHE', str(tmp_path / 'trt_cache'))
    import training.build_engine as be
    monkeypatch.setattr(be, 'gpu_compute_capability', lambda: (8, 9))
    return trt


def test_build_engine_tool_and_backend_share_one_plan(fake_trt, tiny_engines, tmp_path, capsys):
    from ddfs_ros.engines import tensorrt_backend as tb
    from training.build_engine import build_engine, main as build_main
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    assert build_main([str(path)]) == 0                     # defaults: fp32, the shared cache
    man = load_manifest(path)
    expected = tb.plan_path(man, man.sha256, '10.3.0', (8, 9), tb.DEFAULT_PRECISION)
    assert expected.parent == tmp_path / 'trt_cache' and expected.is_file()
    assert f'built {expected}' in capsys.readouterr().out
    # strongly typed, no deprecated FP16 flag, the verified ONNX bytes parsed, one build
    calls = fake_trt.rec.calls
    assert ('create_network', 1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)) in calls
    assert ('parse', man.sha256) in calls and calls.count(('build',)) == 1
    assert ('memory_pool', fake_trt.MemoryPoolType.WORKSPACE, tb.WORKSPACE_BYTES) in calls
    # what the backend does at start-up finds that very plan: no second build
    plan, p2, used, built = tb.get_or_build_plan(fake_trt, None, man, (8, 9))
    assert (p2, used, built) == (expected, 'fp32', False) and plan == expected.read_bytes()
    assert build_engine(path) == expected and calls.count(('build',)) == 1
    # another GPU or TensorRT version is another plan
    assert tb.get_or_build_plan(fake_trt, None, man, (9, 0))[1] != expected


def test_build_engine_on_an_ensemble_builds_each_member(fake_trt, tiny_engines, tmp_path, capsys):
    from training.build_engine import main as build_main
    a, _ = _copy_engine(tiny_engines['ddfs'], tmp_path)
    b, _ = _copy_engine(tiny_engines['dfv_cv'], tmp_path)
    ens = tmp_path / 'ens.json'
    ens.write_text(json.dumps({'name': 'ens', 'family': 'ensemble', 'members': [a.name, b.name]}))
    assert build_main([str(ens)]) == 0
    assert fake_trt.rec.calls.count(('build',)) == 2
    assert {('parse', load_manifest(p).sha256) for p in (a, b)} <= set(fake_trt.rec.calls)
    assert capsys.readouterr().out.count('built ') == 2
    ens.write_text(json.dumps({'name': 'ens', 'family': 'ensemble', 'members': [a.name]}))
    assert build_main([str(ens)]) == 2 and 'at least two' in capsys.readouterr().err


def test_tampered_or_unrecorded_plan_is_rebuilt_not_loaded(fake_trt, tiny_engines, tmp_path):
    from ddfs_ros.engines import tensorrt_backend as tb
    path, _ = _copy_engine(tiny_engines['ddfs'], tmp_path)
    man = load_manifest(path)
    plan, p, _, built = tb.get_or_build_plan(fake_trt, None, man, (8, 9))
    assert built
    p.write_bytes(b'EVIL' + plan)                           # swapped plan
    plan2, _, _, built = tb.get_or_build_plan(fake_trt, None, man, (8, 9))
    assert built and plan2 == plan and p.read_bytes() == plan
    p.with_name(p.name + '.json').unlink()                  # plan without its hash record
    assert tb.get_or_build_plan(fake_trt, None, man, (8, 9))[3] is True


def test_fp16_needs_an_fp16_onnx_and_keys_it_apart(fake_trt, tiny_engines, tmp_path):
    from ddfs_ros.engines import tensorrt_backend as tb
    from ddfs_ros.engines.manifest import add_artifact_hashes
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    notes = []
    _, p32, used, _ = tb.get_or_build_plan(fake_trt, None, load_manifest(path), (8, 9), 'fp16', say=notes.append)
    assert used == 'fp32' and p32.name.endswith('-fp32.plan') and any('onnx_fp16' in n for n in notes)
    half = tmp_path / 'half.onnx'
    half.write_bytes((tmp_path / m['onnx']).read_bytes() + b'\0')     # stands in for an FP16 export
    path.write_text(json.dumps(add_artifact_hashes(dict(m, onnx_fp16='half.onnx'), tmp_path)))
    man = load_manifest(path)
    _, p16, used, built = tb.get_or_build_plan(fake_trt, None, man, (8, 9), 'fp16')
    assert used == 'fp16' and built and p16 != p32 and p16.name.endswith('-fp16.plan')
    assert ('parse', sha256_file(half)) in fake_trt.rec.calls
    m2 = json.loads(path.read_text())
    m2['onnx_fp16_sha256'] = '0' * 64                                   # unverifiable FP16 ONNX
    path.write_text(json.dumps(m2))
    with pytest.raises(EngineError, match='sha256 of FP16 ONNX'):
        tb.get_or_build_plan(fake_trt, None, load_manifest(path), (8, 9), 'fp16', force=True)


def test_dynamic_inputs_get_an_optimization_profile(monkeypatch, tiny_engines, tmp_path):
    from ddfs_ros.engines import tensorrt_backend as tb
    trt = make_fake_tensorrt(version='11.0.0', dynamic=True)
    path, m = _copy_engine(tiny_engines['ddfs'], tmp_path)
    m.update(dynamic_size=True, validated_size=[[32, 32], [128, 192]])
    path.write_text(json.dumps(m))
    man = load_manifest(path)
    tb.get_or_build_plan(trt, None, man, (8, 9), directory=tmp_path / 'c')
    shapes = {c[1]: c[2:] for c in trt.rec.calls if c[0] == 'set_shape'}
    assert set(shapes) == {'image', 'cost_volume'} and ('add_profile',) in trt.rec.calls
    assert shapes['image'] == ([1, 3, 32, 32], [1, 3, 64, 64], [1, 3, 128, 192])


def test_set_tensor_address_false_is_an_error():
    from ddfs_ros.engines.tensorrt_backend import set_tensor_addresses

    class Context:
        def __init__(self):
            self.bound = []

        def set_tensor_address(self, name, ptr):
            self.bound.append(name)
            return name != 'depths'

    ctx = Context()
    t = torch.zeros(2)
    set_tensor_addresses(ctx, {'image': t}, 'x')
    with pytest.raises(EngineError, match="rejected the address of tensor 'depths'"):
        set_tensor_addresses(ctx, {'image': t, 'depths': t}, 'x')


# -- CPU precision (bf16) and the measured CPU preference ------------------------------------
BF16_RTOL = 2e-2     # bf16 keeps 8 mantissa bits; measured ~3e-3 max on the tiny nets


@pytest.fixture
def fast_bf16(monkeypatch):
    """Pretend (or confirm) that this CPU has fast bf16: autocast runs on any CPU, only slower."""
    from ddfs_ros.engines import torch_backend
    monkeypatch.setattr(torch_backend, 'cpu_has_fast_bf16', lambda: True)


@pytest.fixture
def no_fast_bf16(monkeypatch):
    from ddfs_ros.engines import torch_backend
    monkeypatch.setattr(torch_backend, 'cpu_has_fast_bf16', lambda: False)


def test_fast_bf16_check_is_a_plain_bool():
    from ddfs_ros.engines.torch_backend import cpu_has_fast_bf16
    assert isinstance(cpu_has_fast_bf16(), bool)


def test_torch_bf16_runs_and_matches_fp32(tiny_engines, fast_bf16):
    e16 = load_engine(tiny_engines['dfv_cv'], backend='torch', device='cpu', fallback=False, precision='bf16')
    e32 = load_engine(tiny_engines['dfv_cv'], backend='torch', device='cpu', fallback=False, precision='fp32')
    assert e16.active.precision == 'bf16' and 'bf16' in e16.description
    assert e32.active.precision == 'fp32' and e32.description.endswith('eager fp32')
    x = example_inputs(e16.manifest, seed=2)
    d16, u16 = e16.infer(x)
    d32, u32 = e32.infer(x)
    assert d16.dtype == u16.dtype == torch.float32 and d16.shape == d32.shape
    torch.testing.assert_close(d16, d32, rtol=BF16_RTOL, atol=0.0)
    torch.testing.assert_close(u16, u32, rtol=0.0, atol=BF16_RTOL * float(d32.max()))
    assert not torch.equal(d16, d32)          # it did run in bf16


def test_bf16_without_fast_bf16_falls_back_to_fp32_with_a_note(tiny_engines, no_fast_bf16):
    e = load_engine(tiny_engines['dfv_cv'], backend='torch', device='cpu', fallback=False, precision='bf16')
    assert e.active.precision == 'fp32'
    assert 'eager fp32 (bf16 requested' in e.description and 'no fast bf16' in e.description
    ref = load_engine(tiny_engines['dfv_cv'], backend='torch', device='cpu', fallback=False, precision='fp32')
    x = example_inputs(e.manifest, seed=2)
    assert torch.equal(e.infer(x)[0], ref.infer(x)[0])
    # fp16 is a TensorRT precision: torch runs fp32 and says so; onnxruntime is fp32 whatever is asked
    e = load_engine(tiny_engines['dfv_cv'], backend='torch', device='cpu', fallback=False, precision='fp16')
    assert e.active.precision == 'fp32' and 'fp16 requested' in e.description
    e = load_engine(tiny_engines['dfv_cv'], backend='onnxruntime', device='cpu', fallback=False, precision='bf16')
    assert 'fp32' in e.description and 'bf16 requested' in e.description


def test_unknown_precision_is_refused(tiny_engines):
    with pytest.raises(EngineError, match="unknown precision 'fp64'"):
        load_engine(tiny_engines['ddfs'], device='cpu', precision='fp64')


def _with_preference(tiny_engines, tmp_path, pref, family='dfv_cv'):
    path, m = _copy_engine(tiny_engines[family], tmp_path)
    if pref is not None:
        m['cpu_preference'] = pref
    path.write_text(json.dumps(m))
    return path


TORCH_BF16 = {'backend': 'torch', 'precision': 'bf16',
              'measured': {'onnxruntime_fp32_ms': 120.0, 'torch_fp32_ms': 97.0, 'torch_bf16_ms': 47.5,
                           'bf16_rel_diff_p99': 2.7e-3}}


def test_auto_follows_the_measured_cpu_preference(tiny_engines, tmp_path, fast_bf16):
    path = _with_preference(tiny_engines, tmp_path, TORCH_BF16)
    events = []
    e = load_engine(path, backend='auto', device='cpu', on_event=events.append)
    assert e.backend_name == 'torch' and e.active.precision == 'bf16' and e._chain == ['onnxruntime']
    assert any('measured CPU preference torch bf16' in ev and '47.5 ms' in ev for ev in events)
    # an explicit precision wins; an explicit backend ignores the preference (a reference run)
    e = load_engine(path, backend='auto', device='cpu', precision='fp32')
    assert e.backend_name == 'torch' and e.active.precision == 'fp32'
    e = load_engine(path, backend='torch', device='cpu')
    assert e.backend_name == 'torch' and e.active.precision == 'fp32'
    e = load_engine(path, backend='onnxruntime', device='cpu')
    assert e.backend_name == 'onnxruntime' and e._chain == ['torch']
    assert load_engine(path, backend='auto', device='cpu', fallback=False)._chain == []
    # onnxruntime preferred: onnxruntime first, torch (fp32) after it
    path = _with_preference(tiny_engines, tmp_path, {'backend': 'onnxruntime', 'precision': 'fp32'})
    e = load_engine(path, backend='auto', device='cpu')
    assert e.backend_name == 'onnxruntime' and e._chain == ['torch']
    assert e._options['precisions']['torch'] == 'fp32'


def test_without_the_field_auto_is_as_before(tiny_engines, tmp_path, fast_bf16):
    path = _with_preference(tiny_engines, tmp_path, None)
    e = load_engine(path, backend='auto', device='cpu')
    assert e.backend_name == 'onnxruntime' and e._chain == ['torch']
    assert set(e._options['precisions'].values()) == {'fp32'}


def test_preferred_backend_that_fails_falls_back_to_the_next(tiny_engines, tmp_path, fast_bf16):
    path = _with_preference(tiny_engines, tmp_path, TORCH_BF16)
    m = json.loads(path.read_text())
    m['torch_program_sha256'] = None                      # the .pt2 is not vouched for: torch cannot load
    path.write_text(json.dumps(m))
    events = []
    e = load_engine(path, backend='auto', device='cpu', on_event=events.append)
    assert e.backend_name == 'onnxruntime' and 'fp32' in e.description
    assert any('backend torch unavailable' in ev for ev in events)


def test_bf16_preference_on_a_cpu_without_fast_bf16_uses_the_fastest_fp32(tiny_engines, tmp_path, no_fast_bf16):
    path = _with_preference(tiny_engines, tmp_path, TORCH_BF16)
    events = []
    e = load_engine(path, backend='auto', device='cpu', on_event=events.append)
    assert e.backend_name == 'torch' and e.active.precision == 'fp32'      # torch fp32 97 < onnxruntime 120
    assert any('no fast bf16' in ev and 'fastest measured fp32' in ev for ev in events)
    slow_torch = dict(TORCH_BF16, measured=dict(TORCH_BF16['measured'], torch_fp32_ms=585.0))
    path = _with_preference(tiny_engines, tmp_path, slow_torch)
    assert load_engine(path, backend='auto', device='cpu').backend_name == 'onnxruntime'


def test_malformed_preference_is_ignored_with_a_note(tiny_engines, tmp_path):
    path = _with_preference(tiny_engines, tmp_path, {'backend': 'tensorrt', 'precision': 'int8'})
    events = []
    e = load_engine(path, backend='auto', device='cpu', on_event=events.append)
    assert e.backend_name == 'onnxruntime'
    assert any('ignoring malformed cpu_preference' in ev for ev in events)


def test_choose_takes_the_fastest_option_within_tolerance():
    from ddfs_ros.engines.cpu_preference import choose
    m = {'onnxruntime_fp32_ms': 120.0, 'torch_fp32_ms': 97.0, 'torch_bf16_ms': 47.5, 'bf16_rel_diff_p99': 2.7e-3}
    assert choose(m) == ('torch', 'bf16')
    assert choose(dict(m, bf16_rel_diff_p99=1.3e-2, torch_fp32_ms=80.0)) == ('torch', 'fp32')   # bf16 too far
    assert choose({'onnxruntime_fp32_ms': 136.0, 'torch_fp32_ms': 585.0, 'torch_bf16_ms': 145.0,
                   'bf16_rel_diff_p99': 1.3e-2}) == ('onnxruntime', 'fp32')
    assert choose(dict(m, torch_bf16_ms=None, bf16_rel_diff_p99=None, torch_fp32_ms=80.0)) == ('torch', 'fp32')
    # onnxruntime stays unless another option is clearly faster (dfv_s measured 156.6 vs 152.4 ms)
    assert choose({'onnxruntime_fp32_ms': 156.6, 'torch_fp32_ms': 641.3, 'torch_bf16_ms': 152.4,
                   'bf16_rel_diff_p99': 7.4e-3}) == ('onnxruntime', 'fp32')
    assert choose(dict(m, bf16_rel_diff_p99=1.3e-2)) == ('onnxruntime', 'fp32')     # torch fp32 only 1.24x
    with pytest.raises(EngineError):
        choose({'onnxruntime_fp32_ms': None})


def test_measure_writes_the_field_and_keeps_the_hashes_valid(tiny_engines, tmp_path, fast_bf16):
    from ddfs_ros.engines.cpu_preference import PREFERENCE_KEY, main as pref_main
    path, m = _copy_engine(tiny_engines['dfv_cv'], tmp_path)
    before = json.loads(path.read_text())
    assert pref_main([str(path), '--size', '64', '64', '--runs', '1', '--warmup', '0']) == 0
    after = json.loads(path.read_text())
    rec = after.pop(PREFERENCE_KEY)
    assert after == before                                   # nothing else changed
    meas = rec['measured']
    assert (rec['backend'], rec['precision']) in {('onnxruntime', 'fp32'), ('torch', 'fp32'), ('torch', 'bf16')}
    assert all(meas[k] > 0 for k in ('onnxruntime_fp32_ms', 'torch_fp32_ms', 'torch_bf16_ms'))
    assert 0 <= meas['bf16_rel_diff_median'] <= meas['bf16_rel_diff_p99'] <= meas['bf16_rel_diff_max']
    assert 'random inputs' in meas['bf16_rel_diff_input']   # the fixture has no validation shard
    assert meas['machine'] and meas['date'] and meas['input_size'] == [64, 64]
    assert meas['cpus'] >= 1 and (meas['load_average_1min'] is None or meas['load_average_1min'] >= 0)
    man = load_manifest(path)                                # sha256 of the ONNX still verifies
    assert load_engine(path, backend='torch', fallback=False).backend_name == 'torch'
    assert load_engine(path, device='cpu').backend_name == rec['backend']
    assert man.raw[PREFERENCE_KEY] == rec


@pytest.mark.parametrize('path', shipped_engine_params())
def test_shipped_cpu_preference_is_well_formed(path):
    from ddfs_ros.engines.cpu_preference import OPTIONS, choose
    pref = json.loads(path.read_text()).get('cpu_preference')
    if pref is None:
        pytest.skip(f'{path.name} has no cpu_preference')
    assert (pref['backend'], pref['precision']) in OPTIONS
    assert choose(pref['measured']) == (pref['backend'], pref['precision'])   # the record follows its rule


@pytest.mark.parametrize('precision', ['auto', 'fp32', 'fp16', 'bf16'])
def test_node_precision_parameter_accepts_each_value(ros, tiny_engines, precision, tmp_path):
    from rclpy.parameter import Parameter

    from ddfs_ros.nodes.inference_node import InferenceNode
    ctx, _ = ros
    path = _with_preference(tiny_engines, tmp_path, TORCH_BF16)
    params = {'engine': str(path), 'backend': 'auto', 'device': 'cpu', 'precision': precision, 'warmup_runs': 0}
    node = InferenceNode(namespace=f'/prec_{precision}', context=ctx,
                         parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    try:
        assert node.get_parameter('precision').value == precision
        d = node.describe_parameters(['precision'])[0]
        assert d.read_only and all(v in d.description for v in ('auto', 'fp32', 'fp16', 'bf16'))
        assert node.engine.backend_name == 'torch'            # the preference puts torch first
        want = {'auto': 'bf16' if _fast_bf16() else 'fp32', 'fp32': 'fp32', 'fp16': 'fp32', 'bf16': 'bf16'}
        if not _fast_bf16():
            want['bf16'] = 'fp32'
        assert node.engine.active.precision == want[precision]
        assert node.stats()['backend_detail'] == node.engine.description
        assert want[precision] in node.engine.description
    finally:
        node.destroy_node()


def _fast_bf16() -> bool:
    from ddfs_ros.engines.torch_backend import cpu_has_fast_bf16
    return cpu_has_fast_bf16()


def test_node_refuses_an_unknown_precision(ros, tiny_engines):
    from rclpy.parameter import Parameter

    from ddfs_ros.nodes.inference_node import InferenceNode
    ctx, _ = ros
    params = {'engine': str(tiny_engines['ddfs']), 'device': 'cpu', 'precision': 'fp64', 'warmup_runs': 0}
    with pytest.raises(ValueError, match="parameter precision: 'fp64' is not one of auto, fp32, fp16, bf16"):
        InferenceNode(namespace='/prec_bad', context=ctx,
                      parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def _write_val_shard(folder: Path, family: str, n: int = 3, F: int = 5, D: int = 16, size: int = 64) -> None:
    import numpy as np
    rng = np.random.default_rng(0)
    (folder / 'val').mkdir(parents=True)
    focus = np.sort(rng.uniform(0.3, 2.0, (n, F)), axis=1)[:, ::-1].astype(np.float32)   # far to near on disk
    arrays = {'frames': rng.integers(0, 256, (n, F, 3, size, size), dtype=np.uint8), 'focus': focus,
              'f_numbers': np.full((n, F), 2.0, np.float32), 'nframes': np.full(n, F, np.int16),
              'lens': np.tile([0.01, 1e-5], (n, 1)), 'gt': np.ones((n, size, size), np.float32),
              'ref': np.zeros(n, np.int16)}
    if family != 'dfv':
        arrays['depths'] = np.tile(np.linspace(0.1, 3.0, D, dtype=np.float32), (n, 1))
        arrays['cost'] = rng.random((n, D, size, size)).astype(np.float16)
    np.savez(folder / 'val' / 'shard_0000.npz', **arrays)


@pytest.mark.parametrize('family', ['ddfs', 'dfv'])
def test_bf16_difference_is_measured_on_validation_stacks_when_present(tiny_engines, tmp_path, family):
    from ddfs_ros.engines.cpu_preference import validation_inputs
    path, m = _copy_engine(tiny_engines[family], tmp_path)
    _write_val_shard(tmp_path / 'cache', family)
    m['training'] = {'config': {'data': {'cache': str(tmp_path / 'cache')}}}
    path.write_text(json.dumps(m))
    man = load_manifest(path)
    batches, what = validation_inputs(man, count=2)
    assert len(batches) == 2 and what.startswith('2 validation stacks of') and what.endswith('at 64x64')
    x = batches[0]
    assert set(x) == set(man.inputs)
    assert all(list(x[k].shape) == man.inputs[k] for k in x)
    if family == 'dfv':       # sorted near to far, as the node feeds DFV
        assert bool((x['focus'][0, 1:] > x['focus'][0, :-1]).all())
    else:
        assert x['cost_volume'].dtype == torch.float32 and float(x['image'].max()) <= 1.0
    e = load_engine(path, backend='onnxruntime', device='cpu', fallback=False)
    assert e.infer(x)[0].shape == (1, 1, 64, 64)
    m['training'] = {'config': {'data': {'cache': str(tmp_path / 'elsewhere')}}}
    path.write_text(json.dumps(m))
    assert validation_inputs(load_manifest(path))[0] == []
