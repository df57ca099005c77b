"""Build the TensorRT plan of a shipped engine ahead of time (run this on the target GPU).

    python -m training.build_engine engines/NAME.json [--precision fp32|fp16] [--cache-dir DIR] [--force]

An ensemble manifest (``ddfs_ros.ensemble``) builds the plan of each member.

The plan goes exactly where the node's ``tensorrt`` backend looks for it: the same
cache (``$DDFS_TRT_CACHE``, default ``~/.cache/ddfs_ros/trt``), the same key (ONNX
sha256 + TensorRT version + GPU compute capability + precision), the same precision
default (``fp32``) and the same strongly typed build, because both call
:func:`ddfs_ros.engines.tensorrt_backend.get_or_build_plan`.  The ONNX is checked
against the manifest's sha256 before TensorRT sees it, and the plan is written with
its own hash record.  FP16 needs an FP16 ONNX named in the manifest (``onnx_fp16``):
TensorRT 10 deprecates and 11 removes the FP16 builder flag.

Where TensorRT or a CUDA GPU is absent it prints a clear message to stderr and exits
with status 2 (plans are built on the robot, not on the CPU training machine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from ddfs_ros.engines.manifest import EngineError, load_manifest
from ddfs_ros.engines.tensorrt_backend import DEFAULT_PRECISION, PRECISIONS, WORKSPACE_BYTES, get_or_build_plan

EXIT_UNAVAILABLE = 2


class EngineBuildError(RuntimeError):
    """TensorRT is missing, no GPU is visible, or the ONNX does not verify/parse/build."""


def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415 - optional, GPU machines only
    except ImportError as exc:
        raise EngineBuildError(
            'TensorRT is not installed (import tensorrt failed: '
            f'{exc}). Build plans on the target machine with the NVIDIA TensorRT Python '
            'package (pip install tensorrt, or JetPack on Jetson); on a CPU-only machine use '
            'the onnxruntime backend with the .onnx file instead.') from exc
    return trt


def gpu_compute_capability() -> tuple[int, int]:
    """(major, minor) of CUDA device 0; raises :class:`EngineBuildError` without a GPU."""
    try:
        import torch
        if torch.cuda.is_available():
            return tuple(torch.cuda.get_device_capability(0))  # type: ignore[return-value]
    except ImportError:
        pass
    raise EngineBuildError('no CUDA GPU is visible (torch.cuda.is_available() is False); '
                           'TensorRT plans can only be built on a machine with an NVIDIA GPU.')


def build_engine(manifest_path: Path | str, precision: str = DEFAULT_PRECISION,
                 cache_dir: Optional[Path | str] = None, workspace_mb: int = WORKSPACE_BYTES >> 20,
                 force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the TensorRT plan of ``NAME.json`` (or ``NAME.onnx``); returns the plan path."""
    try:
        manifest = load_manifest(manifest_path)          # also verifies the ONNX sha256
    except EngineError as exc:
        raise EngineBuildError(str(exc)) from exc
    trt = _import_tensorrt()
    capability = gpu_compute_capability()
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        _, path, used, built = get_or_build_plan(trt, logger, manifest, capability, precision, cache_dir,
                                                 int(workspace_mb) << 20, force, say=log)
    except EngineError as exc:
        raise EngineBuildError(str(exc)) from exc
    log(f'{"built" if built else "cached plan"} {path} ({used}, TensorRT {trt.__version__}, '
        f'sm{capability[0]}{capability[1]})')
    if cache_dir is not None:
        log(f'note: the node looks in $DDFS_TRT_CACHE; set DDFS_TRT_CACHE={Path(cache_dir).resolve()} for it')
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description='Build the TensorRT plan the tensorrt backend will load.')
    ap.add_argument('manifest', help='engine manifest NAME.json (NAME.onnx is accepted: its manifest sits beside it)')
    ap.add_argument('--precision', choices=PRECISIONS, default=DEFAULT_PRECISION,
                    help='fp16 needs an FP16 ONNX named in the manifest (onnx_fp16)')
    ap.add_argument('--fp16', action='store_true', help='same as --precision fp16')
    ap.add_argument('--cache-dir', default=None, help='plan cache (default: $DDFS_TRT_CACHE or ~/.cache/ddfs_ros/trt)')
    ap.add_argument('--workspace-mb', type=int, default=WORKSPACE_BYTES >> 20)
    ap.add_argument('--force', action='store_true', help='rebuild even if a verified cached plan exists')
    a = ap.parse_args(argv)
    from ddfs_ros.ensemble import is_ensemble_manifest, load_ensemble_manifest
    try:
        # an ensemble has no network of its own: its members' plans are what the node loads
        manifests = (load_ensemble_manifest(a.manifest).members if is_ensemble_manifest(a.manifest)
                     else [a.manifest])
        for m in manifests:
            build_engine(m, precision='fp16' if a.fp16 else a.precision, cache_dir=a.cache_dir,
                         workspace_mb=a.workspace_mb, force=a.force)
    except (EngineError, EngineBuildError) as exc:     # an unusable ensemble manifest, or a member's build
        print(f'build_engine: error: {exc}', file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


if __name__ == '__main__':
    sys.exit(main())
