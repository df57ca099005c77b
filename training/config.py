"""Training YAML files, with inheritance so a variant states only what it changes.

A config may name another with ``base: other.yaml`` (a path relative to its own folder).
The base is loaded first (recursively), then the variant is merged into it:

- mappings merge key by key (a variant's ``train: {lr: 2.0e-4}`` changes the rate only);
- any other value, lists included, replaces the base's;
- a key ending in ``+`` appends its list to the base's list of the key without it
  (``extra_train+: [...]`` adds data parts after the base's parts);
- ``name`` and ``out`` are never inherited: ``name`` defaults to the file's stem, so a
  variant can never write the base's checkpoints or ``training/weights/<base>.pt``.

Every reader of training configs (``train_focus``, ``stack_data``, ``data``, ``train``)
goes through :func:`load_config`, so the merged dictionary is what is rendered, trained
and stored in the checkpoints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: Keys a variant never takes from its base.
OWN_KEYS = ('name', 'out')
APPEND = '+'


def merge(base: Any, over: Any, where: str = '') -> Any:
    """``over`` merged into ``base`` (neither is modified); see the module docstring."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return over
    out = dict(base)
    for key, value in over.items():
        if isinstance(key, str) and key.endswith(APPEND):
            plain = key[:-len(APPEND)]
            had = out.get(plain, [])
            if not isinstance(value, list) or not isinstance(had, list):
                raise ValueError(f'config {where}{key}: "{APPEND}" appends a list to a list')
            out[plain] = list(had) + list(value)
        else:
            out[key] = merge(out[key], value, f'{where}{key}.') if key in out else value
    return out


def load_config(path: str | Path, _seen: tuple = ()) -> dict:
    """The training config at ``path`` with its ``base`` chain merged in (a dict)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f'config {path}: "base" chain loops back to itself')
    conf = yaml.safe_load(path.read_text()) or {}
    if not isinstance(conf, dict):
        raise ValueError(f'config {path}: expected a mapping at the top level')
    base_name = conf.pop('base', None)
    if base_name is not None:
        base = load_config(path.parent / base_name, _seen + (path,))
        for key in OWN_KEYS:
            base.pop(key, None)
    else:
        base = {}
    conf = merge(base, conf)
    conf.setdefault('name', path.stem)
    return conf
