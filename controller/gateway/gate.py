"""The check in front of every storage call: the token verified, what the call touches resolved,
the token's rules applied.

The interceptor runs it for each unary call, and the ``Reports`` stream for each report it
carries, so a report is checked the same way on either path: ``Gate.serve`` on the gateway's
worker threads (resolving may read the database), or ``Gate.check`` with ``cached_only`` on the
event loop. A call that may not go on raises ``CallEnded``,
carrying the gRPC status the caller answers with; refusals are logged and counted here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
import sqlalchemy.exc
import structlog
from optuna.storages._grpc.servicer import _from_proto_trial_state

from controller.gateway import metrics
from controller.gateway.authorization import METHOD_ACCESS, Access, CallRefused, Target, authorize
from controller.gateway.directory import Directory
from controller.gateway.tokens import TokenClaims, TokenKeys, TokenRefused, ensure_unexpired
from trial_worker.gateway_protocol import REPORT, report_parts

log = structlog.get_logger("tunefleet.gateway")
T = TypeVar("T")

VERIFIED_KEPT = 20_000  # verified tokens remembered (a few MB)
DB_DOWN = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.TimeoutError)


class CallEnded(Exception):
    """The call ends here with ``code`` and ``details`` (a refusal, or the database unreachable)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ThreadContext:
    """All Optuna's servicer (run on a worker thread) uses of its call's context: ``abort``, which
    raises ``CallEnded`` for the event loop to answer with that status."""

    def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise CallEnded(code, details)


THREAD_CONTEXT = ThreadContext()


class Gate:
    """Token, resolution and authorization for one call, and what the gateway learns from it."""

    def __init__(self, keys: TokenKeys, directory: Directory, clock: Callable[[], float] = time.time) -> None:
        self._keys = keys
        self._directory = directory
        self._clock = clock
        # Tokens whose signature and claims were verified: a trial sends its token on every
        # call. The keys never change in a running gateway, so only the expiry is checked again.
        self._verified: dict[str, TokenClaims] = {}

    def check(
        self, method: str, request: Any, token: str | None, peer: str, cached_only: bool = False
    ) -> Target:
        """The call's target, when ``token`` may make it; ``CallEnded`` otherwise. With
        ``cached_only``, ``directory.NeedsDatabase`` when resolving the target needs a query."""
        try:
            claims = self._claims(token)
        except TokenRefused as refused:
            _refuse(grpc.StatusCode.UNAUTHENTICATED, method, "bad-token", refused.reason, None, peer)
        try:
            # A Report is checked as the two Optuna calls it stands for: its write, then its read.
            parts = _report_calls(request) if method == REPORT else ((method, request),)
            targets: list[Target] = []
            for name, part in parts:
                targets.append(self._resolve(name, part, cached_only))
                authorize(claims, name, targets[-1])
        except CallRefused as refused:
            _refuse(grpc.StatusCode.PERMISSION_DENIED, method, refused.reason, refused.message, claims, peer)
        except DB_DOWN as error:
            raise unavailable(error) from error
        return targets[0]

    def serve(
        self, method: str, request: Any, token: str | None, peer: str,
        behavior: Callable[[Any, ThreadContext], T],
    ) -> T:
        """On a worker thread: the check, then ``behavior`` (the servicer's method) when allowed."""
        target = self.check(method, request, token, peer)
        try:
            response = behavior(request, THREAD_CONTEXT)
        except DB_DOWN as error:
            raise unavailable(error) from error
        # What a served call changed (a trial's end), for the next calls' checks.
        if method == "SetTrialStateValues" and target.trial_id is not None and target.requested_state:
            self._directory.record_state(target.trial_id, target.requested_state)
        return response

    def _claims(self, token: str | None) -> TokenClaims:
        if token is None:
            raise TokenRefused("no token: send metadata 'authorization: Bearer <token>'")
        now = self._clock()
        claims = self._verified.get(token)
        if claims is None:
            claims = self._keys.verify(token, now)
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()  # tokens of ended trials; the live ones come back at once
            self._verified[token] = claims
        else:
            ensure_unexpired(claims, now)
        return claims

    def _resolve(self, method: str, request: Any, cached_only: bool) -> Target:
        """What the request touches, ids resolved to names (cached; see directory.py)."""
        fields = request.DESCRIPTOR.fields_by_name
        if "study_name" in fields:  # GetStudyIdFromName, CreateNewStudy
            return Target(study=request.study_name)
        if "study_id" in fields:
            study_id = int(request.study_id)
            number = int(request.trial_number) if "trial_number" in fields else None
            name = self._directory.study_name(study_id, cached_only)
            return Target(study=name, study_id=study_id, trial=number)
        if "trial_id" in fields:
            trial_id = int(request.trial_id)
            writes = METHOD_ACCESS.get(method) is Access.WRITE_TRIAL
            info = self._directory.trial(trial_id, fresh_state=writes, cached_only=cached_only)
            if info is None:
                return Target(trial_id=trial_id)
            requested = _from_proto_trial_state(request.state) if "state" in fields else None
            param = (
                (request.param_name, float(request.param_value_internal), request.distribution)
                if method == "SetTrialParameter"
                else None
            )
            return Target(
                study=info.study, study_id=info.study_id, trial_id=trial_id, trial=info.number,
                trial_state=info.state, requested_state=requested, param=param,
            )
        return Target()  # GetAllStudies


def bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>``, if the call sent one."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return None


async def shed(context: grpc.aio.ServicerContext[Any, Any], wait_ms: int, message: str) -> NoReturn:
    """End a call the gateway has no room for: ``RESOURCE_EXHAUSTED`` with how long to wait.
    ``retry-after-ms`` is ours (the worker reads it); ``grpc-retry-pushback-ms`` is what gRPC's
    retry policy obeys."""
    wait = str(wait_ms)
    context.set_trailing_metadata((("retry-after-ms", wait), ("grpc-retry-pushback-ms", wait)))
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
    raise AssertionError("abort returned")  # abort always raises


def unavailable(error: BaseException) -> CallEnded:
    return CallEnded(grpc.StatusCode.UNAVAILABLE, f"the study database is unreachable: {error}")


def _refuse(
    code: grpc.StatusCode, method: str, reason: str, message: str, claims: TokenClaims | None, peer: str
) -> NoReturn:
    metrics.REFUSALS.labels(method, reason).inc()
    log.warning(
        "gateway.refused",
        method=method,
        code=code.name,
        reason=reason,
        detail=message,
        peer=peer,
        namespace=claims.namespace if claims else None,
        study=claims.study if claims else None,
        trial=claims.trial if claims else None,
    )
    raise CallEnded(code, message)


def _report_calls(request: Any) -> tuple[tuple[str, Any], ...]:
    write, read = report_parts(request)
    return (("SetTrialIntermediateValue", write), ("GetTrials", read))
