"""The asking process's view of the study storage: one read of the trials per ask.

Optuna's ``_CachedStorage`` keeps finished trials and reads the unfinished and newer ones from
the database on every ``get_all_trials``. Asking one trial with tunefleet's TPE (multivariate,
grouped, constant liar) makes four such reads: the waiting trials, the search space, and the
constant liar's fresh look at the running trials, once per parameter group. Each is a round of
ORM queries (about 10 ms on SQLite), so on a study of short trials the reads were about 40% of
the time the one asking process spent per trial (``bench/search.py``), and that process is what
keeps the workers fed.

In the process that asks a study's trials, nothing else creates trials during an ask, and the
trial being asked is added to the cache when it is created; so one read at the start of an ask
sees what the later ones would, except a result another trial reports during those
milliseconds, which the next ask sees. :meth:`AskingStorage.one_read` opens that window; outside
one, every read goes to the database as before.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from optuna.storages import RDBStorage
from optuna.storages._cached_storage import _CachedStorage


class AskingStorage(_CachedStorage):
    """``_CachedStorage`` whose reads of a study are served once per :meth:`one_read` window.

    The window is per thread: the operator asks for several studies at once, one per thread.
    """

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._window = threading.local()

    @contextmanager
    def one_read(self) -> Iterator[None]:
        """Within this block, the first read of a study goes to the database, later ones not."""
        if getattr(self._window, "studies_read", None) is not None:
            yield  # nested: the outer window holds
            return
        self._window.studies_read = set()
        try:
            yield
        finally:
            self._window.studies_read = None

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        studies_read: set[int] | None = getattr(self._window, "studies_read", None)
        if studies_read is not None:
            if study_id in studies_read:
                return
            studies_read.add(study_id)
        super()._read_trials_from_remote_storage(study_id)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        del state["_window"]
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        super().__setstate__(state)
        self._window = threading.local()
