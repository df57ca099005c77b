"""Average the weights of checkpoints of one run (stochastic weight averaging), then
recompute the BatchNorm statistics on the run's own training data.

    python -m training.average_weights checkpoints/dfv_s_thin_pace/snap/*.pt \\
        --out checkpoints/dfv_s_swa/swa.pt [--batches 200] [--config training/configs/dfv_s.yaml]

At a low learning rate the weights wander around a minimum with the noise of the
batches: checkpoints a few thousand samples apart can differ by several per cent on the
same validation stacks, and their average is usually nearer the middle than any one of
them (Izmailov et al., UAI 2018).  Only checkpoints of one trajectory make sense (same
architecture, late in the schedule); the caller chooses which.  The average of BatchNorm
running statistics is not the statistics of the averaged network, so they are measured
again: ``batches`` training batches (the config's own parts, crop and batch size) through
the network in training mode without gradients, with a cumulative mean.

The output is a checkpoint like ``best.pt`` (``model``, ``config``, ``family``,
``samples`` = the latest of the inputs, ``averaged_from``), so ``export_focus`` and
``compare_checkpoints`` take it as they are.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from .config import load_config
from .stack_data import ShardDataset, data_parts, training_parts
from .train_focus import build, forward
from .models.focusnets import data_options


def average_state_dicts(states: Sequence[dict]) -> dict:
    """Element-wise mean of floating-point entries; integer entries (BatchNorm's
    ``num_batches_tracked``) are taken from the last state."""
    if not states:
        raise ValueError('nothing to average')
    keys = list(states[-1])
    for s in states:
        if list(s) != keys:
            raise ValueError('checkpoints of different architectures cannot be averaged')
    out = {}
    for k in keys:
        ref = states[-1][k]
        if torch.is_floating_point(ref):
            out[k] = torch.stack([s[k].to(torch.float64) for s in states]).mean(0).to(ref.dtype)
        else:
            out[k] = ref.clone()
    return out


class _Run(torch.nn.Module):
    """``model`` behind ``forward(batch) = run(model, batch)``, counting the batches: what
    :func:`~torch.optim.swa_utils.update_bn` calls for batches that are not plain tensors."""

    def __init__(self, model: torch.nn.Module, run: Callable) -> None:
        super().__init__()
        self.model, self.run, self.calls = model, run, 0
        self.train(model.training)      # update_bn restores the wrapper's mode, so it must be the model's

    def forward(self, batch):
        self.calls += 1
        return self.run(self.model, batch)


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Module, batches: Iterable, run: Callable) -> int:
    """Running mean / variance of every BatchNorm layer measured again over ``batches``
    (training batches, each passed as ``run(model, batch)``), cumulative
    (:func:`torch.optim.swa_utils.update_bn`); returns how many batches were used."""
    wrapped = _Run(model, run)
    update_bn(batches, wrapped)
    return wrapped.calls


def average_checkpoints(paths: Sequence[Path], batches: int = 200, threads: int = 2, seed: int = 0,
                        config: Optional[Path] = None, crop: Optional[int] = None) -> dict:
    """The averaged checkpoint (see the module docstring) of ``paths``; ``config`` for weights-only
    files (``training/weights/*.pt``), else the latest checkpoint's own; ``crop``: the window (px) of
    the BatchNorm batches, default the config's."""
    cks = [torch.load(p, map_location='cpu', weights_only=False) for p in paths]
    conf = load_config(config) if config else next((c['config'] for c in reversed(cks) if 'config' in c), None)
    if conf is None:
        raise ValueError('none of the checkpoints carries its config (train_focus checkpoints do): give --config')
    family = conf['model']['family']
    model = build(family, conf['model'].get('kwargs', {}))
    model.load_state_dict(average_state_dicts([c['model'] for c in cks]))
    torch.set_num_threads(threads)
    used = 0
    if batches > 0:
        parts = data_parts(conf['data'])
        folders = [parts[i][1] for i in training_parts(conf['data'])]
        t = conf['train']
        data = ShardDataset(folders, 'train', family, crop=int(crop or t['crop']), seed=seed, **data_options(model))
        gen = torch.Generator().manual_seed(seed)
        loader = DataLoader(data, batch_size=int(t['batch']), shuffle=True, drop_last=True, generator=gen)
        used = recompute_batchnorm(model, (b for _, b in zip(range(batches), loader)),
                                   lambda m, b: forward(m, family, b))
    return {'model': model.state_dict(), 'config': conf, 'family': family,
            'samples': max(int(c.get('samples', 0)) for c in cks),
            'averaged_from': [f'{p} ({int(c.get("samples", 0))} samples)' for p, c in zip(paths, cks)],
            'batchnorm_batches': used}


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('checkpoints', nargs='+', type=Path, help='train_focus checkpoints of one run')
    ap.add_argument('--out', required=True, type=Path)
    ap.add_argument('--batches', type=int, default=200, help='training batches for the BatchNorm statistics')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--config', type=Path, default=None,
                    help='the run\'s config, for weights-only files (training/weights/*.pt)')
    ap.add_argument('--crop', type=int, default=None, help='window (px) of the BatchNorm batches (default: '
                    'the config\'s training crop)')
    a = ap.parse_args(argv)
    ck = average_checkpoints(a.checkpoints, a.batches, a.threads, config=a.config, crop=a.crop)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ck, a.out)
    print(f'{a.out}: mean of {len(a.checkpoints)} checkpoints ({ck["samples"]} samples at most), '
          f'BatchNorm statistics from {ck["batchnorm_batches"]} training batches')


if __name__ == '__main__':
    main()
