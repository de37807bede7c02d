"""Per-study snapshots of the trials, so that a ``should_prune`` costs the gateway a lookup.

Every ``should_prune`` of every trial asks ``GetTrials`` (Optuna's client cache wants its known
unfinished trials and any newer ones). Answered by Optuna's servicer, each call re-reads the
study's unfinished trials through the ORM, under ``_CachedStorage``'s one lock for all studies,
and encodes every trial it returns again. Here a study's trials are read at most once per
``max_age_s`` (one refresh at a time per study: concurrent callers are answered from the
snapshot in hand, only a study's very first read is waited for), each trial is encoded when it
is read (a finished trial once, for good), and ``GetTrials`` only filters.

The price is staleness: a read may miss what was written up to ``max_age_s`` earlier (another
trial's latest report, a trial told a moment ago). Pruners and samplers are built for that, since
trials report concurrently anyway. Writes are not delayed: they still go to the database at once.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import _from_proto_trial_state
from optuna.trial import TrialState

from controller.gateway.trial_rows import read_trials

MAX_AGE_S = 0.5


@dataclass(frozen=True)
class _View:
    """One refresh's trials, never changed after it is published: read without a lock."""

    ids: list[int]  # sorted
    protos: dict[int, api_pb2.Trial]
    # each trial as one element of GetTrialsReply.trials on the wire, encoded once per refresh
    # that read it: a reply is these joined, neither copied into a message nor serialized again
    encoded: dict[int, bytes]


@dataclass
class _Study:
    refresh: threading.Lock = field(default_factory=threading.Lock)
    view: _View | None = None
    read_at: float = float("-inf")
    # Optuna's own watermark (as _CachedStorage keeps it): what the next read must cover.
    unfinished: set[int] = field(default_factory=set)
    last_finished: int = -1


class StudySnapshots:
    """Each study's trials as encoded protobuf, at most ``max_age_s`` old when asked for."""

    def __init__(
        self, backend: RDBStorage, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._backend = backend
        self._max_age_s = max_age_s
        self._clock = clock
        self._studies: dict[int, _Study] = {}
        self._lock = threading.Lock()

    def trials(self, study_id: int, included: Iterable[int], greater_than: int) -> list[api_pb2.Trial]:
        """The study's trials whose id is above ``greater_than`` or in ``included``, by id.

        Raises KeyError when the study does not exist.
        """
        view = self._view(study_id)
        return [view.protos[i] for i in _select(view, included, greater_than)]

    def cached_reply(
        self, study_id: int, included: Iterable[int], greater_than: int
    ) -> tuple[bytes, bool] | None:
        """``GetTrialsReply(trials=trials(...))`` serialized, from the snapshot in hand without
        reading the database, and whether that snapshot is due for a refresh (which ``trials``
        makes); None before the study's first read."""
        study = self._studies.get(study_id)
        if study is None or study.view is None:
            return None
        view = study.view
        reply = b"".join([view.encoded[i] for i in _select(view, included, greater_than)])
        return reply, self._clock() - study.read_at >= self._max_age_s

    def state(self, study_id: int, trial_id: int) -> tuple[TrialState, float] | None:
        """The trial's state in the study's snapshot and when that was read (monotonic), if any."""
        study = self._studies.get(study_id)
        view = study.view if study is not None else None
        proto = view.protos.get(trial_id) if view is not None and study is not None else None
        if proto is None or study is None:
            return None
        return _from_proto_trial_state(proto.state), study.read_at

    def _view(self, study_id: int) -> _View:
        with self._lock:
            study = self._studies.setdefault(study_id, _Study())
        view = study.view
        if view is not None and self._clock() - study.read_at < self._max_age_s:
            return view
        # Single flight: whoever holds the refresh reads; the others keep the snapshot they have.
        if not study.refresh.acquire(blocking=view is None):
            assert view is not None
            return view
        try:
            if study.view is not None and self._clock() - study.read_at < self._max_age_s:
                return study.view  # refreshed while this caller waited for the first read
            try:
                return self._refresh(study_id, study)
            except KeyError:
                with self._lock:
                    self._studies.pop(study_id, None)
                raise
        finally:
            study.refresh.release()

    def _refresh(self, study_id: int, study: _Study) -> _View:
        started = self._clock()
        trials = read_trials(self._backend.engine, study_id, study.unfinished, study.last_finished)
        protos = dict(study.view.protos) if study.view is not None else {}
        encoded = dict(study.view.encoded) if study.view is not None else {}
        for trial, finished in trials:
            protos[trial.trial_id] = trial
            encoded[trial.trial_id] = _reply_element(trial)
            if finished:
                study.unfinished.discard(trial.trial_id)
            else:
                study.unfinished.add(trial.trial_id)
        for trial, finished in trials:  # as Optuna does: only once every trial read is accounted for
            if finished:
                study.last_finished = max(study.last_finished, trial.trial_id)
        known = study.view.ids if study.view is not None else []
        view = _View(
            ids=known if len(known) == len(protos) else sorted(protos), protos=protos, encoded=encoded
        )
        study.view, study.read_at = view, started
        return view


def _select(view: _View, included: Iterable[int], greater_than: int) -> list[int]:
    """The ids of the trials ``GetTrials`` answers with, in its order."""
    start = bisect.bisect_right(view.ids, greater_than)
    older = sorted(i for i in set(included) if i <= greater_than and i in view.protos)
    return older + view.ids[start:]


def _reply_element(trial: api_pb2.Trial) -> bytes:
    """``trial`` as one element of ``GetTrialsReply.trials`` (field 1, length-delimited)."""
    body = trial.SerializeToString()
    return _TRIALS_TAG + _varint(len(body)) + body


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TRIALS_TAG = bytes([(api_pb2.GetTrialsReply.DESCRIPTOR.fields_by_name["trials"].number << 3) | 2])
