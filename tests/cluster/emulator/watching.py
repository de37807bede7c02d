"""Watch events and watchers: how one committed change reaches each open watch-stream.

The store calls `Watcher.offer` under its lock, in resourceVersion order, from whichever thread
made the change; delivery hops onto the server's event loop with `call_soon_threadsafe`, which
keeps that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"


@dataclass(frozen=True)
class Event:
    rv: int
    key: tuple[str, str]  # (group, plural) of the resource
    type: str
    obj: dict[str, Any]  # never mutated after commit: shared by history and every watcher
    old: dict[str, Any] | None


# What a watcher's queue carries: (type, object, rv), or None to end the stream.
QueueItem = tuple[str, dict[str, Any], int] | None


class Watcher:
    """One open watch-stream: a filter plus a queue on the server's loop."""

    def __init__(
        self,
        key: tuple[str, str],
        predicate: Callable[[Mapping[str, Any]], bool],
        loop: asyncio.AbstractEventLoop,
        start_rv: int,
    ) -> None:
        self.key = key
        self.predicate = predicate
        self.loop = loop
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self.last_rv = start_rv  # what a BOOKMARK may safely claim: all earlier events are sent
        self.abort = False

    def translate(self, event: Event) -> tuple[str, dict[str, Any]] | None:
        """Map a store event to what this watch sees, like the real watch cache.

        An object that starts matching a selector is ADDED; one that stops matching is DELETED.
        """
        new_ok = self.predicate(event.obj)
        old_ok = event.old is not None and self.predicate(event.old)
        if event.type == ADDED:
            return (ADDED, event.obj) if new_ok else None
        if event.type == DELETED:
            return (DELETED, event.obj) if (new_ok or old_ok) else None
        if new_ok and old_ok:
            return (MODIFIED, event.obj)
        if new_ok:
            return (ADDED, event.obj)
        if old_ok:
            return (DELETED, event.obj)
        return None

    def offer(self, event: Event) -> None:
        seen = self.translate(event)
        if seen is not None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (seen[0], seen[1], event.rv))

    def close(self, abort: bool = False) -> None:
        """End the stream: cleanly (the client re-watches) or by dropping the connection."""
        self.abort = self.abort or abort
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
