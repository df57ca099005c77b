"""Train a focus network (``training/models/focusnets.py``) on rendered shards; resumable.

    python -m training.train_focus --config training/configs/ddfs_s.yaml

The run lives in ``checkpoints/<name>/`` (git-ignored): ``last.pt`` (weights, optimiser,
samples seen; rewritten at every validation), ``best.pt`` (weights of the best
validation AbsRel), ``curve.csv`` (samples seen, validation AbsRel / delta1, training
loss, wall time) and ``log.txt``.  ``training/weights/<name>.pt`` -- weights and samples
seen only, small -- is what gets committed so that a later session resumes with
``--resume`` even without ``checkpoints/`` (a fresh optimiser then).

Loss: relative L1, ``|d_hat - g| / g`` with the ground truth clamped into the range
the network can output (the hypotheses for the cost-volume family, the focus range for
DFV), over valid pixels: scene scale does not weigh in, near errors count like far ones.
Learning rate: AdamW, linear warm-up then cosine from ``lr`` to 5 % of it over
``samples_target`` samples (then flat), so that a run split over sessions follows one
schedule; ``schedule_start`` (samples) restarts it there, for a fine-tune.  Validation:
the whole validation split at full size, every ``val_every`` samples, with the classical
focus measure scored once on the same stacks as the bar to beat.  Checkpoints are chosen on validation only.
``train.freeze_bn: true`` trains with every BatchNorm layer in eval mode (its running
statistics fixed, its affine weights still learned): the network then trains with the
normalisation the node runs, which no batch of 64 px crops shifts (session 16).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ddfs_ros.engines.torch_backend import cpu_has_fast_bf16
from ddfs_ros.focus_bins import extrapolated_focus

from .config import load_config
from .models.focusnets import CostFocusUNet, FocusStackNet, data_options
from .stack_data import ShardDataset, data_parts, training_parts, validation_parts


def build(family: str, model_kwargs: dict) -> torch.nn.Module:
    if family == 'ddfs':
        return CostFocusUNet(**model_kwargs)
    if family == 'dfv':
        return FocusStackNet(**model_kwargs)
    raise ValueError(f'unknown family {family!r}')


def forward(model: torch.nn.Module, family: str, batch: dict):
    if family == 'dfv':
        return model(batch['stack'], batch['focus'])
    if 'frames' in batch:
        return model(batch['image'], batch['cost_volume'], batch['depths'], batch['focus_volume'],
                     batch['frames'], batch['curve_weights'])
    return model(batch['image'], batch['cost_volume'], batch['depths'], batch['focus_volume'])


def output_range(family: str, batch: dict, model: Optional[torch.nn.Module] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """B x 1 x 1 x 1 lowest and highest depth the network can output (m)."""
    v = batch['focus'] if family == 'dfv' else batch['depths']
    if family == 'dfv' and model is not None:
        v = extrapolated_focus(v, getattr(model, 'extrapolate', 0))
    return v.amin(dim=1).view(-1, 1, 1, 1), v.amax(dim=1).view(-1, 1, 1, 1)


def relative_l1(depth: torch.Tensor, gt: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Mean of |depth - clamp(gt)| / clamp(gt) over valid pixels (B x 1 x H x W, m)."""
    g = gt[:, None] if gt.dim() == 3 else gt
    valid = torch.isfinite(g) & (g > 0)
    gc = torch.minimum(torch.maximum(torch.where(valid, g, lo), lo), hi)
    err = (depth - gc).abs() / gc
    return err[valid].mean()


def lr_at(samples: int, base: float, target: int, warmup: int, start: int = 0) -> float:
    """Learning rate at ``samples``: warm-up then cosine to 5 % of ``base`` at ``target``;
    ``start`` > 0 restarts that schedule there (a fine-tune of trained weights on new data
    with its own warm-up and anneal)."""
    samples, target = samples - start, target - start
    if samples < warmup:
        return base * (0.1 + 0.9 * samples / warmup)
    t = min(1.0, (samples - warmup) / max(1, target - warmup))
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def absrel_delta1(depth: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """AbsRel and delta1 (%) of one depth map (m) on the pixels with ground truth."""
    v = np.isfinite(gt) & (gt > 0)
    d, g = depth[v], gt[v]
    return float(np.mean(np.abs(d - g) / g)), float(np.mean(np.maximum(d / g, g / d) < 1.25) * 100)


def mean_scores(absrel: Sequence[float], delta1: Sequence[float]) -> dict:
    """Per-stack AbsRel and delta1 (%) averaged, with their count; none scored (the focus measure
    on a split of aperture pairs only) gives nulls, which JSON can hold (NaN it cannot)."""
    if not absrel:
        return {'abs_rel': None, 'delta1': None, 'count': 0}
    return {'abs_rel': float(np.mean(absrel)), 'delta1': float(np.mean(delta1)), 'count': len(absrel)}


def set_training_mode(model: torch.nn.Module, freeze_bn: bool = False) -> torch.nn.Module:
    """``model.train()``; with ``freeze_bn`` every BatchNorm layer stays in eval mode: it
    normalises with its running statistics and leaves them alone (its affine weights still
    train), so training sees the normalisation inference uses, whatever the batch."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


@torch.no_grad()
def validate(model: torch.nn.Module, family: str, data: ShardDataset, batch: int = 8) -> dict:
    """AbsRel and delta1 (%) of the full-size validation stacks (per image, then averaged);
    every module's training mode is restored afterwards (frozen BatchNorm layers stay frozen)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    absrel, d1 = [], []
    for s in range(0, len(data), batch):
        items = [data[i] for i in range(s, min(len(data), s + batch))]
        b = {k: torch.stack([it[k] for it in items]) for k in items[0]}
        depth, _ = forward(model, family, b)
        for i in range(depth.shape[0]):
            a, d = absrel_delta1(depth[i, 0].numpy(), b['gt'][i].numpy())
            absrel.append(a)
            d1.append(d)
    for m, mode in modes:
        m.train(mode)
    return mean_scores(absrel, d1)


def is_growth_parameter(model: torch.nn.Module, name: str) -> bool:
    """Whether parameter ``name`` is one the model may add when grown (its ``growth_keys`` prefixes)."""
    prefixes = tuple(getattr(model, 'growth_keys', ()))
    return bool(prefixes) and name.startswith(prefixes)


def param_groups(model: torch.nn.Module, growth_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: the parameters a grown network added (``growth_keys``) learn
    ``growth_lr_scale`` times faster (they start from nothing while the rest is trained;
    measured: the dfv extrapolation bias moved 0.003 in 500 steps at the base rate)."""
    named = list(model.named_parameters())
    growth = [p for k, p in named if is_growth_parameter(model, k)]
    if not growth or growth_lr_scale == 1.0:
        # one group in the model's own order, which a saved optimiser state refers to
        return [{'params': [p for _, p in named], 'lr_scale': 1.0}]
    return [{'params': [p for k, p in named if not is_growth_parameter(model, k)], 'lr_scale': 1.0},
            {'params': growth, 'lr_scale': float(growth_lr_scale)}]


def load_grown(model: torch.nn.Module, state: dict) -> bool:
    """Load ``state``; a weight with fewer input channels than the model's (a network given
    more inputs, e.g. ``focus_curve``) fills the leading channels and the new ones start
    at zero, so the grown network computes exactly what the old one did; parameters the
    model lists in ``growth_keys`` (prefixes) and the state lacks keep their initial
    values, which the model chose so that it starts where the old one was.  True if grown."""
    own = model.state_dict()
    new = [k for k in own if k not in state]
    if not all(is_growth_parameter(model, k) for k in new):
        raise ValueError(f'checkpoint lacks {new}; only {list(getattr(model, "growth_keys", ()))} may be new')
    grown = bool(new)
    state = {**state, **{k: own[k] for k in new}}
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            if own[k].dim() != v.dim() or own[k].dim() < 2 or own[k].shape[0] != v.shape[0] \
                    or own[k].shape[2:] != v.shape[2:] or own[k].shape[1] < v.shape[1]:
                raise ValueError(f'checkpoint weight {k} {tuple(v.shape)} cannot grow into {tuple(own[k].shape)}')
            w = torch.zeros_like(own[k])
            w[:, :v.shape[1]] = v
            state = {**state, k: w}
            grown = True
    model.load_state_dict(state)
    return grown


def validate_all(model: torch.nn.Module, family: str, vals: Sequence[ShardDataset]) -> list[dict]:
    """:func:`validate` on each validation set."""
    return [validate(model, family, v) for v in vals]


def pooled(results: Sequence[dict]) -> dict:
    """Stack-weighted mean of several :func:`validate` results (the checkpoint selection metric)."""
    n = sum(r['count'] for r in results)
    return {'abs_rel': sum(r['abs_rel'] * r['count'] for r in results) / n,
            'delta1': sum(r['delta1'] * r['count'] for r in results) / n, 'count': n}


def focus_measure_on(data: ShardDataset) -> dict:
    """The classical baseline on the same validation stacks: AbsRel and delta1 (%)."""
    from ddfs_ros.baselines import focus_measure_depth
    absrel, d1 = [], []
    a = data.arrays
    for i in range(len(data)):
        F = int(a['nframes'][i])
        focus = a['focus'][i, :F].astype(np.float64)
        if np.unique(focus).size < F:      # aperture pairs: nothing to peak over
            continue
        frames = np.moveaxis(a['frames'][i, :F].astype(np.float32) / 255.0, 1, -1)
        d, _ = focus_measure_depth(frames, focus)
        ar, dl = absrel_delta1(d, a['gt'][i])
        absrel.append(ar)
        d1.append(dl)
    return mean_scores(absrel, d1)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', required=True)
    ap.add_argument('--resume', action='store_true', help='continue checkpoints/<name>/last.pt or training/weights/<name>.pt')
    ap.add_argument('--hours', type=float, default=None, help='stop after this wall time')
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--amp', choices=['fp32', 'bf16'], default=None,
                    help="training precision (default: the config's train.amp, else fp32); validation is fp32")
    a = ap.parse_args(argv)
    conf = load_config(a.config)
    name, family = conf['name'], conf['model']['family']
    t = conf['train']
    out = Path(conf.get('out', f'checkpoints/{name}'))
    out.mkdir(parents=True, exist_ok=True)
    weights = Path('training/weights') / f'{name}.pt'
    torch.set_num_threads(a.threads)
    torch.manual_seed(int(t.get('seed', 0)))

    model = build(family, conf['model'].get('kwargs', {}))
    opt = torch.optim.AdamW(param_groups(model, float(t.get('growth_lr_scale', 1.0))), lr=float(t['lr']),
                            weight_decay=float(t.get('weight_decay', 1e-4)))
    samples, best, wall0, selected_on = 0, float('inf'), 0.0, None
    rewarm_from = None     # a fresh optimiser on trained weights ramps its rate up again
    # last.pt holds the optimiser too; the committed weights (a fresh clone) only the model
    resume_from = next((p for p in (out / 'last.pt', weights) if p.exists()), None) if a.resume else None
    if resume_from is not None:
        ck = torch.load(resume_from, map_location='cpu', weights_only=False)
        if load_grown(model, ck['model']):
            print('resumed into a grown model (new inputs or parameters): optimiser state restarted', flush=True)
            rewarm_from = ck['samples']
        elif 'opt' in ck and len(ck['opt']['param_groups']) == len(opt.param_groups):
            scales = [g['lr_scale'] for g in opt.param_groups]       # the config's, not the saved ones
            opt.load_state_dict(ck['opt'])
            for g, sc in zip(opt.param_groups, scales):
                g['lr_scale'] = sc
        else:
            print('resumed with other parameter groups: optimiser state restarted', flush=True)
            rewarm_from = ck['samples']
        samples, best, wall0 = ck['samples'], ck.get('best', best), ck.get('wall_s', 0.0)
        selected_on = ck.get('selected_on')
    log = open(out / 'log.txt', 'a')

    def say(msg: str) -> None:
        line = f'{time.strftime("%H:%M:%S")} {msg}'
        print(line, flush=True)
        log.write(line + '\n')
        log.flush()

    parts = data_parts(conf['data'])
    train_folders = [parts[i][1] for i in training_parts(conf['data'])]
    amp = (a.amp or t.get('amp', 'fp32')) == 'bf16'
    if amp and not cpu_has_fast_bf16():
        # emulated bf16 (a CPU without AVX512-BF16 / AMX) is several times slower than fp32
        say('bf16 asked, but this CPU has no fast bf16 (AVX512-BF16 / AMX): training in fp32')
        amp = False
    freeze_bn = bool(t.get('freeze_bn', False))
    # Validation: part 0's split (the curve, comparable across sessions) and the split of
    # every part marked ``val: true``; checkpoints are chosen on those named in
    # train.select_on pooled (default: all of them).
    val_folders = [parts[i][1] for i in validation_parts(conf['data'])]
    opts = data_options(model)
    vals = [ShardDataset(f, 'val', family, **opts) for f in val_folders]
    select_on = t.get('select_on') or [f.name for f in val_folders]
    chosen = [i for i, f in enumerate(val_folders) if f.name in select_on]
    if len(chosen) != len(select_on):
        raise ValueError(f'train.select_on {select_on} names a part that is not validated '
                         f'({[f.name for f in val_folders]})')
    selection = [val_folders[i].name for i in chosen]
    fm_path = out / 'focus_measure_val.json'
    if not fm_path.exists():
        fm_path.write_text(json.dumps(focus_measure_on(vals[0])))
    fm_sel_path = out / 'focus_measure_selection.json'
    fm_sel = json.loads(fm_sel_path.read_text()) if fm_sel_path.exists() else {}
    for f, v in zip(val_folders[1:], vals[1:]):
        if f.name not in fm_sel:
            fm_sel[f.name] = focus_measure_on(v)
    fm_sel_path.write_text(json.dumps(fm_sel))
    if selected_on != selection and (out / 'best.pt').exists():
        # the validation set changed: the best so far must be measured on the new one
        ref_ck = torch.load(out / 'best.pt', map_location='cpu', weights_only=False)
        ref = build(family, ref_ck['config']['model'].get('kwargs', {}))
        ref.load_state_dict(ref_ck['model'])
        # an older, smaller network takes fewer inputs than the one trained now
        ref_opts = data_options(ref)
        ref_vals = [vals[i] if ref_opts == opts else ShardDataset(val_folders[i], 'val', family, **ref_opts)
                    for i in chosen]
        best = pooled(validate_all(ref, family, ref_vals))['abs_rel']
        say(f'validation now on {selection}: the previous best.pt scores {best:.4f} there')
    elif selected_on != selection:
        # no best.pt to re-measure (e.g. another run's weights): a figure from another
        # validation set must not keep every checkpoint of this one from being chosen
        best = float('inf')
        say(f'validation now on {selection}: no best.pt yet, the first check sets it')
    say(f'{name}: {sum(p.numel() for p in model.parameters())} parameters, '
        f'{" + ".join(str(len(v)) for v in vals)} validation stacks ({", ".join(f.name for f in val_folders)}; '
        f'best.pt chosen on {", ".join(selection)}), '
        f'focus measure on them {json.loads(fm_path.read_text())} {fm_sel}, resuming at {samples} samples, '
        f'{"bf16 autocast" if amp else "fp32"}{", BatchNorm frozen" if freeze_bn else ""}, training shards in {", ".join(map(str, train_folders))}')
    curve = out / 'curve.csv'
    columns = 'samples,val_abs_rel,val_delta1,train_loss,wall_s,lr,selection_abs_rel'
    if not curve.exists():
        curve.write_text(columns + '\n')
    elif curve.read_text().splitlines()[0] != columns:
        rows = curve.read_text().splitlines()
        curve.write_text('\n'.join([columns] + [r + ',' for r in rows[1:]]) + '\n')

    batch, crop = int(t['batch']), int(t['crop'])
    target, warmup = int(t['samples_target']), int(t.get('warmup', 4000))
    schedule_start = int(t.get('schedule_start', 0))
    val_every = int(t['val_every'])
    stop_at = time.time() + a.hours * 3600 if a.hours else None
    t_start = time.time()
    next_val = (samples // val_every + 1) * val_every
    losses: list = []
    set_training_mode(model, freeze_bn)
    while True:
        # re-read the shards every pass: a renderer may have added some (the previous pass's
        # arrays go first: both at once would not fit in memory)
        data = loader = None
        data = ShardDataset(train_folders, 'train', family, crop=crop, seed=samples, **opts)
        loader = DataLoader(data, batch_size=batch, shuffle=True, num_workers=int(t.get('workers', 1)),
                            drop_last=True, persistent_workers=False)
        say(f'pass over {data.num_shards} shards ({len(data)} stacks)')
        for b in loader:
            lr = lr_at(samples, float(t['lr']), target, warmup, schedule_start)
            # (a restarted schedule has its own warm-up)
            if rewarm_from is not None and rewarm_from > schedule_start and samples - rewarm_from < warmup:
                lr *= 0.1 + 0.9 * (samples - rewarm_from) / warmup
            for g in opt.param_groups:
                g['lr'] = lr * g.get('lr_scale', 1.0)
            # bf16 autocast: ~2x per step on CPUs with AMX / AVX512-BF16 (measured, training/README.md)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
                o = forward(model, family, b)
            lo, hi = output_range(family, b, model)
            loss = relative_l1(o['depth'], b['gt'], lo, hi)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            losses.append(loss.item())
            samples += batch
            if samples >= next_val:
                next_val += val_every
                each = validate_all(model, family, vals)
                v, sel = each[0], pooled([each[i] for i in chosen])
                wall = wall0 + time.time() - t_start
                tl = float(np.mean(losses)) if losses else float('nan')
                losses = []
                with open(curve, 'a') as fh:
                    csv.writer(fh).writerow([samples, f'{v["abs_rel"]:.5f}', f'{v["delta1"]:.3f}', f'{tl:.5f}',
                                             f'{wall:.0f}', f'{lr:.2e}', f'{sel["abs_rel"]:.5f}'])
                improved = sel['abs_rel'] < best
                if improved:
                    best = sel['abs_rel']
                    torch.save({'model': model.state_dict(), 'samples': samples, 'val': v, 'selection': sel,
                                'selected_on': selection, 'family': family, 'config': conf}, out / 'best.pt')
                state = {'model': model.state_dict(), 'opt': opt.state_dict(), 'samples': samples, 'best': best,
                         'selected_on': selection, 'wall_s': wall, 'family': family, 'config': conf}
                torch.save(state, out / 'last.pt')
                weights.parent.mkdir(parents=True, exist_ok=True)
                torch.save({'model': model.state_dict(), 'samples': samples, 'best': best, 'selected_on': selection,
                            'wall_s': wall, 'family': family}, weights)
                say(f'{samples} samples: train loss {tl:.4f}, val AbsRel {v["abs_rel"]:.4f} d1 {v["delta1"]:.1f} %, '
                    f'selection AbsRel {sel["abs_rel"]:.4f} ({" / ".join("%.4f" % e["abs_rel"] for e in each)}) '
                    f'{"(best)" if improved else ""} lr {lr:.2e}, {wall:.0f} s')
                if stop_at and time.time() > stop_at:
                    say('time limit reached')
                    return
                # checked at the validation that reaches it, so last.pt and the weights file hold
                # exactly that checkpoint (a pass can run thousands of samples past it)
                if samples >= int(t.get('samples_max', 10 ** 9)):
                    say('samples_max reached')
                    return


if __name__ == '__main__':
    main()
