"""The few Kubernetes calls the controller makes, on the official client, returning plain dicts.

Responses are read raw (``_preload_content=False``) and parsed as JSON: the controller works on
dicts like the manifests it builds, and skips the client's slow model deserialization.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import kubernetes
import structlog
from kubernetes.client.exceptions import ApiException

from controller.credentials import SecretUnreadable
from controller.kube.manifests import ACCOUNTING_FINALIZER, GROUP, VERSION

log = structlog.get_logger("tunefleet.controller")
STUDY_PLURAL = "studies"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
COMPONENT = "tunefleet-controller"
log = structlog.get_logger("tunefleet.controller")


def load_api_client(kubeconfig: str | None = None) -> kubernetes.client.ApiClient:
    """In-cluster config when running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config(config_file=kubeconfig)


def _body(response: Any) -> Any:
    data = response.data
    return json.loads(data) if data else {}


def status_code(error: ApiException) -> int:
    return int(error.status or 0)


def _reason(error: ApiException) -> str:
    """The API server's message from the Status body (who may not do what), else the HTTP reason."""
    try:
        return str(json.loads(error.body or "{}").get("message") or error.reason or "")
    except (ValueError, AttributeError):
        return str(error.reason or "")


class KubeApi:
    """Typed wrappers over CoreV1, BatchV1, CustomObjects and CoordinationV1."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.batch = kubernetes.client.BatchV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    # -- trial Jobs and pods ------------------------------------------------------------------

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        response = self.batch.list_namespaced_job(namespace, label_selector=selector, _preload_content=False)
        return list(_body(response).get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        response = self.core.list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        return list(_body(response).get("items") or [])

    def list_pods_everywhere(self, selector: str) -> list[dict[str, Any]]:
        response = self.core.list_pod_for_all_namespaces(label_selector=selector, _preload_content=False)
        return list(_body(response).get("items") or [])

    def create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any] | None:
        """Create the Job and return it as stored (uid, creationTimestamp); None if one of that
        name exists already (adopted, not duplicated)."""
        try:
            response = self.batch.create_namespaced_job(namespace, cast(Any, job), _preload_content=False)
        except ApiException as error:
            if status_code(error) == 409:
                return None
            raise
        return dict(_body(response) or job)

    def delete_job(self, namespace: str, name: str) -> None:
        body: Any = {"propagationPolicy": "Background"}
        try:
            self.batch.delete_namespaced_job(name, namespace, body=body, _preload_content=False)
        except ApiException as error:
            if status_code(error) != 404:
                raise

    def remove_accounting_finalizer(self, pod: dict[str, Any]) -> None:
        """Drop our finalizer with a JSON patch guarded by a test, so others' finalizers survive."""
        meta = pod["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if ACCOUNTING_FINALIZER not in finalizers:
            return
        remaining = [f for f in finalizers if f != ACCOUNTING_FINALIZER]
        patch = [
            {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
            {"op": "replace", "path": "/metadata/finalizers", "value": remaining},
        ]
        try:
            self.core.patch_namespaced_pod(
                meta["name"], meta["namespace"], patch, _content_type=JSON_PATCH, _preload_content=False
            )
        except ApiException as error:
            if status_code(error) == 404:
                return
            if status_code(error) in (409, 422):  # the finalizers changed meanwhile: reread once
                fresh = self.read_pod(meta["namespace"], meta["name"])
                if fresh is not None and fresh is not pod:
                    self.remove_accounting_finalizer(fresh)
                return
            raise

    def read_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(_body(self.core.read_namespaced_pod(name, namespace, _preload_content=False)))
        except ApiException as error:
            if status_code(error) == 404:
                return None
            raise

    def read_pod_log_tail(self, namespace: str, name: str, lines: int) -> str | None:
        """The last ``lines`` of a pod's log; None when it has none (never started, gone)."""
        try:
            response: Any = self.core.read_namespaced_pod_log(
                name, namespace, tail_lines=lines, _preload_content=False
            )
        except ApiException as error:
            # Best effort: a log the node cannot serve (400: the container never started; 404: gone;
            # 5xx: the kubelet is unreachable) leaves the message without it, never fails a reconcile.
            if status_code(error) == 403:
                log.warning("may not read trial pod logs (pods/log get)", namespace=namespace, pod=name)
            elif status_code(error) not in (400, 404):
                log.info("no trial pod log", namespace=namespace, pod=name, status=status_code(error))
            return None
        return str(response.data.decode(errors="replace"))

    # -- the Study ----------------------------------------------------------------------------

    def read_study(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, STUDY_PLURAL, name, _preload_content=False
            )
        except ApiException as error:
            if status_code(error) == 404:
                return None
            raise
        return dict(_body(response))

    def patch_study_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patch_status(STUDY_PLURAL, namespace, name, status)

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch one of our custom objects' status; a deleted object is left alone."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                {"status": status},
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        except ApiException as error:
            if status_code(error) != 404:  # deleted meanwhile
                raise

    def post_event(
        self, study: dict[str, Any], reason: str, message: str, warning: bool = False, name: str | None = None
    ) -> None:
        """A core/v1 Event on the Study, like ``kubectl describe study`` shows. With ``name``,
        an Event of that name already there means it was posted before: nothing is posted."""
        meta = study["metadata"]
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name or f"{meta['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": meta["namespace"],
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "Study",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid", ""),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], cast(Any, event), _preload_content=False)
        except ApiException as error:  # events are best effort, never fail a reconcile
            if status_code(error) == 403:  # but a missing grant is said, not swallowed
                log.error("cannot post an Event: forbidden", reason=reason, detail=_reason(error))
            elif status_code(error) == 409 and name is not None:
                log.debug("event already posted", reason=reason, event=name)

    # -- per-namespace prerequisites ----------------------------------------------------------

    def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        """One key of a Secret, decoded; raises SecretUnreadable (403, 404 or no such key)."""
        import base64

        try:
            secret = _body(self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as error:
            if status_code(error) == 403:
                raise SecretUnreadable(namespace, name, key, "SecretForbidden", _reason(error)) from None
            if status_code(error) == 404:
                raise SecretUnreadable(namespace, name, key, "SecretNotFound") from None
            raise
        raw = (secret.get("data") or {}).get(key)
        if raw is None:
            raise SecretUnreadable(namespace, name, key, "SecretKeyMissing")
        return base64.b64decode(raw).decode()

    def delete_secret(self, namespace: str, name: str) -> bool:
        """Delete a Secret; False when there was none (404)."""
        try:
            self.core.delete_namespaced_secret(name, namespace, _preload_content=False)
        except ApiException as error:
            if status_code(error) != 404:
                raise
            return False
        return True

    def create_secret(self, manifest: dict[str, Any]) -> bool:
        """Create a Secret; False when one of that name exists (kept: the controller may create
        Secrets in study namespaces but neither read nor replace a trial's)."""
        meta = manifest["metadata"]
        try:
            self.core.create_namespaced_secret(meta["namespace"], cast(Any, manifest), _preload_content=False)
        except ApiException as error:
            if status_code(error) != 409:
                raise
            return False
        return True

    def ensure_object(self, manifest: dict[str, Any]) -> None:
        """Create a namespaced ServiceAccount, Service, Secret or ConfigMap; replace Secret/ConfigMap data."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        calls: dict[str, tuple[Callable[..., Any], Callable[..., Any] | None]] = {
            "ServiceAccount": (self.core.create_namespaced_service_account, None),
            "Service": (self.core.create_namespaced_service, None),  # a multi-node trial's, headless
            "Secret": (self.core.create_namespaced_secret, self.core.patch_namespaced_secret),
            "ConfigMap": (self.core.create_namespaced_config_map, self.core.patch_namespaced_config_map),
        }
        create, replace = calls[kind]
        try:
            create(meta["namespace"], manifest, _preload_content=False)
        except ApiException as error:
            if status_code(error) != 409:
                raise
            if kind == "Service":
                self._replace_service_of_another_owner(manifest)
            elif replace is not None:
                patch = {k: v for k, v in manifest.items() if k in ("data", "stringData")}
                replace(
                    meta["name"], meta["namespace"], patch, _content_type=MERGE_PATCH, _preload_content=False
                )

    def _replace_service_of_another_owner(self, manifest: dict[str, Any]) -> None:
        """A trial's Service of that name exists: keep it if it is ours, else replace it.

        A Study deleted and applied again under its name numbers its trials from 0 again; an old
        trial Service may outlive its Study until garbage collection, which would then delete the
        one the new trial's ranks need to find each other.
        """
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        try:
            existing = _body(self.core.read_namespaced_service(name, namespace, _preload_content=False))
        except ApiException as error:
            if status_code(error) != 404:
                raise
            existing = None  # gone meanwhile
        if existing is not None:
            if _owner_uids(existing) == _owner_uids(manifest):
                return
            try:
                self.core.delete_namespaced_service(name, namespace, _preload_content=False)
            except ApiException as error:
                if status_code(error) != 404:
                    raise
        self.core.create_namespaced_service(namespace, cast(Any, manifest), _preload_content=False)


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {str(ref.get("uid")) for ref in (obj.get("metadata") or {}).get("ownerReferences") or []}
