"""``tensorrt`` backend: a plan built from the ONNX on the target, cached, run on a CUDA stream.

One plan cache, one key, one precision default, shared with ``training/build_engine.py``
(which calls :func:`get_or_build_plan`), so a plan built by the tool is the plan the
node loads:

- ``tensorrt`` is imported lazily (only this backend needs it).
- Plans live in :func:`cache_dir` (``$DDFS_TRT_CACHE``, default ``~/.cache/ddfs_ros/trt``)
  as ``NAME-<key>.plan``, key = :func:`plan_key` (ONNX sha256 + TensorRT version + GPU
  compute capability + precision), so a new model, a TensorRT upgrade or another GPU
  rebuilds it and nothing else does.
- Networks are **strongly typed** (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``):
  the precision is the ONNX's own.  ``BuilderFlag.FP16`` / ``platform_has_fast_fp16``
  are deprecated in TensorRT 10 and gone in 11, so FP16 means an FP16 ONNX named in the
  manifest (``onnx_fp16`` + ``onnx_fp16_sha256``); without one, ``fp16`` builds FP32
  and says so.  Default precision: :data:`DEFAULT_PRECISION` (``fp32``, the shipped ONNX).
- Integrity: the ONNX bytes are checked against the manifest before parsing; every
  plan is written with a record ``NAME-<key>.plan.json`` holding its sha256 and the
  ONNX sha256 it came from, and a plan whose bytes or record do not match is not
  deserialized but rebuilt.
- Device buffers are torch tensors (``set_tensor_address``, whose ``False`` return is
  an error, + ``execute_async_v3`` on a torch-owned CUDA stream): the cost volume built
  by torch on the GPU is read in place, and there is no pycuda context to juggle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..user_cache import cache_root
from .base import Engine
from .manifest import (ONNX_FP16, ONNX_FP16_SHA256, EngineError, EngineManifest, FRAME_AXES, read_onnx, read_verified)

log = logging.getLogger(__name__)
#: Builder workspace (bytes).
WORKSPACE_BYTES = 1 << 30
PRECISIONS = ('fp32', 'fp16')
#: The TensorRT precision default of ``training/build_engine.py`` and of the node's
#: ``precision: auto`` (which is fp32 on a GPU): one plan cache key for both.
DEFAULT_PRECISION = 'fp32'


def cache_dir() -> Path:
    """Where plans live: ``$DDFS_TRT_CACHE``, else ``trt/`` in the user cache
    (:func:`ddfs_ros.user_cache.cache_root`, default ``~/.cache/ddfs_ros/trt``)."""
    return Path(os.environ.get('DDFS_TRT_CACHE') or cache_root() / 'trt')


def plan_key(sha256: str, trt_version: str, capability: tuple[int, int], precision: str) -> str:
    """Cache key of a plan: what makes a serialized engine (in)valid."""
    return f'{sha256[:32]}-trt{trt_version}-sm{capability[0]}{capability[1]}-{precision}'


def plan_path(manifest: EngineManifest, onnx_sha256: str, trt_version: str, capability: tuple[int, int],
              precision: str, directory: Optional[Path | str] = None) -> Path:
    """``<directory or cache_dir()>/NAME-<key>.plan``."""
    key = plan_key(onnx_sha256, trt_version, capability, precision)
    return Path(directory or cache_dir()) / f'{manifest.name}-{key}.plan'


def select_onnx(manifest: EngineManifest, precision: str) -> tuple[bytes, str, str, str]:
    """The verified ONNX bytes to build for ``precision``.

    Returns ``(onnx_bytes, onnx_sha256, precision_built, note)``; ``note`` is non-empty
    when ``fp16`` was asked but the manifest has no FP16 ONNX (FP32 is built).
    """
    if precision not in PRECISIONS:
        raise EngineError(f'TensorRT precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'fp16' and manifest.raw.get(ONNX_FP16):
        path = manifest.path.parent / manifest.raw[ONNX_FP16]
        data = read_verified(manifest, path, manifest.raw.get(ONNX_FP16_SHA256), 'FP16 ONNX file',
                             ONNX_FP16_SHA256)
        return data, hashlib.sha256(data).hexdigest(), 'fp16', ''
    note = ''
    if precision == 'fp16':
        note = (f'engine {manifest.name}: fp16 asked, but the manifest names no {ONNX_FP16!r} (strongly typed '
                'TensorRT builds take their precision from the ONNX); building fp32')
    return read_onnx(manifest), manifest.sha256, 'fp32', note


def network_flags(trt) -> int:
    """``create_network`` flags: strongly typed; explicit batch only where TensorRT < 10 needs it."""
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    major = int(str(trt.__version__).split('.')[0])
    if major < 10 and hasattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH'):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return flags


def _profile_shapes(manifest: EngineManifest, name: str) -> tuple[list[int], list[int], list[int]]:
    """(min, opt, max) shape of input ``name``: the manifest shape, with H and W spanning the
    manifest's ``validated_size`` for dynamic-size engines (a ``depths``/``focus`` vector has no H, W),
    and the frame axis of ``frames`` / ``curve_weights`` spanning 2 .. ``max_frames``."""
    opt = [int(x) for x in manifest.inputs[name]]
    lo, hi = list(opt), list(opt)
    if len(opt) >= 4 and manifest.dynamic_size and manifest.validated_size:
        (h0, w0), (h1, w1) = manifest.validated_size
        lo[-2:], hi[-2:] = [int(h0), int(w0)], [int(h1), int(w1)]
    axis = FRAME_AXES.get(name)
    if axis is not None and manifest.max_frames:
        lo[axis], hi[axis] = 2, int(manifest.max_frames)
    return lo, opt, hi


def build_plan(trt, logger, manifest: EngineManifest, onnx_bytes: bytes, workspace_bytes: int = WORKSPACE_BYTES
               ) -> bytes:
    """Serialize a strongly typed plan from verified ONNX bytes (TensorRT 10/11 Python API).

    Inputs with dynamic dimensions get one optimization profile (:func:`_profile_shapes`).
    Raises :class:`EngineError` when the ONNX does not parse or the build fails.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f'engine {manifest.name}: TensorRT cannot parse {manifest.onnx_path.name}: {errors}')
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(int(d) < 0 for d in network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            if tensor.name not in manifest.inputs:
                raise EngineError(f'engine {manifest.name}: ONNX input {tensor.name!r} is not in the manifest')
            profile.set_shape(tensor.name, *_profile_shapes(manifest, tensor.name))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f'engine {manifest.name}: TensorRT failed to build a plan')
    return bytes(plan)


def _record_path(plan: Path) -> Path:
    return plan.with_name(plan.name + '.json')


def read_cached_plan(path: Path, onnx_sha256: str) -> Optional[bytes]:
    """The plan bytes if ``path`` and its record exist and agree (sha256 of the plan, source
    ONNX sha256); else None (a warning says why when something is there but wrong)."""
    record = _record_path(path)
    if not path.is_file():
        return None
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError) as e:
        log.warning('TensorRT plan %s has no readable hash record (%s); not loading it, rebuilding', path, e)
        return None
    data = path.read_bytes()
    if meta.get('plan_sha256') != hashlib.sha256(data).hexdigest() or meta.get('onnx_sha256') != onnx_sha256:
        log.warning('TensorRT plan %s does not match its hash record; not loading it, rebuilding', path)
        return None
    return data


def write_plan(path: Path, plan: bytes, record: dict[str, Any]) -> None:
    """Write the plan and its hash record atomically (a killed build leaves neither half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = dict(record, plan_sha256=hashlib.sha256(plan).hexdigest())
    for target, data in ((path, plan), (_record_path(path), json.dumps(rec, indent=1).encode())):
        tmp = target.with_name(target.name + '.tmp')
        tmp.write_bytes(data)
        os.replace(tmp, target)


def get_or_build_plan(trt, logger, manifest: EngineManifest, capability: tuple[int, int],
                      precision: str = DEFAULT_PRECISION, directory: Optional[Path | str] = None,
                      workspace_bytes: int = WORKSPACE_BYTES, force: bool = False,
                      say: Callable[[str], None] = log.info) -> tuple[bytes, Path, str, bool]:
    """The cached plan for (manifest, TensorRT version, GPU, precision), built if needed.

    Returns ``(plan_bytes, plan_path, precision_built, built_now)``.  Used by the backend
    and by ``training/build_engine.py``: one key, one cache, one precision default.
    """
    onnx_bytes, onnx_sha, used, note = select_onnx(manifest, precision)
    if note:
        say(note)
    path = plan_path(manifest, onnx_sha, trt.__version__, capability, used, directory)
    if not force:
        cached = read_cached_plan(path, onnx_sha)
        if cached is not None:
            return cached, path, used, False
    say(f'building TensorRT plan for {manifest.name} ({used}, TensorRT {trt.__version__}, '
        f'sm{capability[0]}{capability[1]}); this takes a while once')
    plan = build_plan(trt, logger, manifest, onnx_bytes, workspace_bytes)
    write_plan(path, plan, {'engine': manifest.name, 'onnx_sha256': onnx_sha, 'tensorrt': trt.__version__,
                            'capability': list(capability), 'precision': used})
    return plan, path, used, True


def set_tensor_addresses(context, tensors: dict[str, torch.Tensor], engine_name: str) -> None:
    """Bind each tensor's device memory; ``set_tensor_address`` returns False on a bad name or
    address, which would otherwise run the plan on stale memory."""
    for name, t in tensors.items():
        if not context.set_tensor_address(name, int(t.data_ptr())):
            raise EngineError(f'engine {engine_name}: TensorRT rejected the address of tensor {name!r}')


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise EngineError(f'TensorRT tensor type {dtype} is not supported (float32 / float16 only)')
    return table[dtype]


class TensorRTEngine(Engine):
    backend_name = 'tensorrt'

    def __init__(self, manifest: EngineManifest, device: torch.device, precision: str = DEFAULT_PRECISION) -> None:
        device = torch.device(device)
        if device.type != 'cuda' or not torch.cuda.is_available():
            raise EngineError('tensorrt needs a CUDA device (torch.cuda.is_available() is False)')
        try:
            import tensorrt as trt
        except ImportError as e:
            raise EngineError(f'tensorrt is not installed: {e}') from e
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        super().__init__(manifest, device)
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        cap = tuple(torch.cuda.get_device_capability(device))
        plan, self.plan_path, used, _ = get_or_build_plan(trt, self.logger, manifest, cap, precision)
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise EngineError(f'engine {manifest.name}: TensorRT cannot deserialize plan {self.plan_path} '
                              f'(delete it to rebuild)')
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError(f'engine {manifest.name}: TensorRT could not create an execution context '
                              '(out of GPU memory?)')
        self.stream = torch.cuda.Stream(device=device)
        self.dtypes = {n: _torch_dtype(trt, engine.get_tensor_dtype(n))
                       for n in (*self.input_names, 'depth', 'uncertainty')}
        self.description = f'tensorrt {trt.__version__} {used} sm{cap[0]}{cap[1]}'

    @torch.no_grad()
    def infer(self, inputs):
        tensors = {n: t.to(self.dtypes[n]).contiguous()
                   for n, t in zip(self.input_names, self.check_inputs(inputs))}
        for name, t in tensors.items():
            if not self.context.set_input_shape(name, tuple(t.shape)):
                raise EngineError(f'engine {self.manifest.name}: TensorRT rejected shape {list(t.shape)} '
                                  f'for input {name!r}')
        outputs = {n: torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=self.dtypes[n],
                                  device=self.device) for n in ('depth', 'uncertainty')}
        set_tensor_addresses(self.context, {**tensors, **outputs}, self.manifest.name)
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)         # the inputs were written on torch's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f'engine {self.manifest.name}: TensorRT execute_async_v3 failed')
        current.wait_stream(self.stream)
        for t in (*tensors.values(), *outputs.values()):
            t.record_stream(self.stream)         # keep the memory alive until the stream is done
        return outputs['depth'].float(), outputs['uncertainty'].float()
