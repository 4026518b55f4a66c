"""Run one Pod of a Deployment with podman, the way a kubelet runs it.

devstack has no kubelet. ``run_args`` turns a Pod template into the ``podman run`` command a
kubelet's container runtime would amount to, for the fields the operator's Deployment uses, and
refuses any other field by name rather than ignore it:

- the container's ``command``/``args`` replace the image's ENTRYPOINT/CMD (Kubernetes' rule);
- ``envFrom`` ConfigMaps first, then ``env`` (later wins), then the ``KUBERNETES_SERVICE_*``
  variables every Pod gets;
- the security context: ``runAsUser``/``runAsGroup`` (container over Pod), ``runAsNonRoot``
  (refused for uid 0, as the kubelet refuses to start it), ``readOnlyRootFilesystem`` (and no
  tmpfs podman would add: a Pod has none), ``allowPrivilegeEscalation: false``
  (no_new_privs), ``capabilities``; ``seccompProfile: RuntimeDefault`` is podman's default;
- ``emptyDir`` volumes as fresh world-writable folders, as the kubelet makes them;
- the ServiceAccount token, ``ca.crt`` and ``namespace`` at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` (read-only), the token from the TokenRequest
  API as the kubelet gets it;
- ``resources.limits`` as podman's ``--memory`` and ``--cpus``.

``PodRun`` does it: a network namespace of the Pod's own (``devstack.podnet``) with the API
server behind ``kubernetes.default.svc:443`` (kopf's in-cluster login calls that name) and
other Services forwarded, the token folder, the container; ``probe`` asks the liveness endpoint
from inside the Pod's network, as the kubelet does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import image, podnet

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
API_HOST, API_PORT = "kubernetes.default.svc", 443
# Pod fields run_args implements, and those the API server fills in with defaults that change
# nothing for one container on one machine; anything else in the template is refused by name.
POD_FIELDS = {"serviceAccountName", "serviceAccount", "securityContext", "containers", "volumes",
              "automountServiceAccountToken", "dnsPolicy", "restartPolicy", "schedulerName",
              "terminationGracePeriodSeconds"}
CONTAINER_FIELDS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports",
                    "livenessProbe", "readinessProbe", "resources", "securityContext", "volumeMounts",
                    "terminationMessagePath", "terminationMessagePolicy"}
SECURITY_FIELDS = {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
                   "allowPrivilegeEscalation", "capabilities", "seccompProfile"}


class Unsupported(ValueError):
    """A Pod template field devstack cannot run faithfully; the message names it."""


def _check(obj: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Unsupported(f"{where}.{extra[0]}: not run by devstack's pod runner "
                          f"(it runs {', '.join(sorted(allowed))})")


def environment(container: Mapping[str, Any], configmaps: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i, source in enumerate(container.get("envFrom") or []):
        ref = source.get("configMapRef")
        if ref is None or set(source) != {"configMapRef"}:
            raise Unsupported(f"spec.containers[0].envFrom[{i}]: only configMapRef is run")
        if ref["name"] not in configmaps:
            raise Unsupported(f"spec.containers[0].envFrom[{i}].configMapRef.name: no ConfigMap {ref['name']!r}")
        env.update(configmaps[ref["name"]])
    for i, var in enumerate(container.get("env") or []):
        if "value" not in var:
            raise Unsupported(f"spec.containers[0].env[{i}] ({var.get('name')}): only plain values are run")
        env[var["name"]] = str(var["value"])
    env.update({"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(API_PORT),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(API_PORT)})
    return env


def security(pod: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
    merged = {**(pod.get("securityContext") or {}), **(container.get("securityContext") or {})}
    _check(merged, SECURITY_FIELDS, "securityContext")
    args: list[str] = []
    user, group = merged.get("runAsUser"), merged.get("runAsGroup")
    if merged.get("runAsNonRoot") and (user is None or int(user) == 0):
        raise Unsupported(f"securityContext.runAsUser={user}: runAsNonRoot needs a non-zero runAsUser "
                          "(the kubelet would refuse to start this container)")
    if user is not None:
        args += ["--user", f"{user}:{group if group is not None else 0}"]
    if merged.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if merged.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    caps = merged.get("capabilities") or {}
    args += [f"--cap-drop={c.lower()}" for c in caps.get("drop") or []]
    args += [f"--cap-add={c.lower()}" for c in caps.get("add") or []]
    profile = (merged.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if profile == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    elif profile != "RuntimeDefault":
        raise Unsupported(f"securityContext.seccompProfile.type={profile}: only RuntimeDefault and Unconfined are run")
    return args


def run_args(template: Mapping[str, Any], *, name: str, network: str, service_account: Path,
             empty_dirs: Mapping[str, Path], configmaps: Mapping[str, Mapping[str, str]],
             hosts: Mapping[str, str]) -> list[str]:
    """The ``podman run`` arguments for ``template`` (a Deployment's ``spec.template``)."""
    pod = template["spec"]
    _check(pod, POD_FIELDS, "spec")
    if len(pod["containers"]) != 1:
        raise Unsupported(f"spec.containers: {len(pod['containers'])} containers; the pod runner runs one")
    container = pod["containers"][0]
    _check(container, CONTAINER_FIELDS, "spec.containers[0]")
    args = ["run", "--detach", "--name", name, "--hostname", name, "--network", f"ns:{network}", "--pull=never"]
    args += [f"--add-host={host}:{ip}" for host, ip in hosts.items()]
    args += security(pod, container)
    for key, value in environment(container, configmaps).items():
        args += ["--env", f"{key}={value}"]
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    for i, mount in enumerate(container.get("volumeMounts") or []):
        volume = volumes.get(mount["name"])
        if volume is None or set(volume) - {"name", "emptyDir"}:
            raise Unsupported(f"spec.containers[0].volumeMounts[{i}] ({mount['name']}): only emptyDir volumes are run")
        mode = "ro" if mount.get("readOnly") else "rw"
        args += ["--volume", f"{empty_dirs[mount['name']]}:{mount['mountPath']}:{mode}"]
    if pod.get("automountServiceAccountToken", True):
        args += ["--volume", f"{service_account}:{SA_MOUNT}:ro"]
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        args += ["--memory", _memory(str(limits["memory"]))]
    if "cpu" in limits:
        args += ["--cpus", _cpus(str(limits["cpu"]))]
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    args.append(container["image"])
    args += [str(a) for a in container.get("args") or []]
    return args


def _memory(quantity: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    for suffix, unit in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    if quantity.isdigit():
        return quantity
    raise Unsupported(f"resources.limits.memory={quantity}: use Ki, Mi, Gi or bytes")


def _cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


# --- running it ----------------------------------------------------------------------------


@dataclass
class PodRun:
    """One Pod of ``template`` running under podman; ``services`` maps a port in the Pod's
    network to a (host, port) on the machine; the API server is reached as
    ``https://kubernetes.default.svc`` (port 443)."""

    template: Mapping[str, Any]
    namespace: str
    token: str
    ca: bytes
    api_server: tuple[str, int]
    configmaps: Mapping[str, Mapping[str, str]]
    services: Mapping[int, tuple[str, int]] = field(default_factory=dict)
    name: str = "promoter-pod"
    args: list[str] = field(default_factory=list, init=False)
    net: podnet.PodNetwork | None = field(default=None, init=False)
    folder: Path | None = field(default=None, init=False)

    def start(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="devstack-pod-"))
        self.folder.chmod(0o755)
        sa = self.folder / "serviceaccount"
        sa.mkdir(mode=0o755)
        for file, data in (("token", self.token.encode()), ("ca.crt", self.ca), ("namespace", self.namespace.encode())):
            (sa / file).write_bytes(data)
            (sa / file).chmod(0o644)  # a projected volume's default mode
        empty = {}
        for volume in self.template["spec"].get("volumes") or []:
            folder = self.folder / "volumes" / volume["name"]
            folder.mkdir(parents=True)
            folder.chmod(0o777)
            empty[volume["name"]] = folder
        self.net = podnet.PodNetwork()
        self.net.forward(API_PORT, self.api_server)
        for port, target in self.services.items():
            self.net.forward(port, target)
        self.args = run_args(self.template, name=self.name, network=self.net.path, service_account=sa,
                             empty_dirs=empty, configmaps=self.configmaps, hosts={API_HOST: "127.0.0.1"})
        image.podman("rm", "--force", "--ignore", self.name)
        image.podman(*self.args)

    def probe(self, port: int | str, path: str) -> tuple[int, bytes]:
        """An ``httpGet`` probe; a named port is looked up in the container's ports."""
        if isinstance(port, str):
            ports = {p["name"]: p["containerPort"] for p in self.template["spec"]["containers"][0]["ports"]}
            port = int(ports[port])
        assert self.net is not None, "the pod is not started"
        return self.net.get(port, path)

    def logs(self) -> str:
        out = image.podman("logs", self.name, check=False)
        return out.stdout + out.stderr

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the Pod's grace period, as the kubelet stops a container."""
        grace = str(self.template["spec"].get("terminationGracePeriodSeconds", 30))
        image.podman("rm", "--force", "--time", grace, "--ignore", self.name, check=False)
        if self.net is not None:
            self.net.close()
            self.net = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
