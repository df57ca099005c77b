"""``tensorrt`` backend: a plan built from the ONNX on the target, cached, run on a CUDA stream.

- ``tensorrt`` is imported lazily (only this backend needs it).
- The plan is cached under ``$DDFS_TRT_CACHE`` (default ``~/.cache/ddfs_ros/trt``),
  keyed by ONNX sha256 + TensorRT version + GPU compute capability + precision, so a
  new model, a TensorRT upgrade or another GPU rebuilds it and nothing else does.
- Device buffers are torch tensors (``set_tensor_address`` + ``execute_async_v3`` on a
  torch-owned CUDA stream): the cost volume built by torch on the GPU is read in
  place, and there is no pycuda context to juggle.
- FP16 where the GPU has fast FP16 (``precision='fp16'``, the default), else FP32.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .base import Engine
from .manifest import EngineError, EngineManifest, check_onnx

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30


def cache_dir() -> Path:
    return Path(os.environ.get('DDFS_TRT_CACHE', Path.home() / '.cache' / 'ddfs_ros' / 'trt'))


def plan_key(sha256: str, trt_version: str, capability: tuple[int, int], precision: str) -> str:
    """Cache key of a plan: what makes a serialized engine (in)valid."""
    return f'{sha256[:32]}-trt{trt_version}-sm{capability[0]}{capability[1]}-{precision}'


class TensorRTEngine(Engine):
    backend_name = 'tensorrt'

    def __init__(self, manifest: EngineManifest, device: torch.device, precision: str = 'fp16') -> None:
        device = torch.device(device)
        if device.type != 'cuda' or not torch.cuda.is_available():
            raise EngineError('tensorrt needs a CUDA device (torch.cuda.is_available() is False)')
        try:
            import tensorrt as trt
        except ImportError as e:
            raise EngineError(f'tensorrt is not installed: {e}') from e
        check_onnx(manifest)
        if device.index is None:
            device = torch.device('cuda', torch.cuda.current_device())
        super().__init__(manifest, device)
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        cap = torch.cuda.get_device_capability(device)
        key = plan_key(manifest.sha256, trt.__version__, cap, precision)
        self.plan_path = cache_dir() / f'{manifest.name}-{key}.plan'
        runtime = trt.Runtime(self.logger)
        engine = None
        if self.plan_path.is_file():
            engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
            if engine is None:
                log.warning('cached TensorRT plan %s does not deserialize; rebuilding', self.plan_path)
        if engine is None:
            plan, used = self._build(manifest, precision)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise EngineError(f'engine {manifest.name}: TensorRT built a plan it cannot deserialize')
            precision = used
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError(f'engine {manifest.name}: TensorRT could not create an execution context '
                              '(out of GPU memory?)')
        self.stream = torch.cuda.Stream(device=device)
        self.outputs = {}
        for name in ('depth', 'uncertainty'):
            shape = tuple(max(int(v), 1) for v in engine.get_tensor_shape(name))   # -1 = dynamic: sized in infer
            self.outputs[name] = torch.empty(shape, dtype=torch.float32, device=device)
        self.description = f'tensorrt {trt.__version__} {precision} sm{cap[0]}{cap[1]}'

    def _build(self, manifest: EngineManifest, precision: str) -> tuple[bytes, str]:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH'):   # TensorRT < 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(manifest.onnx_path.read_bytes()):
            errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f'engine {manifest.name}: TensorRT cannot parse {manifest.onnx_path}: {errors}')
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if manifest.dynamic_size:
            config.add_optimization_profile(self._profile(builder, manifest))
        used = 'fp32'
        if precision == 'fp16' and getattr(builder, 'platform_has_fast_fp16', True):
            config.set_flag(trt.BuilderFlag.FP16)
            used = 'fp16'
        log.info('building TensorRT plan for %s (%s); this takes a while once', manifest.name, used)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EngineError(f'engine {manifest.name}: TensorRT failed to build a plan')
        plan = bytes(plan)
        self.plan_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.plan_path.with_suffix('.tmp')
        tmp.write_bytes(plan)
        os.replace(tmp, self.plan_path)      # atomic: a killed build leaves no half plan
        return plan, used

    @staticmethod
    def _profile(builder, manifest: EngineManifest):
        """Optimisation profile of a dynamic-size engine: min/opt/max H x W.

        min and max are the manifest's ``validated_size`` (default 64 x 64 .. 1088 x 1920,
        rounded to ``size_multiple``); opt is 192 x 256, the default processing size at 4:3.
        """
        m = manifest.size_multiple
        (h0, w0), (h1, w1) = manifest.validated_size or ((64, 64), (1088, 1920))
        up = lambda v: max(m, -(-int(v) // m) * m)          # noqa: E731 - round up to the multiple
        down = lambda v: max(m, int(v) // m * m)            # noqa: E731
        lo, hi = (up(h0), up(w0)), (down(h1), down(w1))
        opt = (min(max(up(192), lo[0]), hi[0]), min(max(up(256), lo[1]), hi[1]))
        profile = builder.create_optimization_profile()
        for name, shape in manifest.inputs.items():
            if len(shape) >= 4:
                head = list(shape[:-2])
                profile.set_shape(name, head + list(lo), head + list(opt), head + list(hi))
        return profile

    @torch.no_grad()
    def infer(self, inputs):
        tensors = dict(zip(self.input_names, self.check_inputs(inputs)))
        if self.manifest.dynamic_size:
            for name, t in tensors.items():
                self.context.set_input_shape(name, tuple(t.shape))
            for name in ('depth', 'uncertainty'):    # outputs follow the input H x W
                shape = tuple(self.context.get_tensor_shape(name))
                if tuple(self.outputs[name].shape) != shape:
                    self.outputs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
        for name, t in tensors.items():
            self.context.set_tensor_address(name, t.data_ptr())
        for name, t in self.outputs.items():
            self.context.set_tensor_address(name, t.data_ptr())
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)         # the inputs were written on torch's stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError(f'engine {self.manifest.name}: TensorRT execute_async_v3 failed')
        current.wait_stream(self.stream)
        # The output buffers are reused by the next call: hand out copies.
        return self.outputs['depth'].clone(), self.outputs['uncertainty'].clone()
