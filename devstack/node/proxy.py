"""kube-proxy's part of the node: each Service's ClusterIP answers here.

devstack's Service range is a block of 127.0.0.0/8 (``--service-cluster-ip-range``), so a
ClusterIP is a local address: the proxy listens on ``<ClusterIP>:<port>`` for every TCP port of
every Service and forwards each connection to one of the Service's endpoints, read from the
EndpointSlices the real controller-manager keeps. As kube-proxy does, it picks among the ready
endpoints, and falls back to serving-but-terminating ones only when no endpoint is ready
(ProxyTerminatingEndpoints). One difference, said here: when a chosen endpoint refuses the
connection, the next one is tried before the client's connection is dropped (iptables would
have sent the client a reset).

There is no cluster DNS: ``<svc>.<ns>.svc.cluster.local`` does not resolve on this machine, the
ClusterIP does.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import threading
from collections.abc import Callable
from typing import Any

from ..kube import Kube, informer

Obj = dict[str, Any]
Key = tuple[str, str]  # namespace, service name


class ServiceProxy:
    def __init__(self, kube: Kube, service_cidr: str, log: Callable[[str], None]) -> None:
        self.kube, self.log = kube, log
        self.cidr = ipaddress.ip_network(service_cidr)
        self.services: dict[Key, Obj] = {}
        self.slices: dict[Key, dict[str, Obj]] = {}
        self.listeners: dict[tuple[str, int], tuple[Key, str, asyncio.AbstractServer]] = {}
        self.loop = asyncio.new_event_loop()
        self.applying = asyncio.Lock()  # one _apply at a time: two would bind the same address
        self.lock = threading.Lock()
        self.turn = itertools.count()

    def start(self, stop: threading.Event) -> None:
        threading.Thread(target=self.loop.run_forever, name="proxy", daemon=True).start()
        for path, on_list, on_event in (
            ("/api/v1/services", self._services_listed, self._service_event),
            ("/apis/discovery.k8s.io/v1/endpointslices", self._slices_listed, self._slice_event),
        ):
            threading.Thread(target=informer, daemon=True, name=path,
                             args=(self.kube, path, on_list, on_event, stop, self.log)).start()

    # --- the tables ---------------------------------------------------------------------

    @staticmethod
    def _key(obj: Obj) -> Key:
        return obj["metadata"]["namespace"], obj["metadata"]["name"]

    def _services_listed(self, items: list[Obj]) -> None:
        with self.lock:
            self.services = {self._key(s): s for s in items}
        self._sync()

    def _service_event(self, kind: str, svc: Obj) -> None:
        with self.lock:
            if kind == "DELETED":
                self.services.pop(self._key(svc), None)
            else:
                self.services[self._key(svc)] = svc
        self._sync()

    @staticmethod
    def _slice_service(es: Obj) -> Key:
        return es["metadata"]["namespace"], es["metadata"].get("labels", {}).get("kubernetes.io/service-name", "")

    def _slices_listed(self, items: list[Obj]) -> None:
        with self.lock:
            self.slices = {}
            for es in items:
                self.slices.setdefault(self._slice_service(es), {})[es["metadata"]["name"]] = es

    def _slice_event(self, kind: str, es: Obj) -> None:
        with self.lock:
            group = self.slices.setdefault(self._slice_service(es), {})
            if kind == "DELETED":
                group.pop(es["metadata"]["name"], None)
            else:
                group[es["metadata"]["name"]] = es

    def endpoints(self, key: Key, port_name: str) -> list[tuple[str, int]]:
        """Ready endpoints of the Service port; serving-terminating ones when none is ready."""
        ready, terminating = [], []
        with self.lock:
            slices = list(self.slices.get(key, {}).values())
        for es in slices:
            number = next((p.get("port") for p in es.get("ports") or [] if (p.get("name") or "") == port_name), None)
            if number is None:
                continue
            for ep in es.get("endpoints") or []:
                cond = ep.get("conditions") or {}
                target = (ep["addresses"][0], int(number))
                if cond.get("ready") is not False:
                    ready.append(target)
                elif cond.get("serving") and cond.get("terminating"):
                    terminating.append(target)
        return ready or terminating

    # --- listeners ----------------------------------------------------------------------

    def _wanted(self) -> dict[tuple[str, int], tuple[Key, str]]:
        wanted: dict[tuple[str, int], tuple[Key, str]] = {}
        with self.lock:
            for key, svc in self.services.items():
                ip = svc.get("spec", {}).get("clusterIP", "")
                try:
                    if ipaddress.ip_address(ip) not in self.cidr:
                        continue
                except ValueError:  # "None" (headless) or empty
                    continue
                for port in svc["spec"].get("ports") or []:
                    if port.get("protocol", "TCP") == "TCP":
                        wanted[(ip, int(port["port"]))] = (key, port.get("name") or "")
        return wanted

    def _sync(self) -> None:
        asyncio.run_coroutine_threadsafe(self._apply(), self.loop)

    async def _apply(self) -> None:
        async with self.applying:
            await self._apply_locked(self._wanted())  # the latest tables, not those of the event

    async def _apply_locked(self, wanted: dict[tuple[str, int], tuple[Key, str]]) -> None:
        for address, (key, port_name, server) in list(self.listeners.items()):
            if wanted.get(address) != (key, port_name):
                server.close()
                del self.listeners[address]
        for address, (key, port_name) in wanted.items():
            if address in self.listeners:
                continue
            try:
                server = await asyncio.start_server(self._handler(key, port_name), address[0], address[1])
            except OSError as e:
                self.log(f"proxy: cannot listen on {address[0]}:{address[1]} for {key[0]}/{key[1]}: {e}")
                continue
            self.listeners[address] = (key, port_name, server)

    def _handler(self, key: Key, port_name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            targets = self.endpoints(key, port_name)
            start = next(self.turn)
            for i in range(len(targets)):
                host, port = targets[(start + i) % len(targets)]
                try:
                    up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
                except (TimeoutError, OSError):
                    continue
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                up_writer.close()
                break
            writer.close()

        return handle


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; at its end half-close, on an error close (which ends the other one)."""
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()
