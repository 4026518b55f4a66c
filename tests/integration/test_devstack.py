"""devstack is real: the API server validates and authorizes, S3 checks signatures, MLflow
stores runs and models in S3, and `down` leaves nothing running."""

from __future__ import annotations

import io
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from devstack import stack

pytestmark = pytest.mark.integration

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.devstack.test}
spec:
  group: devstack.test
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
"""


def test_kubectl_creates_a_crd_and_the_api_server_enforces_its_schema(devstack: stack.State) -> None:
    devstack.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    devstack.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/widgets.devstack.test")
    devstack.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "devstack.test/v1", "kind": "Widget",
        "metadata": {"name": "ok", "namespace": "default"}, "spec": {"size": 3}}))
    listed = json.loads(devstack.kubectl("get", "widgets", "-n", "default", "-o", "json").stdout)
    assert [w["metadata"]["name"] for w in listed["items"]] == ["ok"]

    bad = devstack.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "devstack.test/v1", "kind": "Widget",
        "metadata": {"name": "bad", "namespace": "default"}, "spec": {"size": 0}}))
    assert bad.returncode != 0
    assert "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1" in bad.stderr


def _get_with_token(devstack: stack.State, token: str, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(Path(devstack.home) / "certs" / "serving-ca.crt"))
    req = urllib.request.Request(devstack.kube_url + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_rbac_is_enforced_for_a_service_account(devstack: stack.State) -> None:
    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    devstack.kubectl("create", "namespace", ns)
    devstack.kubectl("-n", ns, "create", "serviceaccount", "reader")
    who = f"system:serviceaccount:{ns}:reader"
    token = devstack.kubectl("-n", ns, "create", "token", "reader").stdout.strip()

    before = devstack.kubectl("auth", "can-i", "list", "configmaps", "-n", ns, f"--as={who}", check=False)
    assert before.stdout.strip() == "no"
    assert _get_with_token(devstack, token, f"/api/v1/namespaces/{ns}/configmaps") == 403

    devstack.kubectl("-n", ns, "create", "role", "reader", "--verb=list", "--resource=configmaps")
    devstack.kubectl("-n", ns, "create", "rolebinding", "reader", "--role=reader",
                     f"--serviceaccount={ns}:reader")
    after = devstack.kubectl("auth", "can-i", "list", "configmaps", "-n", ns, f"--as={who}", check=False)
    assert after.stdout.strip() == "yes"
    assert _get_with_token(devstack, token, f"/api/v1/namespaces/{ns}/configmaps") == 200


def _minio(devstack: stack.State, access: str, secret: str) -> Minio:
    return Minio(devstack.s3_endpoint.removeprefix("http://"), access_key=access, secret_key=secret,
                 secure=False)


def test_s3_round_trip_with_right_keys_and_refusal_with_wrong_ones(devstack: stack.State) -> None:
    s3 = _minio(devstack, devstack.s3_access_key, devstack.s3_secret_key)
    key = f"devstack-test/{uuid.uuid4().hex}"
    s3.put_object("models", key, io.BytesIO(b"hello model"), 11)
    s3.copy_object("models", key + ".copy", CopySource("models", key))
    copied = s3.get_object("models", key + ".copy")
    assert copied.read() == b"hello model"
    copied.close()

    wrong_secret = _minio(devstack, devstack.s3_access_key, "not-the-secret")
    with pytest.raises(S3Error) as denied:
        wrong_secret.get_object("models", key)
    assert denied.value.code == "SignatureDoesNotMatch"
    unknown = _minio(devstack, "nobody", "whatever")
    with pytest.raises(S3Error) as denied:
        unknown.put_object("models", key, io.BytesIO(b"x"), 1)
    assert denied.value.code in ("InvalidAccessKeyId", "AccessDenied")


def test_mlflow_stores_runs_and_model_files_in_s3(devstack: stack.State, mlflow_env: dict[str, str]) -> None:
    script = """
import mlflow, mlflow.sklearn
from sklearn.linear_model import LinearRegression
mlflow.set_experiment("devstack-check")
with mlflow.start_run() as run:
    mlflow.log_metric("rmse", 0.5)
    info = mlflow.sklearn.log_model(LinearRegression().fit([[0], [1]], [0, 1]), name="m",
                                    serialization_format="cloudpickle")
print(run.info.run_id, info.artifact_path)
"""
    out = subprocess.run([sys.executable, "-c", script], env=mlflow_env, capture_output=True,
                         text=True, timeout=180, check=True).stdout.split()
    run_id, artifact_uri = out[-2], out[-1]
    with urllib.request.urlopen(f"{devstack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run_id}") as r:
        run = json.load(r)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["data"]["metrics"][0]["key"] == "rmse" and run["data"]["metrics"][0]["value"] == 0.5
    assert artifact_uri.startswith("s3://mlflow/")
    prefix = artifact_uri.removeprefix("s3://mlflow/")
    s3 = _minio(devstack, devstack.s3_access_key, devstack.s3_secret_key)
    names = {o.object_name.rsplit("/", 1)[-1] for o in s3.list_objects("mlflow", prefix=prefix, recursive=True)}
    assert {"MLmodel", "model.pkl"} <= names


def test_second_up_changes_nothing_and_down_leaves_no_process(tmp_path: Path, devstack: stack.State) -> None:
    home = tmp_path / "own"
    env = {**os.environ, "DEVSTACK_HOME": str(home)}
    cli = [sys.executable, "-m", "devstack"]
    started = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        first = stack.State.load(home)
        assert first is not None and all(stack.alive(p) for p in first.processes)
        assert {p.name for p in first.processes} == {"etcd", "kube-apiserver", "kube-controller-manager",
                                                     "kube-scheduler", "weed", "mlflow", "node", "seldon-controller"}

        again = subprocess.run([*cli, "up"], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0
        assert "already running" in again.stderr
        second = stack.State.load(home)
        assert second is not None and [p.pid for p in second.processes] == [p.pid for p in first.processes]

        # a Pod on the node: a process of its own, which down must stop too
        first.kubectl("-n", "default", "run", "sleeper", "--image=seldonio/rclone-storage-initializer:1.18.2",
                      "--restart=Never", "--command", "--", "sleep", "600")
        pod_pid = 0
        for _ in range(100):
            pod = json.loads(first.kubectl("-n", "default", "get", "pod", "sleeper", "-o", "json").stdout)
            statuses = pod["status"].get("containerStatuses") or [{}]
            if "running" in statuses[0].get("state", {}):
                pod_pid = int(statuses[0]["containerID"].removeprefix("devstack://"))
                break
            time.sleep(0.2)
        assert pod_pid and Path(f"/proc/{pod_pid}").exists()

        stopped = subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert not any(stack.alive(p) for p in first.processes)
        assert not Path(f"/proc/{pod_pid}").exists()
        routes = subprocess.run(["ip", "route", "show", "table", "local"], capture_output=True, text=True).stdout
        assert not first.pod_route or first.pod_route not in routes  # the Pod network's route went too
    finally:  # whatever failed above, leave nothing running
        subprocess.run([*cli, "down"], env=env, capture_output=True, timeout=120)
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, str(home))]
    assert leftovers == []


def _mentions(pid: str, text: str) -> bool:
    try:
        return text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
