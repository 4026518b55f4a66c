"""Fixtures over devstack: a real etcd + kube-apiserver, S3 (SeaweedFS), MLflow, and the
operator running as its own process against them.

Set DEVSTACK_HOME to a running devstack (`python -m devstack up`) to reuse it; otherwise the
session starts one in a temporary folder and stops it at the end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import stack

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "modelpromotions.mlops.dev.yaml"
STORAGE_SECRET = "minio-credentials"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.State]:
    home = os.environ.get("DEVSTACK_HOME")
    if home:
        state = stack.running(Path(home))
        if state is None:
            pytest.fail(f"DEVSTACK_HOME={home} is set but no devstack runs there "
                        "(`python -m devstack up` or unset DEVSTACK_HOME)")
        yield state
        return
    home_path = tmp_path_factory.mktemp("devstack")
    state = stack.up(home_path, log=lambda m: print(m, file=sys.stderr))
    try:
        yield state
    finally:
        stack.down(home_path, log=lambda m: None)


@pytest.fixture(scope="session")
def crd(devstack: stack.State) -> None:
    devstack.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    devstack.kubectl("wait", "--for=condition=established", "--timeout=60s",
                     "crd/modelpromotions.mlops.dev")


@pytest.fixture(scope="session")
def mlflow_env(devstack: stack.State) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(devstack.env())
    env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                "GIT_PYTHON_REFRESH": "quiet"})
    return env


class Operator:
    """The operator as a process of its own: `kopf run -m promoter.handlers`."""

    def __init__(self, devstack: stack.State, log: Path, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> None:
        self.args = args or ["--all-namespaces"]
        self.devstack, self.log = devstack, log
        self.metrics_port = stack.free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "AWS_", "MLFLOW_"))},
            "KUBECONFIG": devstack.kubeconfig,
            "PROMOTER_TRACKING_URI": devstack.mlflow_uri,
            "PROMOTER_STORAGE_ENDPOINT": devstack.s3_endpoint,
            "PROMOTER_STORAGE_SECRET": STORAGE_SECRET,
            "PROMOTER_METRICS_PORT": str(self.metrics_port),
            "PROMOTER_RETRY_DELAY": "1",
            "PROMOTER_RUN_WAIT_TIMEOUT": "20",
            "PYTHONPATH": f"{REPO / 'operator'}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "-m", "promoter.handlers", "--standalone",
             *self.args, "--verbose"],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited at start:\n{self.log.read_text()[-3000:]}")
            if "settings: tracking" in self.since_start():
                return
            time.sleep(0.2)
        raise RuntimeError(f"operator not started after 60s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def since_start(self) -> str:
        """The log of the current process only."""
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


@pytest.fixture(scope="session")
def operator(devstack: stack.State, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(devstack, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def namespace(devstack: stack.State, crd: None) -> Iterator[str]:
    name = new_namespace(devstack)
    yield name
    delete_namespace(devstack, name)


def delete_namespace(devstack: stack.State, name: str) -> None:
    """Start deleting a namespace a test is done with, without waiting: the controller-manager
    finishes it, and garbage collection stops the Pods (MLServers) its SeldonDeployments made,
    which frees devstack's node for the next tests."""
    devstack.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def new_namespace(devstack: stack.State, prefix: str = "t") -> str:
    """A fresh namespace with the storage Secret."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    devstack.kubectl("create", "namespace", name)
    devstack.kubectl("-n", name, "create", "secret", "generic", STORAGE_SECRET,
                     f"--from-literal=AWS_ACCESS_KEY_ID={devstack.s3_access_key}",
                     f"--from-literal=AWS_SECRET_ACCESS_KEY={devstack.s3_secret_key}")
    return name


def train(env: dict[str, str], seed: int) -> tuple[str, dict[str, float]]:
    """experiments/train.py as a user runs it: the run id and the metrics it printed."""
    out = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "train.py"), "--n-estimators", "20", "--seed", str(seed),
         "--experiment", "promoter-integration"],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip().splitlines()
    metrics = dict(kv.split("=") for kv in out[-2].split())
    assert RUN_ID.match(out[-1]), out
    return out[-1], {k: float(v) for k, v in metrics.items()}


@pytest.fixture(scope="session")
def trained(mlflow_env: dict[str, str]) -> tuple[str, dict[str, float]]:
    return train(mlflow_env, 42)


@pytest.fixture(scope="session")
def runs(mlflow_env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("runs.py"))], env=mlflow_env,
                         capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
