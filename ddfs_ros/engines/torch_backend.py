"""``torch`` backend: the ``NAME.pt2`` ``torch.export`` program run eagerly.

For development and for checking the other backends; needs no ONNX runtime.
"""
from __future__ import annotations

import io

import torch

from .base import Engine
from .manifest import EngineError, EngineManifest, read_torch_program


class TorchEngine(Engine):
    backend_name = 'torch'

    def __init__(self, manifest: EngineManifest, device: torch.device) -> None:
        super().__init__(manifest, device)
        path = manifest.torch_program
        # Only weights whose sha256 the manifest records are run (issue 12, item 7): a bad
        # ONNX falls back here, and must not fall back to an unverified program.
        data = read_torch_program(manifest)
        try:
            program = torch.export.load(io.BytesIO(data))
            self.module = program.module().to(self.device)
        except Exception as e:  # noqa: BLE001 - a truncated zip raises many kinds
            raise EngineError(f'engine {manifest.name}: cannot load torch program {path}: {e}') from e
        self.description = f'torch {torch.__version__} eager'

    @torch.no_grad()
    def infer(self, inputs):
        out = self.module(*self.check_inputs(inputs))
        if isinstance(out, dict):
            return out['depth'], out['uncertainty']
        return out[0], out[1]
