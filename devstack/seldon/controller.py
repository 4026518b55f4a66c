"""The reconcile loop of devstack's Seldon test double: SeldonDeployments in, Deployments and
Services out, and the SeldonDeployment's status as Seldon Core v1 writes it.

Triggered like Seldon's controller: by any change to a SeldonDeployment or to a Deployment it
owns, plus a resync. Each pass, for each predictor:

- the Services are created when missing (the pass is then not ready) or updated when their
  ports, selector, labels or annotations drifted; once found as wanted, ``address.url`` and
  ``serviceStatus`` are filled in;
- the Deployment is created when missing, replaced when its selector changed, or has its spec
  replaced when what Seldon would render changed (a new modelUri: the Pod template changes and
  the Deployment controller rolls it out). Each of these makes the pass not ready;
- otherwise its replicas and availableReplicas are copied into ``deploymentStatus`` and its
  readiness read as Seldon reads it (render.deployment_status).

Then ``state``: ``Available`` when Deployments and Services are ready, ``Failed`` ("Deployment is
no longer progressing and not available.") when a Deployment neither progresses nor is
available, ``Creating`` otherwise. Seldon's quirks are kept, not fixed:

- the status has no ``observedGeneration``: right after a spec change it still reads
  ``Available`` (the old Deployment's) until the next pass, and nothing tells a reader which
  generation it describes (seldon#4269, where a client read that stale status);
- readiness is ``readyReplicas`` and ``unavailableReplicas``, not the rollout: an update whose new
  Pod crash-loops while an old one is available stays ``Creating`` for ever, never ``Failed``,
  even after the Deployment reports ProgressDeadlineExceeded (Available is still True).

A SeldonDeployment the double does not serve gets ``state: Failed`` and a description saying why.

Not reproduced: the mutating webhook (the stored spec stays as written), Events, conditions,
HPA/PDB/KEDA/Istio/Ambassador objects, the clean-up of Deployments a predictor no longer has.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from ..kube import ApiError, Kube, informer
from . import render

Obj = dict[str, Any]
Key = tuple[str, str]
SDEPS = "/apis/machinelearning.seldon.io/v1/seldondeployments"
RESYNC = 30.0


def _ns_path(kind: str, namespace: str, name: str = "") -> str:
    base = {"deployments": f"/apis/apps/v1/namespaces/{namespace}/deployments",
            "services": f"/api/v1/namespaces/{namespace}/services",
            "seldondeployments": f"/apis/machinelearning.seldon.io/v1/namespaces/{namespace}/seldondeployments"}[kind]
    return f"{base}/{name}" if name else base


class Controller:
    def __init__(self, kube: Kube, log: Callable[[str], None]) -> None:
        self.kube, self.log = kube, log
        self.queue: queue.Queue[Key] = queue.Queue()
        self.pending: set[Key] = set()
        self.known: set[Key] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # --- triggers -----------------------------------------------------------------------

    def enqueue(self, key: Key) -> None:
        with self.lock:
            if key in self.pending:
                return
            self.pending.add(key)
        self.queue.put(key)

    def _sdeps_listed(self, items: list[Obj]) -> None:
        with self.lock:
            self.known = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items}
        for key in list(self.known):
            self.enqueue(key)

    def _sdep_event(self, kind: str, obj: Obj) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        with self.lock:
            (self.known.discard if kind == "DELETED" else self.known.add)(key)
        if kind != "DELETED":
            self.enqueue(key)

    def _owned_listed(self, items: list[Obj]) -> None:
        for obj in items:
            self._owned_event("ADDED", obj)

    def _owned_event(self, kind: str, obj: Obj) -> None:
        for ref in obj["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "SeldonDeployment" and ref.get("controller"):
                self.enqueue((obj["metadata"]["namespace"], ref["name"]))

    def run(self) -> None:
        for path, on_list, on_event, query in (
            (SDEPS, self._sdeps_listed, self._sdep_event, {}),
            ("/apis/apps/v1/deployments", self._owned_listed, self._owned_event,
             {"labelSelector": "seldon-deployment-id"}),
        ):
            threading.Thread(target=informer, daemon=True, name=path, args=(
                self.kube, path, on_list, on_event, self.stop, self.log), kwargs=query).start()
        threading.Thread(target=self._resync, daemon=True, name="resync").start()
        self.log("seldon double: watching SeldonDeployments")
        while not self.stop.is_set():
            try:
                key = self.queue.get(timeout=1)
            except queue.Empty:
                continue
            with self.lock:
                self.pending.discard(key)
            try:
                self.reconcile(*key)
            except (ApiError, OSError) as e:
                self.log(f"{key[0]}/{key[1]}: {e}; again in 1s")
                threading.Timer(1.0, self.enqueue, args=(key,)).start()

    def _resync(self) -> None:
        while not self.stop.wait(RESYNC):
            with self.lock:
                keys = list(self.known)
            for key in keys:
                self.enqueue(key)

    # --- one pass -----------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> None:
        sdep = self.kube.get(_ns_path("seldondeployments", namespace, name))
        if sdep is None or sdep["metadata"].get("deletionTimestamp"):
            return
        status = dict(sdep.get("status") or {})
        try:
            render.check(sdep)
        except render.Unsupported as e:
            self._write_status(sdep, {**status, "state": "Failed", "description": str(e)})
            return
        services_ready = self._services(sdep, status)
        ready, progressing = self._deployments(sdep, status)
        if ready and services_ready:
            status["state"] = "Available"
            status.pop("description", None)
        elif not progressing and not ready:
            status["state"], status["description"] = "Failed", "Deployment is no longer progressing and not available."
        else:
            status["state"] = "Creating"
            status.pop("description", None)
        self._write_status(sdep, status)

    def _services(self, sdep: Obj, status: Obj) -> bool:
        ready = True
        namespace = sdep["metadata"]["namespace"]
        for predictor in sdep["spec"]["predictors"]:
            for svc in render.render_services(sdep, predictor):
                svc_name = svc["metadata"]["name"]
                found = self.kube.get(_ns_path("services", namespace, svc_name))
                if found is None:
                    self.kube.post(_ns_path("services", namespace), svc)
                    ready = False
                    continue
                status["address"] = {"url": render.address_url(sdep)}
                if found["spec"].get("selector") != svc["spec"]["selector"]:
                    self.kube.delete(_ns_path("services", namespace, svc_name))
                    self.kube.post(_ns_path("services", namespace), svc)
                    ready = False
                elif _service_drifted(found, svc):
                    found["metadata"].update(labels=svc["metadata"]["labels"],
                                             annotations=svc["metadata"]["annotations"])
                    found["spec"].update(ports=svc["spec"]["ports"], type="ClusterIP", sessionAffinity="None")
                    self.kube.put(_ns_path("services", namespace, svc_name), found)
                    ready = False
                else:
                    entries = status.setdefault("serviceStatus", {})
                    if svc_name not in entries:
                        http, grpc = (p["port"] for p in svc["spec"]["ports"])
                        ip = found["spec"].get("clusterIP", "")
                        entries[svc_name] = {"svcName": svc_name, "httpEndpoint": f"{ip}:{http}",
                                             "grpcEndpoint": f"{ip}:{grpc}"}
        return ready

    def _deployments(self, sdep: Obj, status: Obj) -> tuple[bool, bool]:
        ready, progressing = True, True
        namespace = sdep["metadata"]["namespace"]
        for index, predictor in enumerate(sdep["spec"]["predictors"]):
            desired = render.render_deployment(sdep, predictor)
            dep_name = desired["metadata"]["name"]
            found = self.kube.get(_ns_path("deployments", namespace, dep_name))
            if found is None:
                self.kube.post(_ns_path("deployments", namespace), desired)
                self.log(f"{namespace}/{sdep['metadata']['name']}: created Deployment {dep_name}")
                ready = False
                continue
            if found["spec"]["selector"] != desired["spec"]["selector"]:
                self.kube.delete(_ns_path("deployments", namespace, dep_name),
                                 {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"})
                self.kube.post(_ns_path("deployments", namespace), desired)
                ready = False
                continue
            applied = (found["metadata"].get("annotations") or {}).get(render.LAST_APPLIED)
            if applied != desired["metadata"]["annotations"][render.LAST_APPLIED]:
                spec = dict(desired["spec"])
                spec.setdefault("replicas", found["spec"].get("replicas"))
                found["metadata"].update(labels=desired["metadata"]["labels"],
                                         annotations=desired["metadata"]["annotations"])
                found["spec"] = spec
                self.kube.put(_ns_path("deployments", namespace, dep_name), found)
                self.log(f"{namespace}/{sdep['metadata']['name']}: updated Deployment {dep_name}")
                ready = False
                continue
            observed = found.get("status") or {}
            entry = {k: v for k, v in (("replicas", observed.get("replicas", 0)),
                                       ("availableReplicas", observed.get("availableReplicas", 0))) if v}
            status.setdefault("deploymentStatus", {})[dep_name] = entry
            if index == 0:
                if observed.get("replicas"):
                    status["replicas"] = observed["replicas"]
                else:
                    status.pop("replicas", None)
            this_ready, this_progressing = render.deployment_status(found)
            if not this_ready:
                if ready and not this_progressing:
                    progressing = False
                ready = False
        return ready, progressing

    def _write_status(self, sdep: Obj, status: Obj) -> None:
        if status == (sdep.get("status") or {}):
            return
        sdep["status"] = status
        meta = sdep["metadata"]
        try:
            self.kube.put(_ns_path("seldondeployments", meta["namespace"], meta["name"]) + "/status", sdep)
        except ApiError as e:
            if e.status == 409:  # changed meanwhile: the next pass sees it
                self.enqueue((meta["namespace"], meta["name"]))
                return
            raise


def _service_drifted(found: Obj, desired: Obj) -> bool:
    spec = found.get("spec") or {}
    ports = [{k: p.get(k) for k in ("name", "protocol", "port", "targetPort")} for p in spec.get("ports") or []]
    return (ports != desired["spec"]["ports"] or spec.get("type") != "ClusterIP"
            or (found["metadata"].get("labels") or {}) != desired["metadata"]["labels"]
            or (found["metadata"].get("annotations") or {}) != desired["metadata"]["annotations"])
