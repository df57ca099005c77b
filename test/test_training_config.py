"""Training configs with inheritance (training/config.py): what a variant takes from its base."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import load_config, merge

CONFIGS = Path(__file__).resolve().parents[1] / 'training' / 'configs'


def _write(folder: Path, name: str, doc: dict) -> Path:
    p = folder / name
    p.write_text(yaml.safe_dump(doc))
    return p


def test_merge_mappings_replace_lists_and_append():
    base = {'train': {'lr': 1e-3, 'batch': 8}, 'data': {'parts': [1, 2], 'size': 96}}
    over = {'train': {'lr': 2e-4}, 'data': {'parts+': [3], 'size': 64}}
    got = merge(base, over)
    assert got == {'train': {'lr': 2e-4, 'batch': 8}, 'data': {'parts': [1, 2, 3], 'size': 64}}
    assert base == {'train': {'lr': 1e-3, 'batch': 8}, 'data': {'parts': [1, 2], 'size': 96}}   # untouched
    assert merge({'a': [1, 2]}, {'a': [3]}) == {'a': [3]}          # a plain list replaces
    assert merge({}, {'a+': [1]}) == {'a': [1]}                    # appending to nothing starts the list
    with pytest.raises(ValueError, match='appends a list'):
        merge({'a': 1}, {'a+': [2]})


def test_variant_never_inherits_name_or_out(tmp_path):
    _write(tmp_path, 'base.yaml', {'name': 'net', 'out': 'checkpoints/net', 'train': {'lr': 1e-3}})
    v = load_config(_write(tmp_path, 'net_variant.yaml', {'base': 'base.yaml', 'train': {'lr': 1e-4}}))
    # a variant that forgot its name must not train into the base's checkpoints or weights file
    assert v['name'] == 'net_variant' and 'out' not in v and 'base' not in v
    assert v['train'] == {'lr': 1e-4}


def test_base_chain_and_loop(tmp_path):
    _write(tmp_path, 'a.yaml', {'data': {'parts': ['a']}})
    _write(tmp_path, 'b.yaml', {'base': 'a.yaml', 'data': {'parts+': ['b']}})
    c = load_config(_write(tmp_path, 'c.yaml', {'base': 'b.yaml', 'data': {'parts+': ['c']}}))
    assert c['data']['parts'] == ['a', 'b', 'c']
    _write(tmp_path, 'x.yaml', {'base': 'y.yaml'})
    _write(tmp_path, 'y.yaml', {'base': 'x.yaml'})
    with pytest.raises(ValueError, match='loops'):
        load_config(tmp_path / 'x.yaml')


@pytest.mark.parametrize('variant, base, added', [('ddfs_s_thin', 'ddfs_s', 2), ('dfv_s_thin', 'dfv_s', 2),
                                                   ('ddfs_s_soft', 'ddfs_s', 2), ('ddfs_s_bs', 'ddfs_s', 2)])
def test_shipped_variants_extend_their_base(variant, base, added):
    v, b = load_config(CONFIGS / f'{variant}.yaml'), load_config(CONFIGS / f'{base}.yaml')
    assert v['name'] == variant and v['out'] == f'checkpoints/{variant}'
    assert v['model'] == b['model']                  # the same network, so it can resume the base's weights
    parts_v, parts_b = v['data']['extra_train'], b['data']['extra_train']
    assert parts_v[:len(parts_b)] == parts_b and len(parts_v) == len(parts_b) + added
    new_caches = {p['cache'] for p in parts_v[len(parts_b):]}
    assert not new_caches & ({p['cache'] for p in parts_b} | {b['data']['cache']})
    assert set(v['train']['select_on']) > set(b['train']['select_on'])
