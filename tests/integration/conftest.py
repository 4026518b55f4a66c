"""Fixtures over devstack: a real etcd + kube-apiserver, S3 (SeaweedFS), MLflow, and the
operator running as its own process against them (devstack.harness).

Set DEVSTACK_HOME to a running devstack (`python -m devstack up`) to reuse it; otherwise the
session starts one in a temporary folder and stops it at the end. The session's operator
handles the promotions without a scope label; a module that runs operators of its own gives
them a scope and labels its promotions with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import harness, stack
from devstack.harness import REPO, STORAGE_SECRET, Operator

pytestmark = pytest.mark.integration

__all__ = ["REPO", "STORAGE_SECRET", "Operator", "new_namespace", "train"]


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.State]:
    home = os.environ.get("DEVSTACK_HOME")
    if home and int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        pytest.fail("DEVSTACK_HOME shares one devstack, and each test process starts an operator of its own on "
                    "it: run the tests in one process (pytest without -n, or TEST_WORKERS=0 make test)")
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
    harness.install_crd(devstack)


@pytest.fixture(scope="session")
def mlflow_env(devstack: stack.State) -> dict[str, str]:
    return harness.mlflow_env(devstack)


@pytest.fixture(scope="session")
def operator(devstack: stack.State, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = Operator(devstack, tmp_path_factory.mktemp("operator") / "operator.log",
                  {"PROMOTER_RUN_WAIT_TIMEOUT": "20"})
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def namespace(devstack: stack.State, crd: None) -> Iterator[str]:
    name = new_namespace(devstack)
    yield name
    harness.delete_namespace(devstack, name)


@pytest.fixture
def namespaces(devstack: stack.State, crd: None) -> Iterator[Callable[[str], str]]:
    """A maker of fresh namespaces (``namespaces("tq")``), all deleted when the test is done:
    the Pods their SeldonDeployments make hold slots of devstack's node."""
    made: list[str] = []

    def make(prefix: str) -> str:
        made.append(new_namespace(devstack, prefix))
        return made[-1]

    yield make
    for name in made:
        harness.delete_namespace(devstack, name)


def new_namespace(devstack: stack.State, prefix: str = "t") -> str:
    """A fresh namespace with the storage Secret."""
    return harness.namespace(devstack, prefix=prefix)


def train(devstack: stack.State, seed: int, experiment: str = "promoter-integration") -> tuple[str, dict[str, float]]:
    """experiments/train.py as a user runs it (20 trees): the run id and the metrics it printed."""
    return harness.train(devstack, seed, n_estimators=20, experiment=experiment, timeout=300)


@pytest.fixture(scope="session")
def trained(devstack: stack.State) -> tuple[str, dict[str, float]]:
    return train(devstack, 42)


@pytest.fixture(scope="session")
def runs(mlflow_env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("runs.py"))], env=mlflow_env,
                         capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
