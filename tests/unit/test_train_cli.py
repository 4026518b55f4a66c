"""experiments/train.py as a user runs it: a subprocess of the project's Python, no server.

The determinism test uses a local SQLite store (artifacts in the test's tmp dir); the same check
against a live MLflow server lives with the integration tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "experiments" / "train.py"
DEAD_URI = "http://127.0.0.1:9"  # discard port: nothing listens there


def run_train(
    tmp_path: Path, uri: str | None, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unreachable_server_fails_in_one_line(tmp_path: Path) -> None:
    proc = run_train(tmp_path, DEAD_URI, timeout=30)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("train.py: cannot reach the MLflow tracking server at ")
    assert DEAD_URI in lines[0]
    assert "connection refused" in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_tracking_uri_exits_2(tmp_path: Path) -> None:
    proc = run_train(tmp_path, None, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "MLFLOW_TRACKING_URI" in lines[0] and "set" in lines[0]


def test_missing_data_file_exits_2(tmp_path: Path) -> None:
    proc = run_train(tmp_path, DEAD_URI, "--data", str(tmp_path / "nope.csv"), timeout=30)
    assert proc.returncode == 2
    assert "nope.csv" in proc.stderr and proc.stdout == ""


def _train_and_read_back(tmp_path: Path, uri: str) -> tuple[str, dict[str, float], dict[str, str]]:
    proc = run_train(tmp_path, uri, "--experiment", "determinism", "--n-estimators", "20")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    run_id = lines[-1].strip()
    assert len(run_id) == 32 and all(c in "0123456789abcdef" for c in run_id), proc.stdout
    assert any(line.startswith("rmse=") and " r2=" in line for line in lines[:-1]), proc.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    model = client.get_logged_model(run.outputs.model_outputs[0].model_id)
    datasets = {m.key: f"{m.dataset_name}@{m.dataset_digest}" for m in model.metrics or []}
    return run_id, dict(run.data.metrics), {**run.data.params, **{f"dataset:{k}": v for k, v in datasets.items()}}


def test_same_seed_gives_same_metrics(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    id1, metrics1, params1 = _train_and_read_back(tmp_path, uri)
    id2, metrics2, params2 = _train_and_read_back(tmp_path, uri)

    assert id1 != id2
    assert set(metrics1) == {"rmse", "mae", "r2"}
    assert metrics1 == metrics2
    # the metrics are linked to the model and name the test split they were computed on, with a
    # digest that is the same for the same data (what a sameDataset gate compares)
    datasets = {k: v for k, v in params1.items() if k.startswith("dataset:")}
    assert set(datasets) == {"dataset:rmse", "dataset:mae", "dataset:r2"}
    assert len(set(datasets.values())) == 1 and next(iter(datasets.values())).startswith("diabetes-test@")
    assert params1 == params2
    assert {k: v for k, v in params1.items() if not k.startswith("dataset:")} == {
        "n_estimators": "20", "max_depth": "6", "seed": "42", "test_size": "0.2"}
    assert 0.0 < metrics1["r2"] < 1.0 and metrics1["rmse"] > metrics1["mae"] > 0.0

    # the model was logged as cloudpickle (model.pkl), the format Seldon's servers load
    pkl = list(tmp_path.glob("mlruns/*/models/m-*/artifacts/model.pkl"))
    assert len(pkl) == 2, sorted(str(p) for p in tmp_path.rglob("*") if p.is_file())
    assert all((p.parent / "MLmodel").is_file() for p in pkl)
