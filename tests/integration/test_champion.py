"""Beat the champion, on devstack's real MLflow: gates relative to the run the deployment serves,
the Model Registry as source (a version, an alias) and as record (@alias, tags on versions and
runs), a write-back that outlives MLflow being stopped, and the model's scikit-learn against the
serving image's. What is checked is what a user checks: kubectl, the registry through MLflow's
own client, the SeldonDeployment's annotations, Events."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import sklearn
from mlflow import MlflowClient

from devstack import harness, stack

from .conftest import Operator
from .helpers import RMSE_BELOW_1, apply, condition, events, get, phase_in, promotion, wait_for

pytestmark = pytest.mark.integration

SCOPE = "champion"  # the outage test's own operators handle only these
DEPLOYMENT = "minio-sklearn"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def number(value: float) -> str:
    return f"{value:.6g}"


@pytest.fixture(scope="module")
def registry(devstack: stack.State) -> Iterator[MlflowClient]:
    with pytest.MonkeyPatch.context() as patch:  # a stopped server fails a call at once
        patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        yield MlflowClient(tracking_uri=devstack.mlflow_uri)


@pytest.fixture(scope="module")
def contenders(devstack: stack.State) -> list[tuple[str, float]]:
    """Three runs of experiments/train.py on the same split (seed 42), best rmse first."""
    runs = []
    for trees in (2, 8, 40):
        run_id, metrics = harness.train(devstack, 42, n_estimators=trees, experiment="promoter-champion",
                                        timeout=300)
        runs.append((run_id, metrics["rmse"]))
    ranked = sorted(runs, key=lambda r: r[1])
    assert len({rmse for _, rmse in ranked}) == 3, ranked
    return ranked


def register(client: MlflowClient, name: str, run_id: str) -> str:
    """Register the run's logged model as a new version of ``name``, as `mlflow.register_model`
    does for an MLflow 3 model; its version number."""
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # already there
    model_id = client.get_run(run_id).outputs.model_outputs[0].model_id
    return str(client.create_model_version(name, f"models:/{model_id}", run_id, model_id=model_id).version)


def serving_run(devstack: stack.State, namespace: str) -> str:
    sdep = get(devstack, namespace, "seldondeployment", DEPLOYMENT)
    assert sdep is not None
    return str(sdep["metadata"]["annotations"]["mlops.dev/run-id"])


def decided(devstack: stack.State, namespace: str, name: str) -> dict:
    return wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected", "Failed"), timeout=90)


# --- champion and challengers ------------------------------------------------------------------


def test_a_worse_challenger_is_rejected_and_a_better_one_takes_over_with_the_alias(
        devstack: stack.State, operator: Operator, registry: MlflowClient, contenders: list[tuple[str, float]],
        namespaces: Callable[[str], str]) -> None:
    (best, best_rmse), (mid, mid_rmse), (worst, worst_rmse) = contenders
    ns, model = namespaces("champ"), _name("rf-champion")
    record = {"registry": {"model": model, "alias": "champion"}}
    champion = promotion("champion", mid)
    champion["spec"].update(record)
    apply(devstack, ns, champion)
    assert decided(devstack, ns, "champion")["status"]["phase"] == "Promoted"

    # worse: Rejected with the champion's run, both values and the required one; nothing moves
    worse = promotion("worse", worst, [{"metric": "rmse", "op": "LessThan", "baseline": "Serving",
                                        "minRelativeChange": 0.01}])
    worse["spec"].update(record)
    apply(devstack, ns, worse)
    mp = decided(devstack, ns, "worse")
    required = mid_rmse - 0.01 * mid_rmse
    assert mp["status"]["phase"] == "Rejected"
    assert mp["status"]["message"] == (
        f"gate failed: rmse {number(worst_rmse)} is not < {number(required)} "
        f"(1% better than serving run {mid} at {number(mid_rmse)})")
    gate = mp["status"]["gates"][0]
    assert (gate["baselineRunId"], gate["baselineValue"], gate["value"]) == (
        mid, pytest.approx(mid_rmse), pytest.approx(worst_rmse))
    assert mp["status"]["gateSummary"] == f"rmse {number(worst_rmse)}!<{number(required)}(-1%)"
    assert serving_run(devstack, ns) == mid
    assert registry.get_model_version_by_alias(model, "champion").run_id == mid

    # better, on the same test data (its digest checked): Promoted, the champion Superseded,
    # @champion and the serving tag follow it
    better_by = (mid_rmse - best_rmse) / mid_rmse
    better = promotion("better", best, [
        {"metric": "rmse", "op": "LessThan", "baseline": "Serving", "minRelativeChange": round(better_by / 2, 6),
         "sameDataset": True},
        {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 80},
    ])
    better["spec"].update(record)
    apply(devstack, ns, better)
    mp = decided(devstack, ns, "better")
    assert mp["status"]["phase"] == "Promoted", mp["status"]["message"]
    assert mp["status"]["gates"][0]["passed"] and mp["status"]["gates"][0]["baselineRunId"] == mid
    assert serving_run(devstack, ns) == best
    assert wait_for(devstack, ns, "champion", phase_in("Superseded"))["status"]["supersededBy"] == "better"
    recorded = wait_for(devstack, ns, "better", lambda o: any(
        c["type"] == "Recorded" and c["status"] == "True" for c in o["status"].get("conditions", [])))
    assert recorded["status"]["modelVersion"] == {"name": model, "version": "2"}

    now = registry.get_model_version_by_alias(model, "champion")
    assert (now.version, now.run_id) == ("2", best)
    assert now.tags == {"mlops.dev/promoted-by": f"{ns}/better", "mlops.dev/serving": f"{ns}/{DEPLOYMENT}"}
    assert registry.get_model_version(model, "1").tags == {"mlops.dev/promoted-by": f"{ns}/champion"}
    run_tags = {run: {k: v for k, v in registry.get_run(run).data.tags.items() if k.startswith("mlops.dev/")}
                for run in (best, mid)}
    assert run_tags == {best: {"mlops.dev/promoted-by": f"{ns}/better", "mlops.dev/serving": f"{ns}/{DEPLOYMENT}"},
                        mid: {"mlops.dev/promoted-by": f"{ns}/champion"}}


# --- the registry as source --------------------------------------------------------------------


def test_a_version_and_an_alias_are_resolved_and_missing_ones_rejected_by_name(
        devstack: stack.State, operator: Operator, registry: MlflowClient, contenders: list[tuple[str, float]],
        namespaces: Callable[[str], str]) -> None:
    (best, _), (mid, _), _ = contenders
    ns, model = namespaces("source"), _name("rf-source")
    register(registry, model, mid)
    register(registry, model, best)
    registry.set_registered_model_alias(model, "challenger", "2")

    def by(name: str, ref: dict) -> dict:
        obj = promotion(name, "", [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 80}])
        obj["spec"]["source"] = {"registeredModel": {"name": model, **ref}, "modelName": "rf-regressor"}
        return obj

    apply(devstack, ns, by("by-version", {"version": 1}))
    mp = decided(devstack, ns, "by-version")
    assert mp["status"]["phase"] == "Promoted", mp["status"]["message"]
    assert (mp["status"]["runId"], mp["status"]["modelVersion"]) == (mid, {"name": model, "version": "1"})
    assert mp["status"]["modelUri"] == f"s3://models/{ns}/rf-regressor/{mid}" and serving_run(devstack, ns) == mid

    apply(devstack, ns, by("by-alias", {"alias": "challenger"}))
    mp = decided(devstack, ns, "by-alias")
    assert mp["status"]["phase"] == "Promoted", mp["status"]["message"]
    assert mp["status"]["modelVersion"] == {"name": model, "version": "2", "alias": "challenger"}
    assert serving_run(devstack, ns) == best
    table = devstack.kubectl("-n", ns, "get", "mp", "by-alias", "-o", "wide").stdout.splitlines()
    assert table[1].split()[1] == best and table[1].split()[-1] == "2"  # RUN and VERSION columns

    for name, ref, words in [
        ("no-version", {"version": 9}, f"registered model '{model}' version 9 not found on MLflow at"),
        ("no-alias", {"alias": "prod"}, f"registered model '{model}' alias @prod not found"),
    ]:
        apply(devstack, ns, by(name, ref))
        mp = decided(devstack, ns, name)
        assert mp["status"]["phase"] == "Rejected" and words in mp["status"]["message"]
        assert condition(mp, "Stalled")["reason"] == "ModelVersionNotFound"
    assert serving_run(devstack, ns) == best

    refused = apply(devstack, ns, by("latest", {"alias": "latest"}), check=False)
    assert refused.returncode != 0
    assert "alias 'latest' is reserved by MLflow and moves with every new version: pin a version" in refused.stderr
    assert get(devstack, ns, "modelpromotion", "latest") is None


# --- the write-back outlives MLflow ------------------------------------------------------------


def test_mlflow_stopped_during_the_write_back_leaves_serving_alone_and_records_once_back(
        devstack: stack.State, crd: None, registry: MlflowClient, contenders: list[tuple[str, float]],
        tmp_path: Path, namespaces: Callable[[str], str]) -> None:
    (_, _), (mid, _), _ = contenders
    ns, model = namespaces("outage"), _name("rf-outage")
    env = {"PROMOTER_RETRY_DELAY": "1", "PROMOTER_DRIFT_INTERVAL": "5"}
    obj = promotion("recorded", mid, [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 80}], scope=SCOPE)
    obj["spec"]["registry"] = {"model": model, "alias": "champion"}
    crashing = Operator(devstack, tmp_path / "operator.log", {**env, "PROMOTER_CRASH_AT": "after-promoted"},
                        namespaces=[ns], scope=SCOPE)
    crashing.start()
    operator = Operator(devstack, tmp_path / "operator.log", env, namespaces=[ns], scope=SCOPE)
    try:
        apply(devstack, ns, obj)
        assert crashing.wait_dead(90) != 0  # it died between the Promoted status and the record
        mp = get(devstack, ns, "modelpromotion", "recorded")
        assert mp is not None and mp["status"]["phase"] == "Promoted"
        assert all(c["type"] != "Recorded" for c in mp["status"]["conditions"])

        stack.stop_component(devstack, "mlflow")
        operator.start()
        mp = wait_for(devstack, ns, "recorded", lambda o: any(
            c["type"] == "Recorded" and c["status"] == "False" for c in o["status"].get("conditions", [])),
            timeout=60)
        recorded = condition(mp, "Recorded")
        assert recorded["reason"] == "MlflowUnavailable" and "cannot reach MLflow" in recorded["message"]
        assert mp["status"]["phase"] == "Promoted" and condition(mp, "Ready")["status"] == "True"
        assert serving_run(devstack, ns) == mid
        assert "NotRecorded" in [e["reason"] for e in events(devstack, ns, "recorded")]
    finally:
        stack.start_component(devstack, "mlflow")
    try:
        mp = wait_for(devstack, ns, "recorded", lambda o: condition(o, "Recorded")["status"] == "True", timeout=120)
        assert mp["status"]["phase"] == "Promoted" and mp["status"]["modelVersion"] == {"name": model, "version": "1"}
        champion = registry.get_model_version_by_alias(model, "champion")
        assert champion.run_id == mid and champion.tags["mlops.dev/serving"] == f"{ns}/{DEPLOYMENT}"
        assert operator.tracebacks() == 0
    finally:
        operator.stop()


# --- the model's libraries against the serving image's -------------------------------------------


def test_a_model_from_a_newer_scikit_learn_is_warned_about_by_default_and_rejected_under_strict(
        devstack: stack.State, operator: Operator, runs: dict[str, str], namespaces: Callable[[str], str]) -> None:
    ns = namespaces("skew")
    saved = f"scikit-learn {sklearn.__version__}"  # the dev venv runs/ saved the model with
    python = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    image = "seldonio/mlserver:1.7.1-sklearn (SKLEARN_SERVER, protocol v2) has scikit-learn 1.5.2"

    apply(devstack, ns, promotion("warned", runs["mlflow2"], RMSE_BELOW_1))
    mp = decided(devstack, ns, "warned")
    assert mp["status"]["phase"] == "Promoted"
    versions = condition(mp, "VersionsMatch")
    assert (versions["status"], versions["reason"]) == ("False", "VersionSkew")
    assert saved in versions["message"] and python in versions["message"] and image in versions["message"]
    warning = [e for e in events(devstack, ns, "warned") if e["reason"] == "VersionSkew"]
    assert len(warning) == 1 and warning[0]["type"] == "Warning" and saved in warning[0]["message"]

    strict = promotion("strict", runs["mlflow2"], RMSE_BELOW_1, deployment="strict-sklearn", prefix="strict")
    strict["spec"]["compatibility"] = "Strict"
    apply(devstack, ns, strict)
    mp = decided(devstack, ns, "strict")
    assert mp["status"]["phase"] == "Rejected" and condition(mp, "Stalled")["reason"] == "VersionSkew"
    assert saved in mp["status"]["message"] and "scikit-learn 1.5.2" in mp["status"]["message"]
    assert get(devstack, ns, "seldondeployment", "strict-sklearn") is None
