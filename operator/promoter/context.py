"""What a reconcile is given: the settings, the gateways, the metrics, who serves what.

The MLflow and S3 clients come from factories that keep one client per server and identity
(an HTTP connection pool each), so a reconcile opens no new pools; the unit tests pass
factories of in-memory fakes instead (``tests/unit/fakes.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from .config import Settings
from .kube import KubeApi
from .metrics import Metrics
from .mlflow_source import Auth, MlflowApi, MlflowClient
from .ownership import Ownership
from .store import ObjectStore, Store, identity

MlflowFactory = Callable[[str, Auth], MlflowApi]
"""tracking URI, credentials -> a client of that server."""
StoreFactory = Callable[[str, str, str, str], ObjectStore]
"""endpoint, access key, secret key, the Secret they came from -> a store."""

CACHED = 64  # clients kept; the least recently used one beyond that is closed


@dataclass
class Context:
    settings: Settings
    kube: KubeApi
    metrics: Metrics
    ownership: Ownership
    mlflow: MlflowFactory
    store: StoreFactory

    @classmethod
    def create(cls, settings: Settings, kube: KubeApi, metrics: Metrics) -> Context:
        """The operator's context: real clients, cached by server and identity."""
        clients = Clients(settings)
        return cls(settings, kube, metrics, Ownership(kube), clients.mlflow, clients.store)


class Lanes:
    """At most ``width`` reconciles of one namespace at once, so that one namespace's slow or
    stalling upstream cannot take every worker from the others. Waiting for a lane is an
    ``await`` in kopf's event loop: it holds no thread. Use from one event loop."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._lanes: dict[str, asyncio.Semaphore] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def lane(self, namespace: str) -> AsyncIterator[None]:
        lane = self._lanes.setdefault(namespace, asyncio.Semaphore(self.width))
        self._users[namespace] = self._users.get(namespace, 0) + 1
        try:
            async with lane:
                yield
        finally:
            self._users[namespace] -= 1
            if not self._users[namespace]:  # no one holds or waits: forget the namespace
                del self._users[namespace], self._lanes[namespace]


class Clients:
    """MLflow and S3 clients by server and identity (a hash of the credentials, never the
    credentials themselves), least recently used first out."""

    def __init__(self, settings: Settings, size: int = CACHED) -> None:
        self.settings, self.size = settings, size
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, ...], Any] = OrderedDict()

    def mlflow(self, tracking_uri: str, auth: Auth) -> MlflowApi:
        s = self.settings
        key = ("mlflow", tracking_uri.rstrip("/"), identity(auth.username, auth.password + "\0" + auth.token))
        client: MlflowApi = self._get(key, lambda: MlflowClient(tracking_uri, s.http_timeout, auth, s.retry_delay))
        return client

    def store(self, endpoint: str, access_key: str, secret_key: str, who: str) -> ObjectStore:
        s = self.settings
        key = ("s3", endpoint.rstrip("/"), identity(access_key, secret_key), who)
        store: ObjectStore = self._get(
            key, lambda: Store(endpoint, access_key, secret_key, who, s.http_timeout, s.retry_delay))
        return store

    def _get(self, key: tuple[str, ...], make: Callable[[], Any]) -> Any:
        with self._lock:
            client = self._cache.get(key)
            if client is not None:
                self._cache.move_to_end(key)
                return client
            client = self._cache[key] = make()
            evicted = self._cache.popitem(last=False)[1] if len(self._cache) > self.size else None
        if evicted is not None:
            evicted.close()  # a promotion still using it gets a new pool on its next call
        return client


__all__ = ["Clients", "Context", "Lanes", "MlflowFactory", "StoreFactory"]
