"""The worker's side of the trial gateway: Optuna's gRPC storage client over TLS, with a token.

``GatewayStorage`` is Optuna's own ``GrpcStorageProxy`` (so the objective gets a real
``optuna.Trial``) whose channel verifies the gateway's certificate against the CA the pod was
given, sends ``authorization: Bearer <token>`` on every call, and retries calls the gateway
could not serve (UNAVAILABLE: restarting or unreachable; RESOURCE_EXHAUSTED: shedding load) with
backoff for up to ``retry_budget_s``. Every storage call a trial makes is idempotent (a report
or attribute rewrites the same value; a retried tell that already landed is recognised), so a
gateway restart costs the trial nothing.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import random
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc import servicer as optuna_servicer
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache, GrpcClientCacheEntry
from optuna.trial import TrialState

from trial_worker import gateway_protocol
from trial_worker.contract import (
    GATEWAY_CA_ENV,
    GATEWAY_SCHEME,
    GATEWAY_SERVER_NAME_ENV,
    GATEWAY_TOKEN_ENV,
)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# An attempt that outlives ATTEMPT_TIMEOUT_S (a replica lost without closing its connections) is
# retried too: every call a trial makes may be repeated.
RETRIED = RETRYABLE | {grpc.StatusCode.DEADLINE_EXCEEDED}
ATTEMPT_TIMEOUT_S = 60.0
DEFAULT_RETRY_BUDGET_S = 60.0
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.1, 5.0  # the worker's own retries, beyond gRPC's

# gRPC's own retries (at most 5 attempts, it caps them) absorb a blip and obey the gateway's
# pushback; the interceptor below keeps trying for longer, e.g. while a gateway restarts.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "optuna.StorageService"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": sorted(code.name for code in RETRYABLE),
                },
            }
        ]
    }
)


# How long the trials a report returned answer the study's reads (should_prune, a sampler's) without
# a call of their own: no staler than the gateway's own snapshot of the study.
REPORTED_TRIALS_FRESH_S = 0.25


class GatewayConfigError(ValueError):
    """The gateway URL or the pod's token/CA settings are missing or malformed (names the variable)."""


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    """One attempt's call details: the caller's, with a deadline per attempt."""


class _RetryTransient(grpc.UnaryUnaryClientInterceptor):
    """Send the token on every call, and retry UNAVAILABLE and RESOURCE_EXHAUSTED with backoff,
    honouring ``retry-after-ms``.

    The token travels as plain call metadata (``authorization: Bearer <token>``) on a channel that
    is always TLS. gRPC's own ``access_token_call_credentials`` would send the same header, but it
    is a metadata plugin, which gRPC Python runs on a new thread for every call: a thread started
    per report and per ``should_prune``.
    """

    def __init__(
        self, budget_s: float, token: str = "", sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self._budget_s = budget_s
        self._sleep = sleep
        self._authorization = (("authorization", f"Bearer {token}"),) if token else ()

    def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        details = _CallDetails(
            client_call_details.method,
            client_call_details.timeout or ATTEMPT_TIMEOUT_S,
            (*(client_call_details.metadata or ()), *self._authorization),
            client_call_details.credentials,
            client_call_details.wait_for_ready,
            client_call_details.compression,
        )
        give_up_at = time.monotonic() + self._budget_s
        delay = FIRST_BACKOFF_S
        while True:
            call = continuation(details, request)
            if call.code() not in RETRIED:
                return call
            wait = retry_wait_s(delay, call.trailing_metadata())
            if time.monotonic() + wait > give_up_at:
                return call
            self._sleep(wait)
            delay = next_backoff_s(delay)


def channel_options(server_name: str | None = None) -> list[tuple[str, Any]]:
    """The gRPC channel options of a worker's channel to the gateway."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", -1),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        # Reconnect soon after a gateway restart (gRPC's default backoff grows to two minutes).
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
        # Notice a gateway that vanished without closing the connection (a lost node).
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def retry_wait_s(delay_s: float, trailing_metadata: Sequence[tuple[str, Any]] | None) -> float:
    """How long to wait before retrying a shed or unavailable call: the backoff or the gateway's
    ``retry-after-ms``, whichever is longer, with jitter so retries spread out."""
    return max(delay_s, _retry_after_s(trailing_metadata)) * random.uniform(1.0, 1.5)


def next_backoff_s(delay_s: float) -> float:
    return min(delay_s * 2, MAX_BACKOFF_S)


def _retry_after_s(trailing_metadata: Sequence[tuple[str, Any]] | None) -> float:
    """The wait a shedding gateway asked for (``retry-after-ms``), in seconds; 0 when none."""
    for key, value in trailing_metadata or ():
        if key == "retry-after-ms":
            try:
                return float(value) / 1000.0
            except ValueError:
                return 0.0
    return 0.0


class _ReportingCache(GrpcClientCache):
    """Optuna's client cache of a study's trials, also fed by the trials a report returns, so the
    reads right after a report (``should_prune``) need no ``GetTrials`` of their own."""

    def __init__(self, stub: api_pb2_grpc.StorageServiceStub) -> None:
        super().__init__(stub)
        self._fed_at: dict[int, float] = {}

    def study_of(self, trial_id: int) -> int | None:
        """The study a running trial belongs to, once a read of that study has seen it."""
        for study_id, entry in list(self.studies.items()):
            if trial_id in entry.unfinished_trial_ids:
                return study_id
        return None

    def report(self, study_id: int, send: Callable[[set[int], int], api_pb2.GetTrialsReply]) -> None:
        """Send a report with this study's watermark, and keep the trials it returns."""
        with self.lock:
            entry = self.studies.setdefault(study_id, GrpcClientCacheEntry())
            reply = send(entry.unfinished_trial_ids, entry.last_finished_trial_id)
            for proto in reply.trials:
                self._add_trial_to_cache(study_id, optuna_servicer._from_proto_trial(proto))
            self._fed_at[study_id] = time.monotonic()

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        fed_at = self._fed_at.get(study_id)
        if fed_at is not None and time.monotonic() - fed_at < REPORTED_TRIALS_FRESH_S:
            return
        super()._read_trials_from_remote_storage(study_id)


class _ReportStream:
    """The trial's ``Reports`` stream (``gateway_protocol``): opened as soon as the trial is known
    (or at its first report), one message and its answer at a time, reopened after it ended with
    an error."""

    def __init__(self, channel: grpc.Channel, authorization: Sequence[tuple[str, str]]) -> None:
        self._method = gateway_protocol.reports_method(channel)
        self._authorization = tuple(authorization)
        self._requests: queue.SimpleQueue[Any] | None = None
        self._replies: Any = None
        self._answered = False  # a message on this stream was answered (its metadata is in)

    def open(self) -> None:
        """Start the call now, so the gateway has accepted it by the time the first report goes."""
        if self._requests is None:
            self._requests = queue.SimpleQueue()
            self._replies = self._method(iter(self._requests.get, None), metadata=self._authorization)
            self._answered = False

    def takes_tells(self) -> bool:
        """Whether the gateway at the other end said it takes tells on this stream; only known
        once a message was answered (asking earlier would wait for the gateway)."""
        if not self._answered or self._replies is None:
            return False
        return gateway_protocol.TELL_ON_STREAM in tuple(self._replies.initial_metadata() or ())

    def send(self, request: Any) -> api_pb2.GetTrialsReply:
        """The answer to ``request``; grpc.RpcError (the stream is then closed) when it ended."""
        self.open()
        assert self._requests is not None
        self._requests.put(request)
        try:
            reply = next(self._replies)
        except StopIteration:  # the gateway ended the stream without a status: treat as a restart
            self.close()
            raise _StreamEnded() from None
        except grpc.RpcError:
            self.close()
            raise
        self._answered = True
        return reply

    def close(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        if self._replies is not None:
            self._replies.cancel()
        self._requests, self._replies, self._answered = None, None, False


class _StreamEnded(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class GatewayStorage(GrpcStorageProxy):
    """Optuna's gRPC storage client for the tunefleet trial gateway (TLS + per-trial token).

    Args:
        host: The gateway's host name or address.
        port: Its gRPC port.
        token: The trial's token (``TUNEFLEET_GATEWAY_TOKEN``).
        ca_pem: The CA certificate (PEM) the gateway's certificate must chain to.
        server_name: The name the certificate must carry, when it is not ``host``.
        retry_budget_s: How long a call keeps retrying while the gateway is unavailable.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        token: str,
        ca_pem: bytes,
        server_name: str | None = None,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    ) -> None:
        self._token = token
        self._ca_pem = ca_pem
        self._server_name = server_name
        self._retry_budget_s = retry_budget_s
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            super().__init__(host=host, port=port)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        token: str,
        ca_pem: str | bytes,
        server_name: str | None = None,
        retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
    ) -> GatewayStorage:
        """The client for ``tunefleet-gateway://HOST:PORT`` with this token and CA."""
        host, port = parse_gateway_url(url)
        pem = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
        return cls(
            host=host, port=port, token=token, ca_pem=pem, server_name=server_name,
            retry_budget_s=retry_budget_s,
        )

    def _secure_channel(self) -> grpc.Channel:
        # TLS only; the token is added to each call by _RetryTransient.
        credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
        return grpc.secure_channel(
            f"{self._host}:{self._port}", credentials, options=channel_options(self._server_name)
        )

    def _setup(self) -> None:
        self._raw_channel = self._secure_channel()
        self._channel = grpc.intercept_channel(
            self._raw_channel, _RetryTransient(self._retry_budget_s, self._token)
        )
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache: _ReportingCache = _ReportingCache(self._stub)
        self._report = gateway_protocol.report_method(self._channel)
        self._reports_combined = True  # until the gateway says it does not know Report
        self._stream = _ReportStream(self._raw_channel, (("authorization", f"Bearer {self._token}"),))
        self._streaming = True  # until the gateway says it does not know Reports
        self._stream_after = 0.0  # monotonic: a gateway at its cap of streams said wait till then
        self._trial_studies: dict[int, int] = {}

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_raw_channel", None)
        state.pop("_stream", None)
        return state

    def wait_server_ready(self, timeout: float | None = None) -> None:
        """Wait until the gateway accepts a TLS connection (its certificate verified)."""
        try:
            with self._secure_channel() as channel:
                grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as error:
            raise ConnectionError(f"the trial gateway at {self._host}:{self._port} did not answer") from error

    def close(self) -> None:
        self._stream.close()
        self._raw_channel.close()

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        trial_id = super().get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self._trial_studies[trial_id] = study_id
        if self._may_stream() and self._reports_combined:
            # This pod's trial (its token is for one trial): have the gateway accept its stream
            # while the objective computes, not when the first report is already waiting.
            self._stream.open()
        return trial_id

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        """The report and a read of the study's new trials in one message on the trial's
        ``Reports`` stream, when the trial's study is known; the unary ``Report`` when the stream
        ended (it retries while the gateway is away) or the gateway does not know streams; Optuna's
        own call when it does not know ``Report`` either."""
        study_id = self._trial_studies.get(trial_id)
        if study_id is None:
            study_id = self._cache.study_of(trial_id)
            if study_id is not None:
                self._trial_studies[trial_id] = study_id  # looked up once, not every step
        if study_id is None or not self._reports_combined:
            super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            return

        def send(unfinished: set[int], last_finished: int) -> api_pb2.GetTrialsReply:
            request = gateway_protocol.ReportRequest(
                study_id=study_id, trial_id=trial_id, step=step, intermediate_value=intermediate_value,
                included_trial_ids=unfinished, trial_id_greater_than=last_finished,
            )
            if self._may_stream():
                try:
                    return self._stream.send(request)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                        self._streaming = False
                    elif error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # streams at their cap
                        self._stream_after = time.monotonic() + _retry_after_s(error.trailing_metadata())
                    elif error.code() not in RETRIED | {grpc.StatusCode.CANCELLED}:
                        raise
            return self._report(request)

        try:
            self._cache.report(study_id, send)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:  # a gateway older than Report
                self._reports_combined = False
                super().set_trial_intermediate_value(trial_id, step, intermediate_value)
            else:
                _raise_as_optuna_would(error)

    def set_trial_state_values(
        self, trial_id: int, state: TrialState, values: Sequence[float] | None = None
    ) -> bool:
        try:
            if state.is_finished() and self._tell_on_stream(trial_id, state, values):
                return True
            return bool(super().set_trial_state_values(trial_id, state, values))
        except (grpc.RpcError, UpdateFinishedTrialError):
            # A tell retried after the gateway went away without answering finds the trial ended
            # (by that very tell): the outcome is stored, so the tell succeeded.
            if state.is_finished() and self._stored(trial_id, state, values):
                return True
            raise

    def _may_stream(self) -> bool:
        return self._streaming and time.monotonic() >= self._stream_after

    def _tell_on_stream(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        """The tell as the last message of the trial's ``Reports`` stream, where the gateway
        takes it there: no new call for gRPC to accept. False when it was not sent there, or the
        stream ended first (then the caller's unary tell, with its retries, goes instead)."""
        study_id = self._trial_studies.get(trial_id)
        if study_id is None or not self._streaming or not self._stream.takes_tells():
            return False
        message = gateway_protocol.tell_message(
            study_id, trial_id, optuna_servicer._to_proto_trial_state(state), values
        )
        try:
            self._stream.send(message)
        except grpc.RpcError as error:
            code = error.code()
            if code in RETRIED | {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED}:
                return False
            _raise_as_optuna_would(error)
        self._stream.close()  # the trial has ended: nothing more goes on its stream
        return True

    def _stored(self, trial_id: int, state: TrialState, values: Sequence[float] | None) -> bool:
        stored = self.get_trial(trial_id)
        if stored.state != state:
            return False
        return values is None or list(stored.values or []) == [float(v) for v in values]


def _raise_as_optuna_would(error: grpc.RpcError) -> NoReturn:
    """Raise what Optuna's storage raises for a refused write, as ``GrpcStorageProxy`` maps it:
    no such trial (``KeyError``), a finished trial (``UpdateFinishedTrialError``); else ``error``."""
    if error.code() == grpc.StatusCode.NOT_FOUND:
        raise KeyError(error.details()) from error
    if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
        raise UpdateFinishedTrialError(error.details()) from error
    raise error


def parse_gateway_url(url: str) -> tuple[str, int]:
    """``tunefleet-gateway://HOST:PORT`` -> (HOST, PORT)."""
    scheme, sep, rest = url.partition("://")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if scheme != GATEWAY_SCHEME or not sep or not colon or not host or not port.isdigit():
        raise GatewayConfigError(f"gateway URL {url!r}: expected {GATEWAY_SCHEME}://HOST:PORT")
    return host.strip("[]"), int(port)


def open_gateway(url: str, environ: Mapping[str, str] | None = None) -> GatewayStorage:
    """The storage for a ``tunefleet-gateway://`` URL, with the token and CA the pod was given."""
    env = os.environ if environ is None else environ
    parse_gateway_url(url)  # a malformed URL is named before a missing token
    token = (env.get(GATEWAY_TOKEN_ENV) or "").strip()
    if not token:
        raise GatewayConfigError(f"{GATEWAY_TOKEN_ENV} is not set: the trial's gateway token is missing")
    ca = env.get(GATEWAY_CA_ENV) or ""
    if not ca.strip():
        raise GatewayConfigError(f"{GATEWAY_CA_ENV} is not set: the gateway's CA certificate is missing")
    if "-----BEGIN" not in ca:
        try:
            ca = Path(ca).read_text()
        except OSError as error:
            raise GatewayConfigError(
                f"{GATEWAY_CA_ENV} holds neither a PEM certificate nor a readable file: {error}"
            ) from None
    server_name = env.get(GATEWAY_SERVER_NAME_ENV) or None
    return GatewayStorage.from_url(url, token=token, ca_pem=ca, server_name=server_name)
