"""ddfs-eval: offline scoring, replay through the real inference node, corrupted stacks, the protocol."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest

from ddfs_ros.eval import bag_cli, cli
from ddfs_ros.eval.bags import StackBagWriter, stack_messages
from ddfs_ros.eval.metrics import METRIC_KEYS

SAMPLE_BAGS = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'sample_bags'


@pytest.fixture
def ros_env(monkeypatch):
    """An isolated DDS domain per test process, discovery on this machine only."""
    monkeypatch.setenv('ROS_DOMAIN_ID', str(os.getpid() % 100 + 1))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


def _rows(path: Path) -> dict:
    return {r['method']: r for r in json.loads(path.read_text())['rows']}


def _per_stack(report: Path) -> list:
    with open(report / 'per_stack.csv', newline='') as fh:
        return list(csv.DictReader(fh))


def test_baseline_on_sample_motorcycle_sweep(tmp_path, capsys):
    """The classical baseline on the independent sample bag (README of the data: AbsRel 0.064, d1 91.3 %)."""
    bag = SAMPLE_BAGS / 'motorcycle_sweep'
    if not bag.is_dir():
        pytest.skip(f'{bag} is absent (shared data not mounted)')
    rc = cli.main(['offline', str(bag), '--baseline', 'focus-measure', '--report', str(tmp_path / 'r'),
                   '--json', str(tmp_path / 's.json')])
    assert rc == 0
    row = next(iter(_rows(tmp_path / 's.json').values()))
    print(f"\nfocus-measure on motorcycle_sweep: AbsRel {row['absrel']:.4f}, delta1 {row['delta1']:.1f} %, "
          f"RMS {row['rms']:.3f} m, coverage {row['coverage']:.3f}")
    assert row['n'] == 3 and row['dropped'] == 0 and row['rejected'] == 0
    assert 0.03 < row['absrel'] < 0.12
    assert row['delta1'] > 80.0
    for f in ('report.md', 'grid.png', 'per_stack.csv', 'summary.csv'):
        assert (tmp_path / 'r' / f).is_file()


def _mixed_bag(path: Path, good: list) -> list:
    """The good rendered stacks with corrupted ones in between; returns the expected statuses."""
    plan = ['good', 'tile', 'good', 'no_lens', 'nan_focus', 'good']
    expected = []
    gi = 0
    with StackBagWriter(path) as w:
        for k, kind in enumerate(plan):
            stack, depth = good[gi % len(good)]
            if kind == 'good':
                gi += 1
            stack.stamp_ns = 1_700_000_000_000_000_000 + k * 100_000_000
            msgs = stack_messages(stack, depth_gt=depth)
            if kind == 'tile':
                msgs['camera_info'].height = stack.height - 1
            elif kind == 'no_lens':
                del msgs['lens_state']
            elif kind == 'nan_focus':
                msgs['lens_state'].position[0] = math.nan
            w.write_messages(msgs, stack.stamp_ns)
            expected.append({'good': 'ok', 'tile': 'tile_mismatch', 'no_lens': 'missing_lens',
                             'nan_focus': 'nan_lens'}[kind])
    return expected


@pytest.mark.slow
@pytest.mark.ros
def test_replay_through_the_node_equals_offline(tmp_path, tiny_engines, ros_env):
    """Replay over ROS (real InferenceNode, loopback DDS) scores exactly what the offline pipeline scores;
    corrupted stacks are reported one by one and the replay goes on."""
    cam = bag_cli.load_camera('motorcycle')
    cam.width = cam.height = 64
    cam.focus_distances = [0.5, 0.9, 1.6, 2.8]
    cam.depth_range = (0.4, 3.0)
    good: list = []
    bag_cli.make_bag(tmp_path / 'src', 'procedural', cam, stacks=3, keep=good, seed=5)
    bag = tmp_path / 'mixed'
    expected = _mixed_bag(bag, good)
    engine = str(tiny_engines['ddfs'])

    common = ['--engine', engine, '--backend', 'onnxruntime', '--baseline', 'focus-measure', '--grid-stacks', '1']
    assert cli.main(['replay', str(bag), *common, '--report', str(tmp_path / 'rep'),
                     '--json', str(tmp_path / 'rep.json'), '--timeout', '20']) == 0
    assert cli.main(['offline', str(bag), *common, '--report', str(tmp_path / 'off'),
                     '--json', str(tmp_path / 'off.json')]) == 0

    rep, off = _rows(tmp_path / 'rep.json'), _rows(tmp_path / 'off.json')
    assert rep.keys() == off.keys() and len(rep) == 2
    name = 'tiny_ddfs'
    assert rep[name]['n'] == off[name]['n'] == 3
    assert rep[name]['dropped'] == 0 and rep[name]['rejected'] == 3
    assert rep[name]['backend'] == off[name]['backend'] == 'onnxruntime'
    for k in METRIC_KEYS:
        a, b = rep[name][k], off[name][k]
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-6, abs=1e-9), (k, a, b)
    assert rep[name]['latency_ms_p50'] > 0

    ps_rep = [r for r in _per_stack(tmp_path / 'rep') if r['method'] == name]
    ps_off = [r for r in _per_stack(tmp_path / 'off') if r['method'] == name]
    assert [r['status'] if r['status'] != 'rejected' else r['reason'] for r in ps_rep] == expected
    for a, b in zip(ps_rep, ps_off):
        assert a['status'] == b['status'] and a['reason'] == b['reason']
        for k in ('absrel', 'rms', 'delta1', 'bumpiness', 'avg_unc', 'coverage'):
            assert a[k] == b[k], (k, a[k], b[k])      # the same float64 repr: identical depth maps
    report = (tmp_path / 'rep' / 'report.md').read_text()
    for reason in ('tile_mismatch', 'missing_lens', 'nan_lens'):
        assert reason in report
    assert (tmp_path / 'rep' / 'grid.png').stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.ros
def test_sample_aperture_bag_replays_as_it_is(tmp_path, tiny_engines, ros_env):
    bag = SAMPLE_BAGS / 'dfd_aperture_pairs'
    if not bag.is_dir():
        pytest.skip(f'{bag} is absent (shared data not mounted)')
    assert cli.main(['replay', str(bag), '--engine', str(tiny_engines['ddfs']), '--backend', 'onnxruntime',
                     '--report', str(tmp_path / 'r'), '--json', str(tmp_path / 'r.json')]) == 0
    row = _rows(tmp_path / 'r.json')['tiny_ddfs']
    assert row['n'] == 2 and row['dropped'] == 0 and row['rejected'] == 0
    # scored against its depth_gt (an untrained engine may leave no pixel unmasked: coverage 0 is fine)
    assert json.loads((tmp_path / 'r.json').read_text())['has_depth_gt'] and row['coverage'] is not None


def test_bag_without_ground_truth_gives_latency_and_coverage(tmp_path):
    out = tmp_path / 'nogt'
    assert bag_cli.main(['make', str(out), '--source', 'procedural', '--stacks', '2', '--size', '32x32',
                         '--focus', '0.5,1.0,2.0', '--no-gt']) == 0
    assert cli.main(['offline', str(out), '--baseline', 'focus-measure', '--report', str(tmp_path / 'r'),
                     '--json', str(tmp_path / 'r.json')]) == 0
    doc = json.loads((tmp_path / 'r.json').read_text())
    row = doc['rows'][0]
    assert doc['has_depth_gt'] is False
    assert row['n'] == 2 and row['absrel'] is None and 0.0 < row['coverage'] <= 1.0
    assert row['latency_ms_p50'] > 0
    assert 'no depth_gt' in (tmp_path / 'r' / 'report.md').read_text()


def test_offline_runs_the_engine_at_the_processing_width_asked(tmp_path, cost_argmin_engines):
    out = tmp_path / 'bag'
    assert bag_cli.main(['make', str(out), '--source', 'procedural', '--stacks', '1', '--size', '64x64',
                         '--focus', '0.5,1.0,2.0']) == 0
    depth = {}
    for width in (32, 64):
        rep = tmp_path / f'w{width}'
        assert cli.main(['offline', str(out), '--engine', str(cost_argmin_engines['dynamic']), '--backend', 'onnxruntime',
                         '--baseline', 'none', '--max-relative-uncertainty', '0', '--processing-width', str(width),
                         '--report', str(rep),
                         '--json', str(tmp_path / f'w{width}.json')]) == 0
        assert f'processing_width {width} px' in (rep / 'report.md').read_text()
        depth[width] = next(iter(_rows(tmp_path / f'w{width}.json').values()))
    # the same engine at half the width sees half the blur: another answer, same coverage rules
    assert depth[32]['n'] == depth[64]['n'] == 1 and depth[32]['absrel'] != depth[64]['absrel']


@pytest.mark.slow
def test_camera_shift_protocol_table(tmp_path, tiny_engines):
    from ddfs_ros.eval.protocol import SETTINGS, run_camera_shift
    rows = run_camera_shift(tmp_path / 'shift', [tiny_engines['ddfs'], tiny_engines['dfv']], backend='onnxruntime',
                            baseline=True, stacks=2, size=40, seed=1, grid_stacks=0)
    table = (tmp_path / 'shift' / 'camera_shift.md').read_text()
    assert len(rows) == 4 * len(SETTINGS)      # two engines, the focus measure, the median oracle
    by = {(r['method'], r['setting']): r for r in rows}
    for s in SETTINGS:
        assert by[('tiny_ddfs', s)]['n'] == 2 and s in table
        assert by[('focus-measure (baseline)', s)]['n'] == 2
        assert by[('median-oracle (baseline)', s)]['n'] == 2
        assert by[('median-oracle (baseline)', s)]['beats_oracle_px'] == 0.0
    # the tiny DFV engine takes exactly 5 frames: every 3- and 2-frame setting is refused, stack by stack
    assert all(by[('tiny_dfv', s)]['n'] == 0 and by[('tiny_dfv', s)]['rejected'] == 2 for s in SETTINGS)
