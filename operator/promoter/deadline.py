"""A deadline for a whole HTTP exchange with MLflow or S3, not for each read.

A socket timeout bounds one read: a server that answers one byte every few seconds never hits
it, and holds the worker for as long as it likes. Inside ``with deadline(seconds) as watch:``
every connection the calling thread takes from a :class:`PoolManager` of this module is
watched, and when the time is up their sockets are shut down, so the blocked read fails at
once; ``watch.expired`` then tells a timeout from any other failure. A stream calls
``watch.extend()`` as data arrives: a long copy is fine, a stalled one is not.

Both MLflow's ``requests`` session (through :class:`HTTPAdapter`) and minio (given a
:class:`PoolManager`) go through these pools.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import urllib3
from requests.adapters import HTTPAdapter as _HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Watch:
    """The connections of one call, and the timer that cuts them once ``seconds`` pass with no
    :meth:`extend` (progress costs a clock read; the timer re-arms itself when extended)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._conns: list[Any] = []
        self._until = time.monotonic() + seconds
        self._timer: threading.Timer | None = None
        self._arm(seconds)

    def _arm(self, delay: float) -> None:
        self._timer = threading.Timer(delay, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def extend(self) -> None:
        """Progress: the deadline starts again from now."""
        self._until = time.monotonic() + self.seconds

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._conns.clear()

    def track(self, conn: Any) -> None:
        with self._lock:
            self._conns.append(conn)
            if self.expired:
                _cut(conn)

    def _fire(self) -> None:
        with self._lock:
            if self._timer is None:  # cancelled meanwhile
                return
            left = self._until - time.monotonic()
            if left > 0:
                self._arm(left)
                return
            self.expired = True
            for conn in self._conns:
                _cut(conn)


def _cut(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[Watch]:
    """Watch the calling thread's connections for ``seconds``. Inside another deadline, that
    one goes on (extended: a call made while streaming is progress) and is the one yielded."""
    outer: Watch | None = getattr(_local, "watch", None)
    if outer is not None:
        outer.extend()
        yield outer
        return
    watch = Watch(seconds)
    _local.watch = watch
    try:
        yield watch
    finally:
        watch.cancel()
        _local.watch = None


def progress() -> None:
    """Data arrived: the calling thread's deadline, if any, starts again from now."""
    watch: Watch | None = getattr(_local, "watch", None)
    if watch is not None:
        watch.extend()


def _track(conn: Any) -> None:
    watch = getattr(_local, "watch", None)
    if watch is not None:
        watch.track(conn)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = HTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _track(conn)
        return conn


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = HTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _track(conn)
        return conn


class PoolManager(urllib3.PoolManager):
    """urllib3's pool manager whose connections a :func:`deadline` can cut."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


class HTTPAdapter(_HTTPAdapter):
    """requests' adapter over :class:`PoolManager`."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        self.poolmanager = PoolManager(num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs)


__all__ = ["HTTPAdapter", "PoolManager", "Watch", "deadline", "progress"]
