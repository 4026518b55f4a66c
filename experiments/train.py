"""Train the rf-regressor on the diabetes data and log it to MLflow.

The tracking server comes from MLFLOW_TRACKING_URI; MLflow itself reads MLFLOW_S3_ENDPOINT_URL,
AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or MLFLOW_TRACKING_USERNAME/PASSWORD) from the
environment. The run id is the last line on stdout, so `RUN_ID=$(python train.py | tail -1)` works.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

# MLflow reads these per request; without them a dead server costs minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

PROG = "train.py"
DEFAULT_DATA = Path(__file__).resolve().parent / "data" / "diabetes.csv"
HEALTH_TIMEOUT_S = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="rf-regressor", help="MLflow experiment name")
    p.add_argument("--n-estimators", type=int, default=100)
    p.add_argument("--max-depth", type=int, default=6)
    p.add_argument("--seed", type=int, default=42, help="seeds the split and the forest")
    p.add_argument("--model-name", default="rf-regressor", help="logged model name")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="CSV with a 'target' column")
    p.add_argument("--run-name", default=None)
    return p.parse_args(argv)


def fail(code: int, message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(code)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} from /health"
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return "unknown host"
    if isinstance(cause, TimeoutError | socket.timeout):
        return f"no answer within {HEALTH_TIMEOUT_S:g}s"
    return str(cause).strip() or type(cause).__name__


def check_server(uri: str) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer its /health."""
    if not uri.startswith(("http://", "https://")):
        return  # sqlite:, file:, databricks ... have no /health to ask
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            fail(1, f"cannot reach the MLflow tracking server at {uri}: {_reason(exc)}")
    except (OSError, ValueError) as exc:
        fail(1, f"cannot reach the MLflow tracking server at {uri}: {_reason(exc)}")


def train(args: argparse.Namespace, uri: str) -> str:
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
    from sklearn.model_selection import train_test_split

    test_size = 0.2
    df = pd.read_csv(args.data)
    X, y = df.drop(columns=["target"]), df["target"]
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=args.seed)
    model = RandomForestRegressor(
        n_estimators=args.n_estimators, max_depth=args.max_depth, random_state=args.seed, n_jobs=1
    )
    model.fit(X_train, y_train)
    preds = model.predict(X_test)
    metrics = {
        "rmse": float(np.sqrt(mean_squared_error(y_test, preds))),
        "mae": float(mean_absolute_error(y_test, preds)),
        "r2": float(r2_score(y_test, preds)),
    }

    store_errors: tuple[type[BaseException], ...] = (OSError,)
    try:  # boto3 is only there when the artifact store is S3
        from botocore.exceptions import BotoCoreError, ClientError

        store_errors += (BotoCoreError, ClientError)
    except ImportError:
        pass

    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(args.experiment)
        with mlflow.start_run(run_name=args.run_name) as run:
            mlflow.log_params(
                {
                    "n_estimators": args.n_estimators,
                    "max_depth": args.max_depth,
                    "seed": args.seed,
                    "test_size": test_size,
                }
            )
            mlflow.set_tag("data_sha256", hashlib.sha256(args.data.read_bytes()).hexdigest())
            logged = mlflow.sklearn.log_model(
                model,
                name=args.model_name,
                serialization_format="cloudpickle",
                signature=infer_signature(X_train, preds),
                input_example=X_train.head(2),
            )
            # The metrics name the data they were computed on and the model they score: MLflow 3
            # keeps (name, digest) with each metric of the logged model, which is what a
            # `sameDataset: true` gate compares between a challenger and the serving run.
            test_set = mlflow.data.from_pandas(
                X_test.assign(target=y_test), name=f"{args.data.stem}-test", targets="target"
            )
            mlflow.log_metrics(metrics, dataset=test_set, model_id=logged.model_id)
    except MlflowException as exc:
        fail(1, f"MLflow at {uri} refused the run: {str(exc).splitlines()[0]}")
    except store_errors as exc:
        fail(1, f"cannot store the model's artifacts: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return str(run.info.run_id)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        fail(
            2,
            "MLFLOW_TRACKING_URI is not set; set it to the tracking server, "
            "e.g. export MLFLOW_TRACKING_URI=http://127.0.0.1:5000",
        )
    if not args.data.is_file():
        fail(2, f"no data file at {args.data}")
    check_server(uri)
    print(train(args, uri))
    return 0


if __name__ == "__main__":
    sys.exit(main())
