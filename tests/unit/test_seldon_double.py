"""devstack's Seldon Core v1 test double, its pure part: what it makes of a SeldonDeployment (the
names, labels, containers, probes and Services Seldon v1.18.2 makes) and how it reads a
Deployment's status."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.seldon import render


def sdep(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": render.API_VERSION, "kind": "SeldonDeployment",
        "metadata": {"name": "rf", "namespace": "models", "uid": "u-1"},
        "spec": {"protocol": "v2", "predictors": [{"name": "default", "replicas": 1, "graph": {
            "name": "model", "implementation": "SKLEARN_SERVER", "modelUri": "s3://models/rf/run",
            "envSecretRefName": "seldon-rclone-secret"}}]},
    }
    body["spec"].update(spec)
    return body


def test_the_deployment_has_seldons_name_labels_and_selector_and_is_owned_by_the_seldon_deployment() -> None:
    obj = sdep()
    dep = render.render_deployment(obj, obj["spec"]["predictors"][0])
    assert dep["metadata"]["name"] == "rf-default-0-model"
    assert dep["metadata"]["labels"]["seldon-deployment-id"] == "rf"
    assert dep["metadata"]["labels"]["seldon-app"] == "rf-default"
    assert dep["spec"]["selector"]["matchLabels"] == {
        "seldon-deployment-id": "rf", "seldon-app-svc-model": "rf-default-model", "seldon-app": "rf-default"}
    assert dep["metadata"]["ownerReferences"] == [{
        "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment", "name": "rf", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}]
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}}
    assert dep["spec"]["replicas"] == 1 and "progressDeadlineSeconds" not in dep["spec"]


def test_the_pod_is_the_rclone_initializer_then_mlserver_with_seldons_env_ports_and_probes() -> None:
    obj = sdep()
    pod = render.render_deployment(obj, obj["spec"]["predictors"][0])["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["name"] == "model-model-initializer"
    assert init["image"] == "seldonio/rclone-storage-initializer:1.18.2"
    assert init["args"] == ["s3://models/rf/run", "/mnt/models"]
    assert init["envFrom"] == [{"secretRef": {"name": "seldon-rclone-secret"}}]
    (model,) = pod["containers"]
    assert model["name"] == "model" and model["image"] == "seldonio/mlserver:1.7.1-sklearn"
    env = {e["name"]: e["value"] for e in model["env"]}
    assert {k: env[k] for k in ("MLSERVER_HTTP_PORT", "MLSERVER_GRPC_PORT", "MLSERVER_MODEL_IMPLEMENTATION",
                                "MLSERVER_MODEL_NAME", "MLSERVER_MODEL_VERSION", "MLSERVER_MODEL_URI")} == {
        "MLSERVER_HTTP_PORT": "9000", "MLSERVER_GRPC_PORT": "9500",
        "MLSERVER_MODEL_IMPLEMENTATION": "mlserver_sklearn.SKLearnModel", "MLSERVER_MODEL_NAME": "model",
        "MLSERVER_MODEL_VERSION": "v1", "MLSERVER_MODEL_URI": "/mnt/models"}
    assert "MLSERVER_PARALLEL_WORKERS" not in env  # Seldon sets it for HuggingFace only
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http", "scheme": "HTTP"}
    assert (model["readinessProbe"]["initialDelaySeconds"], model["readinessProbe"]["periodSeconds"]) == (20, 5)
    assert model["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert model["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sh", "-c", "/bin/sleep 10"]
    mounts = {m["mountPath"]: m for m in model["volumeMounts"]}
    assert mounts["/mnt/models"]["readOnly"] is True and "/etc/podinfo" in mounts
    assert {v["name"] for v in pod["volumes"]} == {"seldon-podinfo", "model-provision-location"}
    assert pod["terminationGracePeriodSeconds"] == 20


def test_mlflow_server_runs_mlserver_with_the_mlflow_runtime_and_progress_deadline_is_passed_on() -> None:
    obj = sdep()
    predictor = obj["spec"]["predictors"][0]
    predictor["graph"]["implementation"] = "MLFLOW_SERVER"
    predictor["progressDeadlineSeconds"] = 30
    dep = render.render_deployment(obj, predictor)
    model = dep["spec"]["template"]["spec"]["containers"][0]
    assert model["image"] == "seldonio/mlserver:1.7.1-mlflow"
    assert {e["name"]: e["value"] for e in model["env"]}["MLSERVER_MODEL_IMPLEMENTATION"] == (
        "mlserver_mlflow.MLflowRuntime")
    assert dep["spec"]["progressDeadlineSeconds"] == 30


def test_a_new_model_uri_changes_the_pod_template_and_so_the_applied_hash() -> None:
    first, second = sdep(), sdep()
    second["spec"]["predictors"][0]["graph"]["modelUri"] = "s3://models/rf/other"
    a = render.render_deployment(first, first["spec"]["predictors"][0])
    b = render.render_deployment(second, second["spec"]["predictors"][0])
    assert a["metadata"]["annotations"][render.LAST_APPLIED] != b["metadata"]["annotations"][render.LAST_APPLIED]
    assert a["metadata"]["annotations"][render.LAST_APPLIED] == render.render_deployment(
        first, first["spec"]["predictors"][0])["metadata"]["annotations"][render.LAST_APPLIED]


def test_the_predictor_service_keeps_the_executors_ports_and_targets_mlserver() -> None:
    obj = sdep()
    predictor_svc, container_svc = render.render_services(obj, obj["spec"]["predictors"][0])
    assert predictor_svc["metadata"]["name"] == "rf-default"
    assert predictor_svc["spec"]["selector"] == {"seldon-app": "rf-default"}
    assert [(p["name"], p["port"], p["targetPort"]) for p in predictor_svc["spec"]["ports"]] == [
        ("http", 8000, 9000), ("grpc", 5001, 9500)]
    assert container_svc["metadata"]["name"] == "rf-default-model"
    assert render.address_url(obj) == "http://rf-default.models.svc.cluster.local:8000/v2/models/model/infer"


def test_long_names_are_hashed_the_way_seldon_hashes_them() -> None:
    obj = sdep()
    obj["metadata"]["name"] = "x" * 60
    name = render.deployment_name(obj, obj["spec"]["predictors"][0], "model")
    assert name.startswith("seldon-") and len(name) == len("seldon-") + 32


@pytest.mark.parametrize(("change", "message"), [
    ({"protocol": "seldon"}, "devstack does not serve protocol 'seldon' with implementation 'SKLEARN_SERVER'"),
    ({"protocol": "v2", "predictors": [{"name": "p", "graph": {"name": "m", "implementation": "TRITON_SERVER",
                                                                 "modelUri": "s3://x"}}]},
     "devstack does not serve protocol 'v2' with implementation 'TRITON_SERVER'"),
    ({"predictors": []}, "spec.predictors is empty"),
])
def test_what_the_double_does_not_serve_is_named_in_the_message(change: dict[str, Any], message: str) -> None:
    with pytest.raises(render.Unsupported, match=message.replace("(", r"\(")):
        render.check(sdep(**change))


@pytest.mark.parametrize(("status", "expected"), [
    ({"readyReplicas": 1, "replicas": 1}, (True, True)),
    ({"replicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Available", "status": "False"}, {"type": "Progressing", "status": "True"}]}, (False, True)),
    ({"replicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Available", "status": "False"}, {"type": "Progressing", "status": "False"}]}, (False, False)),
    # a stuck update beside an available old Pod: not ready, yet "progressing" for ever
    ({"replicas": 2, "readyReplicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Available", "status": "True"}, {"type": "Progressing", "status": "False"}]}, (False, True)),
])
def test_deployment_readiness_is_read_from_replica_counts_as_seldon_reads_it(
        status: dict[str, Any], expected: tuple[bool, bool]) -> None:
    assert render.deployment_status({"status": status}) == expected
