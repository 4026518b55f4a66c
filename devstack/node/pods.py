"""One Pod bound to devstack's node, driven by a thread of its own the way the kubelet drives it.

- Set-up: the Pod gets its own loopback address (its Pod IP), a folder per volume (emptyDir,
  downwardAPI, secret and configMap volumes), and each container's mount paths point there.
- Init containers run one after the other; each must exit 0 before the next, and the app
  containers start only after the last one. A failed init container is restarted with back-off
  (unless ``restartPolicy: Never``, which fails the Pod).
- App containers are started, probed (see probes.py) and restarted per ``restartPolicy``: the
  kubelet's back-off (immediately, then 10 s, doubling up to 5 min, reset after 10 min running)
  shows as ``CrashLoopBackOff``. A failed liveness probe kills and restarts the container.
- Status (phase, conditions, container statuses with reasons and exit codes, Pod IP) is patched
  through the API whenever it changes; everything else (ReplicaSets, Deployment conditions,
  EndpointSlices) is the real controller-manager's work.
- Deletion: when the API marks the Pod deleted, each container's preStop hook runs, then SIGTERM,
  then SIGKILL at the end of the grace period; the node then removes the Pod object, as the
  kubelet does.

Logs: ``<home>/logs/pods/<namespace>_<pod>_<uid>/<container>/<restart count>.log``, the kubelet's
layout under /var/log/pods.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..kube import ApiError, Kube
from . import images
from .containers import Process, field_value, resolve_env
from .images import ContainerError, Image
from .probes import Prober, probe_once

Obj = dict[str, Any]

BACKOFF_START, BACKOFF_MAX, BACKOFF_RESET = 10.0, 300.0, 600.0
TICK = 0.2
MESSAGE_LINES, MESSAGE_BYTES = 80, 2048  # FallbackToLogsOnError: the kubelet's limits


class NodeContext(Protocol):
    kube: Kube
    name: str
    host_ip: str
    pods_folder: Path
    logs_folder: Path
    programs: dict[str, str]

    def log(self, message: str) -> None: ...

    def allocate_ip(self, pod: Obj) -> str: ...

    def release_ip(self, ip: str) -> None: ...


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Container:
    spec: Obj
    init: bool
    image: Image | None
    runs: int = 0
    process: Process | None = None
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    container_id: str = ""
    started_at: float = 0.0
    ready: bool = False
    started: bool = False  # running and past its startup probe
    done: bool = False  # init: succeeded; app: exited and not to be restarted
    delay: float = 0.0  # the next back-off
    restart_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    probes: dict[str, Prober] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def restart_count(self) -> int:
        return max(self.runs - 1, 0)

    def api_status(self) -> Obj:
        status: Obj = {"name": self.name, "image": self.spec.get("image", ""),
                       "imageID": "", "ready": self.ready, "restartCount": self.restart_count,
                       "started": self.started, "state": self.state, "lastState": self.last_state}
        if self.container_id:
            status["containerID"] = self.container_id
        return status


class PodWorker(threading.Thread):
    def __init__(self, node: NodeContext, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod {meta['namespace']}/{meta['name']}", daemon=True)
        self.node, self.pod = node, pod
        self.uid, self.namespace, self.pod_name = meta["uid"], meta["namespace"], meta["name"]
        self.folder = node.pods_folder / self.uid
        self.log_folder = node.logs_folder / f"{self.namespace}_{self.pod_name}_{self.uid}"
        self.wake = threading.Event()
        self.removed = False  # the Pod object is gone from the API
        self.halted = False  # the node is shutting down: stop, report nothing
        self.ip = ""
        self.mounts: dict[str, dict[str, str]] = {}
        self.setup_error: ContainerError | None = None
        self.setup_retry_at = 0.0
        self.start_time = time.time()
        self.reported: Obj | None = None
        self.conditions_seen: dict[str, tuple[str, str]] = {}  # type -> (status, lastTransitionTime)
        spec = pod["spec"]
        self.inits = [Container(c, True, images.find(c.get("image", ""))) for c in spec.get("initContainers") or []]
        self.apps = [Container(c, False, images.find(c.get("image", ""))) for c in spec.get("containers") or []]
        self.failed = False  # an init container failed under restartPolicy Never

    # --- called from the node's watch thread ---------------------------------------------

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.wake.set()

    def remove(self) -> None:
        self.removed = True
        self.wake.set()

    def halt(self) -> None:
        self.halted = True
        self.wake.set()

    # --- the loop -----------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy") or "Always")

    def run(self) -> None:
        try:
            self._setup()
            while not (self.halted or self.removed or self.pod["metadata"].get("deletionTimestamp")):
                self._step(time.time())
                self._report()
                self.wake.wait(TICK)
                self.wake.clear()
            self._shutdown()
        except Exception as e:  # noqa: BLE001 - a worker must not die silently
            self.node.log(f"pod {self.namespace}/{self.pod_name}: {type(e).__name__}: {e}")
            self._kill_all(0)
        finally:
            if self.ip:
                self.node.release_ip(self.ip)

    def _setup(self) -> None:
        self.ip = self.node.allocate_ip(self.pod)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._report()
        self._volumes()

    def _volumes(self) -> None:
        """A folder per volume, and each container's mount paths mapped onto them."""
        self.setup_error = None
        paths: dict[str, Path] = {}
        try:
            for volume in self.pod["spec"].get("volumes") or []:
                path = self.folder / "volumes" / volume["name"]
                path.mkdir(parents=True, exist_ok=True)
                paths[volume["name"]] = path
                self._fill(volume, path)
        except ContainerError as e:
            self.setup_error = e
            return
        for container in self.inits + self.apps:
            mounts: dict[str, str] = {}
            for mount in container.spec.get("volumeMounts") or []:
                if mount["name"] not in paths:
                    self.setup_error = ContainerError("CreateContainerConfigError",
                                                      f"volume {mount['name']!r} of {container.name} is not in the Pod")
                    return
                target = paths[mount["name"]] / mount.get("subPath", "")
                target.mkdir(parents=True, exist_ok=True)
                mounts[mount["mountPath"]] = str(target).rstrip("/")
            self.mounts[container.name] = mounts

    def _fill(self, volume: Obj, path: Path) -> None:
        if "emptyDir" in volume:
            return
        if "downwardAPI" in volume:
            for item in volume["downwardAPI"].get("items") or []:
                if "fieldRef" in item:
                    (path / item["path"]).write_text(field_value(self.pod, item["fieldRef"]["fieldPath"]))
            return
        for kind, resource in (("secret", "secrets"), ("configMap", "configmaps")):
            if kind not in volume:
                continue
            source = volume[kind]
            name = source.get("secretName") or source.get("name")
            obj = self._lookup(resource, self.namespace, name)
            if obj is None:
                if source.get("optional"):
                    return
                raise ContainerError("ContainerCreating",
                                     f'MountVolume.SetUp failed: {kind.lower()} "{name}" not found')
            data = obj.get("data") or {}
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                value = data.get(item["key"], "")
                blob = base64.b64decode(value) if kind == "secret" else str(value).encode()
                (path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (path / item["path"]).write_bytes(blob)
            return
        kinds = ", ".join(k for k in volume if k != "name")
        raise ContainerError("ContainerCreating", f"volume {volume['name']!r} is {kinds}: devstack's node mounts "
                                                  "emptyDir, downwardAPI, secret and configMap volumes only")

    def _lookup(self, resource: str, namespace: str, name: str) -> Obj | None:
        return self.node.kube.get(f"/api/v1/namespaces/{namespace}/{resource}/{name}")

    def _step(self, now: float) -> None:
        if self.setup_error is not None:
            for c in self.inits + self.apps:
                c.state = {"waiting": {"reason": self.setup_error.reason, "message": self.setup_error.message}}
            if now >= self.setup_retry_at:  # the kubelet retries: a Secret created later is picked up
                self.setup_retry_at = now + 2
                self._volumes()
            return
        if self.failed:
            return
        for c in self.inits:
            if not c.done:
                self._drive(c, now)
                if not c.done:
                    for app in self.apps:
                        app.state = {"waiting": {"reason": "PodInitializing"}}
                    return
        for c in self.apps:
            self._drive(c, now)

    def _drive(self, c: Container, now: float) -> None:
        if c.process is not None:
            code = c.process.poll()
            if code is None:
                if not c.init:
                    self._probe(c, now)
                return
            self._exited(c, code, now)
        if c.done or self.failed or now < c.restart_at:
            return
        self._start(c, now)

    def _start(self, c: Container, now: float) -> None:
        if c.image is None:
            reference = c.spec.get("image", "")
            c.state = {"waiting": {"reason": "ErrImagePull", "message": images.unknown_image_message(reference)}}
            c.restart_at = now + BACKOFF_START
            return
        try:
            env = resolve_env(self.pod, c.spec, self._lookup)
            launch = images.launch(c.image, c.spec, env, self.mounts.get(c.name, {}), self.node.programs,
                                   self.ip, str(self.folder / "home" / c.name))
        except ContainerError as e:
            c.state = {"waiting": {"reason": e.reason, "message": e.message}}
            c.restart_at = now + 2
            return
        c.process = Process(launch, self.folder / "home" / c.name, self.log_folder / c.name / f"{c.runs}.log",
                            self.folder / "pids" / f"{c.name}.pid")
        c.runs += 1
        c.env, c.started_at, c.container_id = launch.env, now, f"devstack://{c.process.pid}"
        c.state = {"running": {"startedAt": iso(now)}}
        c.probes = {kind: p for kind in ("startup", "liveness", "readiness")
                    if (p := Prober.for_container(c.spec.get(f"{kind}Probe"), kind, now)) is not None}
        c.started = "startup" not in c.probes
        c.ready = c.started and "readiness" not in c.probes and not c.init

    def _exited(self, c: Container, code: int, now: float) -> None:
        assert c.process is not None
        terminated: Obj = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                           "startedAt": iso(c.started_at), "finishedAt": iso(now), "containerID": c.container_id}
        if code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            terminated["message"] = _log_tail(c.process.log)
        c.process, c.ready, c.started = None, False, False
        restart = (code != 0 and self.policy != "Never") if c.init else (
            self.policy == "Always" or (self.policy == "OnFailure" and code != 0))
        if not restart:
            c.state, c.done = {"terminated": terminated}, True
            if c.init and code != 0:
                self.failed = True
            return
        c.last_state = {"terminated": terminated}
        if now - c.started_at >= BACKOFF_RESET:
            c.delay = 0.0
        c.restart_at = now + c.delay
        if c.delay:
            c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {c.delay:.0f}s restarting failed container={c.name} "
                f"pod={self.pod_name}_{self.namespace}({self.uid})")}}
        else:
            c.state = {"terminated": terminated}
        c.delay = min(max(c.delay * 2, BACKOFF_START), BACKOFF_MAX)

    def _probe(self, c: Container, now: float) -> None:
        ports = c.spec.get("ports") or []
        for kind in ("startup", "liveness", "readiness"):
            prober = c.probes.get(kind)
            if prober is None or (kind != "startup" and not c.started) or (kind == "startup" and c.started):
                continue
            if not prober.due(now):
                continue
            ok, error = probe_once(prober.spec, self.ip, ports, c.env, str(self.folder / "home" / c.name))
            prober.record(ok, error, time.time())
            if kind == "startup" and prober.passed and prober.successes:
                c.started = True
                c.ready = "readiness" not in c.probes
            elif kind in ("liveness", "startup") and not prober.passed:
                self.node.log(f"{self.namespace}/{self.pod_name}: container {c.name} failed {kind} probe "
                              f"({prober.last_error}), will be restarted")
                assert c.process is not None
                code = c.process.stop(self._grace())
                self._exited(c, code, time.time())
                return
            elif kind == "readiness":
                c.ready = prober.passed

    def _grace(self) -> float:
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    # --- status -------------------------------------------------------------------------

    def _condition(self, type_: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self.conditions_seen.get(type_)
        when = previous[1] if previous and previous[0] == status else iso(time.time())
        self.conditions_seen[type_] = (status, when)
        cond: Obj = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": when,
                     "observedGeneration": self.pod["metadata"].get("generation", 1)}
        if not ok and reason:
            cond.update(reason=reason, message=message)
        return cond

    def status(self) -> Obj:
        not_init = [c.name for c in self.inits if not c.done]
        not_ready = [c.name for c in self.apps if not c.ready]
        apps_done = bool(self.apps) and all(c.done for c in self.apps)
        if self.failed or (apps_done and any(c.state["terminated"]["exitCode"] for c in self.apps)):
            phase = "Failed"
        elif apps_done:
            phase = "Succeeded"
        elif not not_init and any(c.runs for c in self.apps):
            phase = "Running"
        else:
            phase = "Pending"
        status: Obj = {
            "observedGeneration": self.pod["metadata"].get("generation", 1),
            "phase": phase, "hostIP": self.node.host_ip, "hostIPs": [{"ip": self.node.host_ip}],
            "startTime": iso(self.start_time),
            "conditions": [
                self._condition("PodReadyToStartContainers", bool(self.ip)),
                self._condition("Initialized", not not_init, "ContainersNotInitialized",
                                f"containers with incomplete status: [{' '.join(not_init)}]"),
                self._condition("ContainersReady", not not_ready, "ContainersNotReady",
                                f"containers with unready status: [{' '.join(not_ready)}]"),
                self._condition("Ready", not not_ready, "ContainersNotReady",
                                f"containers with unready status: [{' '.join(not_ready)}]"),
            ],
            "containerStatuses": [c.api_status() for c in self.apps],
        }
        if self.inits:
            status["initContainerStatuses"] = [c.api_status() for c in self.inits]
        if self.ip:
            status.update(podIP=self.ip, podIPs=[{"ip": self.ip}])
        return status

    def _report(self) -> None:
        status = self.status()
        if status == self.reported or self.halted:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        try:
            self.node.kube.patch(path, {"metadata": {"uid": self.uid}, "status": status}, strategic=True)
            self.reported = json.loads(json.dumps(status))
        except ApiError as e:
            if e.status not in (404, 409):
                self.node.log(f"pod {self.namespace}/{self.pod_name}: status not written: {e}")

    # --- stopping -----------------------------------------------------------------------

    def _shutdown(self) -> None:
        grace = 2.0 if self.removed or self.halted else float(
            self.pod["metadata"].get("deletionGracePeriodSeconds", self._grace()))
        self._kill_all(grace)
        if self.halted:
            return
        self._report()
        if not self.removed:
            path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"
            self.node.kube.delete(path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                         "preconditions": {"uid": self.uid}})
        shutil.rmtree(self.folder, ignore_errors=True)

    def _kill_all(self, grace: float) -> None:
        """preStop hooks, then SIGTERM, then SIGKILL at the end of grace: every container at once."""
        deadline = time.time() + grace
        running = [c for c in self.inits + self.apps if c.process is not None]
        threads = [threading.Thread(target=self._stop_one, args=(c, deadline), daemon=True) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _stop_one(self, c: Container, deadline: float) -> None:
        assert c.process is not None
        hook = ((c.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
        if hook and not self.halted:
            try:
                subprocess.run(hook["command"], env=c.env, cwd=self.folder / "home" / c.name,
                               timeout=max(deadline - time.time(), 0), capture_output=True)
            except (OSError, subprocess.TimeoutExpired):
                pass
        code = c.process.stop(deadline - time.time())
        c.state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                  "startedAt": iso(c.started_at), "finishedAt": iso(time.time()),
                                  "containerID": c.container_id}}
        c.process, c.ready = None, False


def _log_tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-MESSAGE_BYTES:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-MESSAGE_LINES:])

