"""What Seldon Core v1's controller makes of a SeldonDeployment, for the case this project uses:
one predictor graph node of a prepackaged server (SKLEARN_SERVER or MLFLOW_SERVER) with
``protocol: v2`` (MLServer) and a ``modelUri``. Pure functions returning plain dicts.

Names, labels, environment, ports, probes and volumes follow what Seldon Core v1.18.2 writes
(read in its source; none of its code is here). Where devstack differs, it says so:

- No executor container: Seldon puts its service orchestrator (a pass-through for a one-node
  graph) in front of the model server on ports 8000/5001. Here the predictor Service keeps those
  ports and sends them straight to MLServer's 9000/9500, so the same URLs answer the same V2 paths.
- The MLServer image is ``seldonio/mlserver:1.7.1-<server>``, what devstack's node runs (Seldon
  1.18.2's chart defaults to 1.3.5; a cluster sets it in seldon-config's ``predictor_servers``).
- ``serviceStatus.*.httpEndpoint`` holds the Service's ClusterIP, which devstack's node answers,
  where Seldon writes ``<svc>.<namespace>:<port>``: there is no cluster DNS here. ``address.url``
  is Seldon's, with the cluster DNS name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]

API_VERSION = "machinelearning.seldon.io/v1"
STORAGE_INITIALIZER = "seldonio/rclone-storage-initializer:1.18.2"
# implementation -> (MLServer image, MLSERVER_MODEL_IMPLEMENTATION)
SERVERS = {
    "SKLEARN_SERVER": ("seldonio/mlserver:1.7.1-sklearn", "mlserver_sklearn.SKLearnModel"),
    "MLFLOW_SERVER": ("seldonio/mlserver:1.7.1-mlflow", "mlserver_mlflow.MLflowRuntime"),
}
HTTP_PORT, GRPC_PORT = 9000, 9500  # the first predictive unit's ports
ENGINE_HTTP_PORT, ENGINE_GRPC_PORT = 8000, 5001  # what the predictor Service exposes
MODELS_PATH = "/mnt/models"
PODINFO = ("seldon-podinfo", "/etc/podinfo")
LAST_APPLIED = "devstack.seldon.io/last-applied-hash"  # Seldon keeps a last-applied annotation too


class Unsupported(Exception):
    """A SeldonDeployment the double does not serve; the message goes to status.description."""


def _limit(name: str) -> str:
    # Seldon's rule for names over 63 characters
    return name if len(name) <= 63 else "seldon-" + hashlib.md5(name.encode()).hexdigest()


def seldon_id(sdep: Mapping[str, Any]) -> str:
    return _limit(sdep["metadata"]["name"])


def predictor_key(sdep: Mapping[str, Any], predictor: Mapping[str, Any]) -> str:
    custom = (predictor.get("annotations") or {}).get("seldon.io/svc-name")
    return str(custom) if custom else _limit(f"{sdep['metadata']['name']}-{predictor['name']}")


def deployment_name(sdep: Mapping[str, Any], predictor: Mapping[str, Any], container: str) -> str:
    return _limit(f"{sdep['metadata']['name']}-{predictor['name']}-0-{container}")


def container_service_name(sdep: Mapping[str, Any], predictor: Mapping[str, Any], container: str) -> str:
    return _limit(f"{sdep['metadata']['name']}-{predictor['name']}-{container}")


def check(sdep: Mapping[str, Any]) -> None:
    """Raise Unsupported, naming what, for anything beyond what the double serves."""
    spec = sdep.get("spec") or {}
    predictors = spec.get("predictors") or []
    protocol = spec.get("protocol") or "seldon"
    if not predictors:
        raise Unsupported("spec.predictors is empty")
    for i, p in enumerate(predictors):
        graph = p.get("graph") or {}
        implementation = graph.get("implementation", "")
        where = f"spec.predictors[{i}] ({p.get('name')})"
        if protocol != "v2" or implementation not in SERVERS:
            raise Unsupported(
                f"{where}: devstack does not serve protocol {protocol!r} with implementation "
                f"{implementation or 'none'!r}; its Seldon test double serves protocol v2 with "
                f"{' or '.join(SERVERS)} (MLServer)")
        if graph.get("children"):
            raise Unsupported(f"{where}: devstack's Seldon test double serves one-node graphs only")
        if not graph.get("modelUri"):
            raise Unsupported(f"{where}: graph.modelUri is empty")


def _env(sdep: Obj, predictor: Obj, image: str, implementation: str) -> list[Obj]:
    node = predictor["graph"]
    name = node["name"]
    labels = {"version": predictor["name"], **(predictor.get("labels") or {})}
    values = [
        ("MLSERVER_HTTP_PORT", str(HTTP_PORT)), ("MLSERVER_GRPC_PORT", str(GRPC_PORT)),
        ("MLSERVER_MODEL_IMPLEMENTATION", implementation), ("MLSERVER_MODEL_NAME", name),
        ("MLSERVER_MODEL_VERSION", "v1"), ("MLSERVER_MODEL_URI", MODELS_PATH),
        ("TEMPO_RUNTIME_OPTIONS", json.dumps({"k8s_options": {
            "defaultRuntime": "tempo.seldon.SeldonKubernetesRuntime",
            "namespace": sdep["metadata"]["namespace"]}}, separators=(",", ":"))),
        ("PREDICTIVE_UNIT_SERVICE_PORT", str(HTTP_PORT)),
        ("PREDICTIVE_UNIT_HTTP_SERVICE_PORT", str(HTTP_PORT)),
        ("PREDICTIVE_UNIT_GRPC_SERVICE_PORT", str(GRPC_PORT)),
        ("PREDICTIVE_UNIT_ID", name), ("PREDICTIVE_UNIT_IMAGE", image),
        ("PREDICTOR_ID", predictor["name"]), ("PREDICTOR_LABELS", json.dumps(labels, separators=(",", ":"))),
        ("SELDON_DEPLOYMENT_ID", sdep["metadata"]["name"]), ("SELDON_EXECUTOR_ENABLED", "true"),
    ]
    return [{"name": k, "value": v} for k, v in values]


def _probe(path: str, initial_delay: int) -> Obj:
    return {"httpGet": {"path": path, "port": "http", "scheme": "HTTP"}, "initialDelaySeconds": initial_delay,
            "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 3, "timeoutSeconds": 1}


def render_deployment(sdep: Obj, predictor: Obj) -> Obj:
    """The Deployment Seldon creates for the predictor, owned by the SeldonDeployment."""
    meta = sdep["metadata"]
    node = predictor["graph"]
    name = node["name"]
    image, implementation = SERVERS[node["implementation"]]
    dep_name = deployment_name(sdep, predictor, name)
    sd_id, psvc = seldon_id(sdep), predictor_key(sdep, predictor)
    svc_key, svc_value = f"seldon-app-svc-{name}", container_service_name(sdep, predictor, name)
    selector = {"seldon-deployment-id": sd_id, svc_key: svc_value, "seldon-app": psvc}
    extra_labels = {"version": predictor["name"], **(predictor.get("labels") or {})}
    labels = {"seldon-deployment-id": sd_id, "app": dep_name, "fluentd": "true", **extra_labels,
              "seldon.io/model": "true", "app.kubernetes.io/managed-by": "seldon-core", svc_key: svc_value,
              "seldon-app": psvc}
    annotations = {**(sdep["spec"].get("annotations") or {}), **(predictor.get("annotations") or {})}
    volume = f"{name}-provision-location"[:63].rstrip("-")
    init_name = f"{name}-model-initializer"[:63].rstrip("-")
    model = {
        "name": name, "image": image, "imagePullPolicy": "IfNotPresent",
        "env": _env(sdep, predictor, image, implementation),
        "ports": [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/v2/health/ready", 20),
        "livenessProbe": _probe("/v2/health/live", 60),
        "lifecycle": {"preStop": {"exec": {"command": ["/bin/sh", "-c", "/bin/sleep 10"]}}},
        "volumeMounts": [{"name": PODINFO[0], "mountPath": PODINFO[1]},
                         {"name": volume, "mountPath": MODELS_PATH, "readOnly": True}],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
    }
    initializer = {
        "name": init_name, "image": STORAGE_INITIALIZER, "imagePullPolicy": "IfNotPresent",
        "args": [node["modelUri"], MODELS_PATH],
        "volumeMounts": [{"name": volume, "mountPath": MODELS_PATH}],
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "100Mi"}},
    }
    if node.get("envSecretRefName"):
        initializer["envFrom"] = [{"secretRef": {"name": node["envSecretRefName"]}}]
    spec: Obj = {
        "selector": {"matchLabels": selector},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
        "template": {
            "metadata": {"labels": dict(labels), "annotations": {
                "prometheus.io/path": "/prometheus", "prometheus.io/scrape": "true", **annotations}},
            "spec": {
                "initContainers": [initializer], "containers": [model],
                "volumes": [
                    {"name": PODINFO[0], "downwardAPI": {"defaultMode": 420, "items": [{
                        "path": "annotations",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.annotations"}}]}},
                    {"name": volume, "emptyDir": {}},
                ],
                "restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                "terminationGracePeriodSeconds": 20,
            },
        },
    }
    replicas = predictor.get("replicas", sdep["spec"].get("replicas"))
    if replicas is not None:
        spec["replicas"] = replicas
    if predictor.get("progressDeadlineSeconds") is not None:
        spec["progressDeadlineSeconds"] = predictor["progressDeadlineSeconds"]
    body: Obj = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": dep_name, "namespace": meta["namespace"], "labels": labels,
                     "annotations": dict(annotations), "ownerReferences": [owner(sdep)]},
        "spec": spec,
    }
    body["metadata"]["annotations"][LAST_APPLIED] = spec_hash(spec)
    return body


def spec_hash(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def owner(sdep: Mapping[str, Any]) -> Obj:
    meta = sdep["metadata"]
    return {"apiVersion": API_VERSION, "kind": "SeldonDeployment", "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def render_services(sdep: Obj, predictor: Obj) -> list[Obj]:
    """The predictor Service (what callers use) and the container Service Seldon adds per model."""
    meta = sdep["metadata"]
    name = predictor["graph"]["name"]
    sd_id, psvc = seldon_id(sdep), predictor_key(sdep, predictor)
    csvc = container_service_name(sdep, predictor, name)
    annotations = dict(predictor.get("annotations") or {})

    def service(svc_name: str, labels: Obj, selector: Obj, ports: list[tuple[str, int, int]]) -> Obj:
        return {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc_name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": annotations, "ownerReferences": [owner(sdep)]},
            "spec": {"type": "ClusterIP", "sessionAffinity": "None", "selector": selector,
                     "ports": [{"name": n, "protocol": "TCP", "port": p, "targetPort": t} for n, p, t in ports]},
        }

    return [
        service(psvc, {"seldon-app": psvc, "seldon-deployment-id": sd_id,
                       "app.kubernetes.io/managed-by": "seldon-core"},
                {"seldon-app": psvc}, [("http", ENGINE_HTTP_PORT, HTTP_PORT), ("grpc", ENGINE_GRPC_PORT, GRPC_PORT)]),
        service(csvc, {f"seldon-app-svc-{name}": csvc, "seldon-deployment-id": sd_id, "seldon-app": psvc,
                       "seldon.io/model": "true", "app.kubernetes.io/managed-by": "seldon-core"},
                {f"seldon-app-svc-{name}": csvc}, [("http", HTTP_PORT, HTTP_PORT), ("grpc", GRPC_PORT, GRPC_PORT)]),
    ]


def address_url(sdep: Mapping[str, Any]) -> str:
    """Seldon's address.url: the first predictor's Service by cluster DNS name."""
    first = sdep["spec"]["predictors"][0]
    host = f"{predictor_key(sdep, first)}.{sdep['metadata']['namespace']}.svc.cluster.local:{ENGINE_HTTP_PORT}"
    return f"http://{host}/v2/models/{first['graph']['name']}/infer"


def deployment_status(found: Mapping[str, Any]) -> tuple[bool, bool]:
    """(ready, progressing) of one Deployment the way Seldon reads it: not ready while no replica
    is ready or any is unavailable; not progressing only when Progressing and Available are both
    False. So a rollout stuck on a crash-looping new Pod beside an available old one is "not ready
    but progressing" for ever: Seldon looks at replica counts, not at the rollout's conditions."""
    status = found.get("status") or {}
    if status.get("readyReplicas", 0) and not status.get("unavailableReplicas", 0):
        return True, True
    conditions = {c["type"]: c.get("status") for c in status.get("conditions") or []}
    stalled = conditions.get("Progressing") == "False" and conditions.get("Available") == "False"
    return False, not stalled

