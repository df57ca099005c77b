"""Train a DDFS / DFV / dfv_cv network.

    python -m training.train --model ddfs --config training/configs/ddfs_s.yaml [--out DIR]
        [--resume] [--steps N]
    torchrun --nproc_per_node=8 -m training.train --model ddfs --config ...   # DDP

The YAML has three sections: ``model`` (``width``, ``num_hypotheses``/``num_frames``,
``use_diff``), ``data`` (:class:`training.data.DataConfig` fields plus ``cache``,
``train_count``, ``val_count``, ``seed``) and ``train`` (``steps``, ``batch``, ``lr``,
``val_every``, ``ckpt_every``, ``threads``, ``seed``).  The rendered splits are read
from ``data.cache`` and rendered there first if missing.

Outputs in ``--out`` (default ``checkpoints/<config name>``): ``last.pt`` (weights,
optimiser, step; ``--resume`` continues from it), ``best.pt`` (best validation AbsRel),
``log.csv`` (step, loss, lr, seconds per step, validation metrics) and ``summary.json``.
Adam with a cosine learning-rate decay; validation computes the metrics of
DESIGN.md section 8 with :mod:`ddfs_ros.eval.metrics`.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from .config import load_config
from .data import CachedDataset, DataConfig, build_cache
from .losses import ddfs_loss, dfv_loss
from .models import build_model, count_parameters

VAL_KEYS = ('absrel', 'rms', 'delta1', 'mae', 'avg_unc')




def model_kwargs(conf: dict, family: str) -> dict:
    m = dict(conf.get('model', {}))
    m.pop('family', None)
    d = conf.get('data', {})
    kw = {'width': float(m.get('width', 1.0))}
    if family in ('ddfs', 'dfv_cv'):
        kw['num_hypotheses'] = int(d.get('num_hypotheses', m.get('num_hypotheses', 32)))
    if family == 'dfv':
        frames = d.get('frames', m.get('num_frames', 5))
        kw['num_frames'] = int(frames if np.isscalar(frames) else frames[0])
    if family in ('dfv', 'dfv_cv') and 'use_diff' in m:
        kw['use_diff'] = bool(m['use_diff'])
    return kw


def data_config(conf: dict, family: str) -> DataConfig:
    d = dict(conf['data'])
    # a cache may serve several families (both set in the YAML); else render only what this one needs
    d.setdefault('want_stack', family == 'dfv')
    d.setdefault('want_cost', family != 'dfv')
    return DataConfig.from_dict(d)


def ensure_split(conf: dict, family: str, split: str, workers: int = 1) -> Path:
    """The cached split's npz, rendered first if missing."""
    d = conf['data']
    path = Path(d['cache']) / f'{split}.npz'
    if not path.exists():
        build_cache(data_config(conf, family), split, int(d.get(f'{split}_count', 64)), Path(d['cache']),
                    seed=int(d.get('seed', 0)), workers=workers)
    return path


def model_inputs(family: str, batch: dict) -> tuple:
    if family == 'dfv':
        return batch['stack'], batch['focus_sorted']
    return batch['image'], batch['cost'], batch['depths']


def compute_loss(family: str, out: dict, batch: dict) -> torch.Tensor:
    gt = batch['gt'].unsqueeze(1)
    if family == 'dfv':
        return dfv_loss(out['multi'], gt, batch['focus_sorted'])
    return ddfs_loss(out['multi'], gt, batch['depths'])


@torch.no_grad()
def validate(model: torch.nn.Module, family: str, dataset, device, batch_size: int = 8) -> dict:
    """Mean metrics (DESIGN.md section 8) over a split; every ground-truth pixel is scored."""
    from ddfs_ros.eval.metrics import aggregate, compute_metrics

    was_training = model.training
    model.eval()
    rows = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        depth, unc = model(*model_inputs(family, batch))
        for p, u, g in zip(depth[:, 0].cpu().numpy(), unc[:, 0].cpu().numpy(), batch['gt'].cpu().numpy()):
            rows.append(compute_metrics(p, g, u))
    model.train(was_training)
    return aggregate(rows)


def _infinite(loader: DataLoader) -> Iterator[dict]:
    epoch = 0
    while True:
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(epoch)
        for b in loader:
            yield b
        epoch += 1


def train(conf: dict, family: str, out: Path, resume: bool = False, steps: Optional[int] = None,
          progress: bool = True) -> dict:
    """Run (or continue) a training; returns the summary dict also written to ``out/summary.json``."""
    t_cfg = conf.get('train', {})
    total_steps = int(steps if steps is not None else t_cfg.get('steps', 1000))
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    distributed = world > 1
    if distributed:
        dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
    if torch.cuda.is_available():
        local = int(os.environ.get('LOCAL_RANK', '0'))
        device = torch.device('cuda', local)
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')
        torch.set_num_threads(int(t_cfg.get('threads', max(1, (os.cpu_count() or 1) // world))))
    seed = int(t_cfg.get('seed', 0))
    torch.manual_seed(seed + rank)
    main = rank == 0
    out = Path(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)

    last = out / 'last.pt'
    if resume and last.exists() and (out / 'summary.json').exists():
        done = torch.load(last, map_location='cpu', weights_only=False)['step']
        if done >= total_steps:
            # finished already (a rerun of train_all.sh): keep the run's own summary
            if distributed:
                dist.destroy_process_group()
            return json.loads((out / 'summary.json').read_text()) if main else {}
    if main:
        ensure_split(conf, family, 'train', int(t_cfg.get('render_workers', 1)))
        ensure_split(conf, family, 'val', int(t_cfg.get('render_workers', 1)))
    if distributed:
        dist.barrier()
    cache = Path(conf['data']['cache'])
    crop = t_cfg.get('crop')
    train_set = CachedDataset(cache / 'train.npz', augment=True, seed=seed + rank, crop=int(crop) if crop else None)
    val_set = CachedDataset(cache / 'val.npz', augment=False)

    kwargs = model_kwargs(conf, family)
    model = build_model(family, **kwargs).to(device)
    n_params = count_parameters(model)
    lr = float(t_cfg.get('lr', 1e-3))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    min_lr = float(t_cfg.get('min_lr', lr * 0.02))
    # cosine decay from lr to min_lr; ``restart_at`` (a later phase resuming a run) starts a new cosine there
    start = int(t_cfg.get('restart_at', 0))

    def lr_factor(s: int) -> float:
        t = min(max(s - start, 0), total_steps - start) / max(total_steps - start, 1)
        return (min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))) / lr

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)

    step, best, history, train_time = 0, math.inf, [], 0.0
    if resume and last.exists():
        ck = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ck['model'])
        opt.load_state_dict(ck['optimizer'])
        sched.load_state_dict(ck['scheduler'])
        step, best, history = ck['step'], ck.get('best', math.inf), ck.get('history', [])
        train_time = ck.get('train_time_s', 0.0)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed else model

    batch_size = int(t_cfg.get('batch', 8))
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(train_set, seed=seed)
    else:
        sampler = RandomSampler(train_set, generator=torch.Generator().manual_seed(seed + step))
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, drop_last=True,
                        num_workers=int(t_cfg.get('loader_workers', 0)))
    batches = _infinite(loader)
    val_every = int(t_cfg.get('val_every', 250))
    ckpt_every = int(t_cfg.get('ckpt_every', val_every))
    log_path = out / 'log.csv'
    fields = ['step', 'loss', 'lr', 'sec_per_step', 'images_per_sec'] + [f'val_{k}' for k in VAL_KEYS]
    if main and (not log_path.exists() or not resume):
        with open(log_path, 'w', newline='') as fh:
            csv.DictWriter(fh, fieldnames=fields).writeheader()

    def save(path: Path, val: Optional[dict]) -> None:
        torch.save({'model': model.state_dict(), 'optimizer': opt.state_dict(), 'scheduler': sched.state_dict(),
                    'step': step, 'best': best, 'history': history, 'family': family,
                    'model_kwargs': kwargs, 'config': conf, 'params': n_params, 'val': val,
                    'train_time_s': train_time}, path)

    net.train()
    pbar = tqdm(total=total_steps, initial=step, desc=f'{conf.get("name", family)}', disable=not (main and progress),
                mininterval=5.0)
    run_loss, run_n, run_time = 0.0, 0, 0.0
    val = None
    while step < total_steps:
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        t0 = time.perf_counter()
        out_d = net(*model_inputs(family, batch))
        loss = compute_loss(family, out_d, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        dt = time.perf_counter() - t0
        step += 1
        train_time += dt
        loss_value = float(loss.detach())
        run_loss += loss_value
        run_n += 1
        run_time += dt
        pbar.update(1)
        pbar.set_postfix(loss=f'{loss_value:.4f}', refresh=False)
        is_val = step % val_every == 0 or step == total_steps
        if main and (is_val or step % int(t_cfg.get('log_every', 25)) == 0):
            row = {'step': step, 'loss': run_loss / run_n, 'lr': sched.get_last_lr()[0],
                   'sec_per_step': run_time / run_n, 'images_per_sec': batch_size * world * run_n / run_time}
            if is_val:
                val = validate(model, family, val_set, device)
                row.update({f'val_{k}': val[k] for k in VAL_KEYS})
                history.append({'step': step, **{k: val[k] for k in VAL_KEYS}})
                if val['absrel'] < best:
                    best = val['absrel']
                    save(out / 'best.pt', val)
                tqdm.write(f'[{conf.get("name")}] step {step} loss {row["loss"]:.4f} '
                           f'val absrel {val["absrel"]:.4f} rms {val["rms"]:.4f} delta1 {val["delta1"]:.1f}')
            with open(log_path, 'a', newline='') as fh:
                csv.DictWriter(fh, fieldnames=fields).writerow(row)
            run_loss, run_n, run_time = 0.0, 0, 0.0
        if main and (step % ckpt_every == 0 or step == total_steps):
            save(last, val)
    pbar.close()
    summary = {}
    if main:
        summary = {'name': conf.get('name'), 'family': family, 'params': n_params, 'steps': step,
                   'batch': batch_size, 'world_size': world, 'train_time_s': train_time,
                   'sec_per_step': train_time / max(step, 1),
                   'images_per_sec': batch_size * world * step / max(train_time, 1e-9),
                   'threads': torch.get_num_threads(), 'device': str(device),
                   'best_val_absrel': best, 'final_val': val, 'history': history}
        (out / 'summary.json').write_text(json.dumps(summary, indent=1))
    if distributed:
        dist.destroy_process_group()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description='Train a ddfs / dfv / dfv_cv network.')
    ap.add_argument('--model', choices=('ddfs', 'dfv', 'dfv_cv'), default=None,
                    help='family (default: the config\'s model.family)')
    ap.add_argument('--config', required=True)
    ap.add_argument('--out', default=None, help='default checkpoints/<config name>')
    ap.add_argument('--resume', action='store_true')
    ap.add_argument('--steps', type=int, default=None)
    ap.add_argument('--no-progress', action='store_true')
    a = ap.parse_args(argv)
    conf = load_config(a.config)
    family = a.model or conf.get('model', {}).get('family')
    if family is None:
        ap.error('--model is required when the config has no model.family')
    out = Path(a.out or Path('checkpoints') / conf['name'])
    summary = train(conf, family, out, resume=a.resume, steps=a.steps, progress=not a.no_progress)
    if summary:
        print(json.dumps({k: v for k, v in summary.items() if k != 'history'}, indent=1))


if __name__ == '__main__':
    main()
