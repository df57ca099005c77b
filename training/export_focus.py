"""Export a focus-network checkpoint: ONNX with dynamic H x W + manifest (+ torch.export program).

    python -m training.export_focus checkpoints/ddfs_s/best.pt --out engines/ddfs_s.onnx --check

The ONNX graph takes any H and W that are multiples of 8 (dynamic axes; the manifest
states ``size_multiple`` and the sizes it was checked on, ``validated_size``).  Inputs:

- family ``ddfs`` (arch ``unet_cv_fv``): ``image`` B x 3 x H x W (RGB in [0, 1]),
  ``cost_volume`` B x D x H x W (:class:`ddfs_ros.cost_volume.CostVolume`),
  ``depths`` B x D (m, the ``focus_span`` hypotheses), ``focus_volume`` B x D x H x W
  (:func:`ddfs_ros.focus_volume.focus_volume`); with learned focus curves also ``frames``
  B x F x 3 x H x W (the stack, any F from 2 to ``max_frames``) and ``curve_weights``
  B x D x F (:func:`ddfs_ros.network_inputs.frame_inputs_of`);
- family ``dfv`` (arch ``dfv_lite``): ``stack`` B x F x 3 x H x W sorted near to far,
  ``focus`` B x F (m, ascending).

Outputs ``depth`` and ``uncertainty``, B x 1 x H x W metres.  Every artefact's sha256
goes into the manifest (:func:`ddfs_ros.engines.manifest.add_artifact_hashes`).

Last, the CPU preference is measured on this machine and written into the manifest
(``cpu_preference``: onnxruntime fp32 unless torch fp32 or torch bf16 is >= 1.25x
faster, bf16 only within 1 % of fp32 at p99, :mod:`ddfs_ros.engines.cpu_preference`);
``--no-cpu-preference`` skips it (rerun ``python -m ddfs_ros.engines.cpu_preference
engines/NAME.json`` later, e.g. on an idle machine: timings taken while training runs
are not worth much).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ddfs_ros.engines.manifest import add_artifact_hashes
from ddfs_ros.network_inputs import frame_inputs_of
from ddfs_ros.optics import FOCUS_SPAN_MARGIN, FOCUS_SPAN_MIN_RELATIVE, hypotheses_from_focus_span

from .export import OPSET, _Eval, export_onnx, export_torch_program
from .models.focusnets import SIZE_MULTIPLE, data_options, focus_volume_modes
from .train_focus import build

#: Sizes the exported graph is checked on against torch eager ((H, W) pairs).
CHECK_SIZES = ((64, 64), (96, 128), (480, 640))


def example_inputs(family: str, num: int, H: int, W: int, seed: int = 0, fv_blocks: int = 1,
                   frames: int = 0) -> dict:
    """Plausible random inputs: ``num`` = D (cost-volume family) or F (DFV); ``fv_blocks``
    D-blocks in the focus volume (one per focus-volume mode); ``frames`` > 0: also
    ``frames`` and ``curve_weights`` of that many frames (a network with learned focus curves)."""
    g = torch.Generator().manual_seed(seed)
    if family == 'dfv':
        focus = torch.as_tensor(1.0 / np.linspace(1 / 0.5, 1 / 2.0, num), dtype=torch.float32)[None]
        return {'stack': torch.rand(1, num, 3, H, W, generator=g), 'focus': focus}
    d = hypotheses_from_focus_span([0.5, 2.0], num)
    out = {'image': torch.rand(1, 3, H, W, generator=g), 'cost_volume': torch.rand(1, num, H, W, generator=g),
           'depths': torch.as_tensor(d, dtype=torch.float32)[None],
           'focus_volume': torch.rand(1, fv_blocks * num, H, W, generator=g)}
    if frames:
        x = frame_inputs_of(torch.rand(frames, 3, H, W, generator=g), 1.0 / np.linspace(1 / 0.5, 1 / 2.0, frames), d)
        out.update({k: v[None] for k, v in x.items()})
    return out


#: Frame counts the exported graph of a network with learned focus curves is checked on
#: (one per :data:`CHECK_SIZES` entry): the F axis is dynamic.
CHECK_FRAMES = (5, 3, 8)
#: Largest F the torch program and TensorRT profiles accept (``frames`` inputs).
MAX_FRAMES = 32


def spatial_axes(inputs: dict) -> dict:
    """ONNX ``dynamic_axes``: the last two axes of every image-like input and of both
    outputs, and the frame axis of ``frames`` / ``curve_weights``."""
    axes = {k: {v.dim() - 2: 'height', v.dim() - 1: 'width'} for k, v in inputs.items() if v.dim() >= 4}
    if 'frames' in inputs:
        axes['frames'][1] = 'frames'
        axes['curve_weights'] = {2: 'frames'}
    return {**axes, 'depth': {2: 'height', 3: 'width'}, 'uncertainty': {2: 'height', 3: 'width'}}


def spatial_dims(inputs: dict) -> list:
    """``torch.export`` shapes: H and W free (multiples of :data:`SIZE_MULTIPLE`) on image-like
    inputs, F free (2 .. :data:`MAX_FRAMES`) on ``frames`` / ``curve_weights``."""
    from torch.export import Dim
    hb = Dim('hb', min=1, max=512)
    wb = Dim('wb', min=1, max=512)
    nf = Dim('nf', min=2, max=MAX_FRAMES)
    dims = []
    for k, v in inputs.items():
        spec = {v.dim() - 2: SIZE_MULTIPLE * hb, v.dim() - 1: SIZE_MULTIPLE * wb} if v.dim() >= 4 else None
        if k == 'frames':
            spec[1] = nf
        elif k == 'curve_weights':
            spec = {2: nf}
        dims.append(spec)
    return dims


def max_abs_diff(path: Path, model: torch.nn.Module, family: str, num: int, fv_blocks: int = 1,
                 frames: bool = False) -> dict:
    """|onnxruntime - torch eager| (m) at each of :data:`CHECK_SIZES` (and F of :data:`CHECK_FRAMES`)."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = {}
    for (H, W), nf in zip(CHECK_SIZES, CHECK_FRAMES):
        x = example_inputs(family, num, H, W, seed=1, fv_blocks=fv_blocks, frames=nf if frames else 0)
        got = sess.run(['depth', 'uncertainty'], {k: v.numpy() for k, v in x.items()})
        with torch.no_grad():
            ref = _Eval(model)(*x.values())
        out[f'{H}x{W}' + (f'x{nf}f' if frames else '')] = float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))
    return out


def export_checkpoint(ckpt_path: Path | str, onnx_path: Path | str, torch_program: bool = True,
                      extra: Optional[dict] = None, cpu_preference: bool = True) -> Path:
    """Write ``NAME.onnx``, ``NAME.pt2`` and ``NAME.json`` from a ``train_focus`` checkpoint.

    ``cpu_preference``: measure it here and add it to the manifest (see the module docstring).
    """
    ckpt_path, onnx_path = Path(ckpt_path), Path(onnx_path)
    ck = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    conf = ck['config']
    family = ck['family']
    kwargs = conf['model'].get('kwargs', {})
    model = build(family, kwargs).eval()
    model.load_state_dict(ck['model'])
    d = conf['data']
    size = int(d.get('size', 96))
    num = int(kwargs.get('num_hypotheses', 32)) if family == 'ddfs' else int(kwargs.get('num_frames', 5))
    modes = list(focus_volume_modes(model))
    uses_frames = bool(getattr(model, 'uses_frames', False))
    inputs = example_inputs(family, num, size, size, fv_blocks=len(modes), frames=CHECK_FRAMES[0] if uses_frames else 0)
    export_onnx(model, inputs, onnx_path, dynamic_axes=spatial_axes(inputs))
    prog = (export_torch_program(model, inputs, onnx_path.with_suffix('.pt2'), dynamic_shapes=spatial_dims(inputs))
            if torch_program else None)
    diffs = max_abs_diff(onnx_path, model, family, num, fv_blocks=len(modes), frames=uses_frames)
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    # the focus range the network saw, for the node's from_focus rule and for users
    val_focus = _val_focus_range(Path(d['cache']))
    manifest = {
        'name': onnx_path.stem,
        'family': family,
        'arch': conf['model'].get('arch'),
        'onnx': onnx_path.name,
        'torch_program': prog,
        'inputs': shapes,
        'outputs': {'depth': [1, 1, size, size], 'uncertainty': [1, 1, size, size]},
        'image_size': [size, size],
        'dynamic_size': True,
        'size_multiple': SIZE_MULTIPLE,
        'validated_size': [list(CHECK_SIZES[0]), list(CHECK_SIZES[-1])],
        'train_processing_width': size,
        'num_hypotheses': num if family == 'ddfs' else None,
        'num_frames': num if family == 'dfv' else None,
        'hypotheses': ({'mode': 'focus_span', 'spacing': 'inverse', 'margin': FOCUS_SPAN_MARGIN,
                        'min_relative': FOCUS_SPAN_MIN_RELATIVE,
                        'd_min': round(val_focus[0] / 1.5, 4), 'd_max': round(val_focus[1] * 1.5, 4)}
                       if family == 'ddfs' else {'mode': 'focus', 'd_min': val_focus[0], 'd_max': val_focus[1],
                                                 'spacing': 'inverse'}),
        'train_focus_range': list(val_focus),
        'reference_frame': 'farthest',
        'max_coc_px': float(d.get('max_coc_px', 24.0)) if family == 'ddfs' else None,
        **({'focus_volume_modes': modes} if family == 'ddfs' else {}),
        **({'extrapolate_bins': int(model.extrapolate)} if getattr(model, 'extrapolate', 0) else {}),
        **({'frame_features': int(model.frame_features), 'max_frames': MAX_FRAMES} if uses_frames else {}),
        'batch': 1,
        'params': int(sum(p.numel() for p in model.parameters())),
        'normalisation': 'RGB in [0, 1], ImageNet mean/std applied inside the graph; cost volume as '
                         'ddfs_ros.cost_volume.CostVolume returns it; focus volume as ddfs_ros.focus_volume',
        'frame_order': 'near_to_far' if family == 'dfv' else 'any',
        'opset': OPSET,
        'onnx_vs_torch_max_abs_diff_m': diffs,
        'training': {
            'config': conf, 'checkpoint': str(ckpt_path), 'samples_seen': int(ck['samples']),
            'data': 'procedural scenes textured with ../shared/data/textures (BSDS500, Kodak, McMaster, Sun-Hays, '
                    'Urban100; train split), rgbd_7scenes train frames, real_dfd_indoor_train train scenes '
                    '(ddfs_ros/data_splits.py); rendered by ddfs_ros.render',
            'camera': {k: d.get(k) for k in ('frames', 'max_blur_px', 'size')},
        },
        'validation': {**(ck.get('val') or {}), 'uncertainty': validation_uncertainty(model, family, Path(d['cache'])),
                       'split': f'{d["cache"]}/val (held-out textures and scenes, '
                                                          f'same camera distribution; selection only)'},
    }
    if extra:
        manifest.update(extra)
    add_artifact_hashes(manifest, onnx_path.parent)
    man_path = onnx_path.with_suffix('.json')
    man_path.write_text(json.dumps(manifest, indent=1, default=str))
    if cpu_preference:
        from ddfs_ros.engines.cpu_preference import measure_and_write
        measure_and_write(man_path)
    return man_path


@torch.no_grad()
def validation_uncertainty(model: torch.nn.Module, family: str, cache: Path,
                           thresholds: Sequence[float] = (0.25, 0.5)) -> dict:
    """What the uncertainty says on the validation stacks (pixels pooled).

    ``unc_cal``: fraction of pixels with |error| <= uncertainty; per threshold t of the
    node's sanity rule (uncertainty <= t x depth): the fraction of pixels kept and the
    AbsRel of the kept and of the removed pixels.
    """
    from .stack_data import ShardDataset
    from .train_focus import forward
    data = ShardDataset(cache, 'val', family, **data_options(model))
    model.eval()
    err, rel_unc, inside = [], [], []
    for i in range(len(data)):
        b = {k: v[None] for k, v in data[i].items()}
        depth, unc = forward(model, family, b)
        g = b['gt'][0]
        v = torch.isfinite(g) & (g > 0)
        d, u = depth[0, 0][v], unc[0, 0][v]
        err.append((d - g[v]).abs() / g[v])
        rel_unc.append(u / d)
        inside.append((d - g[v]).abs() <= u)
    err, rel_unc, inside = torch.cat(err), torch.cat(rel_unc), torch.cat(inside)
    out = {'unc_cal': float(inside.float().mean())}
    for t in thresholds:
        keep = rel_unc <= t
        out[f'mask_{t}'] = {'kept_fraction': float(keep.float().mean()),
                            'absrel_kept': float(err[keep].mean()) if keep.any() else None,
                            'absrel_removed': float(err[~keep].mean()) if (~keep).any() else None}
    return out


def _val_focus_range(cache: Path) -> tuple[float, float]:
    """Median nearest and farthest focus distance (m) of the validation stacks."""
    with np.load(sorted((cache / 'val').glob('shard_[0-9]*.npz'))[0]) as z:
        focus, n = z['focus'], z['nframes']
    near = float(np.median([focus[i, :n[i]].min() for i in range(len(n))]))
    far = float(np.median([focus[i, :n[i]].max() for i in range(len(n))]))
    return round(near, 4), round(far, 4)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description='Export a focus-network checkpoint to ONNX + manifest.')
    ap.add_argument('checkpoint')
    ap.add_argument('--out', required=True, help='engines/NAME.onnx')
    ap.add_argument('--no-pt2', action='store_true')
    ap.add_argument('--no-cpu-preference', action='store_true',
                    help='do not time the CPU backends (no cpu_preference in the manifest)')
    a = ap.parse_args(argv)
    man = export_checkpoint(a.checkpoint, a.out, torch_program=not a.no_pt2, cpu_preference=not a.no_cpu_preference)
    m = json.loads(man.read_text())
    print(f'wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.2f} MB) and {man}; onnxruntime vs eager '
          f'{m["onnx_vs_torch_max_abs_diff_m"]}')


if __name__ == '__main__':
    main()
