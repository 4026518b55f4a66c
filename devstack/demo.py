"""`make demo`: the seed's whole pipeline on devstack, with one command.

devstack up -> CRDs -> operator -> train a model -> promote it (Promoted) -> a promotion whose
gate cannot pass (Rejected) -> the promoted model's predictions, served, beside the run's own.
Leaves everything running and says what to type next.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import harness, predict, stack
from .binaries import SetupError

REPO = stack.REPO
SAMPLE = REPO / "manifests" / "samples" / "promotion.yaml"
NAMESPACE = "mlops-demo"

Log = Callable[[str], None]


class StepFailed(Exception):
    def __init__(self, step: str, detail: str, log: str = "") -> None:
        super().__init__(detail)
        self.step, self.detail, self.log = step, detail, log


def _kubectl(state: stack.State, *args: str, input: str | None = None, step: str) -> str:
    result = state.kubectl(*args, input=input, check=False)
    if result.returncode != 0:
        raise StepFailed(step, f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _operator(state: stack.State, log: Log) -> harness.Operator | stack.Proc:
    for proc in state.processes:
        if proc.name == "operator" and stack.alive(proc):
            log(f"demo: the operator already runs (pid {proc.pid}); its log: {proc.log}")
            return proc
    state.processes = [p for p in state.processes if p.name != "operator"]
    operator = harness.Operator(state, Path(state.home) / "logs" / "operator.log", {"PROMOTER_RETRY_DELAY": "2"},
                                verbose=False, detached=True)
    try:
        operator.start(timeout=60)
    except RuntimeError as e:
        raise StepFailed("start the operator", str(e).splitlines()[0], str(operator.log)) from None
    log(f"demo: operator running (pid {operator.pid}, metrics on :{operator.metrics_port}); log: {operator.log}")
    return operator


def _train(state: stack.State, log: Log) -> str:
    logfile = Path(state.home) / "logs" / "train.log"
    try:
        run_id, metrics = harness.train(state, 42, log=logfile)
    except RuntimeError as e:
        raise StepFailed("train a model", str(e), str(logfile)) from None
    log("demo: trained rf-regressor: " + " ".join(f"{k}={v:g}" for k, v in metrics.items()))
    return run_id


def _promotion(name: str, run_id: str, gates: list[dict[str, Any]] | None = None) -> str:
    """The sample with the run id filled in, under another name and with other gates if asked."""
    obj = yaml.safe_load(SAMPLE.read_text().replace("RUN_ID", run_id))
    obj["metadata"]["name"] = name
    obj["metadata"]["namespace"] = NAMESPACE
    if gates is not None:
        obj["spec"]["gates"] = gates
    return json.dumps(obj)


def _wait(state: stack.State, name: str, phases: tuple[str, ...], log: Log, step: str,
          timeout: float = 180) -> dict[str, Any]:
    deadline, seen = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        out = state.kubectl("-n", NAMESPACE, "get", "modelpromotion", name, "-o", "json", check=False)
        if out.returncode == 0:
            obj = json.loads(out.stdout)
            status = obj.get("status") or {}
            phase = status.get("phase", "Pending")
            if phase != seen:
                log(f"demo:   {name}: {phase}" + (f" - {status.get('message')}" if status.get("message") else ""))
                seen = phase
            if phase in phases:
                return dict(obj)
        time.sleep(0.5)
    raise StepFailed(step, f"{name} did not reach {' or '.join(phases)} in {timeout:.0f}s (last: {seen})")


def main(log: Log) -> int:
    t0 = time.monotonic()
    step = "bring devstack up"
    state: stack.State | None = None
    operator: harness.Operator | stack.Proc | None = None
    try:
        log("demo: [1/7] devstack up (builds the Kubernetes binaries the first time)")
        try:
            state = stack.up(log=log)
        except stack.AlreadyRunning as running:
            state = running.state
            log(f"demo: devstack already running from {state.home}")
        step = "install the CRDs"
        log("demo: [2/7] installing the ModelPromotion CRD and the namespace")
        try:
            harness.install_crd(state)
            harness.namespace(state, NAMESPACE)
        except subprocess.CalledProcessError as e:
            raise StepFailed(step, f"kubectl {' '.join(e.cmd[3:])}: {(e.stderr or '').strip()}") from None
        step = "start the operator"
        log("demo: [3/7] starting the operator")
        operator = _operator(state, log)
        step = "train a model"
        log("demo: [4/7] training rf-regressor (experiments/train.py) and logging it to MLflow")
        run_id = _train(state, log)
        log(f"demo: run id {run_id}")
        step = "promote the run"
        log(f"demo: [5/7] applying {SAMPLE.relative_to(REPO)} with that run id")
        _kubectl(state, "-n", NAMESPACE, "apply", "-f", "-", input=_promotion("rf-regressor", run_id), step=step)
        promoted = _wait(state, "rf-regressor", ("Promoted", "Rejected", "Failed"), log, step)
        if promoted["status"]["phase"] != "Promoted":
            raise StepFailed(step, promoted["status"].get("message", ""), str(operator.log))
        sdep_name = promoted["spec"]["target"]["seldonDeployment"]["name"]
        model_uri = _kubectl(state, "-n", NAMESPACE, "get", "seldondeployment", sdep_name, "-o",
                             "jsonpath={.spec.predictors[0].graph.modelUri}", step=step)
        step = "promote a run whose gate cannot pass"
        log("demo: [6/7] a second promotion whose gate cannot pass (rmse <= 1)")
        strict = [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 1}]
        _kubectl(state, "-n", NAMESPACE, "apply", "-f", "-", input=_promotion("too-strict", run_id, strict),
                 step=step)
        rejected = _wait(state, "too-strict", ("Rejected", "Promoted"), log, step)
        if rejected["status"]["phase"] != "Rejected":
            raise StepFailed(step, "the strict gate passed", str(operator.log))

        print("\n$ kubectl get modelpromotions -n " + NAMESPACE)
        print(_kubectl(state, "-n", NAMESPACE, "get", "modelpromotions", step="show the outcome").rstrip())
        print(f"\nSeldonDeployment {sdep_name} serves: {model_uri}")
        print(f"\nBucket listing of {model_uri}/:")
        print(_listing(state, model_uri))
        print(f"\nRejected: too-strict: {rejected['status']['message']}")
        step = "predict with the promoted model"
        log(f"demo: [7/7] asking {sdep_name} for predictions on the model's own input example")
        predict.show(state, NAMESPACE, sdep_name, model_uri, log)
        print(f"\ndemo: done in {time.monotonic() - t0:.0f}s. Next:")
        print('  eval "$(.venv/bin/python -m devstack env)"   # kubectl and mlflow now talk to devstack')
        print(f"  kubectl get mp -n {NAMESPACE} -w            # watch promotions")
        print(f"  kubectl describe mp rf-regressor -n {NAMESPACE}")
        print(f"  kubectl get pods -n {NAMESPACE} -o wide       # the Pod serving it, on devstack's node")
        print("  make down                                 # stop everything")
        return 0
    except StepFailed as e:
        log(f"demo: FAILED at step '{e.step}': {e.detail}")
        logs = e.log or (str(operator.log) if operator else str(Path(state.home) / "logs") if state else "")
        if logs:
            log(f"demo: see the log: {logs}")
        return 1
    except (SetupError, TimeoutError, LookupError, OSError, RuntimeError) as e:
        log(f"demo: FAILED at step '{step}': {e}")
        return 1


def _listing(state: stack.State, uri: str) -> str:
    from minio import Minio

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = Minio(state.s3_endpoint.split("://", 1)[1], access_key=state.s3_access_key,
                   secret_key=state.s3_secret_key, secure=False)
    rows = [f"  {o.size:>10}  {o.object_name}" for o in
            client.list_objects(bucket, prefix=prefix + "/", recursive=True)]
    return "\n".join(rows)
