"""A Pod's network on one machine: a network namespace of its own, with forwards standing in for
the Services it calls.

In a cluster a Pod has its own loopback (so its ports, 8080 and 8081 for the operator, are free
whatever else runs on the node) and reaches the API server and other Services through
kube-proxy. Here the namespace is made with ``ip netns``; a forward listens on the Pod's
``127.0.0.1:<port>`` and connects to a server devstack runs on the host's loopback, as
kube-proxy connects a Service port to its endpoint. Nothing leaves the machine: every address is
a loopback address, in the Pod's namespace or the host's.

The sockets that live in the Pod's namespace are made by a thread that first joins it
(``setns(2)`` changes the calling thread only); the host side is made by any other thread.
Needs root, as ``ip netns`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import http.client
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class PodNetwork:
    def __init__(self, prefix: str = "devstack-pod") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=30)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True, capture_output=True,
                       timeout=30)
        self._listeners: list[socket.socket] = []
        self._closed = threading.Event()

    @property
    def path(self) -> str:
        """For ``podman run --network ns:<path>``."""
        return f"/run/netns/{self.name}"

    def _inside(self, make: Callable[[], socket.socket]) -> socket.socket:
        """A socket made in the Pod's network namespace."""
        made: list[socket.socket | BaseException] = []

        def join_and_make() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.path}")
                finally:
                    os.close(fd)
                made.append(make())
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                made.append(e)

        thread = threading.Thread(target=join_and_make, daemon=True)
        thread.start()
        thread.join()
        if isinstance(made[0], BaseException):
            raise made[0]
        return made[0]

    def forward(self, port: int, to: tuple[str, int]) -> None:
        """The Pod's 127.0.0.1:``port`` connects to ``to`` on the host (a Service and its endpoint)."""

        def listener() -> socket.socket:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(64)
            return s

        server = self._inside(listener)
        self._listeners.append(server)
        threading.Thread(target=self._accept, args=(server, to), daemon=True,
                         name=f"forward {port}->{to[1]}").start()

    def _accept(self, server: socket.socket, to: tuple[str, int]) -> None:
        while not self._closed.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(to, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the endpoint is down: the Pod sees its connection closed
                continue
            done = threading.Barrier(2, action=functools.partial(_close, client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b, done), daemon=True).start()

    def get(self, port: int, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """``GET http://127.0.0.1:<port><path>`` from within the Pod's network, as the kubelet
        probes a Pod (status, body)."""
        sock = self._inside(socket.socket)
        sock.settimeout(timeout)
        try:
            sock.connect(("127.0.0.1", port))
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.sock = sock
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            sock.close()

    def close(self) -> None:
        self._closed.set()
        for server in self._listeners:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)


def _close(*sockets: socket.socket) -> None:
    for s in sockets:
        s.close()


def _pump(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    """One direction of a forwarded connection; an end of stream is passed on as one, and the
    pair is closed once both directions ended."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
    finally:
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait()
