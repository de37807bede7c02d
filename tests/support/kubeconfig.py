"""A kubeconfig that authenticates as a ServiceAccount, for a controller run outside a pod."""

from __future__ import annotations

from pathlib import Path

import kubernetes
import yaml


def service_account_kubeconfig(
    api_client: kubernetes.client.ApiClient, admin_kubeconfig: Path, namespace: str, name: str, path: Path
) -> Path:
    """The admin kubeconfig's cluster entry with a token of the ServiceAccount from the TokenRequest
    API (what ``kubectl create token`` does); in a pod the same token would be mounted."""
    core = kubernetes.client.CoreV1Api(api_client)
    request = core.create_namespaced_service_account_token(
        name, namespace, {"spec": {"expirationSeconds": 12 * 3600}}
    )
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context_name = admin.get("current-context")
    context = next(c["context"] for c in admin["contexts"] if c["name"] == context_name)
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    user = f"system:serviceaccount:{namespace}:{name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": user, "user": {"token": request.status.token}}],
        "contexts": [{"name": user, "context": {"cluster": cluster["name"], "user": user,
                                                "namespace": namespace}}],
        "current-context": user,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
