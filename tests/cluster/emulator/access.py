"""Who may do what: bearer tokens of ServiceAccounts, and RBAC as stored in the emulator.

A request with ``Authorization: Bearer <token>`` is made as the ServiceAccount the token was
issued for (``POST .../serviceaccounts/<name>/token``, the TokenRequest API) and is authorized
against the Roles, ClusterRoles and bindings stored at that moment, answering 403 with the real
server's message. A token the server never issued gets 401. A request without a token is the
admin (``system:masters``): the kubeconfig the emulator writes, and tests looking behind the
controller's back. (A real server would reject anonymous requests; the emulator trusts them.)
"""

from __future__ import annotations

import datetime
import secrets
import threading
from typing import Any

from tests.support.rbac import RBAC_GROUP, Authorizer, Request, Subject

from .errors import ApiError
from .resources import ResourceType
from .store import Store

RBAC_PLURALS = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")
TOKEN_LIFETIME_S = 3600


class Access:
    """Tokens issued by this server, and the RBAC check of each request."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._tokens: dict[str, Subject] = {}
        self._lock = threading.Lock()

    def issue_token(self, namespace: str, service_account: str, body: dict[str, Any]) -> dict[str, Any]:
        """A TokenRequest answered: the ServiceAccount must exist, as on a real server."""
        rt = self.store.find_type("serviceaccounts")
        self.store.get(rt, namespace, service_account)  # 404 when absent
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = Subject.service_account(namespace, service_account)
        seconds = int(((body or {}).get("spec") or {}).get("expirationSeconds") or TOKEN_LIFETIME_S)
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": service_account, "namespace": namespace},
            "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }

    def authenticate(self, authorization: str | None) -> Subject | None:
        """The subject of a request; None for the (trusted) admin without a token."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        with self._lock:
            subject = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if subject is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return subject

    def authorize(self, subject: Subject | None, verb: str, rt: ResourceType, namespace: str | None,
                  name: str | None, subresource: str | None) -> None:
        if subject is None:
            return
        request = Request(verb, rt.group, rt.plural, namespace if rt.namespaced else None, name, subresource)
        if not self._authorizer().allows(subject, request):
            raise ApiError(403, "Forbidden", request.describe(subject),
                           {"name": name or "", "group": rt.group, "kind": rt.plural})

    def _authorizer(self) -> Authorizer:
        objects: list[dict[str, Any]] = []
        for plural in RBAC_PLURALS:
            rt = self.store.resolve(RBAC_GROUP, "v1", plural)
            items, _ = self.store.list(rt, None)
            objects += [{**item, "kind": rt.kind} for item in items]
        return Authorizer(objects)
