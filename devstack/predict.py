"""Ask a served model for predictions the way a user would, and say what the run's own model says.

MLflow writes ``serving_input_example.json`` next to a model logged with an input example: a
pandas example as ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``, a NumPy one
as ``{"inputs": [[...], ...]}``. Posted as-is to MLServer's V2 endpoint it gets 422: the V2
protocol wants tensors. :func:`v2_request` makes one FP64 tensor of the rows (shape
``[rows, columns]``, row-major), which MLServer's scikit-learn runtime hands to
``model.predict``.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from . import stack

Obj = dict[str, Any]


def rows(example: Obj) -> list[list[float]]:
    """The example's rows as numbers, from either serving-input format."""
    if "dataframe_split" in example:
        data = example["dataframe_split"]["data"]
    elif "inputs" in example and isinstance(example["inputs"], list):
        data = example["inputs"]
    else:
        raise ValueError(f"serving input example: expected dataframe_split or inputs, got keys {sorted(example)}")
    table = [[float(v) for v in (row if isinstance(row, list) else [row])] for row in data]
    if not table or len({len(r) for r in table}) != 1:
        raise ValueError("serving input example: rows must be non-empty and all of one length")
    return table


def v2_request(example: Obj) -> Obj:
    table = rows(example)
    return {"inputs": [{"name": "input-0", "shape": [len(table), len(table[0])], "datatype": "FP64",
                        "data": [v for row in table for v in row]}]}


def infer_url(sdep: Obj) -> str:
    """The V2 inference URL of the SeldonDeployment's first predictor, at its Service's httpEndpoint."""
    status = sdep.get("status") or {}
    first = sdep["spec"]["predictors"][0]
    service = f"{sdep['metadata']['name']}-{first['name']}"
    endpoint = ((status.get("serviceStatus") or {}).get(service) or {}).get("httpEndpoint")
    if not endpoint:
        raise LookupError(f"SeldonDeployment {sdep['metadata']['name']} has no serviceStatus.{service}.httpEndpoint "
                          f"yet (state {status.get('state', 'none')})")
    return f"http://{endpoint}/v2/models/{first['graph']['name']}/infer"


def infer(url: str, request: Obj, timeout: float = 10) -> list[float]:
    body = json.dumps(request).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        answer = json.load(response)
    return [float(v) for v in answer["outputs"][0]["data"]]


def curl(url: str, request: Obj) -> str:
    return (f"curl -s -X POST {url} -H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(request, separators=(',', ':')))}")


def deployment_of(state: stack.State, namespace: str, sdep_name: str, timeout: float = 60) -> str:
    """The Deployment Seldon made for the SeldonDeployment, found the way the seed's check finds it."""
    deadline = time.monotonic() + timeout
    while True:
        out = state.kubectl("-n", namespace, "get", "deploy", "-l", f"seldon-deployment-id={sdep_name}",
                            "-o", "jsonpath={.items[0].metadata.name}", check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Deployment labelled seldon-deployment-id={sdep_name} in {namespace} "
                               f"after {timeout:.0f}s")
        time.sleep(0.5)


def rollout(state: stack.State, namespace: str, deployment: str, timeout: float = 180) -> str:
    """``kubectl rollout status``; its output, or an error with kubectl's message."""
    result = state.kubectl("-n", namespace, "rollout", "status", f"deploy/{deployment}",
                           f"--timeout={int(timeout)}s", check=False, timeout=timeout + 30)
    if result.returncode != 0:
        raise TimeoutError(f"kubectl rollout status deploy/{deployment}: {(result.stderr or result.stdout).strip()}")
    return result.stdout


def local_predictions(model_uri: str, table: Sequence[Sequence[float]], env: dict[str, str]) -> list[float]:
    """What mlflow.sklearn.load_model(model_uri).predict says on the rows, in a process with env
    (the S3 endpoint and keys of the artifact store)."""
    script = ("import json, sys, mlflow.sklearn; m = mlflow.sklearn.load_model(sys.argv[1]); "
              "print(json.dumps([float(v) for v in m.predict(json.loads(sys.argv[2]))]))")
    out = subprocess.run([sys.executable, "-c", script, model_uri, json.dumps([list(r) for r in table])],
                         env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"loading {model_uri} locally failed:\n{out.stderr[-2000:]}")
    return [float(v) for v in json.loads(out.stdout.strip().splitlines()[-1])]


def serving_example(state: stack.State, model_uri: str) -> Obj:
    """The model's serving_input_example.json, read from its copy in S3."""
    from minio import Minio

    bucket, _, prefix = model_uri.removeprefix("s3://").partition("/")
    client = Minio(state.s3_endpoint.split("://", 1)[1], access_key=state.s3_access_key,
                   secret_key=state.s3_secret_key, secure=False)
    response = client.get_object(bucket, f"{prefix}/serving_input_example.json")
    try:
        return dict(json.loads(response.read()))
    finally:
        response.close()
        response.release_conn()


def client_env(state: stack.State) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    return {**env, **state.env()}


def show(state: stack.State, namespace: str, sdep_name: str, model_uri: str, log: stack.Log,
         timeout: float = 240) -> None:
    """The demo's last step: wait for the rollout, predict the model's own example through the
    SeldonDeployment, print it beside the run's model's own predictions, and a curl line."""
    deployment = deployment_of(state, namespace, sdep_name)
    log(f"demo: waiting for the rollout: kubectl -n {namespace} rollout status deploy/{deployment}")
    rollout(state, namespace, deployment, timeout)
    deadline = time.monotonic() + 60
    while True:
        sdep = json.loads(state.kubectl("-n", namespace, "get", "seldondeployment", sdep_name, "-o", "json").stdout)
        try:
            url = infer_url(sdep)
            break
        except LookupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    example = serving_example(state, model_uri)
    request = v2_request(example)
    served = infer(url, request)
    local = local_predictions(model_uri, rows(example), client_env(state))
    print(f"\nPredictions for {model_uri}/serving_input_example.json ({len(served)} rows):")
    print(f"  {'row':>3}  {'served by ' + sdep_name:>24}  {'mlflow.sklearn.load_model().predict':>36}")
    for i, (a, b) in enumerate(zip(served, local, strict=True)):
        print(f"  {i:>3}  {a:>24.10g}  {b:>36.10g}")
    print("\nThe same request from your shell:")
    print(f"  {curl(url, request)}")
