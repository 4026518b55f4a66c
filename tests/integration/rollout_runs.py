"""Log the runs the rollout tests promote, on devstack's real MLflow: models that MLServer serves,
and models that pass every check the operator can make before serving yet fail once served.

Run as a script with the devstack environment; prints a JSON object {kind: run_id}. Every model
is a scikit-learn model of one feature with its input example (three rows, 1.0, 2.0, 3.0), so
MLflow writes serving_input_example.json beside it:

- good-2x, good-3x: LinearRegression predicting 2x and 3x;
- garbage: the 2x model with a model.pkl that is not a pickle;
- unloadable: a pickle of a class from a module that exists only where it was trained
  (MLServer's unpickling fails: No module named ...);
- two-outputs: a regressor of two targets, answering two numbers per row (the wrong shape).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
from sklearn.linear_model import LinearRegression

X = np.array([[1.0], [2.0], [3.0]])
CUSTOM = '''
class Doubler:
    def fit(self, X, y):
        return self

    def predict(self, X):
        return [2 * row[0] for row in X]
'''


def _log(kind: str, model: object, folder: Path, garbage: bool = False) -> str:
    target = folder / kind
    mlflow.sklearn.save_model(model, str(target), serialization_format="cloudpickle", input_example=X)
    if garbage:
        (target / "model.pkl").write_bytes(b"this is not a pickle")
    with mlflow.start_run(run_name=kind) as run:
        mlflow.log_metric("rmse", 0.5)
        mlflow.log_artifacts(str(target), "rf-regressor")
        return str(run.info.run_id)


def main() -> None:
    mlflow.set_experiment("promoter-rollout")
    tmp = Path(tempfile.mkdtemp())
    try:
        runs = {
            "good-2x": _log("good-2x", LinearRegression().fit(X, 2 * X.ravel()), tmp),
            "good-3x": _log("good-3x", LinearRegression().fit(X, 3 * X.ravel()), tmp),
            "garbage": _log("garbage", LinearRegression().fit(X, 2 * X.ravel()), tmp, garbage=True),
            "two-outputs": _log("two-outputs", LinearRegression().fit(X, np.c_[X, 2 * X]), tmp),
        }
        (tmp / "promoter_rollout_custom.py").write_text(CUSTOM)
        sys.path.insert(0, str(tmp))
        import promoter_rollout_custom  # noqa: PLC0415 - a module only this process has

        runs["unloadable"] = _log("unloadable", promoter_rollout_custom.Doubler(), tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(runs))


if __name__ == "__main__":
    sys.exit(main())
