"""``onnxruntime`` backend: CUDA execution provider when present, else CPU.

On CUDA the inputs and outputs are bound to torch-owned device memory (I/O binding),
so the cost volume built on the GPU is not copied to the host.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Engine
from .manifest import EngineError, EngineManifest, read_onnx


class OnnxRuntimeEngine(Engine):
    backend_name = 'onnxruntime'

    def __init__(self, manifest: EngineManifest, device: torch.device, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise EngineError(f'onnxruntime is not installed: {e}') from e
        onnx_bytes = read_onnx(manifest)     # hashed; the session loads these very bytes
        device = torch.device(device)
        use_cuda = device.type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers()
        if use_cuda:
            providers = [('CUDAExecutionProvider', {'device_id': device.index or 0}), 'CPUExecutionProvider']
        else:
            providers = ['CPUExecutionProvider']
            device = torch.device('cpu')
        super().__init__(manifest, device)
        opts = ort.SessionOptions()
        # ORT's worker threads spin after each run by default; here inference is one stage
        # among several (cost volume, conversion, other nodes), and the spinning steals
        # their cores.
        opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
        if threads:
            opts.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(onnx_bytes, opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise EngineError(f'engine {manifest.name}: onnxruntime cannot load {manifest.onnx_path}: {e}') from e
        names = [i.name for i in self.session.get_inputs()]
        if set(names) != set(self.input_names):
            raise EngineError(f'engine {manifest.name}: ONNX inputs {names} != manifest {list(self.input_names)}')
        outs = [o.name for o in self.session.get_outputs()]
        if outs[:2] != ['depth', 'uncertainty']:
            raise EngineError(f'engine {manifest.name}: ONNX outputs {outs} are not [depth, uncertainty]')
        self.provider = self.session.get_providers()[0]
        self.description = f'onnxruntime {ort.__version__} {self.provider} fp32'
        self._out_shapes = {o.name: o.shape for o in self.session.get_outputs()}

    @torch.no_grad()
    def infer(self, inputs):
        tensors = dict(zip(self.input_names, self.check_inputs(inputs)))
        if self.device.type == 'cpu':
            feed = {k: v.numpy() for k, v in tensors.items()}
            depth, unc = self.session.run(['depth', 'uncertainty'], feed)
            return torch.from_numpy(depth), torch.from_numpy(unc)
        binding = self.session.io_binding()
        dev_id = self.device.index or 0
        for name, t in tensors.items():
            binding.bind_input(name, 'cuda', dev_id, np.float32, list(t.shape), t.data_ptr())
        B = next(iter(tensors.values())).shape[0]
        outs = {}
        for name in ('depth', 'uncertainty'):
            shape = [B if not isinstance(s, int) else s for s in self._out_shapes[name]]
            outs[name] = torch.empty(shape, dtype=torch.float32, device=self.device)
            binding.bind_output(name, 'cuda', dev_id, np.float32, shape, outs[name].data_ptr())
        torch.cuda.current_stream(self.device).synchronize()   # inputs written on torch's stream
        self.session.run_with_iobinding(binding)
        return outs['depth'], outs['uncertainty']
