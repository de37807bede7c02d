"""The emulated etcd + API semantics: objects, resourceVersions, finalizers, GC and history.

Every method is synchronous and thread-safe (one re-entrant lock), so tests can read and write
the store directly from the pytest thread while the HTTP server and controllers use it from
the emulator's event loop. Stored objects are never mutated after commit; readers that hand
objects out of the store (the `Api` facade) copy them.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import copy
import datetime
import json
import logging
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from . import admission, defaults, patching, resources
from .errors import ApiError
from .resources import ResourceType
from .selectors import make_filter
from .watching import ADDED, DELETED, MODIFIED, Event, Watcher

logger = logging.getLogger(__name__)

ObjKey = tuple[tuple[str, str], str, str]  # (resource key, namespace or "", name)
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the same alphabet as apimachinery's rand
_IMMUTABLE_META = ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                   "deletionGracePeriodSeconds", "generation")
CRD_KEY = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_KEY = ("", "namespaces")
POD_KEY = ("", "pods")
JOB_KEY = ("batch", "jobs")


def now_iso(offset_s: float = 0.0) -> str:
    """RFC 3339 with second precision, as the real API serialises metav1.Time."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset_s)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(length))


class Store:
    """In-memory objects of every served resource, with the API server's write semantics."""

    def __init__(self, *, history_size: int = 20_000, gc_delay_s: float = 0.05) -> None:
        self._lock = threading.RLock()
        self._rv = 0
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}
        self._uids: dict[str, ObjKey] = {}
        self._dependents: dict[str, set[ObjKey]] = {}
        self._graceful: set[str] = set()  # pod uids waiting for the kubelet to stop them
        self._history: deque[Event] = deque()
        self._history_size = history_size
        self._compacted_rv = 0
        self._watchers: dict[tuple[str, str], set[Watcher]] = {}
        self._listeners: list[Callable[[Event], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gc_delay_s = gc_delay_s
        for rt in resources.BUILTIN_TYPES:
            self._register(rt)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.resolve("", "v1", "namespaces"), None, {"metadata": {"name": ns}})
        for crd in resources.KOPF_PEERING_CRDS:
            self.create(self.type_for_key(CRD_KEY), None, crd)

    # -- wiring -----------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` on the emulator's loop for every committed change."""
        self._listeners.append(listener)

    def _notify(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a broken controller must not stop the others
                logger.exception("emulator listener failed on %s", event.type)

    def _soon(self, delay: float, fn: Callable[[], None]) -> None:
        if self._loop is None:
            fn()
        else:
            self._loop.call_soon_threadsafe(self._loop.call_later, delay, fn)

    # -- resource types ---------------------------------------------------------------------

    def _register(self, rt: ResourceType) -> None:
        self._types[(rt.group, rt.version, rt.plural)] = rt
        self._objects.setdefault(rt.key, {})

    def types(self) -> list[ResourceType]:
        with self._lock:
            return list(self._types.values())

    def resolve(self, group: str, version: str, plural: str) -> ResourceType:
        with self._lock:
            rt = self._types.get((group, version, plural))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {"group": group, "kind": plural})
        return rt

    def type_for_key(self, key: tuple[str, str]) -> ResourceType:
        with self._lock:
            return next(rt for rt in self._types.values() if rt.key == key)

    def find_type(self, name: str) -> ResourceType:
        """Resolve `pods`, `jobs.batch`, `studies.tunefleet.dev`, `batch/v1/jobs` or a Kind."""
        with self._lock:
            types = list(self._types.values())
        exact = [rt for rt in types if name in (rt.display, f"{rt.api_version}/{rt.plural}")]
        loose = [rt for rt in types if name in (rt.plural, rt.kind)]
        # A bare plural prefers the core group (`events` is v1, not events.k8s.io).
        for candidates in (exact, sorted(loose, key=lambda rt: rt.group != "")):
            if candidates:
                return candidates[0]
        raise KeyError(f"no such resource in the emulator: {name!r}")

    def is_stopping(self, uid: str) -> bool:
        """Whether a deleted pod still waits for its kubelet to stop its containers."""
        with self._lock:
            return uid in self._graceful

    def _install_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for type_key in [k for k, rt in self._types.items() if rt.key == key]:
            del self._types[type_key]
        for rt in resources.types_from_crd(crd):
            self._register(rt)

    def _uninstall_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        key = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        for obj in list(self._objects.get(key, {}).values()):
            self._remove(self.type_for_key(key), obj)
        for type_key in [k for k, rt in self._types.items() if rt.key == key]:
            del self._types[type_key]

    # -- commit path ------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def _commit(self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
                kind: str) -> dict[str, Any]:
        self._rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._rv)
        slot = (meta.get("namespace", ""), meta["name"])
        okey: ObjKey = (rt.key, slot[0], slot[1])
        if kind == DELETED:
            self._objects[rt.key].pop(slot, None)
            self._uids.pop(meta["uid"], None)
        else:
            self._objects[rt.key][slot] = obj
            self._uids[meta["uid"]] = okey
        self._index_owners(okey, old, None if kind == DELETED else obj)
        event = Event(self._rv, rt.key, kind, obj, old)
        self._history.append(event)
        while len(self._history) > self._history_size:
            self._compacted_rv = self._history.popleft().rv
        for watcher in self._watchers.get(rt.key, ()):
            watcher.offer(event)
        if self._loop is not None and self._listeners:
            self._loop.call_soon_threadsafe(self._notify, event)
        return obj

    def _index_owners(self, okey: ObjKey, old: dict[str, Any] | None,
                      new: dict[str, Any] | None) -> None:
        for obj, add in ((old, False), (new, True)):
            for ref in (obj or {}).get("metadata", {}).get("ownerReferences") or []:
                owners = self._dependents.setdefault(ref.get("uid", ""), set())
                if add:
                    owners.add(okey)
                else:
                    owners.discard(okey)

    def _slot(self, rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "") if rt.namespaced else "", name)

    def _get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects.get(rt.key, {}).get(self._slot(rt, namespace, name))
        if obj is None:
            raise ApiError.not_found(rt.plural, rt.group, name)
        return obj

    # -- verbs ------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            return self._get(rt, namespace, name)

    def create(self, rt: ResourceType, namespace: str | None, body: Any, *,
               dry_run: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        with self._lock:
            obj = copy.deepcopy(body)
            meta = obj.get("metadata") or {}
            obj["metadata"] = meta
            ns = self._create_namespace(rt, namespace, meta)
            name = meta.get("name")
            if not name:
                prefix = meta.get("generateName")
                if not prefix:
                    raise ApiError.invalid(rt.kind, "", "metadata.name: Required value: name or "
                                           "generateName is required")
                name = prefix + random_suffix()
                while (ns, name) in self._objects[rt.key]:
                    name = prefix + random_suffix()
            if len(name) > 253 or not _NAME_RE.match(name):
                raise ApiError.invalid(rt.kind, name, f'metadata.name: Invalid value: "{name}": '
                                       "a lowercase RFC 1123 subdomain must consist of lower case "
                                       "alphanumeric characters, '-' or '.'")
            if (ns, name) in self._objects[rt.key]:
                raise ApiError.already_exists(rt.plural, rt.group, name)
            for key in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds",
                        "selfLink", "managedFields"):
                meta.pop(key, None)
            meta.update(name=name, uid=str(uuid.uuid4()), creationTimestamp=now_iso(),
                        generation=1)
            obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
            if rt.has_status:
                obj.pop("status", None)
            if rt.custom:
                obj = resources.prune_custom_object(obj, rt.schema)
                _admit(rt, obj)
            defaults.default_on_create(rt, obj)
            if dry_run:
                return obj
            committed = self._commit(rt, obj, None, ADDED)
            if rt.key == CRD_KEY:
                self._install_crd(committed)
            return committed

    def _create_namespace(self, rt: ResourceType, namespace: str | None,
                          meta: dict[str, Any]) -> str:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return ""
        ns = namespace or meta.get("namespace")
        if not ns:
            raise ApiError.bad_request("the namespace of the object is required")
        if meta.get("namespace") and namespace and meta["namespace"] != namespace:
            raise ApiError.bad_request("the namespace of the provided object does not match "
                                       "the namespace sent on the request")
        meta["namespace"] = ns
        ns_obj = self._objects[NAMESPACE_KEY].get(("", ns))
        if ns_obj is None:
            raise ApiError.not_found("namespaces", "", ns)
        if ns_obj["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"{rt.plural} is forbidden: unable to create new "
                           f"content in namespace {ns} because it is being terminated")
        return str(ns)

    def list(self, rt: ResourceType, namespace: str | None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None
             ) -> tuple[builtins.list[dict[str, Any]], dict[str, Any]]:
        """Items sorted by (namespace, name) plus the list's metadata (rv, continue)."""
        predicate = make_filter(namespace if rt.namespaced else None, label_selector,
                                field_selector, rt.plural, rt.custom)
        with self._lock:
            bucket = self._objects.get(rt.key, {})
            slots = sorted(slot for slot, obj in bucket.items() if predicate(obj))
            items = [bucket[slot] for slot in slots]
            rv = self._rv
        if continue_token:
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(continue_token)))
            except ValueError as exc:
                raise ApiError.bad_request(f"invalid continue token: {exc}") from exc
            start = next((i for i, s in enumerate(slots) if s > after), len(slots))
            items, slots = items[start:], slots[start:]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            token = base64.urlsafe_b64encode(json.dumps(list(slots[limit - 1])).encode())
            meta["continue"] = token.decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        return items, meta

    def replace(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *,
                subresource: str | None = None, internal: bool = False) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError.bad_request("the request body must be a JSON object")
        with self._lock:
            current = self._get(rt, namespace, name)
            meta = body.get("metadata") or {}
            if meta.get("name") and meta["name"] != name:
                raise ApiError.bad_request(f"the name of the object ({meta['name']}) does not "
                                           f"match the name on the URL ({name})")
            self._check_rv(rt, current, meta.get("resourceVersion"))
            return self._write(rt, current, body, subresource, internal)

    def patch(self, rt: ResourceType, namespace: str | None, name: str, body: Any,
              content_type: str, *, subresource: str | None = None,
              internal: bool = False) -> dict[str, Any]:
        with self._lock:
            current = self._get(rt, namespace, name)
            merged = patching.apply_patch(current, body, content_type, rt.custom)
            if not isinstance(merged, dict):
                raise ApiError(422, "Invalid", "the patch produced a non-object document")
            self._check_rv(rt, current, (merged.get("metadata") or {}).get("resourceVersion"))
            return self._write(rt, current, merged, subresource, internal)

    def mutate(self, rt: ResourceType, namespace: str | None, name: str,
               fn: Callable[[dict[str, Any]], None], *, subresource: str | None = None
               ) -> dict[str, Any]:
        """Atomically read-modify-write as an internal controller (no update validation)."""
        with self._lock:
            current = self._get(rt, namespace, name)
            draft = copy.deepcopy(current)
            fn(draft)
            return self._write(rt, current, draft, subresource, internal=True)

    def _check_rv(self, rt: ResourceType, current: dict[str, Any], rv: Any) -> None:
        if rv and str(rv) != current["metadata"]["resourceVersion"]:
            raise ApiError.conflict(rt.plural, rt.group, current["metadata"]["name"])

    def _write(self, rt: ResourceType, current: dict[str, Any], incoming: dict[str, Any],
               subresource: str | None, internal: bool) -> dict[str, Any]:
        if subresource == "status":
            new = copy.deepcopy(current)
            if incoming.get("status") is None:
                new.pop("status", None)
            else:
                new["status"] = copy.deepcopy(incoming["status"])
        elif subresource is None:
            new = copy.deepcopy(incoming)
            meta = new.get("metadata") or {}
            new["metadata"] = meta
            for key in _IMMUTABLE_META:
                if key in current["metadata"]:
                    meta[key] = current["metadata"][key]
                else:
                    meta.pop(key, None)
            meta.pop("selfLink", None)
            meta.pop("managedFields", None)
            new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
            if rt.has_status:
                new.pop("status", None)
                if "status" in current:
                    new["status"] = copy.deepcopy(current["status"])
            if not internal:
                defaults.validate_update(rt, current, new)
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                           f"({rt.plural}/{subresource})")
        if rt.custom:
            new = resources.prune_custom_object(new, rt.schema)
            if subresource is None and not internal and _validated(new) != _validated(current):
                # Like validation ratcheting: an update that leaves the object as it was is let
                # through even if the CRD's rules changed since.
                _admit(rt, new)
        old_meta, new_meta = current["metadata"], new["metadata"]
        if old_meta.get("deletionTimestamp"):
            added = set(new_meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise ApiError.invalid(rt.kind, old_meta["name"], "metadata.finalizers: "
                                       "Forbidden: no new finalizers can be added if the object "
                                       f"is being deleted, found new finalizers {sorted(added)}")
        if not new_meta.get("finalizers"):
            new_meta.pop("finalizers", None)
        if _spec_of(rt, new) != _spec_of(rt, current):
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == current:
            return current  # a no-op write: no new resourceVersion and no watch event
        committed = self._commit(rt, new, current, MODIFIED)
        if rt.key == CRD_KEY:
            self._install_crd(committed)
        self._maybe_finalize(rt, committed)
        return committed

    def delete(self, rt: ResourceType, namespace: str | None, name: str, *,
               propagation: str | None = None, grace_period: int | None = None,
               preconditions: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """Delete or start deleting; returns (latest object, whether it is gone now)."""
        with self._lock:
            current = self._get(rt, namespace, name)
            meta = current["metadata"]
            for field in ("uid", "resourceVersion"):
                expected = (preconditions or {}).get(field)
                if expected and expected != meta.get(field):
                    raise ApiError(409, "Conflict", f"Precondition failed: {field} in "
                                   f"precondition: {expected}, {field} in object meta: "
                                   f"{meta.get(field)}")
            if propagation is None:
                # batch/v1 Jobs orphan their pods by default, for backwards compatibility.
                propagation = "Orphan" if rt.key == JOB_KEY else "Background"
            if propagation == "Orphan":
                self._orphan_dependents(meta["uid"])
            if rt.key == POD_KEY and self._graceful_pod_delete(current, grace_period):
                return self._get(rt, namespace, name), False
            if rt.key == NAMESPACE_KEY:
                return self._delete_namespace(rt, current), False
            if meta.get("deletionTimestamp"):
                return current, self._maybe_finalize(rt, current)
            if meta.get("finalizers"):
                new = copy.deepcopy(current)
                new["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
                return self._commit(rt, new, current, MODIFIED), False
            return self._remove(rt, current), True

    def _graceful_pod_delete(self, pod: dict[str, Any], grace_period: int | None) -> bool:
        """Pods on a node stop first: the kubelet kills the container, then deletes with 0."""
        meta, spec = pod["metadata"], pod.get("spec") or {}
        uid = meta["uid"]
        grace = grace_period if grace_period is not None else spec.get(
            "terminationGracePeriodSeconds", 30)
        terminal = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        if grace <= 0 or not spec.get("nodeName") or terminal:
            self._graceful.discard(uid)
            return False
        if meta.get("deletionTimestamp"):
            return True
        new = copy.deepcopy(pod)
        new["metadata"].update(deletionTimestamp=now_iso(grace), deletionGracePeriodSeconds=grace)
        self._graceful.add(uid)
        self._commit(self.type_for_key(POD_KEY), new, pod, MODIFIED)
        return True

    def _delete_namespace(self, rt: ResourceType, ns_obj: dict[str, Any]) -> dict[str, Any]:
        ns = ns_obj["metadata"]["name"]
        if not ns_obj["metadata"].get("deletionTimestamp"):
            new = copy.deepcopy(ns_obj)
            new["metadata"].update(deletionTimestamp=now_iso(), deletionGracePeriodSeconds=0)
            new["status"] = {"phase": "Terminating"}
            ns_obj = self._commit(rt, new, ns_obj, MODIFIED)
            for key, bucket in list(self._objects.items()):
                for (obj_ns, name), obj in list(bucket.items()):
                    if obj_ns == ns and not obj["metadata"].get("deletionTimestamp"):
                        self.delete(self.type_for_key(key), ns, name, propagation="Background")
        self._maybe_finish_namespace(ns)
        return ns_obj

    def _maybe_finish_namespace(self, ns: str) -> None:
        ns_obj = self._objects[NAMESPACE_KEY].get(("", ns))
        if ns_obj is None or not ns_obj["metadata"].get("deletionTimestamp"):
            return
        if any(slot[0] == ns for bucket in self._objects.values() for slot in bucket):
            return
        self._remove(self.type_for_key(NAMESPACE_KEY), ns_obj)

    def release_pod(self, namespace: str, name: str) -> None:
        """The kubelet has stopped the pod's containers: finish its deletion (grace 0)."""
        with self._lock:
            rt = self.type_for_key(POD_KEY)
            pod = self._objects[POD_KEY].get((namespace, name))
            if pod is None:
                return
            self._graceful.discard(pod["metadata"]["uid"])
            if pod["metadata"].get("deletionTimestamp"):
                self._maybe_finalize(rt, pod)
            else:
                self.delete(rt, namespace, name, grace_period=0)

    def _maybe_finalize(self, rt: ResourceType, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        if (meta.get("deletionTimestamp") and not meta.get("finalizers")
                and meta["uid"] not in self._graceful and rt.key != NAMESPACE_KEY):
            self._remove(rt, obj)
            return True
        return False

    def _remove(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        final = dict(obj)
        final["metadata"] = dict(obj["metadata"])
        uid = final["metadata"]["uid"]
        self._graceful.discard(uid)
        self._commit(rt, final, obj, DELETED)
        if self._dependents.get(uid):
            self._soon(self._gc_delay_s, lambda: self._collect(uid))
        if rt.key == CRD_KEY:
            self._uninstall_crd(final)
        if rt.namespaced:
            self._maybe_finish_namespace(final["metadata"].get("namespace", ""))
        return final

    def _orphan_dependents(self, owner_uid: str) -> None:
        for key, ns, name in list(self._dependents.get(owner_uid, ())):
            obj = self._objects.get(key, {}).get((ns, name))
            if obj is not None:
                new = copy.deepcopy(obj)
                refs = [r for r in new["metadata"].get("ownerReferences") or []
                        if r.get("uid") != owner_uid]
                new["metadata"]["ownerReferences"] = refs
                if not refs:
                    new["metadata"].pop("ownerReferences")
                self._commit(self.type_for_key(key), new, obj, MODIFIED)

    def _collect(self, owner_uid: str) -> None:
        """Background garbage collection of an owner's dependents (runs after a short delay)."""
        with self._lock:
            if owner_uid in self._uids:
                return
            for key, ns, name in list(self._dependents.pop(owner_uid, ())):
                obj = self._objects.get(key, {}).get((ns, name))
                if obj is None or obj["metadata"].get("deletionTimestamp"):
                    continue
                rt = self.type_for_key(key)
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") in self._uids for r in refs):
                    self._orphan_dependents(owner_uid)  # other owners live: drop the dead ref
                    continue
                try:
                    self.delete(rt, ns or None, name, propagation="Background")
                except ApiError:
                    logger.exception("garbage collection of %s/%s failed", ns, name)

    # -- watch ------------------------------------------------------------------------------

    def watch(self, rt: ResourceType, predicate: Callable[[Mapping[str, Any]], bool],
              since: str | None, loop: asyncio.AbstractEventLoop, initial: bool | None = None
              ) -> tuple[Watcher, builtins.list[tuple[str, dict[str, Any]]]]:
        """Open a watch; returns it with the events to replay before live ones."""
        with self._lock:
            if since in (None, "", "0") or initial:
                replay = [(ADDED, obj) for obj in self._objects.get(rt.key, {}).values()
                          if predicate(obj)]
            else:
                try:
                    rv = int(str(since))
                except ValueError as exc:
                    raise ApiError.bad_request(f"invalid resource version: {since}") from exc
                if rv < self._compacted_rv:
                    raise ApiError.gone(rv, self._compacted_rv + 1)
                probe = Watcher(rt.key, predicate, loop, rv)
                replay = [seen for ev in self._history if ev.rv > rv and ev.key == rt.key
                          for seen in [probe.translate(ev)] if seen is not None]
            watcher = Watcher(rt.key, predicate, loop, self._rv)
            self._watchers.setdefault(rt.key, set()).add(watcher)
            return watcher, replay

    def unwatch(self, watcher: Watcher) -> None:
        with self._lock:
            self._watchers.get(watcher.key, set()).discard(watcher)

    def close_watches(self, abort: bool = False) -> int:
        """End every open watch-stream (clients must re-watch); returns how many."""
        with self._lock:
            watchers = [w for ws in self._watchers.values() for w in ws]
        for watcher in watchers:
            watcher.close(abort)
        return len(watchers)

    def compact(self) -> None:
        """Forget all history, so any watch from an older resourceVersion gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv

    def uid_exists(self, uid: str) -> bool:
        with self._lock:
            return uid in self._uids

    def dependents(self, owner_uid: str, key: tuple[str, str]) -> builtins.list[dict[str, Any]]:
        with self._lock:
            return [obj for k, ns, name in self._dependents.get(owner_uid, ()) if k == key
                    for obj in [self._objects[k].get((ns, name))] if obj is not None]


def _spec_of(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Everything whose change bumps metadata.generation."""
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


def _validated(obj: dict[str, Any]) -> dict[str, Any]:
    """The part of a custom resource its CRD's schema and rules judge."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _admit(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Refuse (422) what the CRD's OpenAPI schema and CEL rules refuse."""
    if rt.schema is None:
        return
    causes = admission.admission_causes(obj, rt.schema)
    if causes:
        name = str(obj.get("metadata", {}).get("name", ""))
        message = admission.invalid_message(f"{rt.kind}.{rt.group}", name, causes)
        raise ApiError.refused(rt.group, rt.kind, name, message, [c.as_status() for c in causes])
