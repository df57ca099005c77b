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

On a CPU device, a manifest with a measured ``cpu_preference``
(:mod:`~ddfs_ros.engines.cpu_preference`) reorders the ``auto`` chain: the preferred
backend first, the others after it as fallbacks.

Precision (``precision=``): ``fp32`` | ``fp16`` (TensorRT; needs an FP16 ONNX) |
``bf16`` (torch backend: bf16 autocast, on CPUs with AVX512-BF16 / AMX or a CUDA GPU
with bf16; elsewhere fp32 with a note in ``engine.description``) | ``auto`` (the
default: with ``backend='auto'`` on a CPU, the manifest's ``cpu_preference``
precision for its preferred backend and fp32 for the others; fp32 without the field,
with an explicit backend and on CUDA).  A backend runs what it can of the request and
says what it ran in ``engine.description``: TensorRT builds fp32 for ``bf16``,
onnxruntime always runs fp32.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from .base import Engine
from .manifest import EngineError, EngineInputError, EngineManifest, check_onnx, load_manifest, sha256_file

__all__ = ['Engine', 'EngineError', 'EngineInputError', 'EngineManifest', 'FallbackEngine', 'BACKENDS', 'check_onnx',
           'load_engine', 'load_manifest', 'sha256_file', 'available_backends', 'PRECISIONS', 'DEFAULT_PRECISION']

log = logging.getLogger(__name__)
#: Preference order, also the fallback order.
BACKENDS = ('tensorrt', 'onnxruntime', 'torch')
#: Values of ``load_engine(precision=...)`` and of the node's ``precision`` parameter.
PRECISIONS = ('auto', 'fp32', 'fp16', 'bf16')
#: The default of ``load_engine`` and of the node: the measured CPU preference, else fp32.
DEFAULT_PRECISION = 'auto'


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


def _backend_precision(name: str, options: dict) -> str:
    """The precision ``name`` is asked to run: ``options['precisions'][name]``, else ``precision``, else fp32."""
    per = options.get('precisions') or {}
    p = per.get(name, options.get('precision', 'fp32'))
    return 'fp32' if p in (None, 'auto') else p


def _construct(name: str, manifest: EngineManifest, device: torch.device, options: dict) -> Engine:
    precision = _backend_precision(name, options)
    if name == 'tensorrt':
        from .tensorrt_backend import PRECISIONS as TRT_PRECISIONS, TensorRTEngine
        if precision not in TRT_PRECISIONS:     # TensorRT builds fp32 or fp16 (bf16: fp32)
            engine = TensorRTEngine(manifest, device, precision='fp32')
            engine.description += f' ({precision} requested: TensorRT builds {" or ".join(TRT_PRECISIONS)})'
            return engine
        return TensorRTEngine(manifest, device, precision=precision)
    if name == 'onnxruntime':
        from .onnxruntime_backend import OnnxRuntimeEngine
        engine = OnnxRuntimeEngine(manifest, device, threads=options.get('threads', 0))
        if precision != 'fp32':
            engine.description += f' ({precision} requested: onnxruntime runs the fp32 ONNX)'
        return engine
    if name == 'torch':
        from .torch_backend import TorchEngine
        return TorchEngine(manifest, device, precision=precision)
    raise EngineError(f'unknown backend {name!r} (one of auto, {", ".join(BACKENDS)})')


class FallbackEngine(Engine):
    """An engine that moves down its chain of backends (``tensorrt > onnxruntime > torch``) when one fails.

    ``events`` records every load failure and switch (for logs and /diagnostics);
    ``on_event`` (if given) is called with each message as it happens.
    """

    def __init__(self, manifest: EngineManifest, chain: list[str], device: torch.device,
                 options: dict, on_event: Optional[Callable[[str], None]] = None,
                 notes: Optional[list[str]] = None) -> None:
        self.manifest = manifest
        self._chain = list(chain)
        self._requested_device = torch.device(device)
        self._options = options
        self._on_event = on_event
        self.events: list[str] = []
        self.active: Optional[Engine] = None
        for note in notes or ():
            self._event(note, logging.INFO)
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
                precision: str = DEFAULT_PRECISION, **options) -> Engine:
    """Load ``NAME.json`` (+ its ONNX / .pt2) on a backend.

    An ensemble manifest (``"family": "ensemble"``) gives a
    :class:`~ddfs_ros.ensemble.EnsembleEngine` of its members, each loaded with these arguments;
    run it through :func:`ddfs_ros.ensemble.make_pipeline`.

    Args:
        manifest_path: the engine manifest (``.json``; the ``.onnx`` path is accepted too).
        backend: ``'auto'`` | ``'tensorrt'`` | ``'onnxruntime'`` | ``'torch'``.  ``auto`` on a
            CPU device follows the manifest's ``cpu_preference`` when it has one (an
            explicit backend ignores it: that is how to run a reference).
        device: torch device; default ``cuda`` when available else ``cpu``.
        fallback: move down the chain (``tensorrt > onnxruntime > torch``, or the CPU
            preference's order) on load or run-time failure.
        on_event: called with each log-worthy message (backend chosen, failures, notes).
        precision: ``'auto'`` (default) | ``'fp32'`` | ``'fp16'`` (tensorrt) | ``'bf16'`` (torch);
            see the module docstring.
        options: ``threads`` (onnxruntime CPU).

    Raises:
        EngineError: the manifest is unusable, backend or precision unknown, or no
            backend in the chain loads.
    """
    from ..ensemble import is_ensemble_manifest, load_ensemble_engine
    if is_ensemble_manifest(manifest_path):
        # several engines, their depths combined (ddfs_ros.ensemble): each member loads as below
        return load_ensemble_engine(manifest_path, backend=backend, device=device, fallback=fallback,
                                    on_event=on_event, precision=precision, **options)
    if precision not in PRECISIONS:
        raise EngineError(f'unknown precision {precision!r} (one of {", ".join(PRECISIONS)})')
    if backend != 'auto' and backend not in BACKENDS:
        raise EngineError(f'unknown backend {backend!r} (one of auto, {", ".join(BACKENDS)})')
    manifest = load_manifest(manifest_path, verify_sha256=False)
    dev = torch.device(device if device else ('cuda' if torch.cuda.is_available() else 'cpu'))
    notes: list[str] = []
    choice = None
    if dev.type == 'cpu' and backend == 'auto':
        from .cpu_preference import read_preference, resolve_cpu_choice
        pref, note = read_preference(manifest)
        if note:
            notes.append(note)
        if pref is not None:
            from . import torch_backend
            choice = resolve_cpu_choice(pref, torch_backend.cpu_has_fast_bf16())
            if choice.note:
                notes.append(f'engine {manifest.name}: {choice.note}')
    if backend == 'auto':
        chain = list(BACKENDS) if dev.type == 'cuda' else ['onnxruntime', 'torch']
        if choice is not None:
            chain = [choice.backend] + [b for b in chain if b != choice.backend]
    else:
        chain = list(BACKENDS[BACKENDS.index(backend):]) if fallback else [backend]
    if not fallback and backend == 'auto':
        chain = chain[:1]
    if choice is not None and not choice.note:
        m = pref.get('measured') or {}
        from .cpu_preference import OPTIONS
        times = ', '.join(f'{b} {p} {m[f"{b}_{p}_ms"]:.1f} ms' for b, p in OPTIONS
                          if isinstance(m.get(f'{b}_{p}_ms'), (int, float)))
        notes.append(f'engine {manifest.name}: measured CPU preference {choice.backend} {choice.precision}'
                     + (f' ({times})' if times else ''))
    if precision == 'auto':
        # the measured precision for the preferred backend, fp32 for every other one
        precisions = {b: (choice.precision if choice is not None and b == choice.backend else 'fp32')
                      for b in BACKENDS}
    else:
        precisions = {b: precision for b in BACKENDS}
    return FallbackEngine(manifest, chain, dev, dict(options, precisions=precisions), on_event, notes=notes)
