"""The whole path on a real cluster: kind, the operator image deployed with manifests/, Seldon
Core v1 from its Helm chart, MinIO and MLflow in the cluster. A model trained with
experiments/train.py is promoted by manifests/samples/promotion.yaml and answers a v2
inference request. Each step is a command of run_kind.sh, which CI's kind job runs the same way.

Set E2E_KEEP_CLUSTER=1 to keep the cluster afterwards; E2E_REQUIRED=1 (CI) turns the skip on a
machine without Docker or kind into a failure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("run_kind.sh")
CLUSTER = os.environ.get("E2E_CLUSTER", "promoter-e2e")
NAMESPACE, PROMOTION = "models", "rf-regressor"
NEEDS = "needs a Docker engine and kind: run `make test-e2e` on a Docker host; CI's kind job does"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def _missing() -> str | None:
    absent = [tool for tool in ("docker", "kind", "kubectl", "helm", "curl") if shutil.which(tool) is None]
    if {"docker", "kind"} & set(absent):
        return NEEDS
    if absent:
        return f"{NEEDS} (also missing: {', '.join(absent)})"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode != 0:
        return f"{NEEDS} (`docker info` fails: no engine answers)"
    return None


def step(*args: str, timeout: float = 1800) -> str:
    """One run_kind.sh step; its progress goes to the terminal, its stdout is returned."""
    out = subprocess.run([str(SCRIPT), *args], stdout=subprocess.PIPE, text=True, timeout=timeout)
    if out.returncode != 0:
        subprocess.run([str(SCRIPT), "diagnose"], timeout=300)
        raise AssertionError(f"run_kind.sh {' '.join(args)} exited {out.returncode}:\n{out.stdout[-3000:]}")
    return out.stdout


def kubectl_json(*args: str) -> dict[str, Any]:
    out = subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", *args, "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True)
    return dict(json.loads(out.stdout))


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    reason = _missing()
    if reason:
        if os.environ.get("E2E_REQUIRED"):
            pytest.fail(reason)
        pytest.skip(reason)
    step("up")
    try:
        yield
    finally:
        if not os.environ.get("E2E_KEEP_CLUSTER"):
            step("down", timeout=300)


@pytest.fixture(scope="module")
def promoted(cluster: None) -> str:
    run_id = step("train").strip().splitlines()[-1]
    assert RUN_ID.match(run_id), f"train printed {run_id!r} where a run id belongs"
    step("promote", run_id)
    return run_id


def test_the_operator_runs_from_the_image_with_the_manifests(cluster: None) -> None:
    deployment = kubectl_json("-n", "promoter-system", "get", "deployment", "mlflow-seldon-promoter")
    assert deployment["status"].get("availableReplicas") == 1
    pod = kubectl_json("-n", "promoter-system", "get", "pods", "-l", "app.kubernetes.io/component=operator")["items"][0]
    assert pod["spec"]["containers"][0]["image"].endswith("mlflow-seldon-promoter:e2e")
    assert pod["spec"]["securityContext"]["runAsUser"] == 65532
    assert all(c["ready"] for c in pod["status"]["containerStatuses"])


def test_a_trained_run_is_promoted_and_its_seldon_deployment_becomes_available(promoted: str) -> None:
    mp = kubectl_json("-n", NAMESPACE, "get", "modelpromotion", PROMOTION)
    assert mp["status"]["phase"] == "Promoted", mp["status"].get("message")
    assert mp["status"]["modelUri"] == f"s3://models/rf-regressor/{promoted}"
    assert [g["passed"] for g in mp["status"]["gates"]] == [True, True]
    assert mp["status"]["message"].endswith(f"{PROMOTION} now serves run {promoted}")
    sdep = kubectl_json("-n", NAMESPACE, "get", "seldondeployment", PROMOTION)
    assert sdep["status"]["state"] == "Available"
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == mp["status"]["modelUri"]


def test_the_promoted_model_answers_a_v2_inference_request_with_numbers(promoted: str) -> None:
    response = json.loads(step("predict", timeout=300))
    predictions = response["outputs"][0]["data"]
    assert len(predictions) == 2
    # the diabetes target (disease progression a year on) runs from 25 to 346
    assert all(isinstance(p, float) and math.isfinite(p) and 25 <= p <= 346 for p in predictions), predictions
