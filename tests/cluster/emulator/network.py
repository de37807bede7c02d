"""The emulated node's network: every pod is a process on 127.0.0.1.

On a real cluster a pod with `subdomain: S` and `hostname: H` under a headless Service `S` is
reachable as `H.S` (and `H.S.<ns>.svc...`) on its own IP, at the Service's ports. Here all pods
share one loopback address, so a container's env values are rewritten before it starts: a pod DNS
name of a headless Service in the pod's namespace becomes `127.0.0.1`, and a value equal to one of
that Service's port numbers becomes a port allocated for that Service on this machine (two trials
listening on "29500" at once would collide otherwise). Nothing else is resolved: a process that
computes such a name itself, rather than reading it from its env, cannot reach it.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from .errors import ApiError
from .store import Store

LOOPBACK = "127.0.0.1"


class PodNetwork:
    """Host names and ports of headless Services, mapped onto 127.0.0.1."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._ports: dict[tuple[str, str, int], int] = {}  # (namespace, service, port) -> local

    def _service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.store.get(self.store.find_type("services"), namespace, name)
        except ApiError:
            return None

    def resolve(self, pod: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        """The env as the pod's process should see it on the shared loopback address."""
        namespace = str(pod["metadata"]["namespace"])
        services: dict[str, dict[str, Any]] = {}
        resolved = dict(env)
        for name, value in env.items():
            host, dot, rest = value.partition(".")
            service_name = rest.split(".", 1)[0] if dot else ""
            if service_name and host:
                service = services.get(service_name) or self._service(namespace, service_name)
                if service is not None and (service.get("spec") or {}).get("clusterIP") == "None":
                    services[service_name] = service
                    resolved[name] = LOOPBACK
        for service_name, service in services.items():
            for port in (service.get("spec") or {}).get("ports") or []:
                number = int(port["port"])
                local = self._local_port(namespace, service_name, number)
                for name, value in env.items():
                    if value == str(number):
                        resolved[name] = str(local)
        return resolved

    def _local_port(self, namespace: str, service: str, port: int) -> int:
        key = (namespace, service, port)
        if key not in self._ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((LOOPBACK, 0))
                self._ports[key] = int(probe.getsockname()[1])
        return self._ports[key]
