"""``torch`` backend: the ``NAME.pt2`` ``torch.export`` program run eagerly.

For development, for checking the other backends, and on CPUs with native bfloat16
(AVX512-BF16 / AMX) the fastest CPU backend for 2D networks: precision ``bf16`` runs
the program under ``torch.autocast(device, torch.bfloat16)`` (convolutions and
matrix products in bf16, the rest as autocast decides) and returns float32 outputs.

Precisions: ``fp32`` (default) | ``bf16``.  Anything else (``fp16`` is a TensorRT
precision) runs fp32 and says so in :attr:`TorchEngine.description`; so does ``bf16``
on a device without fast bf16 (:func:`fast_bf16_supported`).
"""
from __future__ import annotations

import io
import logging
import platform

import torch

from .base import Engine
from .manifest import EngineError, EngineManifest, read_torch_program

log = logging.getLogger(__name__)
#: Precisions this backend runs.
TORCH_PRECISIONS = ('fp32', 'bf16')


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bfloat16 natively, so bf16 autocast is a speed-up.

    The one check: oneDNN must have bf16 kernels here
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), and on x86 the CPU must have
    native bf16 dot products, AVX512-BF16 or AMX (``torch.cpu._is_avx512_bf16_supported()``
    / ``torch.cpu._is_amx_tile_supported()``, both read by torch's cpuinfo from CPUID,
    so they hold in containers too, where /proc/cpuinfo may be filtered).  The oneDNN
    check alone is not enough: it is also true on plain AVX512 CPUs, where bf16 is
    emulated and slower than fp32.  On ARM the oneDNN check is the native-bf16 (BF16
    extension) check itself.  Private torch APIs: anything missing or raising counts as
    no fast bf16 (fp32 is always correct).
    """
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        if platform.machine().lower() in ('x86_64', 'amd64', 'i386', 'i686', 'x86'):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return True
    except Exception:  # noqa: BLE001 - private APIs; absent = not supported
        return False


def fast_bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is worth running on ``device`` (CPU: :func:`cpu_has_fast_bf16`)."""
    device = torch.device(device)
    if device.type == 'cpu':
        return cpu_has_fast_bf16()
    if device.type == 'cuda':
        try:
            return bool(torch.cuda.is_bf16_supported())
        except Exception:  # noqa: BLE001
            return False
    return False


def drop_metadata_asserts(module: torch.nn.Module) -> torch.nn.Module:
    """Remove ``aten._assert_tensor_metadata`` guards from an exported program's graph.

    ``torch.export`` guards every ``x.float()`` / ``x.to(dtype)`` with an assert that
    ``x`` still has the dtype (and device) it had when traced.  Under bf16 autocast the
    convolution outputs are bf16, so the guard in front of the network's own fp32 cast
    (softmax and depth expectation in fp32, ``training/models/focusnets.py``) fails,
    although the cast after it is exactly what should happen.  The guards compute
    nothing (no users), so removing them leaves the program's arithmetic unchanged.
    """
    target = getattr(getattr(torch.ops.aten, '_assert_tensor_metadata', None), 'default', None)
    graph = getattr(module, 'graph', None)
    if target is None or graph is None:
        return module
    removed = 0
    for node in list(graph.nodes):
        if node.op == 'call_function' and node.target is target and not node.users:
            graph.erase_node(node)
            removed += 1
    if removed:
        graph.lint()
        module.recompile()
    return module


class TorchEngine(Engine):
    backend_name = 'torch'

    def __init__(self, manifest: EngineManifest, device: torch.device, precision: str = 'fp32') -> None:
        super().__init__(manifest, device)
        path = manifest.torch_program
        # Only weights whose sha256 the manifest records are run (issue 12, item 7): a bad
        # ONNX falls back here, and must not fall back to an unverified program.
        data = read_torch_program(manifest)
        try:
            program = torch.export.load(io.BytesIO(data))
            self.module = drop_metadata_asserts(program.module()).to(self.device)
        except Exception as e:  # noqa: BLE001 - a truncated zip raises many kinds
            raise EngineError(f'engine {manifest.name}: cannot load torch program {path}: {e}') from e
        note = ''
        if precision not in TORCH_PRECISIONS:
            note = f' ({precision} requested: the torch backend runs {" or ".join(TORCH_PRECISIONS)})'
            precision = 'fp32'
        elif precision == 'bf16' and not fast_bf16_supported(self.device):
            what = ('this CPU has no fast bf16 (AVX512-BF16 / AMX / ARM BF16)' if self.device.type == 'cpu'
                    else f'{self.device} has no bf16 support')
            note = f' (bf16 requested: {what})'
            precision = 'fp32'
        if note:
            log.info('engine %s: torch backend runs fp32%s', manifest.name, note)
        #: The precision actually run: 'fp32' or 'bf16'.
        self.precision = precision
        self.description = f'torch {torch.__version__} eager {precision}{note}'

    @torch.no_grad()
    def infer(self, inputs):
        args = self.check_inputs(inputs)
        if self.device.type == 'cpu':
            # oneDNN's convolutions run NHWC natively: NCHW inputs get reordered at every
            # layer (measured, ddfs_s bf16 at 256 x 192: 77 -> 45 ms with channels-last inputs)
            args = [a.contiguous(memory_format=torch.channels_last) if a.dim() == 4 else a for a in args]
        if self.precision == 'bf16':
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                out = self.module(*args)
        else:
            out = self.module(*args)
        depth, unc = (out['depth'], out['uncertainty']) if isinstance(out, dict) else (out[0], out[1])
        return depth.float(), unc.float()
