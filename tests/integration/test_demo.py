"""`make demo`'s steps run non-interactively, and train.py behaves on a real MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from devstack import stack

from .conftest import REPO

pytestmark = pytest.mark.integration


def test_the_demo_promotes_a_run_rejects_the_strict_one_and_lets_a_better_challenger_take_over(
        tmp_path: Path, devstack: stack.State) -> None:
    home = tmp_path / "demo"
    env = {**os.environ, "DEVSTACK_HOME": str(home)}
    try:
        result = subprocess.run([sys.executable, "-m", "devstack", "demo"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        out = result.stdout
        table = out.split("$ kubectl get modelpromotions -n mlops-demo\n", 1)[1].split("\n\n", 1)[0].splitlines()
        rows = {line.split()[0]: line.split() for line in table[1:]}
        assert set(rows) == {"challenger", "rf-regressor", "too-strict"}
        # the challenger (200 trees of depth 3) beats train.py's default by more than the 1 % asked
        assert (rows["challenger"][2], rows["rf-regressor"][2], rows["too-strict"][2]) == (
            "Promoted", "Superseded", "Rejected")
        champion, run_id = rows["rf-regressor"][1], rows["challenger"][1]
        assert rows["challenger"][3] == "rmse" and rows["challenger"][4].endswith("(-1%)")  # GATES
        assert f"SeldonDeployment rf-regressor serves: s3://models/mlops-demo/rf-regressor/{run_id}" in out
        assert re.search(r"^Champion/challenger: the challenger won: rmse [0-9.]+ against the champion's [0-9.]+, "
                         r"[0-9.]+ % better \(needed 1 %: rmse < [0-9.]+\); it serves now, and rf-regressor is "
                         r"Superseded\.$", out, re.M), out
        assert f"MLflow registry: rf-regressor@champion is version 2 (run {run_id}, the challenger's)" in out
        assert champion != run_id
        assert re.search(rf"^\s+\d+\s+mlops-demo/rf-regressor/{run_id}/model\.pkl$", out, re.M)
        assert re.search(rf"^\s+\d+\s+mlops-demo/rf-regressor/{run_id}/promotion-manifest\.json$", out, re.M)
        assert re.search(r"^Rejected: too-strict: gate failed: rmse [0-9.]+ is not <= 1$", out, re.M)
        assert 'eval "$(.venv/bin/python -m devstack env)"' in out and "make down" in out
        assert "demo: [8/8]" in result.stderr  # progress shown throughout
        # it ends with the served model's predictions beside the run's own, and a curl line
        predictions = out.split(
            f"Predictions for s3://models/mlops-demo/rf-regressor/{run_id}/serving_input_example.json", 1)[1]
        served = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)$", predictions.split("The same request", 1)[0], re.M)
        assert len(served) >= 1 and all(float(by_server) == float(local) for _, by_server, local in served), served
        assert re.search(r"^  curl -s -X POST http://127\.[0-9.]+:8000/v2/models/model/infer ", out, re.M)
    finally:
        subprocess.run([sys.executable, "-m", "devstack", "down"], env=env, capture_output=True, timeout=120)
    state = stack.State.load(home)
    assert state is None  # down removed it, and with it the demo's operator


def _metrics(devstack: stack.State, run_id: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{devstack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run_id}") as r:
        return {m["key"]: m["value"] for m in json.load(r)["run"]["data"]["metrics"]}


def test_train_py_logs_the_same_metrics_twice_with_the_same_seed(devstack: stack.State,
                                                                mlflow_env: dict[str, str]) -> None:
    cmd = [sys.executable, str(REPO / "experiments" / "train.py"), "--n-estimators", "10", "--seed", "3"]
    first, second = (subprocess.run(cmd, env=mlflow_env, capture_output=True, text=True, check=True,
                                     timeout=300).stdout.strip().splitlines()[-1] for _ in range(2))
    assert first != second
    assert _metrics(devstack, first) == _metrics(devstack, second)
    assert set(_metrics(devstack, first)) == {"rmse", "mae", "r2"}
