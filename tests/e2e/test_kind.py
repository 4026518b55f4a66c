"""The whole path on a real cluster: kind, the operator image deployed with manifests/, Seldon
Core v1 from its Helm chart, MinIO and MLflow in the cluster. A model trained with
experiments/train.py is promoted by manifests/samples/promotion.yaml and answers a v2
inference request. Each step is a command of run_kind.sh, which CI's kind job runs the same way.

Set E2E_KEEP_CLUSTER=1 to keep the cluster afterwards; E2E_REQUIRED=1 (CI) turns the skip on a
machine without Docker or kind into a failure. A step that fails or outlives its timeout is
followed by `run_kind.sh diagnose`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
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


# Seconds per run_kind.sh command, each well above what it takes on a CI runner. The longest path
# (every step, one diagnose, down) is 3600 s: CI's e2e step allows 70 minutes, so a hang is cut
# here, with diagnostics, before CI cuts the job (tests/unit/test_run_kind.py holds this).
STEP_TIMEOUTS = {"up": 1200, "train": 600, "promote": 900, "predict": 300, "diagnose": 300, "down": 300}


def _run(args: list[str], timeout: float, capture: bool = True) -> tuple[int | None, str]:
    """run_kind.sh in a process group of its own, so that a timeout ends every process it started
    (port-forwards, docker run, kubectl wait) and not the script alone; None for a timeout. Its
    stderr, and its stdout unless captured, go to the terminal."""
    proc = subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE if capture else None, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out or ""
    except subprocess.TimeoutExpired:
        _stop(proc)
        return None, proc.communicate()[0] or ""
    except BaseException:  # Ctrl-C: the group would otherwise go on without us
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[str]) -> None:
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def step(*args: str, diagnose: bool = True) -> str:
    """One run_kind.sh step; its progress goes to the terminal, its stdout is returned."""
    timeout = STEP_TIMEOUTS[args[0]]
    code, out = _run(list(args), timeout)
    if code == 0:
        return out
    if diagnose:
        _run(["diagnose"], STEP_TIMEOUTS["diagnose"], capture=False)
    ended = f"did not finish within {timeout} s" if code is None else f"exited {code}"
    raise AssertionError(f"run_kind.sh {' '.join(args)} {ended}:\n{out[-3000:]}")


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", "--context", f"kind-{CLUSTER}", *args],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def kubectl_json(*args: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(*args, "-o", "json")))


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
            step("down", diagnose=False)


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
    assert mp["status"]["modelUri"] == f"s3://models/{NAMESPACE}/rf-regressor/{promoted}"
    assert [g["passed"] for g in mp["status"]["gates"]] == [True, True]
    assert mp["status"]["message"].endswith(f"{PROMOTION} now serves run {promoted}")
    sdep = kubectl_json("-n", NAMESPACE, "get", "seldondeployment", PROMOTION)
    assert sdep["status"]["state"] == "Available"
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == mp["status"]["modelUri"]


def test_the_promoted_model_answers_a_v2_inference_request_with_numbers(promoted: str) -> None:
    response = json.loads(step("predict"))
    predictions = response["outputs"][0]["data"]
    assert len(predictions) == 2
    # the diabetes target (disease progression a year on) runs from 25 to 346
    assert all(isinstance(p, float) and math.isfinite(p) and 25 <= p <= 346 for p in predictions), predictions


def test_the_server_loads_the_model_without_a_scikit_learn_version_warning(promoted: str) -> None:
    # train trains with the trainer the README names for seldonio/mlserver:1.7.1-sklearn; a model
    # from other versions loads there with InconsistentVersionWarning, or not at all.
    logs = kubectl("-n", NAMESPACE, "logs", "-l", f"seldon-deployment-id={PROMOTION}", "-c", "model", "--tail=-1")
    assert "Loaded model 'model' successfully." in logs, logs[-3000:]
    assert "InconsistentVersionWarning" not in logs, logs[-3000:]
