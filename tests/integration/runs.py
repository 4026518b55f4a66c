"""Log MLflow runs of every shape the operator must handle, on devstack's real MLflow.

Run as a script with the devstack environment; prints a JSON object {kind: run_id}.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn
import yaml
from sklearn.linear_model import LinearRegression


def _small_model() -> LinearRegression:
    return LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])


def _mlflow2_layout(folder: Path, skops: bool = False) -> Path:
    """A model folder as MLflow 2 logged it: under the run's artifacts, not a logged model."""
    target = folder / "rf-regressor"
    mlflow.sklearn.save_model(_small_model(), str(target), serialization_format="cloudpickle")
    if skops:  # what MLflow 3.14+ writes by default: model.skops, which no Seldon server loads
        (target / "model.pkl").rename(target / "model.skops")
        mlmodel = yaml.safe_load((target / "MLmodel").read_text())
        mlmodel["flavors"]["sklearn"].update(pickled_model="model.skops", serialization_format="skops")
        (target / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return target


def main() -> None:
    mlflow.set_experiment("promoter-integration")
    runs: dict[str, str] = {}
    tmp = Path(tempfile.mkdtemp())
    try:
        for kind in ("mlflow2", "skops"):
            with mlflow.start_run(run_name=kind) as run:
                mlflow.log_metric("rmse", 0.5)
                mlflow.log_artifacts(str(_mlflow2_layout(tmp / kind, skops=kind == "skops")), "rf-regressor")
                runs[kind] = run.info.run_id
        with mlflow.start_run(run_name="failed") as run:
            mlflow.log_metric("rmse", 0.5)
            runs["failed"] = run.info.run_id
            mlflow.end_run(status="FAILED")
        for kind in ("running", "running-forever"):
            run = mlflow.start_run(run_name=kind)
            mlflow.log_metric("rmse", 0.5)
            mlflow.log_artifacts(str(_mlflow2_layout(tmp / kind)), "rf-regressor")
            runs[kind] = run.info.run_id
            mlflow.end_run(status="RUNNING")  # leaves it RUNNING on the server
        with mlflow.start_run(run_name="nan") as run:
            mlflow.log_metric("rmse", float("nan"))
            runs["nan"] = run.info.run_id
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(runs))


if __name__ == "__main__":
    sys.exit(main())
