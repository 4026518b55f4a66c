"""One container as a local process group: its environment from the API, its start and its stop.

The environment is built the way the kubelet builds it: ``envFrom`` sources in order (Secrets and
ConfigMaps, with their prefix), then ``env`` entries (plain values with ``$(VAR)`` expansion, and
``valueFrom`` Secret keys, ConfigMap keys and Pod fields). A missing Secret or key is the
kubelet's ``CreateContainerConfigError``. The node adds no Service variables and no service
account token.

Each start runs in a session of its own (its own process group), so a stop reaches every process
it forked, and an exit cleans up what it left behind, as a runtime tears down a container's
cgroup. The group's pid is kept in a file under the Pod's folder so ``devstack down`` can stop a
container even when the node itself was killed.

Containers run at a lower CPU priority (nice 10) than the control plane and the tests, the way a
real node keeps CPU reserved for its system daemons: on a 2-core machine, MLServers loading
models must not starve the API server.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .images import ContainerError, Launch, expand

Obj = dict[str, Any]
Lookup = Callable[[str, str, str], "Obj | None"]  # (resource, namespace, name) -> object or None

NICE = 10
ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def _config_error(message: str) -> ContainerError:
    return ContainerError("CreateContainerConfigError", message)


def _source_data(kind: str, ref: Mapping[str, Any], namespace: str, lookup: Lookup) -> dict[str, str] | None:
    obj = lookup("secrets" if kind == "secret" else "configmaps", namespace, ref["name"])
    if obj is None:
        if ref.get("optional"):
            return None
        raise _config_error(f'{kind} "{ref["name"]}" not found')
    if kind == "secret":
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    return dict(obj.get("data") or {})


def field_value(pod: Obj, path: str) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"), "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs", [])),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs", [])),
    }
    if path in simple:
        return str(simple[path] or "")
    m = _FIELD.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        return "\n".join(f'{k}="{v}"' for k, v in sorted((meta.get(path.split(".")[1]) or {}).items()))
    raise _config_error(f"fieldRef {path} is not supported by devstack's node")


def resolve_env(pod: Obj, container: Obj, lookup: Lookup) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind in ("secret", "configMap"):
            ref = source.get(f"{kind}Ref")
            data = _source_data(kind.lower(), ref, namespace, lookup) if ref else None
            for key, value in (data or {}).items():
                if ENV_NAME.match(prefix + key):
                    env[prefix + key] = value
    for item in container.get("env") or []:
        name, source = item["name"], item.get("valueFrom")
        if not source:
            env[name] = expand(item.get("value", ""), env)
            continue
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
            continue
        for kind, key_ref in (("secret", "secretKeyRef"), ("configMap", "configMapKeyRef")):
            ref = source.get(key_ref)
            if ref is None:
                continue
            data = _source_data(kind.lower(), ref, namespace, lookup)
            if data is None:
                break
            if ref["key"] not in data:
                if ref.get("optional"):
                    break
                what = "Secret" if kind == "secret" else "ConfigMap"
                raise _config_error(f"couldn't find key {ref['key']} in {what} {namespace}/{ref['name']}")
            env[name] = data[ref["key"]]
            break
        else:
            raise _config_error(f"env {name}: valueFrom {', '.join(source)} is not supported by devstack's node")
    return env


def exit_code(returncode: int) -> int:
    """A container's exit code as a runtime reports it: 128 + signal for a signalled process."""
    return 128 - returncode if returncode < 0 else returncode


class Process:
    """One start of a container: a process group whose output goes to its log file."""

    def __init__(self, launch: Launch, cwd: Path, log: Path, pid_file: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(launch.argv, env=launch.env, cwd=cwd, stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        self.pid, self.log, self.pid_file = self.popen.pid, log, pid_file
        try:  # before it forks: its children inherit it
            os.setpriority(os.PRIO_PROCESS, self.pid, NICE)
        except OSError:
            pass
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{self.pid} {start_time(self.pid)}\n")
        self.started = time.time()

    def poll(self) -> int | None:
        code = self.popen.poll()
        if code is None:
            return None
        self._kill_group(signal.SIGKILL)  # what the leader left behind goes with it
        self.pid_file.unlink(missing_ok=True)
        return exit_code(code)

    def _kill_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float) -> int:
        """SIGTERM to the group, SIGKILL after grace seconds; the exit code."""
        if self.popen.poll() is None:
            self._kill_group(signal.SIGTERM)
            try:
                self.popen.wait(max(grace, 0))
            except subprocess.TimeoutExpired:
                self._kill_group(signal.SIGKILL)
                self.popen.wait()
        code = self.poll()
        return code if code is not None else 137


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot: with the pid, it names one process
    (a pid alone may have been reused; the program name changes when a shell execs)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def stop_leftovers(pods_folder: Path) -> list[int]:
    """Kill the process groups recorded under pods_folder whose leader is still the process started."""
    killed = []
    for pid_file in pods_folder.glob("*/pids/*.pid"):
        try:
            pid_text, started = pid_file.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            continue
        if start_time(pid) == started:
            try:
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
        pid_file.unlink(missing_ok=True)
    return killed
