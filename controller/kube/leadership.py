"""One active controller among replicas: a lease kept on the chart's kopf peering object.

kopf's own peering pauses *every* operator of equal priority, and the chart starts identical
replicas, so the controller runs kopf standalone and elects a leader itself: the holder, its
renew time and the lease duration live in an annotation of the ``KopfPeering`` (namespaced) or
``ClusterKopfPeering`` (cluster-wide) object the chart creates. Writes carry the object's
``resourceVersion``, so two replicas racing for an expired lease cannot both win (409 Conflict).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from controller.kube.client import MERGE_PATCH, KubeApi

LEASE_ANNOTATION = "tunefleet.dev/leader"
PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
LEASE_SECONDS = 10.0
RENEW_SECONDS = 2.0


def own_identity() -> str:
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Lease:
    holder: str
    renewed: datetime.datetime
    seconds: float

    def expired(self, now: datetime.datetime) -> bool:
        return (now - self.renewed).total_seconds() > self.seconds

    def to_json(self) -> str:
        return json.dumps(
            {
                "holder": self.holder,
                "renewTime": self.renewed.isoformat(),
                "leaseDurationSeconds": self.seconds,
            }
        )

    @classmethod
    def from_json(cls, text: str | None) -> Lease | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(
                str(raw["holder"]),
                datetime.datetime.fromisoformat(raw["renewTime"]),
                float(raw["leaseDurationSeconds"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class Leadership:
    """Try to take or renew the lease; ``is_leader`` says whether this replica may act.

    Args:
        kube: the API.
        peering: the peering object's name (``--peering``); None runs standalone (always leader).
        namespace: where the KopfPeering lives; None uses the ClusterKopfPeering.
    """

    def __init__(
        self,
        kube: KubeApi,
        peering: str | None,
        namespace: str | None,
        identity: str | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.kube = kube
        self.peering = peering
        self._name = peering or ""
        self.namespace = namespace
        self.identity = identity or own_identity()
        self.lease_seconds = lease_seconds
        self.is_leader = peering is None
        self._valid_until: datetime.datetime | None = None

    def step(self) -> bool:
        """One attempt to acquire or renew (blocking; run it in a thread). Returns is_leader."""
        if self.peering is None:
            return True
        now = datetime.datetime.now(datetime.UTC)
        try:
            obj = self._read()
            if obj is None:
                obj = self._create()
            annotations = (obj.get("metadata") or {}).get("annotations") or {}
            current = Lease.from_json(annotations.get(LEASE_ANNOTATION))
            if current is None or current.holder == self.identity or current.expired(now):
                mine = Lease(self.identity, now, self.lease_seconds)
                self._write(obj["metadata"]["resourceVersion"], mine)
                self._valid_until = now + datetime.timedelta(seconds=self.lease_seconds)
                self.is_leader = True
            else:
                self.is_leader = False
        except ApiException as error:
            # A conflict means another replica wrote first; anything else: keep what we had
            # only while our lease is still valid.
            if error.status == 409 or self._valid_until is None or now >= self._valid_until:
                self.is_leader = False
        return self.is_leader

    def release(self) -> None:
        """Give the lease up on a clean shutdown, so a standby takes over at once."""
        if self.peering is None or not self.is_leader:
            return
        try:
            obj = self._read()
            if obj is None:
                return
            expired = Lease(self.identity, datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC), 0)
            self._write(obj["metadata"]["resourceVersion"], expired)
        except ApiException:
            pass
        self.is_leader = False

    # -- the peering object --------------------------------------------------------------------

    def _read(self) -> dict[str, Any] | None:
        import json as _json

        response: Any
        try:
            if self.namespace is None:
                response = self.kube.custom.get_cluster_custom_object(
                    PEERING_GROUP,
                    PEERING_VERSION,
                    "clusterkopfpeerings",
                    self._name,
                    _preload_content=False,
                )
            else:
                response = self.kube.custom.get_namespaced_custom_object(
                    PEERING_GROUP,
                    PEERING_VERSION,
                    self.namespace,
                    "kopfpeerings",
                    self._name,
                    _preload_content=False,
                )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return dict(_json.loads(response.data))

    def _create(self) -> dict[str, Any]:
        import json as _json

        body = {
            "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
            "kind": "ClusterKopfPeering" if self.namespace is None else "KopfPeering",
            "metadata": {"name": self.peering},
        }
        if self.namespace is None:
            response: Any = self.kube.custom.create_cluster_custom_object(
                PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", body, _preload_content=False
            )
        else:
            response = self.kube.custom.create_namespaced_custom_object(
                PEERING_GROUP, PEERING_VERSION, self.namespace, "kopfpeerings", body, _preload_content=False
            )
        return dict(_json.loads(response.data))

    def _write(self, resource_version: object, lease: Lease) -> None:
        patch = {
            "metadata": {
                "resourceVersion": resource_version,
                "annotations": {LEASE_ANNOTATION: lease.to_json()},
            }
        }
        if self.namespace is None:
            self.kube.custom.patch_cluster_custom_object(
                PEERING_GROUP,
                PEERING_VERSION,
                "clusterkopfpeerings",
                self._name,
                patch,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        else:
            self.kube.custom.patch_namespaced_custom_object(
                PEERING_GROUP,
                PEERING_VERSION,
                self.namespace,
                "kopfpeerings",
                self._name,
                patch,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
