"""Exact-stamp pairing of the three stack topics and the latest-only processing slot (no ROS).

Both are bounded: the pairing cache holds at most ``max_pending`` incomplete stamps
(oldest evicted, counted) and drops any older than ``timeout_s`` (counted); the slot
holds one complete stack, and a newer one replaces a waiting one (counted as a drop).
So the node's memory does not grow with the input rate.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

T = TypeVar('T')


@dataclass
class Pending:
    first_seen: float
    parts: dict = field(default_factory=dict)


@dataclass
class Expired:
    """An incomplete set that was dropped: its stamp, what it lacked and why."""

    stamp_ns: int
    missing: tuple[str, ...]
    reason: str            # 'pair_timeout' | 'pair_evicted'


class StampPairer:
    """Collect messages of ``kinds`` by exact stamp; hand out complete sets.

    Args:
        kinds: the part names, e.g. ('image', 'camera_info', 'lens_state').
        timeout_s: an incomplete set older than this is dropped.
        max_pending: most incomplete sets kept; the oldest goes first.
    """

    def __init__(self, kinds: tuple[str, ...], timeout_s: float = 1.0, max_pending: int = 8) -> None:
        self.kinds = tuple(kinds)
        self.timeout_s = float(timeout_s)
        self.max_pending = max(1, int(max_pending))
        self._pending: 'OrderedDict[int, Pending]' = OrderedDict()
        self._lock = threading.Lock()
        self.completed = 0
        self.timeouts = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, kind: str, stamp_ns: int, msg: Any, now: Optional[float] = None
            ) -> tuple[Optional[dict], list[Expired]]:
        """Add one message; returns (the complete set or None, the sets dropped meanwhile)."""
        if kind not in self.kinds:
            raise KeyError(kind)
        now = time.monotonic() if now is None else now
        with self._lock:
            dropped = self._expire(now)
            p = self._pending.get(stamp_ns)
            if p is None:
                p = self._pending[stamp_ns] = Pending(now)
            p.parts[kind] = msg      # a repeated part replaces the earlier one
            if len(p.parts) == len(self.kinds):
                del self._pending[stamp_ns]
                self.completed += 1
                return p.parts, dropped
            while len(self._pending) > self.max_pending:
                old, q = self._pending.popitem(last=False)
                self.evicted += 1
                dropped.append(Expired(old, self._missing(q), 'pair_evicted'))
            return None, dropped

    def expire(self, now: Optional[float] = None) -> list[Expired]:
        """Drop sets older than the timeout (call periodically)."""
        with self._lock:
            return self._expire(time.monotonic() if now is None else now)

    def _missing(self, p: Pending) -> tuple[str, ...]:
        return tuple(k for k in self.kinds if k not in p.parts)

    def _expire(self, now: float) -> list[Expired]:
        out = []
        while self._pending:
            stamp, p = next(iter(self._pending.items()))
            if now - p.first_seen <= self.timeout_s:
                break
            del self._pending[stamp]
            self.timeouts += 1
            out.append(Expired(stamp, self._missing(p), 'pair_timeout'))
        return out


class LatestSlot(Generic[T]):
    """A one-item mailbox: ``put`` replaces what is waiting, ``take`` blocks for the next item."""

    def __init__(self) -> None:
        self._item: Optional[T] = None
        self._cond = threading.Condition()
        self._closed = False
        self.replaced = 0

    def put(self, item: T) -> bool:
        """Store ``item``; True when it replaced an item nobody had taken (a drop)."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.replaced += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: Optional[float] = None) -> Optional[T]:
        """The waiting item (removing it), or None after ``timeout`` s or once closed."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
