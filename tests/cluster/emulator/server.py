"""The HTTP face of the emulator: Kubernetes REST paths, watch-streams, discovery and outages."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from . import resources
from .access import Access
from .disruption import Disruption
from .errors import ApiError
from .resources import ResourceType
from .selectors import make_filter
from .store import POD_KEY, Store

logger = logging.getLogger(__name__)

LogSource = Callable[[str, str], "Path | None"]


@dataclass(frozen=True)
class Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


def _error(exc: ApiError) -> web.Response:
    return _json(exc.status(), exc.code)


class ApiServer:
    """Serves a `Store` over real HTTP on 127.0.0.1 (a random free port by default)."""

    def __init__(self, store: Store, *, host: str = "127.0.0.1", port: int = 0,
                 log_source: LogSource | None = None, bookmark_interval_s: float = 1.0,
                 default_watch_timeout_s: float = 1800.0) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.log_source = log_source
        self.bookmark_interval_s = bookmark_interval_s
        self.default_watch_timeout_s = default_watch_timeout_s
        self.request_counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.paused: str | None = None  # None, "503" or "refuse"
        self.disruption: Disruption | None = None  # some requests fail or wait (disruption.py)
        self.access = Access(store)  # bearer tokens and RBAC (see access.py)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await self._start_site()
        self.store.bind_loop(asyncio.get_running_loop())

    async def _start_site(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.store.close_watches(abort=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def pause(self, mode: str = "503") -> None:
        """Emulate an API outage: answer 503, or refuse connections ("refuse")."""
        if mode not in ("503", "refuse"):
            raise ValueError(f"unknown outage mode {mode!r}")
        self.paused = mode
        self.store.close_watches(abort=True)
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None

    async def resume(self) -> None:
        if self.paused == "refuse" and self._site is None:
            await self._start_site()
        self.paused = None

    # -- dispatch ---------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.paused == "refuse":
            # Connections kept alive from before the outage are dropped, not answered.
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if self.paused:
            return _error(ApiError(503, "ServiceUnavailable", "the server is currently unable "
                                   "to handle the request (emulated outage)"))
        disruption = self.disruption
        if disruption is not None and disruption.hits():
            error = disruption.error()
            if error is not None:
                response = _error(error)
                if error.code == 429:
                    response.headers["Retry-After"] = "1"
                return response
            await asyncio.sleep(disruption.delay_s)
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return _error(exc)
        except json.JSONDecodeError as exc:
            return _error(ApiError.bad_request(f"invalid JSON in the request body: {exc}"))

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        subject = self.access.authenticate(request.headers.get("Authorization"))
        parts = [p for p in request.path.split("/") if p]
        discovery = self._discovery(parts)
        if discovery is not None:  # open to every authenticated user, as system:discovery grants
            self.request_counts[("get", "discovery")] += 1
            return _json(discovery)
        route = self._route(parts)
        verb = self._verb(request.method, route, request.query)
        resource = route.rt.display + (f"/{route.subresource}" if route.subresource else "")
        self.request_counts[(verb, resource)] += 1
        self.access.authorize(subject, verb, route.rt, route.namespace, route.name, route.subresource)
        if verb == "create" and route.subresource == "token" and route.rt.plural == "serviceaccounts":
            assert route.namespace is not None and route.name is not None
            return _json(self.access.issue_token(route.namespace, route.name, await request.json()), 201)
        if verb == "watch":
            return await self._watch(request, route)
        if verb == "list":
            return self._list(request, route)
        if verb == "get":
            if route.subresource == "log":
                return await self._log(request, route)
            self._check_subresource(route)
            assert route.name is not None
            return _json(self.store.get(route.rt, route.namespace, route.name))
        if verb == "create":
            body = await request.json()
            dry_run = "All" in request.query.getall("dryRun", [])
            return _json(self.store.create(route.rt, route.namespace, body, dry_run=dry_run), 201)
        if verb in ("update", "patch"):
            self._check_subresource(route)
            assert route.name is not None
            body = await request.json()
            if verb == "update":
                obj = self.store.replace(route.rt, route.namespace, route.name, body,
                                         subresource=route.subresource)
            else:
                content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
                obj = self.store.patch(route.rt, route.namespace, route.name, body, content_type,
                                       subresource=route.subresource)
            return _json(obj)
        if verb == "delete":
            return await self._delete(request, route)
        if verb == "deletecollection":
            return await self._delete_collection(request, route)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the "
                       f"requested resource ({request.method} {request.path})")

    def _discovery(self, parts: list[str]) -> dict[str, Any] | None:
        types = self.store.types()
        if not parts:
            paths = {"/api", "/api/v1", "/apis", "/version"}
            paths |= {f"/apis/{rt.group}" for rt in types if rt.group}
            paths |= {f"/apis/{rt.api_version}" for rt in types if rt.group}
            return {"paths": sorted(paths)}
        if parts == ["version"]:
            return dict(resources.SERVER_VERSION)
        if parts == ["api"]:
            return resources.api_versions()
        if parts == ["apis"]:
            return resources.group_list(types)
        if parts == ["api", "v1"]:
            return resources.resource_list(types, "", "v1")
        if len(parts) == 2 and parts[0] == "apis":
            versions = resources.group_versions(types, parts[1])
            if not versions:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return resources.api_group(parts[1], versions)
        if len(parts) == 3 and parts[0] == "apis":
            if parts[2] not in resources.group_versions(types, parts[1]):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return resources.resource_list(types, parts[1], parts[2])
        return None

    def _route(self, parts: list[str]) -> Route:
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            candidate = (group, version, rest[2])
            if any((rt.group, rt.version, rt.plural) == candidate and rt.namespaced
                   for rt in self.store.types()):
                namespace, rest = rest[1], rest[2:]
        rt = self.store.resolve(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        subresource = "/".join(rest[2:]) or None
        return Route(rt, namespace, name, subresource)

    @staticmethod
    def _verb(method: str, route: Route, query: Any) -> str:
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if route.name else "list"
        if method == "POST" and (not route.name or route.subresource):
            return "create"
        if method == "PUT" and route.name:
            return "update"
        if method == "PATCH" and route.name:
            return "patch"
        if method == "DELETE":
            return "delete" if route.name else "deletecollection"
        return method.lower()

    def _check_subresource(self, route: Route) -> None:
        if route.subresource is not None and route.subresource not in route.rt.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # -- verbs ------------------------------------------------------------------------------

    def _list(self, request: web.Request, route: Route) -> web.Response:
        query = request.query
        limit = int(query["limit"]) if query.get("limit") else None
        items, meta = self.store.list(route.rt, route.namespace,
                                      label_selector=query.get("labelSelector"),
                                      field_selector=query.get("fieldSelector"),
                                      limit=limit, continue_token=query.get("continue"))
        if not route.rt.custom:
            # Built-in kinds list their items without kind/apiVersion, like the real API.
            items = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")}
                     for item in items]
        return _json({"apiVersion": route.rt.api_version, "kind": f"{route.rt.kind}List",
                      "metadata": meta, "items": items})

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw.strip():
                options = json.loads(raw)
        query = request.query
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        if "gracePeriodSeconds" in query:
            options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
        if options.get("orphanDependents") is not None and "propagationPolicy" not in options:
            options["propagationPolicy"] = "Orphan" if options["orphanDependents"] else "Background"
        return options

    async def _delete(self, request: web.Request, route: Route) -> web.Response:
        assert route.name is not None
        options = await self._delete_options(request)
        obj, gone = self.store.delete(route.rt, route.namespace, route.name,
                                      propagation=options.get("propagationPolicy"),
                                      grace_period=options.get("gracePeriodSeconds"),
                                      preconditions=options.get("preconditions"))
        if gone and route.rt.key != POD_KEY:
            return _json({"kind": "Status", "apiVersion": "v1", "metadata": {},
                          "status": "Success", "details": {
                              "name": route.name, "group": route.rt.group,
                              "kind": route.rt.plural, "uid": obj["metadata"]["uid"]}})
        return _json(obj)

    async def _delete_collection(self, request: web.Request, route: Route) -> web.Response:
        options = await self._delete_options(request)
        items, _ = self.store.list(route.rt, route.namespace,
                                   label_selector=request.query.get("labelSelector"),
                                   field_selector=request.query.get("fieldSelector"))
        deleted = []
        for item in items:
            meta = item["metadata"]
            with contextlib.suppress(ApiError):
                obj, _ = self.store.delete(route.rt, meta.get("namespace"), meta["name"],
                                           propagation=options.get("propagationPolicy"),
                                           grace_period=options.get("gracePeriodSeconds"))
                deleted.append(obj)
        return _json({"apiVersion": route.rt.api_version, "kind": f"{route.rt.kind}List",
                      "metadata": {"resourceVersion": str(self.store.resource_version)},
                      "items": deleted})

    async def _log(self, request: web.Request, route: Route) -> web.StreamResponse:
        assert route.name is not None and route.namespace is not None
        pod = self.store.get(route.rt, route.namespace, route.name)
        path = self.log_source(route.namespace, route.name) if self.log_source else None
        if path is None or not path.exists():
            container = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("name")
            raise ApiError.bad_request(f'container "{container}" in pod "{route.name}" is '
                                       "waiting to start: ContainerCreating")
        follow = request.query.get("follow") in ("true", "1")
        tail = int(request.query["tailLines"]) if request.query.get("tailLines") else None
        if not follow:
            text = path.read_text(errors="replace")
            if tail is not None:
                text = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        offset = 0
        while True:
            data = path.read_bytes()
            if len(data) > offset:
                await response.write(data[offset:])
                offset = len(data)
            try:
                phase = (self.store.get(route.rt, route.namespace, route.name).get("status")
                         or {}).get("phase")
            except ApiError:
                break
            if phase in ("Succeeded", "Failed") or self.paused:
                break
            await asyncio.sleep(0.1)
        await response.write_eof()
        return response

    async def _watch(self, request: web.Request, route: Route) -> web.StreamResponse:
        query = request.query
        field_selector = query.get("fieldSelector")
        if route.name:  # the legacy single-object watch
            by_name = f"metadata.name={route.name}"
            field_selector = f"{field_selector},{by_name}" if field_selector else by_name
        predicate = make_filter(route.namespace if route.rt.namespaced else None,
                                query.get("labelSelector"), field_selector,
                                route.rt.plural, route.rt.custom)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        initial = query.get("sendInitialEvents") == "true"
        try:
            watcher, replay = self.store.watch(route.rt, predicate, query.get("resourceVersion"),
                                               loop, initial)
        except ApiError as exc:
            if exc.code != 410:
                raise
            # Like the real API: HTTP 200, then one ERROR event carrying the 410 Status.
            await response.prepare(request)
            await response.write(_line({"type": "ERROR", "object": exc.status()}))
            await response.write_eof()
            return response
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout_s)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        deadline = loop.time() + timeout
        try:
            await response.prepare(request)
            for kind, obj in replay:
                await response.write(_line({"type": kind, "object": obj}))
            if initial:
                await response.write(_line(self._bookmark(route.rt, watcher.last_rv, True)))
            while (remaining := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(watcher.queue.get(),
                                                  min(remaining, self.bookmark_interval_s))
                except TimeoutError:
                    if bookmarks and remaining > self.bookmark_interval_s:
                        await response.write(_line(self._bookmark(route.rt, watcher.last_rv)))
                    continue
                if item is None:
                    break
                kind, obj, rv = item
                watcher.last_rv = max(watcher.last_rv, rv)
                await response.write(_line({"type": kind, "object": obj}))
        except (ConnectionResetError, ConnectionError):
            return response
        finally:
            self.store.unwatch(watcher)
        if watcher.abort:
            if request.transport is not None:
                request.transport.abort()
            return response
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    @staticmethod
    def _bookmark(rt: ResourceType, rv: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK",
                "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode() + b"\n"
