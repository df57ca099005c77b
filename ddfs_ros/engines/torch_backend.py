"""``torch`` backend: the ``NAME.pt2`` ``torch.export`` program run eagerly.

For development and for checking the other backends; needs no ONNX runtime.
"""
from __future__ import annotations

import torch

from .base import Engine
from .manifest import EngineError, EngineManifest


class TorchEngine(Engine):
    backend_name = 'torch'

    def __init__(self, manifest: EngineManifest, device: torch.device) -> None:
        super().__init__(manifest, device)
        path = manifest.torch_program
        if path is None:
            raise EngineError(f'engine {manifest.name}: the manifest names no torch_program (.pt2)')
        if not path.is_file():
            raise EngineError(f'engine {manifest.name}: torch program {path} does not exist')
        try:
            program = torch.export.load(str(path))
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
