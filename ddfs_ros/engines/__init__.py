"""Inference backends behind one interface, and the engine manifest.

``load_engine(manifest_path, backend='auto', device=None)`` returns an
:class:`Engine` whose ``infer({name: tensor}) -> (depth, uncertainty)`` works the
same on every backend:

- ``tensorrt``: plan built from the ONNX on the target, cached (GPU only);
- ``onnxruntime``: CUDA execution provider when present, else CPU;
- ``torch``: the exported ``.pt2`` program, eager.

``auto`` tries tensorrt > onnxruntime (CUDA, else CPU) > torch and logs which one it
got.  With ``fallback=True`` (the default) a backend that fails to load, or fails at
run time (e.g. out of memory), hands over to the next one along
``tensorrt > onnxruntime > torch``; the active backend is always ``engine.backend_name``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from .base import Engine
from .manifest import EngineError, EngineInputError, EngineManifest, check_onnx, load_manifest, sha256_file

__all__ = ['Engine', 'EngineError', 'EngineInputError', 'EngineManifest', 'FallbackEngine', 'BACKENDS', 'check_onnx',
           'load_engine', 'load_manifest', 'sha256_file', 'available_backends']

log = logging.getLogger(__name__)
#: Preference order, also the fallback order.
BACKENDS = ('tensorrt', 'onnxruntime', 'torch')


def available_backends() -> list[str]:
    """Backends whose runtime imports here (not whether a given engine loads on them)."""
    out = []
    try:
        import tensorrt  # noqa: F401  (availability probe)
        if torch.cuda.is_available():
            out.append('tensorrt')
    except ImportError:
        pass
    try:
        import onnxruntime  # noqa: F401
        out.append('onnxruntime')
    except ImportError:
        pass
    out.append('torch')
    return out


def _construct(name: str, manifest: EngineManifest, device: torch.device, options: dict) -> Engine:
    if name == 'tensorrt':
        from .tensorrt_backend import DEFAULT_PRECISION, TensorRTEngine
        return TensorRTEngine(manifest, device, precision=options.get('precision', DEFAULT_PRECISION))
    if name == 'onnxruntime':
        from .onnxruntime_backend import OnnxRuntimeEngine
        return OnnxRuntimeEngine(manifest, device, threads=options.get('threads', 0))
    if name == 'torch':
        from .torch_backend import TorchEngine
        return TorchEngine(manifest, device)
    raise EngineError(f'unknown backend {name!r} (one of auto, {", ".join(BACKENDS)})')


class FallbackEngine(Engine):
    """An engine that moves down ``tensorrt > onnxruntime > torch`` when its backend fails.

    ``events`` records every load failure and switch (for logs and /diagnostics);
    ``on_event`` (if given) is called with each message as it happens.
    """

    def __init__(self, manifest: EngineManifest, chain: list[str], device: torch.device,
                 options: dict, on_event: Optional[Callable[[str], None]] = None) -> None:
        self.manifest = manifest
        self._chain = list(chain)
        self._requested_device = torch.device(device)
        self._options = options
        self._on_event = on_event
        self.events: list[str] = []
        self.active: Optional[Engine] = None
        self._advance(first=True)

    def _event(self, msg: str, level: int = logging.WARNING) -> None:
        self.events.append(msg)
        log.log(level, msg)
        if self._on_event is not None:
            self._on_event(msg)

    def _advance(self, first: bool = False) -> None:
        errors = []
        while self._chain:
            name = self._chain.pop(0)
            try:
                self.active = _construct(name, self.manifest, self._requested_device, self._options)
                self._event(f'engine {self.manifest.name}: backend {self.active.description} on '
                            f'{self.active.device}', logging.INFO)
                return
            except Exception as e:  # noqa: BLE001 - any failure moves down the chain
                errors.append(f'{name}: {e}')
                self._event(f'engine {self.manifest.name}: backend {name} unavailable: {e}')
        self.active = None
        raise EngineError(f'engine {self.manifest.name}: no backend could run it ('
                          + ' | '.join(errors) + ')')

    @property
    def backend_name(self) -> str:  # type: ignore[override]
        return self.active.backend_name if self.active else 'none'

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.active.description if self.active else 'none'

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return self.active.device if self.active else self._requested_device

    def infer(self, inputs):
        while True:
            if self.active is None:
                raise EngineError(f'engine {self.manifest.name}: no backend left')
            try:
                depth, unc = self.active.infer(inputs)
                if not (torch.is_tensor(depth) and torch.is_tensor(unc)):
                    raise EngineError('backend returned no tensors')
                return depth, unc
            except EngineInputError:
                raise
            except Exception as e:  # noqa: BLE001 - runtime faults (OOM, driver) fall back
                failed = self.active.backend_name
                self._event(f'engine {self.manifest.name}: backend {failed} failed at run time: {e}; '
                            'falling back')
                self.active = None
                if not self._chain:
                    raise EngineError(f'engine {self.manifest.name}: last backend ({failed}) failed: {e}') from e
                self._advance()


def load_engine(manifest_path: str | Path, backend: str = 'auto', device: Optional[str] = None,
                fallback: bool = True, on_event: Optional[Callable[[str], None]] = None,
                **options) -> Engine:
    """Load ``NAME.json`` (+ its ONNX / .pt2) on a backend.

    Args:
        manifest_path: the engine manifest (``.json``; the ``.onnx`` path is accepted too).
        backend: ``'auto'`` | ``'tensorrt'`` | ``'onnxruntime'`` | ``'torch'``.
        device: torch device; default ``cuda`` when available else ``cpu``.
        fallback: move down ``tensorrt > onnxruntime > torch`` on load or run-time failure.
        on_event: called with each log-worthy message (backend chosen, failures).
        options: ``precision`` ('fp32' default | 'fp16', tensorrt), ``threads`` (onnxruntime CPU).

    Raises:
        EngineError: the manifest is unusable, or no backend in the chain loads.
    """
    manifest = load_manifest(manifest_path, verify_sha256=False)
    dev = torch.device(device if device else ('cuda' if torch.cuda.is_available() else 'cpu'))
    if backend == 'auto':
        chain = list(BACKENDS) if dev.type == 'cuda' else ['onnxruntime', 'torch']
    elif backend in BACKENDS:
        chain = list(BACKENDS[BACKENDS.index(backend):]) if fallback else [backend]
    else:
        raise EngineError(f'unknown backend {backend!r} (one of auto, {", ".join(BACKENDS)})')
    if not fallback and backend == 'auto':
        chain = chain[:1]
    return FallbackEngine(manifest, chain, dev, options, on_event)
