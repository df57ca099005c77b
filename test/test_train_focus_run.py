"""train_focus end to end on tiny synthetic shards: selection over validation parts, resume, growth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ddfs_ros.optics import hypotheses_from_focus_span

S, D, F, N = 24, 8, 3, 4


def _shard(folder: Path, split: str, seed: int) -> None:
    """A shard in write_shard's layout with random frames and a random cost volume."""
    rng = np.random.default_rng(seed)
    focus = np.tile(1.0 / np.linspace(1 / 0.5, 1 / 2.0, F), (N, 1)).astype(np.float32)
    (folder / split).mkdir(parents=True, exist_ok=True)
    np.savez(folder / split / 'shard_0000.npz',
             frames=rng.integers(0, 256, (N, F, 3, S, S), dtype=np.uint8), focus=focus,
             f_numbers=np.full((N, F), 2.0, np.float32), nframes=np.full(N, F, np.int16),
             lens=np.tile([0.01, 1e-5], (N, 1)), gt=rng.uniform(0.6, 1.8, (N, S, S)).astype(np.float32),
             ref=np.zeros(N, np.int16), cost=rng.random((N, D, S, S)).astype(np.float16),
             depths=np.tile(hypotheses_from_focus_span(focus[0], D), (N, 1)).astype(np.float32))


def _tiny_conf(tmp: Path) -> dict:
    """A tiny ddfs run on the shards in ``tmp/a``, checkpoints in ``tmp/ck``."""
    return {'name': 'tiny', 'out': str(tmp / 'ck'),
            'model': {'family': 'ddfs', 'arch': 'unet_cv_fv', 'kwargs': {'num_hypotheses': D, 'widths': [4, 4, 4, 4]}},
            'data': {'cache': str(tmp / 'a'), 'family': 'ddfs', 'size': S, 'num_hypotheses': D},
            'train': {'batch': 2, 'crop': 16, 'lr': 1e-3, 'samples_target': 64, 'warmup': 4, 'val_every': 4,
                      'workers': 0}}


def _run(tmp: Path, conf: dict, samples_max: int) -> str:
    from training.train_focus import main
    conf = {**conf, 'train': {**conf['train'], 'samples_max': samples_max}}
    path = tmp / 'tiny.yaml'
    path.write_text(yaml.safe_dump(conf))
    main(['--config', str(path), '--resume'])
    return (tmp / 'ck' / 'log.txt').read_text()


def test_selection_over_val_parts_resume_and_growth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for part, seed in (('a', 0), ('b', 1)):
        for split in ('train', 'val'):
            _shard(tmp_path / part, split, seed + (10 if split == 'val' else 0))
    conf = _tiny_conf(tmp_path)
    log = _run(tmp_path, conf, 8)
    curve = (tmp_path / 'ck' / 'curve.csv').read_text().splitlines()
    assert curve[0].endswith(',selection_abs_rel') and len(curve) == 1 + 2
    assert torch.load(tmp_path / 'ck' / 'best.pt', weights_only=False)['selected_on'] == ['a']
    assert (tmp_path / 'training' / 'weights' / 'tiny.pt').is_file()

    # a validation part joins: the old best is measured on the new set before anything replaces it
    conf['data']['extra_train'] = [{'cache': str(tmp_path / 'b'), 'val': True}]
    _run(tmp_path, conf, 12)           # a pass over a and b is 8 samples: stops mid-pass, at the check of 12
    assert torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)['samples'] == 12
    assert torch.load(tmp_path / 'training' / 'weights' / 'tiny.pt', weights_only=False)['samples'] == 12
    log = _run(tmp_path, conf, 16)
    assert "validation now on ['a', 'b']" in log
    ck = torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)
    assert ck['samples'] == 16 and ck['selected_on'] == ['a', 'b']
    rows = [r.split(',') for r in (tmp_path / 'ck' / 'curve.csv').read_text().splitlines()[1:]]
    assert all(r[-1] == r[1] for r in rows[:2])          # one validation part: selection = part 0
    assert len(rows) == 4 and all(float(r[-1]) > 0 for r in rows)

    # select on part b only, and stop training on part a (its validation split is still logged)
    conf['train']['select_on'] = ['b']
    conf['data']['train'] = False
    log = _run(tmp_path, conf, 24)
    assert "validation now on ['b']" in log and 'best.pt chosen on b' in log
    assert 'training shards in ' + str(tmp_path / 'b') in log
    ck = torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)
    assert ck['selected_on'] == ['b']
    row = (tmp_path / 'ck' / 'curve.csv').read_text().splitlines()[-1].split(',')
    assert row[-1] != row[1]                                 # selection = part b, the curve = part a
    conf['train']['select_on'] = ['nope']
    with pytest.raises(ValueError, match='select_on'):
        _run(tmp_path, conf, 28)
    del conf['train']['select_on'], conf['data']['train']

    # growing the network by the focus curve resumes from the same weights, fresh optimiser
    conf['model']['kwargs']['focus_curve'] = True
    before = ck['model']
    _run(tmp_path, conf, 20)
    after = torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)
    assert after['samples'] == 28          # resumed at 24: stops at its first check past samples_max
    first = next(k for k in before if before[k].dim() == 4)
    assert after['model'][first].shape[1] == before[first].shape[1] + D
    assert after['model'][first][:, -D:].abs().sum() > 0     # the new channels started at 0 and learn


def test_weights_selected_on_another_validation_set_do_not_block_best(tmp_path, monkeypatch):
    """A fine-tune started from another run's weights (no best.pt here) chooses among its own checks."""
    monkeypatch.chdir(tmp_path)
    for split in ('train', 'val'):
        _shard(tmp_path / 'a', split, 10 if split == 'val' else 0)
    conf = _tiny_conf(tmp_path)
    from training.train_focus import build
    model = build('ddfs', conf['model']['kwargs'])
    (tmp_path / 'ck').mkdir()
    torch.save({'model': model.state_dict(), 'samples': 0, 'best': 1e-9, 'selected_on': ['elsewhere']},
               tmp_path / 'ck' / 'last.pt')
    log = _run(tmp_path, conf, 8)
    assert "validation now on ['a']: no best.pt yet" in log
    assert torch.load(tmp_path / 'ck' / 'best.pt', weights_only=False)['selected_on'] == ['a']


@pytest.mark.parametrize('fast', [True, False])
def test_bf16_training_only_where_the_cpu_computes_bf16(tmp_path, monkeypatch, fast):
    """train.amp bf16 runs bf16 autocast on a CPU with AVX512-BF16 / AMX and fp32 elsewhere
    (emulated bf16 is several times slower than fp32)."""
    import training.train_focus as tf
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tf, 'cpu_has_fast_bf16', lambda: fast)
    for split in ('train', 'val'):
        _shard(tmp_path / 'a', split, 0 if split == 'train' else 10)
    conf = _tiny_conf(tmp_path)
    conf['train']['amp'] = 'bf16'
    log = _run(tmp_path, conf, 4)
    assert ('bf16 autocast' in log) == fast
    assert ('no fast bf16' in log and 'training in fp32' in log) == (not fast)


def test_frozen_batchnorm_keeps_running_statistics_and_trains_the_rest(tmp_path, monkeypatch):
    """train.freeze_bn: BatchNorm normalises with its running statistics in training (they
    never move) while every weight, the BatchNorm affine ones included, still learns; the
    validations in between leave the layers frozen."""
    monkeypatch.chdir(tmp_path)
    for split in ('train', 'val'):
        _shard(tmp_path / 'a', split, 0 if split == 'train' else 10)
    conf = _tiny_conf(tmp_path)
    conf['train']['freeze_bn'] = True
    from training.train_focus import build
    model = build('ddfs', conf['model']['kwargs'])
    (tmp_path / 'ck').mkdir()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({'model': before, 'samples': 0}, tmp_path / 'ck' / 'last.pt')
    log = _run(tmp_path, conf, 12)                      # three validations on the way
    assert 'BatchNorm frozen' in log
    after = torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)['model']
    stats = [k for k in before if k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))]
    affine = [k for k in before if k.endswith('.1.weight') and before[k].dim() == 1]
    convs = [k for k in before if before[k].dim() == 4]
    assert stats and affine and convs
    assert all(torch.equal(before[k], after[k]) for k in stats)
    assert all(not torch.equal(before[k], after[k]) for k in convs)
    assert any(not torch.equal(before[k], after[k]) for k in affine)

    # unfrozen, the same run moves the statistics
    conf['train']['freeze_bn'] = False
    _run(tmp_path, conf, 16)
    moved = torch.load(tmp_path / 'ck' / 'last.pt', weights_only=False)['model']
    assert any(not torch.equal(after[k], moved[k]) for k in stats)


def test_validation_restores_each_layers_mode():
    from training.train_focus import build, set_training_mode, validate
    model = set_training_mode(build('ddfs', {'num_hypotheses': D, 'widths': [4, 4, 4, 4]}), freeze_bn=True)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert model.training and bn and not any(m.training for m in bn)
    validate(model, 'ddfs', [])
    assert model.training and not any(m.training for m in bn)
    set_training_mode(model)
    assert all(m.training for m in bn)


def test_plot_curves_keeps_the_committed_history_of_a_run_resumed_in_a_fresh_clone(tmp_path, monkeypatch):
    """checkpoints/<run>/curve.csv of a resumed run starts where it resumed: the committed
    curve keeps its earlier rows, the new rows replace any from there on."""
    import csv
    from training import plot_curves
    monkeypatch.chdir(tmp_path)
    cols = 'samples,val_abs_rel,val_delta1,train_loss,wall_s,lr,selection_abs_rel'

    def write(path: Path, rows) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cols + '\n' + ''.join(f'{s},{a},80.0,0.1,1,1e-4,{a}\n' for s, a in rows))

    write(tmp_path / 'training' / 'curves' / 'r.csv', [(100, 0.3), (200, 0.25), (300, 0.24)])
    write(tmp_path / 'checkpoints' / 'r' / 'curve.csv', [(300, 0.23), (400, 0.22)])
    (tmp_path / 'checkpoints' / 'r' / 'focus_measure_val.json').write_text('{"abs_rel": 0.4, "delta1": 60.0}')
    rows, fm = plot_curves.load('r')
    assert [(int(r['samples']), float(r['val_abs_rel'])) for r in rows] == [(100, 0.3), (200, 0.25), (300, 0.23),
                                                                           (400, 0.22)]
    assert fm == {'abs_rel': 0.4, 'delta1': 60.0}
    with open(tmp_path / 'training' / 'curves' / 'r.csv', newline='') as fh:
        assert len(list(csv.DictReader(fh))) == 4
    plot_curves.main(['--runs', 'r', '--out', str(tmp_path / 'c.png')])
    assert (tmp_path / 'c.png').stat().st_size > 0


def test_compare_checkpoints_scores_exported_checkpoints_beside_a_shipped_engine(tmp_path, monkeypatch, capsys):
    """A trained checkpoint is exported and scored on rendered validation stacks next to a reference."""
    from training.compare_checkpoints import comparison_table, main
    monkeypatch.chdir(tmp_path)
    for split in ('train', 'val'):
        _shard(tmp_path / 'a', split, 0 if split == 'train' else 10)
    conf = _tiny_conf(tmp_path)
    _run(tmp_path, conf, 4)
    ck = str(tmp_path / 'ck' / 'best.pt')
    main([ck, ck.replace('best', 'last'), '--source', 'procedural', '--variant', 'reference', '--count', '1',
          '--size', '64'])
    out = capsys.readouterr().out
    assert '1 stacks per variant (procedural' in out
    rows = [r for r in out.splitlines() if r.startswith('| ck_')]
    assert [r.split(' |')[0] for r in rows] == ['| ck_best', '| ck_last']
    assert all(float(r.split('|')[2]) > 0 for r in rows)       # a finite AbsRel for each
    # the changes are against the first reference
    table = comparison_table({'v1': {'ref': [0.1], 'new': [0.09]}, 'v2': {'ref': [0.2], 'new': [0.2]}}, 'ref')
    assert '| new | 0.0900 (-10.0 %) | 0.2000 (+0.0 %) | 0.1450 (-3.3 %) |' in table


def test_average_state_dicts_and_batchnorm_statistics_measured_again():
    from training.average_weights import average_state_dicts, recompute_batchnorm
    a = {'w': torch.tensor([1.0, 2.0]), 'n': torch.tensor(3)}
    b = {'w': torch.tensor([3.0, 6.0]), 'n': torch.tensor(7)}
    mean = average_state_dicts([a, b])
    assert torch.equal(mean['w'], torch.tensor([2.0, 4.0])) and int(mean['n']) == 7
    with pytest.raises(ValueError):
        average_state_dicts([a, {'v': torch.zeros(2)}])
    bn = torch.nn.BatchNorm1d(2, momentum=0.1)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 2, generator=gen) * torch.tensor([1.0, 3.0]) + torch.tensor([5.0, -2.0]) for _ in range(4)]
    bn.eval()
    assert recompute_batchnorm(bn, batches, lambda m, x: m(x)) == 4
    whole = torch.cat(batches)
    torch.testing.assert_close(bn.running_mean, whole.mean(0))                  # equal batches: the mean of means
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    assert bn.momentum == 0.1 and not bn.training


def test_average_weights_of_a_tiny_run_exports(tmp_path, monkeypatch):
    """best.pt and last.pt of a tiny run averaged, BatchNorm measured on its own shards, exported."""
    from training.average_weights import main
    from training.export_focus import export_checkpoint
    monkeypatch.chdir(tmp_path)
    for split in ('train', 'val'):
        _shard(tmp_path / 'a', split, 0 if split == 'train' else 10)
    _run(tmp_path, _tiny_conf(tmp_path), 12)
    cks = [tmp_path / 'ck' / n for n in ('best.pt', 'last.pt')]
    main([str(c) for c in cks] + ['--out', str(tmp_path / 'swa.pt'), '--batches', '2', '--threads', '1'])
    ck = torch.load(tmp_path / 'swa.pt', weights_only=False)
    last = torch.load(cks[1], weights_only=False)
    assert ck['samples'] == last['samples'] == 12 and ck['batchnorm_batches'] == 2 and len(ck['averaged_from']) == 2
    assert ck['config']['name'] == 'tiny'
    means = [k for k in ck['model'] if k.endswith('running_mean')]
    assert means and not all(torch.equal(ck['model'][k], last['model'][k]) for k in means)
    assert export_checkpoint(tmp_path / 'swa.pt', tmp_path / 'swa.onnx', torch_program=False,
                             cpu_preference=False).is_file()
    # committed weights-only files carry no config: the run's config file stands in
    weights = str(tmp_path / 'training' / 'weights' / 'tiny.pt')
    with pytest.raises(ValueError, match='--config'):
        main([weights, '--out', str(tmp_path / 'w.pt'), '--batches', '0'])
    main([weights, weights, '--out', str(tmp_path / 'w.pt'), '--batches', '0', '--config', str(tmp_path / 'tiny.yaml')])
    w = torch.load(tmp_path / 'w.pt', weights_only=False)
    assert w['config']['name'] == 'tiny' and w['batchnorm_batches'] == 0
    assert all(torch.equal(w['model'][k], last['model'][k]) for k in w['model'])   # the mean of one state twice
    # BatchNorm from whole 24 px stacks instead of the config's 16 px crops
    main([weights, '--out', str(tmp_path / 'w24.pt'), '--batches', '1', '--crop', '24', '--config', str(tmp_path / 'tiny.yaml')])
    assert torch.load(tmp_path / 'w24.pt', weights_only=False)['batchnorm_batches'] == 1
