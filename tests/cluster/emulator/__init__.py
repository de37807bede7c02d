"""An emulated Kubernetes API server, Job controller and kubelet for the cluster test tier."""

from __future__ import annotations

from .api import Api
from .disruption import Disruption
from .errors import ApiError
from .harness import KubeEmulator
from .kubelet import NODE_NAME, PodBehaviour, PodRunner
from .server import ApiServer
from .store import Store

__all__ = [
    "NODE_NAME",
    "Api",
    "ApiError",
    "ApiServer",
    "Disruption",
    "KubeEmulator",
    "PodBehaviour",
    "PodRunner",
    "Store",
]
