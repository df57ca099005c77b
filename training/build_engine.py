"""Build a TensorRT plan from a shipped ONNX engine (run this on the target GPU).

    python -m training.build_engine engines/NAME.onnx [--fp16] [--cache-dir DIR] [--workspace-mb N]

Uses the TensorRT Python API directly (``trt.Builder``, ``trt.OnnxParser``,
``BuilderConfig`` with the FP16 flag when ``--fp16`` is asked for and
``builder.platform_has_fast_fp16``, ``build_serialized_network``).  The plan is cached
under a key of ONNX sha256 + TensorRT version + GPU compute capability + precision
(DESIGN.md section 7), so a rebuild happens only when one of them changes:
``<cache-dir>/<NAME>.<sha256[:16]>.trt<version>.sm<major><minor>.<precision>.plan``.

Where TensorRT or a CUDA GPU is absent it prints a clear message to stderr and exits
with status 2 (plans are built on the robot, not on the CPU training machine).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .export import sha256_file

EXIT_UNAVAILABLE = 2


class EngineBuildError(RuntimeError):
    """TensorRT is missing, no GPU is visible, or the ONNX does not parse/build."""


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


def cache_key(onnx_sha256: str, trt_version: str, capability: tuple[int, int], precision: str) -> str:
    """The plan cache key: ONNX hash, TensorRT version, GPU compute capability, precision."""
    return f'{onnx_sha256[:16]}.trt{trt_version}.sm{capability[0]}{capability[1]}.{precision}'


def plan_path(onnx_path: Path, cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / f'{Path(onnx_path).stem}.{key}.plan'


def build_engine(onnx_path: Path | str, fp16: bool = False, cache_dir: Optional[Path | str] = None,
                 workspace_mb: int = 1024, force: bool = False, log=print) -> Path:
    """Build (or reuse) the TensorRT plan of ``onnx_path``; returns the plan path."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EngineBuildError(f'ONNX file not found: {onnx_path}')
    trt = _import_tensorrt()
    capability = gpu_compute_capability()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    use_fp16 = bool(fp16 and builder.platform_has_fast_fp16)
    if fp16 and not use_fp16:
        log('FP16 requested but this GPU has no fast FP16; building FP32')
    precision = 'fp16' if use_fp16 else 'fp32'
    key = cache_key(sha256_file(onnx_path), trt.__version__, capability, precision)
    out = plan_path(onnx_path, Path(cache_dir) if cache_dir else onnx_path.parent, key)
    if out.exists() and not force:
        log(f'cached plan {out}')
        return out
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH'):   # implicit in TensorRT >= 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f'TensorRT could not parse {onnx_path}: {errors}')
    config = builder.create_builder_config()
    if hasattr(config, 'set_memory_pool_limit'):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f'TensorRT failed to build {onnx_path} ({precision})')
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    log(f'built {out} ({precision}, TensorRT {trt.__version__}, sm{capability[0]}{capability[1]})')
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description='Build a TensorRT plan from an ONNX engine.')
    ap.add_argument('onnx')
    ap.add_argument('--fp16', action='store_true', help='FP16 where the GPU supports it fast')
    ap.add_argument('--cache-dir', default=None, help='where plans live (default: next to the ONNX)')
    ap.add_argument('--workspace-mb', type=int, default=1024)
    ap.add_argument('--force', action='store_true', help='rebuild even if a cached plan exists')
    a = ap.parse_args(argv)
    try:
        build_engine(a.onnx, fp16=a.fp16, cache_dir=a.cache_dir, workspace_mb=a.workspace_mb, force=a.force)
    except EngineBuildError as exc:
        print(f'build_engine: error: {exc}', file=sys.stderr)
        return EXIT_UNAVAILABLE
    return 0


if __name__ == '__main__':
    sys.exit(main())
