"""The operator on devstack, end to end: the real API server, MLflow and S3, the operator
running as its own process. Each test reads what a user would: kubectl, the bucket, Events."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from devstack import harness, stack

from .conftest import STORAGE_SECRET, Operator, train
from .helpers import (
    RMSE_BELOW_1,
    apply,
    as_written,
    condition,
    events,
    get,
    none_contain,
    objects,
    phase_in,
    promotion,
    read_object,
    secret_data,
    wait_for,
)

pytestmark = pytest.mark.integration



def _name() -> str:
    return f"mp-{uuid.uuid4().hex[:6]}"


def test_a_passing_run_is_promoted_copied_and_served(
        devstack: stack.State, operator: Operator, namespace: str, trained: tuple[str, dict[str, float]]) -> None:
    run_id, metrics = trained
    name = _name()
    apply(devstack, namespace, promotion(name, run_id, [
        {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 70},
        {"metric": "r2", "op": "GreaterThan", "threshold": 0.3},
    ]))
    mp = wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected", "Failed"))
    rmse, r2 = f"{metrics['rmse']:.6g}", mp["status"]["gates"][1]["value"]
    assert mp["status"]["phase"] == "Promoted", mp["status"]["message"]
    assert mp["status"]["message"] == (
        f"promoted: rmse {rmse} <= 70, r2 {r2:.6g} > 0.3; minio-sklearn now serves run {run_id}")
    assert mp["status"]["gates"][0] == {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 70,
                                        "value": pytest.approx(metrics["rmse"], rel=1e-4), "passed": True}
    assert condition(mp, "Ready")["status"] == "True"
    assert "progress" not in mp["status"]

    # the bucket holds the model and a manifest whose hashes match the bytes
    prefix = f"{namespace}/rf-regressor/{run_id}/"  # under the namespace's root
    stored = objects(devstack, "models", prefix)
    assert {"MLmodel", "model.pkl", "promotion-manifest.json"} <= set(stored)
    manifest = json.loads(read_object(devstack, "models", prefix + "promotion-manifest.json"))
    assert {f["path"] for f in manifest["files"]} == set(stored) - {"promotion-manifest.json"}
    import hashlib

    pkl = next(f for f in manifest["files"] if f["path"] == "model.pkl")
    assert pkl["sha256"] == hashlib.sha256(read_object(devstack, "models", prefix + "model.pkl")).hexdigest()
    assert mp["status"]["artifact"]["files"] == len(manifest["files"])
    assert mp["status"]["artifact"]["digest"] == "sha256:" + hashlib.sha256(
        read_object(devstack, "models", prefix + "promotion-manifest.json")).hexdigest()

    # the rclone Secret and the SeldonDeployment
    rclone = secret_data(devstack, namespace, "seldon-rclone-secret")
    assert rclone == {
        "RCLONE_CONFIG_S3_TYPE": "s3", "RCLONE_CONFIG_S3_PROVIDER": "minio", "RCLONE_CONFIG_S3_ENV_AUTH": "false",
        "RCLONE_CONFIG_S3_ACCESS_KEY_ID": devstack.s3_access_key,
        "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": devstack.s3_secret_key,
        "RCLONE_CONFIG_S3_ENDPOINT": devstack.s3_endpoint,
    }
    sdep = get(devstack, namespace, "seldondeployment", "minio-sklearn")
    assert sdep is not None
    graph = sdep["spec"]["predictors"][0]["graph"]
    assert graph["modelUri"] == f"s3://models/{namespace}/rf-regressor/{run_id}"
    assert graph["envSecretRefName"] == "seldon-rclone-secret"
    assert graph["implementation"] == "SKLEARN_SERVER" and sdep["spec"]["protocol"] == "v2"

    # what `kubectl get mp` shows
    table = devstack.kubectl("-n", namespace, "get", "mp").stdout.splitlines()
    assert table[0].split() == ["NAME", "RUN", "PHASE", "GATES", "DEPLOYMENT", "AGE"]
    assert table[1].split()[:6] == [name, run_id, "Promoted", "rmse", f"{rmse}<=70,", "r2"]
    assert "minio-sklearn" in table[1]
    wide = devstack.kubectl("-n", namespace, "get", "mp", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["MODEL", "VERSION"]
    # VERSION is empty: the run is not registered
    assert wide[1].split()[-1] == f"s3://models/{namespace}/rf-regressor/{run_id}"
    # trained in the dev venv (scikit-learn 1.9.1), served by MLServer 1.7.1's 1.5.2: warned, then promoted
    assert sorted(e["reason"] for e in events(devstack, namespace, name)) == ["Deploying", "Promoted", "VersionSkew"]
    verified = next(c for c in get(devstack, namespace, "mp", name)["status"]["conditions"] if c["type"] == "Verified")
    assert (verified["status"], verified["reason"]) == ("Unknown", "NoReplicas")  # 0 replicas: nothing to ask

    # and Prometheus can scrape the decision
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
        scraped = r.read().decode()
    promoted = re.search(r'^modelpromotion_outcomes_total\{outcome="Promoted"\} (\d+)', scraped, re.M)
    assert promoted and float(promoted.group(1)) >= 1
    assert re.search(r'^modelpromotion_copied_bytes_total\{mode="server-side"\} [1-9]', scraped, re.M)


def _rejected(devstack: stack.State, namespace: str, name: str) -> dict[str, Any]:
    mp = wait_for(devstack, namespace, name, phase_in("Rejected", "Promoted", "Failed"))
    assert mp["status"]["phase"] == "Rejected", mp["status"]
    assert condition(mp, "Stalled")["status"] == "True"
    assert condition(mp, "Ready")["status"] == "False"
    return mp


def test_a_failed_gate_rejects_and_leaves_deployment_and_bucket_untouched(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    name, run_id = _name(), runs["mlflow2"]
    apply(devstack, namespace, promotion(name, run_id, [{"metric": "rmse", "op": "LessThan", "threshold": 0.1}],
                                         deployment="gated"))
    mp = _rejected(devstack, namespace, name)
    assert mp["status"]["message"] == "gate failed: rmse 0.5 is not < 0.1"
    assert mp["status"]["gateSummary"] == "rmse 0.5!<0.1"
    assert condition(mp, "Stalled")["reason"] == "GatesFailed"
    assert get(devstack, namespace, "seldondeployment", "gated") is None
    assert objects(devstack, "models", f"{namespace}/rf-regressor/{run_id}/") == {}
    warning = [e for e in events(devstack, namespace, name) if e["type"] == "Warning"]
    assert [(e["reason"], e["message"]) for e in warning] == [("GatesFailed", "gate failed: rmse 0.5 is not < 0.1")]


@pytest.mark.parametrize(("gate", "kind", "message"), [
    ({"metric": "accuracy", "op": "GreaterThanOrEqual", "threshold": 0.9}, "mlflow2",
     "gate failed: accuracy was not logged on the run (needs >= 0.9)"),
    ({"metric": "rmse", "op": "LessThan", "threshold": 1}, "nan",
     "gate failed: rmse is NaN (needs < 1)"),
])
def test_a_missing_or_non_finite_metric_fails_its_gate_with_the_reason(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str],
        gate: dict[str, Any], kind: str, message: str) -> None:
    name = _name()
    apply(devstack, namespace, promotion(name, runs[kind], [gate]))
    assert _rejected(devstack, namespace, name)["status"]["message"] == message


def test_an_unknown_run_is_rejected_naming_it_and_the_server(
        devstack: stack.State, operator: Operator, namespace: str) -> None:
    name, run_id = _name(), uuid.uuid4().hex
    apply(devstack, namespace, promotion(name, run_id))
    mp = _rejected(devstack, namespace, name)
    assert mp["status"]["message"] == f"run {run_id} not found on MLflow at {devstack.mlflow_uri}"
    assert condition(mp, "Stalled")["reason"] == "RunNotFound"


def test_a_failed_run_is_rejected(devstack: stack.State, operator: Operator, namespace: str,
                                  runs: dict[str, str]) -> None:
    name = _name()
    apply(devstack, namespace, promotion(name, runs["failed"]))
    mp = _rejected(devstack, namespace, name)
    assert mp["status"]["message"] == f"run {runs['failed']} cannot be promoted: it is FAILED"


def _finish(devstack: stack.State, run_id: str) -> None:
    body = json.dumps({"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)}).encode()
    request = urllib.request.Request(f"{devstack.mlflow_uri}/api/2.0/mlflow/runs/update", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_an_unfinished_run_is_waited_for_then_promoted(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    name, run_id = _name(), runs["running"]
    apply(devstack, namespace, promotion(name, run_id, RMSE_BELOW_1))
    waiting = wait_for(devstack, namespace, name,
                       lambda o: any(c["type"] == "Reconciling" and c["status"] == "True"
                                     for c in (o.get("status") or {}).get("conditions", [])))
    reconciling = condition(waiting, "Reconciling")
    assert reconciling["reason"] == "RunNotFinished"
    assert reconciling["message"] == f"run {run_id} is RUNNING; waiting for it to finish"
    _finish(devstack, run_id)
    done = wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected"), timeout=90)
    assert done["status"]["phase"] == "Promoted", done["status"]


def test_a_run_that_never_finishes_is_rejected_after_the_bound(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    # the test operator waits PROMOTER_RUN_WAIT_TIMEOUT=20s
    name, run_id = _name(), runs["running-forever"]
    apply(devstack, namespace, promotion(name, run_id))
    mp = wait_for(devstack, namespace, name, phase_in("Rejected", "Promoted"), timeout=120)
    assert mp["status"]["phase"] == "Rejected"
    assert condition(mp, "Stalled")["reason"] == "RunNotFinished"
    assert re.fullmatch(rf"run {run_id} is still not finished after \d+s; gave up waiting "
                        r"\(change the spec to try again\)", mp["status"]["message"])


def test_a_skops_model_is_rejected_with_the_fix(devstack: stack.State, operator: Operator, namespace: str,
                                                runs: dict[str, str]) -> None:
    name = _name()
    apply(devstack, namespace, promotion(name, runs["skops"], RMSE_BELOW_1))
    mp = _rejected(devstack, namespace, name)
    assert mp["status"]["message"] == (
        "the model was saved with skops (model.skops), and SKLEARN_SERVER cannot load it; to fix: "
        'log it with mlflow.sklearn.log_model(..., serialization_format="cloudpickle"), which writes model.pkl')
    assert condition(mp, "Stalled")["reason"] == "IncompatibleModel"


def test_a_model_logged_the_mlflow2_way_is_found_and_promoted(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    name, run_id = _name(), runs["mlflow2"]
    apply(devstack, namespace, promotion(name, run_id, RMSE_BELOW_1,
                                         deployment="legacy"))
    mp = wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected"))
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    assert {"MLmodel", "model.pkl"} <= set(objects(devstack, "models", f"{namespace}/rf-regressor/{run_id}/"))


@pytest.mark.parametrize(("patch", "expected"), [
    ({"target": {"storage": {"bucket": "Bad_Bucket"}}}, "spec.target.storage.bucket"),
    ({"gates": []}, "spec.gates"),
    ({"gates": [{"metric": "rmse", "op": "Roughly", "threshold": 1}]},
     'spec.gates[0].op: Unsupported value: "Roughly"'),
    ({"source": {"runId": "../../etc/passwd"}}, "spec.source.runId"),
    ({"target": {"storage": {"prefix": "a/../b"}}}, "spec.target.storage.prefix"),
])
def test_a_malformed_spec_is_refused_at_apply_time(devstack: stack.State, crd: None, namespace: str,
                                                   patch: dict[str, Any], expected: str) -> None:
    obj = promotion(_name(), uuid.uuid4().hex)
    for key, value in patch.items():
        if key == "target":
            obj["spec"]["target"]["storage"].update(value["storage"])
        elif key == "source":
            obj["spec"]["source"].update(value)
        else:
            obj["spec"][key] = value
    result = apply(devstack, namespace, obj, check=False)
    assert result.returncode != 0
    assert expected in result.stderr
    assert devstack.kubectl("-n", namespace, "get", "mp", "-o", "name").stdout == ""


def test_a_later_promotion_supersedes_and_user_fields_survive(
        devstack: stack.State, operator: Operator, namespace: str, trained: tuple[str, dict[str, float]],
        mlflow_env: dict[str, str]) -> None:
    run_a, _ = trained
    run_b, _ = train(devstack, 7)
    first, second = _name(), _name()
    apply(devstack, namespace, promotion(first, run_a))
    wait_for(devstack, namespace, first, phase_in("Promoted"))
    devstack.kubectl("-n", namespace, "annotate", "seldondeployment", "minio-sklearn", "team.example/owner=ml-platform")
    seldon_annotation = {"seldon.io/engine-seldon-log-messages-externally": "true"}
    devstack.kubectl("-n", namespace, "patch", "seldondeployment", "minio-sklearn", "--type=merge",
                     "-p", json.dumps({"spec": {"annotations": seldon_annotation}}))
    apply(devstack, namespace, promotion(second, run_b))
    wait_for(devstack, namespace, second, phase_in("Promoted"))
    old = wait_for(devstack, namespace, first, phase_in("Superseded"))
    assert old["status"]["supersededBy"] == second
    assert old["status"]["message"] == f"superseded by ModelPromotion {second}, which now serves minio-sklearn"
    sdep = get(devstack, namespace, "seldondeployment", "minio-sklearn")
    assert sdep is not None
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == f"s3://models/{namespace}/rf-regressor/{run_b}"
    assert sdep["metadata"]["annotations"]["team.example/owner"] == "ml-platform"
    assert sdep["spec"]["annotations"] == seldon_annotation

    # deleting a promotion never takes the model out of service
    devstack.kubectl("-n", namespace, "delete", "mp", second, "--wait=false")
    time.sleep(1)
    assert get(devstack, namespace, "seldondeployment", "minio-sklearn") is not None


def test_mlflow_down_is_waited_for_then_the_promotion_completes(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    name = _name()
    stack.stop_component(devstack, "mlflow")
    try:
        apply(devstack, namespace, promotion(name, runs["mlflow2"],
                                             RMSE_BELOW_1,
                                             deployment="outage"))
        waiting = wait_for(devstack, namespace, name,
                           lambda o: any(c["type"] == "Reconciling" and c["status"] == "True"
                                         for c in (o.get("status") or {}).get("conditions", [])))
        reconciling = condition(waiting, "Reconciling")
        assert reconciling["reason"] == "MlflowUnavailable"
        assert reconciling["message"].startswith(
            f"MLflow is unavailable: cannot reach MLflow at {devstack.mlflow_uri}")
    finally:
        stack.start_component(devstack, "mlflow")
    done = wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected"), timeout=120)
    assert done["status"]["phase"] == "Promoted", done["status"]
    assert condition(done, "Reconciling")["status"] == "False"


def test_a_reconcile_with_nothing_changed_writes_nothing(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    name, run_id = _name(), runs["mlflow2"]
    apply(devstack, namespace, promotion(name, run_id, RMSE_BELOW_1,
                                         deployment="steady"))
    wait_for(devstack, namespace, name, phase_in("Promoted"))
    time.sleep(1)

    def versions() -> tuple[str, ...]:
        def version(kind: str, n: str) -> str:
            obj = get(devstack, namespace, kind, n)
            if kind == "seldondeployment":  # its status follows the rollout: what a writer changes
                return json.dumps(as_written(obj), sort_keys=True)
            return str((obj or {}).get("metadata", {}).get("resourceVersion"))

        return tuple(version(kind, n) for kind, n in
                     (("mp", name), ("seldondeployment", "steady"), ("secret", "seldon-rclone-secret")))

    def bucket() -> dict[str, Any]:
        stored = objects(devstack, "models", f"{namespace}/rf-regressor/{run_id}/")
        return {k: (o.etag, o.last_modified) for k, o in stored.items()}

    before, stored = versions(), bucket()
    operator.stop()  # a restart resumes every promotion: one more full reconcile each
    operator.start()
    resumed = f"[{namespace}/{name}] Resuming is processed: 1 succeeded"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and resumed not in operator.since_start():
        time.sleep(0.3)
    assert resumed in operator.since_start()
    assert versions() == before
    assert bucket() == stored


def test_credentials_never_reach_the_log_status_or_events(
        devstack: stack.State, operator: Operator, namespace: str, runs: dict[str, str]) -> None:
    password = f"mlflow-pw-{uuid.uuid4().hex}"
    devstack.kubectl("-n", namespace, "create", "secret", "generic", "mlflow-auth",
                     "--from-literal=MLFLOW_TRACKING_USERNAME=promoter",
                     f"--from-literal=MLFLOW_TRACKING_PASSWORD={password}")
    name = _name()
    apply(devstack, namespace, promotion(name, runs["mlflow2"], RMSE_BELOW_1,
                                         deployment="secretive", credentialsSecretRef={"name": "mlflow-auth"}))
    wait_for(devstack, namespace, name, phase_in("Promoted"))
    texts = [
        operator.text(),
        devstack.kubectl("get", "mp", "-A", "-o", "json").stdout,
        devstack.kubectl("get", "events", "-A", "-o", "json").stdout,
    ]
    assert none_contain(devstack.s3_secret_key, texts)
    assert none_contain(password, texts)


def test_a_serving_promotion_whose_storage_secret_is_deleted_stays_promoted_and_recovers(
        devstack: stack.State, crd: None, runs: dict[str, str], tmp_path: Any,
        namespaces: Callable[[str], str]) -> None:
    """Promoted; the storage Secret deleted; the operator restarted and its sweep run: still
    Promoted, Ready=False (Degraded) naming the Secret, the SeldonDeployment untouched. The
    Secret back: Ready=True again, and still no write to the SeldonDeployment."""
    ns = namespaces("d")
    op = Operator(devstack, tmp_path / "operator.log", {"PROMOTER_DRIFT_INTERVAL": "5"}, namespaces=[ns],
                  scope="degraded")
    op.start()
    try:
        apply(devstack, ns, harness.promotion("serving", runs["mlflow2"], RMSE_BELOW_1, deployment="kept",
                                              scope="degraded"))
        wait_for(devstack, ns, "serving", phase_in("Promoted"))
        before = as_written(get(devstack, ns, "seldondeployment", "kept"))
        assert before is not None
        devstack.kubectl("-n", ns, "delete", "secret", STORAGE_SECRET)
        op.stop()
        op.start()

        def degraded(obj: dict[str, Any]) -> bool:
            ready = condition(obj, "Ready")
            return ready["status"] == "False" and ready["reason"] == "Degraded"

        mp = wait_for(devstack, ns, "serving", degraded, timeout=30)
        ready = condition(mp, "Ready")
        assert mp["status"]["phase"] == "Promoted"
        assert f"Secret {ns}/{STORAGE_SECRET}" in ready["message"] and "not found" in ready["message"]
        time.sleep(11)  # two sweeps: still Promoted, the problem announced once
        mp = get(devstack, ns, "modelpromotion", "serving")
        assert mp is not None and mp["status"]["phase"] == "Promoted" and degraded(mp)
        assert [e["reason"] for e in events(devstack, ns, "serving")].count("Degraded") == 1
        assert as_written(get(devstack, ns, "seldondeployment", "kept")) == before

        harness.namespace(devstack, ns)  # the Secret back, as it was
        mp = wait_for(devstack, ns, "serving", lambda o: condition(o, "Ready")["status"] == "True", timeout=30)
        assert mp["status"]["phase"] == "Promoted" and condition(mp, "Ready")["reason"] == "Promoted"
        assert "Recovered" in [e["reason"] for e in events(devstack, ns, "serving")]
        assert as_written(get(devstack, ns, "seldondeployment", "kept")) == before  # no write
    finally:
        op.stop()
