"""The per-user cache directory of ddfs_ros (compiled kernels, TensorRT plans).

``$DDFS_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ddfs_ros`` (``~/.cache/ddfs_ros``).
Nothing here is needed for correctness: a cache that cannot be written only makes
the next start as slow as the first.

What is cached (issue 12, item 10; measurements in the README's failure table):

- ``numba/``: the machine code of :mod:`ddfs_ros.cost_kernels`.  Compiling it is most
  of a first start (7.8 s of a 9.3 s first stack under load; about 1 s to load it after).
  numba's own default writes next to the installed module (``site-packages/ddfs_ros/
  __pycache__``), which is read-only on system installs and deleted by every
  ``pip install --force-reinstall`` (``make demo`` / ``make test``).  numba keys the
  entries by the source's sha256, the function, the signature and the CPU, so a
  reinstall of the same source, or another install of it, finds them warm.
- ``trt/``: TensorRT plans (``ddfs_ros.engines.tensorrt_backend``, ``$DDFS_TRT_CACHE``
  overrides it), each with its hash record.

onnxruntime's graph optimisation is not cached: it takes 20-40 ms per shipped engine
here, and a cached optimised model would be one more artefact to hash-check.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the whole cache.
ENV = 'DDFS_CACHE_DIR'


def cache_root() -> Path:
    """``$DDFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddfs_ros``, else ``~/.cache/ddfs_ros``."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    xdg = os.environ.get('XDG_CACHE_HOME')
    base = Path(xdg).expanduser() if xdg else Path.home() / '.cache'
    return base / 'ddfs_ros'


def numba_cache_dir() -> Path:
    """Where :mod:`ddfs_ros.cost_kernels` keeps its compiled kernels (``<root>/numba``)."""
    return cache_root() / 'numba'
