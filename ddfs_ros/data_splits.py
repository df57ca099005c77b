"""Which real data is for training, validation and test: one definition for training and evaluation.

Rule of the house (issue 9): no scene that an evaluation, the demo or a shared bag uses
is ever trained on; checkpoints are chosen on validation, test is reported once.

- ``real_dfd_indoor_train`` (81 scenes, in ``pairs.csv`` order): test = every 8th scene
  (index % 8 == 0) plus scene 1 (scenes 0 and 1 are the two stacks of the shared
  ``dfd_aperture_pairs`` bag); validation = index % 8 == 4; train = the rest.
- ``rgbd_7scenes`` (one sequence, frames 0..990 every 10th): train = frames < 600,
  validation = 620..780, test = 820..990 (frames 600-610 and 790-810 are left out as
  guard bands: neighbouring frames of one sequence see nearly the same view).
- ``textures`` (722 photographs): by a stable hash of the relative path, 10 % test,
  10 % validation, 80 % train.
- The Middlebury motorcycle (demo, ``motorcycle_sweep`` bag, README rows): test only.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

SPLITS = ('train', 'val', 'test')


def shared_data_dir() -> Path:
    """The shared data folder: ``$DDFS_SHARED_DATA``, else ``../shared/data`` beside the source
    tree, else beside the working directory (an installed package lives in site-packages,
    far from the data; the commands are run from the repository)."""
    env = os.environ.get('DDFS_SHARED_DATA')
    if env:
        return Path(env)
    source = Path(__file__).resolve().parents[2] / 'shared' / 'data'
    for candidate in (source, Path.cwd().resolve().parent / 'shared' / 'data'):
        if candidate.is_dir():
            return candidate
    return source


#: Shared data folder next to the repository (``../shared/data``), see :func:`shared_data_dir`.
SHARED_DATA = shared_data_dir()
#: real_dfd scenes (pairs.csv order) used by the shared dfd_aperture_pairs bag.
REAL_DFD_BAG_SCENES = (0, 1)


def _check(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')


def real_dfd_split(index: int) -> str:
    """Split of the real_dfd scene at ``index`` (pairs.csv order, ok rows only)."""
    if index % 8 == 0 or index in REAL_DFD_BAG_SCENES:
        return 'test'
    if index % 8 == 4:
        return 'val'
    return 'train'


def rgbd_7scenes_split(frame: int) -> Optional[str]:
    """Split of 7-Scenes frame number ``frame``; None for the guard bands."""
    if frame < 600:
        return 'train'
    if 620 <= frame <= 780:
        return 'val'
    if frame >= 820:
        return 'test'
    return None


def texture_split(relative_path: str) -> str:
    """Split of a texture photograph by a stable hash of its path relative to ``textures/``."""
    h = int(hashlib.sha1(relative_path.replace('\\', '/').encode()).hexdigest()[:8], 16) % 10
    return 'test' if h == 0 else 'val' if h == 1 else 'train'


def texture_paths(split: str, root: Path = SHARED_DATA / 'textures') -> list[Path]:
    """The texture photographs of one split (sorted); empty when the folder is absent."""
    _check(split)
    root = Path(root)
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob('*') if p.suffix.lower() in ('.jpg', '.jpeg', '.png'))
    return [p for p in files if texture_split(str(p.relative_to(root))) == split]


def rgbd_7scenes_frames(split: str, root: Path = SHARED_DATA / 'rgbd_7scenes') -> list[int]:
    """Frame numbers of one split that have both colour and depth files."""
    _check(split)
    root = Path(root)
    if not root.is_dir():
        return []
    frames = sorted(int(p.name.split('.')[0].split('-')[1]) for p in root.glob('frame-*.color.jpg'))
    return [f for f in frames if rgbd_7scenes_split(f) == split
            and (root / f'frame-{f:06d}.depth.png').is_file()]
