"""The whole path on devstack, where there is no Docker: train with experiments/train.py, apply
manifests/samples/promotion.yaml with the run id, wait for the rollout of the Deployment Seldon
makes (the seed's own check), and ask the served model for predictions.

The operator is started the way ``make run`` starts it (``make run`` itself, against the current
kube context); the Pods run on devstack's node with the real rclone and MLServer. A devstack of
its own is brought up and down, unless DEVSTACK_HOME names a running one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import predict, stack

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
NAMESPACE, PROMOTION = "models", "rf-regressor"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.State]:
    home = os.environ.get("DEVSTACK_HOME")
    if home and stack.running(Path(home)):
        yield stack.running(Path(home))  # type: ignore[misc]
        return
    folder = tmp_path_factory.mktemp("e2e-devstack")
    state = stack.up(folder, log=lambda m: print(m, file=sys.stderr, flush=True))
    try:
        yield state
    finally:
        stack.down(folder, log=lambda m: None)


def kubectl(state: stack.State, *args: str, input: str | None = None) -> str:
    result = state.kubectl(*args, input=input, check=False)
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def operator(cluster: stack.State, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    log = tmp_path_factory.mktemp("e2e-operator") / "operator.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "AWS_", "MLFLOW_"))}
    env.update(KUBECONFIG=cluster.kubeconfig, PROMOTER_TRACKING_URI=cluster.mlflow_uri,
               PROMOTER_STORAGE_ENDPOINT=cluster.s3_endpoint, PROMOTER_METRICS_PORT=str(stack.free_port()))
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-s", "run"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Activity 'startup' succeeded" not in log.read_text(errors="replace"):
            assert proc.poll() is None, f"make run exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"make run: no startup after 120s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def promoted(cluster: stack.State, operator: Path) -> str:
    kubectl(cluster, "create", "namespace", NAMESPACE)
    kubectl(cluster, "-n", NAMESPACE, "create", "secret", "generic", "minio-credentials",
            f"--from-literal=AWS_ACCESS_KEY_ID={cluster.s3_access_key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={cluster.s3_secret_key}")
    env = predict.client_env(cluster)
    trained = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py")], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run_id = trained.stdout.strip().splitlines()[-1]
    assert RUN_ID.match(run_id), f"train.py printed {run_id!r} where a run id belongs"
    sample = (REPO / "manifests" / "samples" / "promotion.yaml").read_text().replace("RUN_ID", run_id)
    kubectl(cluster, "-n", NAMESPACE, "apply", "-f", "-", input=sample)
    deadline = time.monotonic() + 180
    while True:
        mp = json.loads(kubectl(cluster, "-n", NAMESPACE, "get", "modelpromotion", PROMOTION, "-o", "json"))
        phase = (mp.get("status") or {}).get("phase")
        if phase in ("Promoted", "Rejected", "Failed"):
            break
        assert time.monotonic() < deadline, f"no outcome after 180s: {mp.get('status')}\n{operator.read_text()[-3000:]}"
        time.sleep(0.5)
    assert phase == "Promoted", mp["status"].get("message")
    return run_id


def test_the_operator_started_by_make_run_promotes_the_sample_promotion(cluster: stack.State, promoted: str) -> None:
    mp = json.loads(kubectl(cluster, "-n", NAMESPACE, "get", "modelpromotion", PROMOTION, "-o", "json"))
    assert mp["status"]["modelUri"] == f"s3://models/{NAMESPACE}/rf-regressor/{promoted}"
    assert [g["passed"] for g in mp["status"]["gates"]] == [True, True]


def test_the_predictors_deployment_rolls_out_and_its_pod_runs_ready(cluster: stack.State, promoted: str) -> None:
    deployment = kubectl(cluster, "-n", NAMESPACE, "get", "deploy", "-l", f"seldon-deployment-id={PROMOTION}",
                         "-o", "jsonpath={.items[0].metadata.name}")
    status = cluster.kubectl("-n", NAMESPACE, "rollout", "status", f"deploy/{deployment}", "--timeout=240s",
                             check=False, timeout=270)
    assert status.returncode == 0, status.stderr
    rows = kubectl(cluster, "-n", NAMESPACE, "get", "pods", "-l", f"seldon-deployment-id={PROMOTION}").splitlines()
    assert len(rows) == 2 and rows[1].split()[1:3] == ["1/1", "Running"], rows


def test_the_promoted_model_answers_its_own_input_example_with_the_runs_predictions(
        cluster: stack.State, promoted: str) -> None:
    deployment = predict.deployment_of(cluster, NAMESPACE, PROMOTION)
    predict.rollout(cluster, NAMESPACE, deployment, timeout=240)
    sdep = json.loads(kubectl(cluster, "-n", NAMESPACE, "get", "seldondeployment", PROMOTION, "-o", "json"))
    model_uri = f"s3://models/{NAMESPACE}/rf-regressor/{promoted}"
    example = predict.serving_example(cluster, model_uri)
    served = predict.infer(predict.infer_url(sdep), predict.v2_request(example))
    local = predict.local_predictions(model_uri, predict.rows(example), predict.client_env(cluster))
    assert len(served) == len(predict.rows(example)) >= 1
    assert served == pytest.approx(local, rel=1e-9)
