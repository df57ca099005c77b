"""Export a trained network: ONNX + manifest + torch.export program.

    python -m training.export CKPT --out engines/NAME.onnx [--no-pt2] [--check]

Writes ``NAME.onnx`` (static shapes, opset 17, inputs/outputs named as in
docs/CONTRACTS.md), ``NAME.pt2`` (``torch.export`` program for the ``torch`` backend;
``torch_program`` is null in the manifest if that export fails) and ``NAME.json``,
the manifest (every key of docs/CONTRACTS.md).  ``--check`` runs onnxruntime against
torch eager on a random input and prints the largest absolute difference.

The graph is exported from the eval-mode model (BatchNorm folded into running
statistics), with no device baked in: every constant tensor is created from the
inputs' device and dtype.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ddfs_ros.optics import default_max_coc_px, depth_hypotheses

from .models import build_model, count_parameters

OPSET = 17


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def input_shapes(family: str, image_size: Sequence[int], num_hypotheses: Optional[int],
                 num_frames: Optional[int], batch: int = 1) -> dict:
    H, W = int(image_size[0]), int(image_size[1])
    if family == 'dfv':
        return {'stack': [batch, int(num_frames), 3, H, W], 'focus': [batch, int(num_frames)]}
    D = int(num_hypotheses)
    return {'image': [batch, 3, H, W], 'cost_volume': [batch, D, H, W], 'depths': [batch, D]}


def example_inputs(family: str, shapes: dict, hypotheses: dict, seed: int = 0) -> dict:
    """Plausible random inputs of the exported shapes (ascending depths / focus in metres)."""
    g = torch.Generator().manual_seed(seed)
    if family == 'dfv':
        B, F = shapes['focus']
        focus = torch.as_tensor(depth_hypotheses(hypotheses['d_min'], hypotheses['d_max'], F, 'inverse'),
                                dtype=torch.float32)
        return {'stack': torch.rand(*shapes['stack'], generator=g), 'focus': focus.expand(B, F).contiguous()}
    B, D = shapes['depths']
    d = torch.as_tensor(depth_hypotheses(hypotheses['d_min'], hypotheses['d_max'], D, hypotheses['spacing']),
                        dtype=torch.float32)
    return {'image': torch.rand(*shapes['image'], generator=g), 'cost_volume': torch.rand(*shapes['cost_volume'], generator=g),
            'depths': d.expand(B, D).contiguous()}


class _Eval(torch.nn.Module):
    """Wraps a model so that the exported graph returns exactly (depth, uncertainty)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, *args):
        depth, unc = self.model(*args)
        return depth, unc


def export_onnx(model: torch.nn.Module, inputs: dict, path: Path, dynamic_axes: Optional[dict] = None) -> None:
    """ONNX of ``model`` on ``inputs``; ``dynamic_axes`` as for :func:`torch.onnx.export` (None: static)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(_Eval(model), tuple(inputs.values()), str(path), input_names=list(inputs),
                          output_names=['depth', 'uncertainty'], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True, dynamic_axes=dynamic_axes)
    import onnx
    onnx.checker.check_model(onnx.load(str(path)))


def export_torch_program(model: torch.nn.Module, inputs: dict, path: Path,
                         dynamic_shapes=None) -> Optional[str]:
    """``torch.export`` program saved to ``path``; returns None (and warns) if export fails.

    ``dynamic_shapes``: one spec per input (a dict axis -> Dim, or None), None = static.
    """
    try:
        ep = torch.export.export(_Eval(model), tuple(inputs.values()), strict=False,
                                 dynamic_shapes=None if dynamic_shapes is None else (tuple(dynamic_shapes),))
        torch.export.save(ep, str(path))
        return path.name
    except Exception as exc:  # noqa: BLE001 - report and fall back to ONNX-only
        warnings.warn(f'torch.export failed for {path.stem}: {exc!r}; manifest gets torch_program=null')
        if path.exists():
            path.unlink()
        return None


def onnx_max_abs_diff(onnx_path: Path, model: torch.nn.Module, inputs: dict) -> float:
    """Largest |onnxruntime - torch eager| over both outputs on ``inputs``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    got = sess.run(['depth', 'uncertainty'], {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        ref = _Eval(model)(*inputs.values())
    return float(max(np.abs(g - r.numpy()).max() for g, r in zip(got, ref)))


def export_model(model: torch.nn.Module, family: str, onnx_path: Path | str, *, image_size: Sequence[int],
                 num_hypotheses: Optional[int], num_frames: Optional[int], hypotheses: dict,
                 train_focus_range: Sequence[float], training: dict, validation: dict,
                 torch_program: bool = True, name: Optional[str] = None) -> Path:
    """Write ONNX, optional .pt2 and the manifest; returns the manifest path."""
    onnx_path = Path(onnx_path)
    name = name or onnx_path.stem
    model = model.cpu().eval()
    shapes = input_shapes(family, image_size, num_hypotheses, num_frames)
    inputs = example_inputs(family, shapes, hypotheses)
    export_onnx(model, inputs, onnx_path)
    prog = export_torch_program(model, inputs, onnx_path.with_suffix('.pt2')) if torch_program else None
    W = int(image_size[1])
    manifest = {
        'name': name,
        'family': family,
        'onnx': onnx_path.name,
        'sha256': sha256_file(onnx_path),
        'torch_program': prog,
        'inputs': shapes,
        'outputs': {'depth': [1, 1, int(image_size[0]), W], 'uncertainty': [1, 1, int(image_size[0]), W]},
        'image_size': [int(image_size[0]), W],
        'num_hypotheses': None if family == 'dfv' else int(num_hypotheses),
        'num_frames': int(num_frames) if family == 'dfv' else None,
        'hypotheses': {k: hypotheses[k] for k in ('d_min', 'd_max', 'spacing')},
        'train_focus_range': [float(train_focus_range[0]), float(train_focus_range[1])],
        'reference_frame': 'farthest',
        'max_coc_px': default_max_coc_px(W),
        'batch': 1,
        'params': count_parameters(model),
        'normalisation': 'RGB in [0, 1]; ImageNet mean/std applied inside the graph; cost volume as '
                         'ddfs_ros.cost_volume.CostVolume returns it (tanh + per-pixel min-max)',
        'frame_order': 'near_to_far' if family == 'dfv' else 'any',
        'opset': OPSET,
        'training': training,
        'validation': validation,
    }
    man_path = onnx_path.with_suffix('.json')
    man_path.write_text(json.dumps(manifest, indent=1, default=_json_default))
    return man_path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def _train_focus_range(cache: Path, default: Sequence[float]) -> list[float]:
    """Median nearest and farthest focus distance of the training stacks, at scale k = 1 (m)."""
    meta = cache / 'train_meta.json'
    if not meta.exists():
        return [float(default[0]), float(default[1])]
    samples = json.loads(meta.read_text())['samples']
    near = np.median([min(s['focus_m']) / s['k'] for s in samples])
    far = np.median([max(s['focus_m']) / s['k'] for s in samples])
    return [float(near), float(far)]


def export_checkpoint(ckpt: Path | str, onnx_path: Path | str, torch_program: bool = True,
                      check: bool = False) -> Path:
    ck = torch.load(ckpt, map_location='cpu', weights_only=False)
    family, conf = ck['family'], ck['config']
    model = build_model(family, **ck['model_kwargs'])
    model.load_state_dict(ck['model'])
    d = conf['data']
    size = int(d.get('size', 128))
    hyps = {'d_min': float(d.get('d_min', 0.1)), 'd_max': float(d.get('d_max', 3.0)),
            'spacing': d.get('spacing', 'depth')}
    frames = d.get('frames', 5)
    summary_path = Path(ckpt).with_name('summary.json')
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    training = {
        'config': conf,
        'checkpoint': str(ckpt),
        'step': ck['step'],
        'train_time_s': ck.get('train_time_s'),
        'sec_per_step': summary.get('sec_per_step'),
        'images_per_sec': summary.get('images_per_sec'),
        'device': summary.get('device', 'cpu'),
        'threads': summary.get('threads'),
    }
    val = dict(ck.get('val') or {})
    val['split'] = f"{d.get('cache')}/val.npz (held-out camera settings: f-number {d.get('holdout_f_number', [3.2, 4.0])}, " \
                   f"focal length {d.get('holdout_focal_length_mm', [10, 14])} mm)"
    man = export_model(
        model, family, onnx_path, image_size=(size, size),
        num_hypotheses=ck['model_kwargs'].get('num_hypotheses'),
        num_frames=ck['model_kwargs'].get('num_frames', frames if np.isscalar(frames) else None),
        hypotheses=hyps, train_focus_range=_train_focus_range(Path(d['cache']), (hyps['d_min'], hyps['d_max'])),
        training=training, validation=val, torch_program=torch_program)
    if check:
        m = json.loads(man.read_text())
        inputs = example_inputs(family, m['inputs'], hyps, seed=1)
        print(f'onnxruntime vs torch eager: max abs diff {onnx_max_abs_diff(Path(onnx_path), model, inputs):.3e} m')
    return man


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description='Export a checkpoint to ONNX + manifest (+ torch.export program).')
    ap.add_argument('checkpoint')
    ap.add_argument('--out', required=True, help='engines/NAME.onnx')
    ap.add_argument('--no-pt2', action='store_true', help='skip the torch.export program')
    ap.add_argument('--check', action='store_true', help='compare onnxruntime with torch eager')
    a = ap.parse_args(argv)
    man = export_checkpoint(a.checkpoint, a.out, torch_program=not a.no_pt2, check=a.check)
    m = json.loads(man.read_text())
    print(f'wrote {a.out} ({Path(a.out).stat().st_size / 1e6:.2f} MB), {man}, torch_program={m["torch_program"]}')


if __name__ == '__main__':
    main()
