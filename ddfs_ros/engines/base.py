"""The one interface every inference backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from .manifest import FAMILY_INPUTS, FRAME_AXES, OPTIONAL_INPUTS, EngineInputError, EngineManifest


class Engine(ABC):
    """A loaded model: ``infer(inputs) -> (depth, uncertainty)``, both B x 1 x H x W metres.

    Attributes:
        manifest: the checked :class:`EngineManifest`.
        backend_name: ``'tensorrt'``, ``'onnxruntime'`` or ``'torch'``.
        device: torch device the backend computes on (inputs are moved there).
        description: backend details for logs/diagnostics (provider, precision).
    """

    backend_name: str = '?'

    def __init__(self, manifest: EngineManifest, device: torch.device) -> None:
        self.manifest = manifest
        self.device = torch.device(device)
        self.description = self.backend_name

    @property
    def input_names(self) -> tuple[str, ...]:
        # the contract's inputs, then the optional ones this engine takes, in export order
        fam = self.manifest.family
        return FAMILY_INPUTS[fam] + tuple(n for n in OPTIONAL_INPUTS.get(fam, ()) if n in self.manifest.inputs)

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Inputs in the contract's order, float32, contiguous, on ``self.device``; shapes checked."""
        out = []
        frames: dict = {}
        for name in self.input_names:
            if name not in inputs:
                raise EngineInputError(f'engine {self.manifest.name}: missing input {name!r}')
            t = torch.as_tensor(inputs[name])
            want = list(self.manifest.inputs[name])
            if self.manifest.dynamic_size and len(want) >= 4 and t.dim() == len(want):
                # H and W are free on a dynamic engine, but must be multiples of size_multiple
                m = self.manifest.size_multiple
                h, w = int(t.shape[-2]), int(t.shape[-1])
                if h % m or w % m or h < m or w < m:
                    raise EngineInputError(f'engine {self.manifest.name}: input {name} is {h} x {w}, H and W '
                                           f'must be positive multiples of {m}')
                want = want[:-2] + [h, w]
            axis = FRAME_AXES.get(name)
            if axis is not None and t.dim() == len(want):
                # the stack's own F: the same on every frame input, 2 .. max_frames
                nf = int(t.shape[axis])
                if not 2 <= nf <= int(self.manifest.max_frames or 0) or nf != frames.setdefault('F', nf):
                    raise EngineInputError(f'engine {self.manifest.name}: input {name} has {nf} frames; the engine '
                                           f'takes 2 to {self.manifest.max_frames}, the same F on every input')
                want[axis] = nf
            if list(t.shape) != want:
                raise EngineInputError(f'engine {self.manifest.name}: input {name} has shape {list(t.shape)}, '
                                  f'the engine takes {want}')
            out.append(t.to(self.device, torch.float32).contiguous())
        return out

    @abstractmethod
    def infer(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the model; returns (depth, uncertainty) torch tensors on ``self.device``."""

    def __repr__(self) -> str:
        return f'<{type(self).__name__} {self.manifest.name} {self.description} on {self.device}>'
