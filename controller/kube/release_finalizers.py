"""Uninstall: remove ``tunefleet.dev/gpu-accounting`` from every trial pod.

The chart's pre-delete hook runs ``tunefleet release-finalizers`` so no pod stays Terminating
once no controller is left to settle it. Pods released this way are not charged to the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence

from controller.kube.client import KubeApi, load_api_client
from controller.kube.manifests import ACCOUNTING_FINALIZER, STUDY_LABEL


def release_all(
    namespaces: Sequence[str] = (), kubeconfig: str | None = None, kube: KubeApi | None = None
) -> int:
    """Remove the finalizer from every pod labelled ``tunefleet.dev/study``; returns how many."""
    api = kube or KubeApi(load_api_client(kubeconfig))
    if namespaces:
        pods = [pod for namespace in namespaces for pod in api.list_pods(namespace, STUDY_LABEL)]
    else:
        pods = api.list_pods_everywhere(STUDY_LABEL)
    released = 0
    for pod in pods:
        if ACCOUNTING_FINALIZER in (pod["metadata"].get("finalizers") or []):
            api.remove_accounting_finalizer(pod)
            released += 1
    return released
