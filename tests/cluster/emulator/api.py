"""Direct, thread-safe access to the emulated objects for test set-up and assertions.

No HTTP, no request counting: what a test uses to look behind the controller's back.
Objects handed out are deep copies.
"""

from __future__ import annotations

import builtins
import copy
from collections.abc import Iterable
from typing import Any

from .errors import ApiError
from .patching import MERGE_PATCH
from .store import Store


class Api:
    """Resources are named like kubectl does: `pods`, `jobs.batch`, `studies.tunefleet.dev`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def resource_version(self) -> int:
        """The latest resourceVersion handed out (global, like etcd's revision)."""
        return self.store.resource_version

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Raises ApiError(404) when absent."""
        rt = self.store.find_type(resource)
        return copy.deepcopy(self.store.get(rt, namespace, name))

    def find(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.get(resource, namespace, name)
        except ApiError:
            return None

    def list(self, resource: str, namespace: str | None = None, *,
             label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        rt = self.store.find_type(resource)
        items, _ = self.store.list(rt, namespace, label_selector=label_selector,
                                   field_selector=field_selector)
        return copy.deepcopy(items)

    def create(self, resource: str, body: dict[str, Any],
               namespace: str | None = None) -> dict[str, Any]:
        rt = self.store.find_type(resource)
        return copy.deepcopy(self.store.create(rt, namespace, body))

    def patch(self, resource: str, namespace: str | None, name: str, patch: Any, *,
              subresource: str | None = None, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        rt = self.store.find_type(resource)
        return copy.deepcopy(self.store.patch(rt, namespace, name, patch, content_type,
                                              subresource=subresource))

    def delete(self, resource: str, namespace: str | None, name: str, *,
               propagation: str | None = None, grace_period: int | None = None) -> bool:
        """Returns whether the object is gone now (False: finalizers or a stopping pod)."""
        rt = self.store.find_type(resource)
        _, gone = self.store.delete(rt, namespace, name, propagation=propagation,
                                    grace_period=grace_period)
        return gone

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
        return self.create("namespaces", {"metadata": {"name": name, "labels": labels or {}}})

    def apply_crds(self, manifests: Iterable[dict[str, Any]]) -> None:
        """Create (or replace) CustomResourceDefinitions, e.g. the output of `tunefleet crd`."""
        rt = self.store.find_type("customresourcedefinitions.apiextensions.k8s.io")
        for manifest in manifests:
            name = manifest["metadata"]["name"]
            try:
                self.store.create(rt, None, manifest)
            except ApiError as exc:
                if exc.code != 409:
                    raise
                body = copy.deepcopy(manifest)
                body["metadata"].pop("resourceVersion", None)
                self.store.replace(rt, None, name, body)

    def served(self) -> builtins.list[str]:
        """`group/version/plural` of every resource served now (discovery)."""
        return sorted(f"{rt.api_version}/{rt.plural}" for rt in self.store.types())
