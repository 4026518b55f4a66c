"""Log finished MLflow runs for the benchmarks (run with the devstack environment).

Each run is the MLflow 2 layout tests/integration/runs.py's ``mlflow2`` kind uses (the model
folder ``rf-regressor/`` under the run's artifacts, ``model.pkl`` by cloudpickle) plus an extra
file ``rf-regressor/weights.bin`` of ``--extra-bytes`` random bytes; ``--example`` saves its input
example (serving_input_example.json, three rows) as MLflow does, ``--garbage`` replaces model.pkl
with bytes that are no pickle. Prints a JSON list of run ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn
from sklearn.linear_model import LinearRegression


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--extra-bytes", type=int, default=1024 * 1024)
    parser.add_argument("--experiment", default="bench")
    parser.add_argument("--example", action="store_true")
    parser.add_argument("--garbage", action="store_true")
    args = parser.parse_args()
    mlflow.set_experiment(args.experiment)
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    tmp = Path(tempfile.mkdtemp())
    ids = []
    try:
        folder = tmp / "rf-regressor"
        mlflow.sklearn.save_model(model, str(folder), serialization_format="cloudpickle",
                                  input_example=[[0.5], [1.5], [2.5]] if args.example else None)
        if args.garbage:
            (folder / "model.pkl").write_bytes(b"this is not a pickle")
        for i in range(args.count):
            if args.extra_bytes:
                (folder / "weights.bin").write_bytes(os.urandom(args.extra_bytes))
            with mlflow.start_run(run_name=f"bench-{i}") as run:
                mlflow.log_metric("rmse", 0.5)
                mlflow.log_metric("r2", 0.9)
                mlflow.log_artifacts(str(folder), "rf-regressor")
                ids.append(run.info.run_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(ids))


if __name__ == "__main__":
    main()
