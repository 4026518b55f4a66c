"""The node itself: registers a Node, keeps its Lease renewed, and runs a PodWorker per Pod bound
to it (the real kube-scheduler binds them, counting the Node's declared ``pods`` capacity: Pods
beyond it stay Pending, Unschedulable, as on a real node).

Pod IPs come from the Node's ``podCIDR``, a block of 127.0.0.0/8 (every 127.x.y.z address is the
loopback interface on Linux, no set-up needed): each Pod binds its own address, so two Pods never
clash on a port, and an address is not handed out again while one of the Pod's container ports
is taken on it (another devstack on the machine).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .. import certs
from ..kube import ApiError, Kube, informer
from . import logs
from .pods import PodWorker

Obj = dict[str, Any]
LEASE_SECONDS, RENEW_EVERY, STATUS_EVERY = 40, 10.0, 60.0
VERSION = "v1.36.3"


def _micro(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{line.split()[1]}Ki"
    return "0"


class Node:
    def __init__(self, kube: Kube, name: str, home: Path, pod_cidr: str, pods: int,
                 programs: dict[str, str]) -> None:
        self.kube, self.name, self.home = kube, name, home
        self.host_ip = "127.0.0.1"
        self.pod_cidr = ipaddress.ip_network(pod_cidr)
        self.capacity = pods
        self.programs = programs
        self.pods_folder = home / "pods"
        self.logs_folder = home / "logs" / "pods"
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ips_in_use: set[str] = set()
        self._cursor = 1
        self.log_port = 0

    def log(self, message: str) -> None:
        print(f"{_iso(time.time())} {message}", flush=True)

    # --- addresses ----------------------------------------------------------------------

    def allocate_ip(self, pod: Obj) -> str:
        ports = [int(p["containerPort"]) for c in pod["spec"].get("containers", []) for p in c.get("ports") or []]
        size = self.pod_cidr.num_addresses
        with self.lock:
            for _ in range(size):
                self._cursor = self._cursor % (size - 2) + 1  # skip the network and broadcast addresses
                ip = str(self.pod_cidr.network_address + self._cursor)
                if ip == self.host_ip or ip in self.ips_in_use or not _ports_free(ip, ports):
                    continue
                self.ips_in_use.add(ip)
                return ip
        raise RuntimeError(f"no free address left in {self.pod_cidr}")

    def release_ip(self, ip: str) -> None:
        with self.lock:
            self.ips_in_use.discard(ip)

    # --- the Node object ----------------------------------------------------------------

    def _node_status(self) -> Obj:
        now = _iso(time.time())
        resources = {"cpu": str(os.cpu_count() or 1), "memory": _memory(), "pods": str(self.capacity)}

        def condition(type_: str, ok: bool, reason: str, message: str) -> Obj:
            return {"type": type_, "status": "True" if ok else "False", "reason": reason, "message": message,
                    "lastHeartbeatTime": now, "lastTransitionTime": self.started}

        return {
            "capacity": resources, "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", False, "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", False, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", False, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", True, "KubeletReady", "devstack's node is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.log_port}},
            "nodeInfo": {
                "kubeletVersion": VERSION, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine()),
                "containerRuntimeVersion": "devstack://local-processes", "kernelVersion": platform.release(),
                "osImage": "devstack node (local processes)", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }

    def register(self) -> None:
        self.started = _iso(time.time())
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self._node_status()["nodeInfo"]["architecture"],
            "node.kubernetes.io/instance-type": "devstack"}},
            "spec": {"podCIDR": str(self.pod_cidr), "podCIDRs": [str(self.pod_cidr)]}}
        try:
            self.kube.post("/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
        self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()}, strategic=True)
        self.log(f"node {self.name} registered: pods {self.capacity}, Pod IPs from {self.pod_cidr}")

    def _heartbeat(self) -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        last_status = time.monotonic()
        while not self.stop.is_set():
            try:
                spec = {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_SECONDS,
                        "renewTime": _micro(time.time())}
                if self.kube.get(lease_path) is None:
                    self.kube.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": "kube-node-lease"}, "spec": spec})
                else:
                    self.kube.patch(lease_path, {"spec": spec})
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self.kube.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()},
                                    strategic=True)
                    last_status = time.monotonic()
            except (ApiError, OSError) as e:
                self.log(f"heartbeat: {e}")
            self.stop.wait(RENEW_EVERY)

    # --- Pods ---------------------------------------------------------------------------

    def _listed(self, pods: list[Obj]) -> None:
        uids = {p["metadata"]["uid"] for p in pods}
        with self.lock:
            gone = [w for uid, w in self.workers.items() if uid not in uids]
        for worker in gone:
            worker.remove()
        for pod in pods:
            self._event("ADDED", pod)

    def _event(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if kind == "DELETED":
                if worker:
                    worker.remove()
                    del self.workers[uid]
                return
            if worker is None:
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    return  # finished before: nothing to run
                worker = PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def find_log(self, namespace: str, pod: str, container: str, previous: bool) -> tuple[Path, Any] | str:
        """The log file of a container's current (or previous) start, as ``kubectl logs`` asks."""
        with self.lock:
            worker = next((w for w in self.workers.values()
                           if (w.namespace, w.pod_name) == (namespace, pod) and not w.removed), None)
        if worker is None:
            return f'pods "{pod}" not found'
        c = next((c for c in worker.inits + worker.apps if c.name == container), None)
        if c is None:
            return f'container {container} is not valid for pod {pod}'
        run = c.runs - (2 if previous else 1)
        if run < 0:
            if previous:
                return f'previous terminated container "{container}" in pod "{pod}" not found'
            reason = c.state.get("waiting", {}).get("reason", "ContainerCreating")
            return f'container "{container}" in pod "{pod}" is waiting to start: {reason}'
        current = c.runs - 1
        return worker.log_folder / container / f"{run}.log", lambda: (
            not previous and c.process is not None and c.runs - 1 == current)

    def run(self) -> None:
        pair = certs.serving_pair(self.home / "certs" / "node", "kubelet", self.name, [self.host_ip])
        self.log_port = logs.serve(self.find_log, pair.cert, pair.key, self.host_ip).server_address[1]
        self.register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        watch = threading.Thread(target=informer, name="pods", daemon=True, args=(
            self.kube, "/api/v1/pods", self._listed, self._event, self.stop, self.log),
            kwargs={"fieldSelector": f"spec.nodeName={self.name}"})
        watch.start()
        while not self.stop.is_set():
            self.stop.wait(1)
            with self.lock:  # forget the workers that finished
                for uid in [u for u, w in self.workers.items() if not w.is_alive() and w.removed]:
                    del self.workers[uid]

    def shutdown(self) -> None:
        """Stop every container now (devstack down), leaving the API alone."""
        self.stop.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.halt()
        for worker in workers:
            worker.join(timeout=10)


def _ports_free(ip: str, ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True
