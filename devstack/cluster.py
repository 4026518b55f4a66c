"""What turns devstack's API server into a cluster that runs workloads.

- kube-controller-manager (the real one, built with kube-apiserver): Deployments make
  ReplicaSets and Pods, Deployment status and rollout conditions, EndpointSlices, garbage
  collection of ownerReferences, namespaces that finish deleting, service accounts.
- kube-scheduler (the real one): binds Pods to the node within its declared capacity, so Pods
  beyond it stay Pending as Unschedulable, as on a real cluster. Binding Pods in the node would
  have saved a process (~30 MB) but meant writing a scheduler's capacity rules by hand.
- devstack's node (devstack/node): runs the bound Pods as local processes and answers Service
  ClusterIPs.
- devstack's Seldon Core v1 test double (devstack/seldon).

The network, picked at random at ``up`` so devstacks on one machine rarely meet:

- Service ClusterIPs in a block of the loopback range, 127.N.240.0/20 (every 127.x.y.z address
  is local on Linux with no set-up); the node's proxy listens on them.
- Pod IPs in a /24 of 198.18.0.0/15 (reserved for network tests, never routed on the internet),
  made local by one route, ``ip route add local <cidr> dev lo``, removed at ``down``. Pods cannot
  use 127.x addresses: the API refuses loopback addresses in EndpointSlices. Adding the route
  needs root or CAP_NET_ADMIN; without it devstack warns and falls back to 127.x Pod IPs, which
  Pods bind and answer at, but which no Service routes to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

from . import binaries, certs, mlserver, stack
from .binaries import SetupError

NODE_NAME = "devstack"
DEFAULT_NODE_PODS = 6


def network(log: stack.Log) -> tuple[str, str, str]:
    """(Pod CIDR, Service CIDR, the route added for the Pod CIDR or "")."""
    service_cidr = f"127.{random.randint(16, 250)}.240.0/20"
    ip = shutil.which("ip")
    problem = "no `ip` command (Debian: apt-get install -y iproute2)"
    for _ in range(10 if ip else 0):
        assert ip is not None
        pod_cidr = f"198.{random.randint(18, 19)}.{random.randint(0, 255)}.0/24"
        added = subprocess.run([ip, "route", "add", "local", pod_cidr, "dev", "lo"], capture_output=True, text=True)
        if added.returncode == 0:
            return pod_cidr, service_cidr, pod_cidr
        problem = added.stderr.strip()
        if "File exists" not in problem:  # another devstack's block: try another one
            break
    log(f"devstack: WARNING: could not route a Pod network to the loopback interface ({problem}; it needs "
        "root or CAP_NET_ADMIN): Pods get 127.x addresses, which the API refuses in EndpointSlices, so "
        "Services get no endpoints. Pods still answer at their Pod IPs.")
    return f"127.{random.randint(16, 250)}.0.0/20", service_cidr, ""


def remove_route(cidr: str) -> None:
    ip = shutil.which("ip")
    if cidr and ip:
        subprocess.run([ip, "route", "del", "local", cidr, "dev", "lo"], capture_output=True)


def node_pods() -> int:
    value = os.environ.get("DEVSTACK_NODE_PODS", str(DEFAULT_NODE_PODS))
    if not value.isdigit() or int(value) < 1:
        raise SetupError(f"DEVSTACK_NODE_PODS={value!r}: give the node's Pod capacity, a whole number from 1")
    return int(value)


def programs(log: stack.Log) -> dict[str, str]:
    """The local programs the node's image table needs: Debian's rclone, the MLServer venv."""
    rclone = shutil.which("rclone")
    if rclone is None:
        raise SetupError("no `rclone` on PATH: the node runs Seldon's storage initializer with it "
                         "(Debian/Ubuntu: apt-get install -y rclone)")
    return {"rclone": rclone, "mlserver": str(mlserver.ensure(log) / "mlserver")}


def _healthz(port: int) -> bool:
    # the components serve /healthz on their own self-signed certificate
    return stack._http_ok(f"https://127.0.0.1:{port}/healthz", ssl._create_unverified_context())


def start_controllers(state: stack.State, bins: binaries.Binaries, c: certs.Certs, log: stack.Log) -> None:
    home = Path(state.home)
    common = [f"--kubeconfig={state.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
    port = stack.free_port()
    log("devstack: starting kube-controller-manager")
    manager = stack._spawn(home, "kube-controller-manager", [
        str(bins.path("kube-controller-manager")), *common, f"--secure-port={port}",
        f"--cert-dir={home / 'certs' / 'kube-controller-manager'}",
        f"--service-account-private-key-file={c.sa_private}", f"--root-ca-file={c.serving_ca}",
        f"--service-cluster-ip-range={state.service_cidr}", "--v=0",
    ])
    state.processes.append(manager)
    stack._wait(manager, "kube-controller-manager", lambda: _healthz(port), 60)
    port = stack.free_port()
    log("devstack: starting kube-scheduler")
    scheduler = stack._spawn(home, "kube-scheduler", [
        str(bins.path("kube-scheduler")), *common, f"--secure-port={port}",
        f"--cert-dir={home / 'certs' / 'kube-scheduler'}", "--v=0",
    ])
    state.processes.append(scheduler)
    stack._wait(scheduler, "kube-scheduler", lambda: _healthz(port), 60)


def _python(home: Path, name: str, module: str, *args: str) -> stack.Proc:
    return stack._spawn(home, name, [sys.executable, "-u", "-m", module, *args],
                        env={"PYTHONPATH": str(stack.REPO)})


def start_node(state: stack.State, tools: dict[str, str], log: stack.Log) -> None:
    home = Path(state.home)
    pods = node_pods()
    log(f"devstack: starting the node ({pods} Pods at most; Pod IPs from {state.pod_cidr})")
    node = _python(home, "node", "devstack.node", "--kubeconfig", state.kubeconfig, "--home", str(home),
                   "--name", NODE_NAME, "--pods", str(pods), "--pod-cidr", state.pod_cidr,
                   "--service-cidr", state.service_cidr, *(f"--program={k}={v}" for k, v in tools.items()))
    state.processes.append(node)

    def ready() -> bool:
        out = state.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        conditions = json.loads(out.stdout)["status"].get("conditions", []) if out.returncode == 0 else []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    stack._wait(node, "the node", ready, 60)


def start_seldon(state: stack.State, log: stack.Log) -> None:
    log("devstack: starting the Seldon Core v1 test double")
    proc = _python(Path(state.home), "seldon-controller", "devstack.seldon", "--kubeconfig", state.kubeconfig)
    state.processes.append(proc)
    stack._wait(proc, "the Seldon test double",
                lambda: "watching SeldonDeployments" in Path(proc.log).read_text(errors="replace"), 60)
