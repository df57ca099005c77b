"""The engine manifest (``engines/NAME.json``) and its checks.

Every shipped model is ``NAME.onnx`` + ``NAME.json`` (+ optional ``NAME.pt2``, a
``torch.export`` program for the ``torch`` backend); docs/CONTRACTS.md lists the keys.
Loading a manifest checks that the files exist, that the ONNX bytes hash to the
manifest's ``sha256`` (a truncated, corrupt or swapped model is refused before any
backend sees it), and that the shapes agree with the family's contract.

Integrity rule: every artefact a backend loads is hashed and compared with the
manifest before it is used, and the backend then loads exactly the bytes it hashed
(no second read of the file): the ONNX against ``sha256``, the ``.pt2`` program
against ``torch_program_sha256`` (a manifest without it cannot run on the torch
backend), an optional FP16 ONNX against ``onnx_fp16_sha256``.  TensorRT plans are
built on the target and carry their own hash record (``tensorrt_backend``).
:func:`add_artifact_hashes` fills these fields for the exporter.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..optics import depth_hypotheses

FAMILIES = ('ddfs', 'dfv', 'dfv_cv')
#: Input names per family (docs/CONTRACTS.md).
FAMILY_INPUTS = {'ddfs': ('image', 'cost_volume', 'depths'),
                 'dfv_cv': ('image', 'cost_volume', 'depths'),
                 'dfv': ('stack', 'focus')}
#: Inputs a family may add (engines trained with a classical focus volume, DESIGN.md section 7).
OPTIONAL_INPUTS = {'ddfs': ('focus_volume', 'frames', 'curve_weights'), 'dfv_cv': ('focus_volume',), 'dfv': ()}
#: Inputs whose frame axis (the value) is free at run time: engines with learned focus
#: curves take the stack itself, any F from 2 to the manifest's ``max_frames``.
FRAME_AXES = {'frames': 1, 'curve_weights': 2}
OUTPUTS = ('depth', 'uncertainty')
#: Manifest key of the sha256 of the ``torch_program`` (.pt2) file.
TORCH_PROGRAM_SHA256 = 'torch_program_sha256'
#: Optional FP16 ONNX (strongly typed TensorRT builds at FP16) and its sha256.
ONNX_FP16, ONNX_FP16_SHA256 = 'onnx_fp16', 'onnx_fp16_sha256'


class EngineError(RuntimeError):
    """An engine that cannot be loaded or run; the message says which file and why."""


class EngineInputError(EngineError):
    """Inputs that break the engine's contract (names, shapes): the caller's fault, no fallback."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


class ImageSize:
    """``height`` / ``width`` (px) of a manifest's ``image_size`` (H, W)."""

    image_size: tuple[int, int]

    @property
    def height(self) -> int:
        return int(self.image_size[0])

    @property
    def width(self) -> int:
        return int(self.image_size[1])


@dataclass
class EngineManifest(ImageSize):
    """A validated manifest.  Paths are resolved next to the JSON file."""

    path: Path
    name: str
    family: str
    onnx_path: Path
    sha256: str
    torch_program: Optional[Path]
    inputs: dict[str, list[int]]
    outputs: list[str]
    image_size: tuple[int, int]
    num_hypotheses: Optional[int]
    num_frames: Optional[int]
    hypotheses: dict[str, Any]
    train_focus_range: Optional[tuple[float, float]]
    reference_frame: str
    max_coc_px: Optional[float]
    raw: dict = field(repr=False, default_factory=dict)
    #: Fully convolutional engine exported with dynamic H and W (ONNX dynamic axes).
    dynamic_size: bool = False
    #: H and W fed to a dynamic engine must be multiples of this (px).
    size_multiple: int = 32
    #: ((min H, min W), (max H, max W)) the dynamic engine was checked on; None = unknown.
    validated_size: Optional[tuple[tuple[int, int], tuple[int, int]]] = None
    #: Pixel width whose blur range the network learned (``max_coc_px`` is given at this
    #: width); None = the engine width ``image_size[1]``.
    train_processing_width: Optional[int] = None
    #: sha256 of the ``torch_program`` bytes; None = the program is never loaded.
    torch_program_sha256: Optional[str] = None
    #: The D-blocks of the ``focus_volume`` input, in order (:data:`ddfs_ros.focus_volume.FOCUS_VOLUME_MODES`).
    focus_volume_modes: tuple = ('thin_lens',)
    #: Bins a frame-based engine outputs past each end of the sweep
    #: (:func:`ddfs_ros.focus_bins.extrapolated_focus`); 0 = the focus range only.
    extrapolate_bins: int = 0
    #: Largest F a ``frames`` input may have (engines with learned focus curves); None = no such input.
    max_frames: Optional[int] = None

    @property
    def coc_reference_width(self) -> int:
        """Width (px) at which ``max_coc_px`` holds: ``train_processing_width``, else the engine width."""
        return int(self.train_processing_width or self.width)

    @property
    def uses_cost_volume(self) -> bool:
        return self.family in ('ddfs', 'dfv_cv')

    def train_hypotheses(self) -> np.ndarray:
        """The D training hypotheses (m), ascending (cost-volume families only)."""
        h = self.hypotheses
        return depth_hypotheses(float(h['d_min']), float(h['d_max']), int(self.num_hypotheses),
                                h.get('spacing', 'depth'))


def _need(raw: dict, key: str, path: Path):
    if key not in raw:
        raise EngineError(f'engine manifest {path}: missing key {key!r}')
    return raw[key]


def _validated_size(value, path: Path):
    """``[[min H, min W], [max H, max W]]`` -> tuple pair, or None."""
    if value is None:
        return None
    try:
        (h0, w0), (h1, w1) = value
        return (int(h0), int(w0)), (int(h1), int(w1))
    except (TypeError, ValueError) as e:
        raise EngineError(f'engine {path.name}: validated_size must be [[min H, min W], [max H, max W]], '
                          f'got {value!r}') from e


def read_verified(manifest: EngineManifest, path: Optional[Path], expected: Optional[str], what: str,
                  key: str) -> bytes:
    """The bytes of ``path`` if they hash to ``expected`` (the manifest's ``key``), else :class:`EngineError`.

    Backends load the returned bytes, never the file again, so what runs is what was hashed.
    """
    name = manifest.path.name
    if path is None:
        raise EngineError(f'engine {name}: the manifest names no {what}')
    if not expected:
        raise EngineError(f'engine {name}: the manifest has no {key!r} for the {what} {path.name}, so it is not '
                          'loaded (unverified weights); re-export the engine (python -m training.export) to '
                          'record it')
    if not path.is_file():
        raise EngineError(f'engine {name}: {what} {path} does not exist')
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise EngineError(f'engine {name}: sha256 of {what} {path.name} is {got[:16]}..., the manifest says '
                          f'{str(expected)[:16]}... (truncated, corrupt or replaced; re-export it)')
    return data


def read_onnx(manifest: EngineManifest) -> bytes:
    """The ONNX bytes, checked against the manifest's ``sha256`` (else :class:`EngineError`)."""
    return read_verified(manifest, manifest.onnx_path, manifest.sha256, 'ONNX file', 'sha256')


def read_torch_program(manifest: EngineManifest) -> bytes:
    """The ``.pt2`` bytes, checked against ``torch_program_sha256`` (else :class:`EngineError`)."""
    return read_verified(manifest, manifest.torch_program, manifest.torch_program_sha256, 'torch program',
                         TORCH_PROGRAM_SHA256)


def check_onnx(manifest: EngineManifest) -> None:
    """The ONNX file exists and hashes to the manifest's sha256 (else :class:`EngineError`)."""
    read_onnx(manifest)


def add_artifact_hashes(raw: dict, folder: Path | str) -> dict:
    """Set the sha256 of every artefact a manifest dict names (files relative to ``folder``).

    ``sha256`` (``onnx``), ``torch_program_sha256`` (``torch_program``; None when there is
    none) and ``onnx_fp16_sha256`` (``onnx_fp16``, when named).  For ``training/export.py``:
    call it on the dict just before writing ``NAME.json``.  Returns ``raw`` (changed in place).
    """
    folder = Path(folder)
    raw['sha256'] = sha256_file(folder / raw['onnx'])
    tp = raw.get('torch_program')
    raw[TORCH_PROGRAM_SHA256] = sha256_file(folder / tp) if tp else None
    if raw.get(ONNX_FP16):
        raw[ONNX_FP16_SHA256] = sha256_file(folder / raw[ONNX_FP16])
    return raw


def write_artifact_hashes(manifest_path: Path | str) -> Path:
    """Re-hash the artefacts of an existing ``NAME.json`` in place (:func:`add_artifact_hashes`)."""
    manifest_path = Path(manifest_path)
    raw = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(add_artifact_hashes(raw, manifest_path.parent), indent=1))
    return manifest_path


def read_manifest_json(path: Path) -> dict:
    """The JSON object a manifest file holds (an engine's or an ensemble's), unchecked.

    Raises:
        EngineError: the file is missing, unreadable, not JSON or not a JSON object.
    """
    if not path.is_file():
        raise EngineError(f'engine manifest {path} does not exist')
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineError(f'engine manifest {path} is not valid JSON: {e}') from e
    if not isinstance(raw, dict):
        raise EngineError(f'engine manifest {path} must be a JSON object')
    return raw


def load_manifest(path: str | Path, verify_sha256: bool = True) -> EngineManifest:
    """Read and check ``NAME.json``.

    With ``verify_sha256=False`` the ONNX file is not opened (each ONNX backend runs
    :func:`check_onnx` itself, so a bad ONNX can still fall back to the torch program).

    Raises:
        EngineError: missing/unreadable JSON, missing keys, unknown family, shapes that
            contradict the family contract, missing ONNX, sha256 mismatch.
    """
    path = Path(path)
    if path.suffix == '.onnx':   # accept the model path too: its manifest sits beside it
        path = path.with_suffix('.json')
    raw = read_manifest_json(path)
    family = _need(raw, 'family', path)
    if family not in FAMILIES:
        raise EngineError(f'engine manifest {path}: unknown family {family!r} (one of {FAMILIES})')
    onnx_path = path.parent / _need(raw, 'onnx', path)
    sha = str(_need(raw, 'sha256', path))
    inputs = {str(k): [int(x) for x in v] for k, v in _need(raw, 'inputs', path).items()}
    want = FAMILY_INPUTS[family]
    if not set(want) <= set(inputs) <= set(want) | set(OPTIONAL_INPUTS[family]):
        raise EngineError(f'engine {path.name}: family {family} needs inputs {want}, manifest has {list(inputs)}')
    outputs = list(raw.get('outputs') or OUTPUTS)
    if isinstance(raw.get('outputs'), dict):
        outputs = list(raw['outputs'])
    if tuple(outputs) != OUTPUTS:
        raise EngineError(f'engine {path.name}: outputs must be {OUTPUTS}, got {outputs}')
    H, W = (int(x) for x in _need(raw, 'image_size', path))
    D = raw.get('num_hypotheses')
    F = raw.get('num_frames')
    if family == 'dfv':
        s = inputs['stack']
        if len(s) != 5 or s[2] != 3 or s[3:] != [H, W]:
            raise EngineError(f'engine {path.name}: stack input {s} is not B x F x 3 x {H} x {W}')
        if F is None or int(F) != s[1] or inputs['focus'] != [s[0], s[1]]:
            raise EngineError(f'engine {path.name}: num_frames {F} does not match inputs {inputs}')
    else:
        img, cv, dep = inputs['image'], inputs['cost_volume'], inputs['depths']
        if img[1:] != [3, H, W] or cv[2:] != [H, W] or D is None or cv[1] != int(D) or dep[1:] != [int(D)]:
            raise EngineError(f'engine {path.name}: inputs {inputs} contradict image_size {[H, W]} and D = {D}')
        if not raw.get('hypotheses') or not {'d_min', 'd_max'} <= set(raw['hypotheses']):
            raise EngineError(f'engine {path.name}: hypotheses {{d_min, d_max, spacing}} missing')
    modes = tuple(raw.get('focus_volume_modes') or ('thin_lens',))
    if 'focus_volume' in inputs:
        from ..focus_volume import FOCUS_VOLUME_MODES
        fv = inputs['focus_volume']
        if not set(modes) <= set(FOCUS_VOLUME_MODES) or fv[2:] != [H, W] or fv[1] != len(modes) * int(D):
            raise EngineError(f'engine {path.name}: focus_volume input {fv} does not hold the '
                              f'{len(modes)} x D = {D} blocks of focus_volume_modes {list(modes)} at {[H, W]}')
    max_frames = None
    if {'frames', 'curve_weights'} & set(inputs):
        fr, cw = inputs.get('frames'), inputs.get('curve_weights')
        max_frames = int(raw.get('max_frames') or 0)
        if fr is None or cw is None or len(fr) != 5 or fr[2:] != [3, H, W] or cw != [fr[0], int(D), fr[1]] \
                or not 2 <= fr[1] <= max_frames:
            raise EngineError(f'engine {path.name}: frames {fr} / curve_weights {cw} must be B x F x 3 x {H} x {W} '
                              f'and B x D x F with 2 <= F <= max_frames ({max_frames}), D = {D}')
    tp = raw.get('torch_program')
    tfr = raw.get('train_focus_range')
    manifest = EngineManifest(
        path=path, name=str(raw.get('name', path.stem)), family=family, onnx_path=onnx_path, sha256=sha,
        torch_program=(path.parent / tp) if tp else None, inputs=inputs, outputs=outputs,
        image_size=(H, W), num_hypotheses=None if D is None else int(D),
        num_frames=None if F is None else int(F), hypotheses=dict(raw.get('hypotheses') or {}),
        train_focus_range=None if not tfr else (float(tfr[0]), float(tfr[1])),
        reference_frame=str(raw.get('reference_frame', 'farthest')),
        max_coc_px=None if raw.get('max_coc_px') is None else float(raw['max_coc_px']), raw=raw,
        torch_program_sha256=raw.get(TORCH_PROGRAM_SHA256) or None,
        dynamic_size=bool(raw.get('dynamic_size', False)),
        size_multiple=int(raw.get('size_multiple', 32)),
        validated_size=_validated_size(raw.get('validated_size'), path), focus_volume_modes=modes,
        extrapolate_bins=int(raw.get('extrapolate_bins') or 0), max_frames=max_frames,
        train_processing_width=None if raw.get('train_processing_width') is None
        else int(raw['train_processing_width']))
    if manifest.extrapolate_bins < 0 or (manifest.extrapolate_bins and family != 'dfv'):
        raise EngineError(f'engine {path.name}: extrapolate_bins {manifest.extrapolate_bins} needs a dfv engine and >= 0')
    if manifest.size_multiple < 1:
        raise EngineError(f'engine {path.name}: size_multiple must be >= 1, got {manifest.size_multiple}')
    if verify_sha256:
        check_onnx(manifest)
    return manifest
