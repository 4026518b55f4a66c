"""`make demo`: the seed's whole pipeline on devstack, with one command.

devstack up -> CRDs -> operator -> train a model -> promote it (Promoted) -> a promotion whose
gate cannot pass (Rejected) -> the promoted model's predictions, served, beside the run's own.
Leaves everything running and says what to type next.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import predict, stack
from .binaries import SetupError

REPO = stack.REPO
SAMPLE = REPO / "manifests" / "samples" / "promotion.yaml"
CRD = REPO / "crds" / "modelpromotions.mlops.dev.yaml"
NAMESPACE = "mlops-demo"
STORAGE_SECRET = "minio-credentials"

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


def _operator(state: stack.State, log: Log) -> stack.Proc:
    for proc in state.processes:
        if proc.name == "operator" and stack.alive(proc):
            log(f"demo: the operator already runs (pid {proc.pid}); its log: {proc.log}")
            return proc
    state.processes = [p for p in state.processes if p.name != "operator"]
    env = {
        "KUBECONFIG": state.kubeconfig,
        "PROMOTER_TRACKING_URI": state.mlflow_uri,
        "PROMOTER_STORAGE_ENDPOINT": state.s3_endpoint,
        "PROMOTER_STORAGE_SECRET": STORAGE_SECRET,
        "PROMOTER_METRICS_PORT": str(stack.free_port()),
        "PROMOTER_RETRY_DELAY": "2",
        "PYTHONPATH": str(REPO / "operator"),
    }
    proc = stack.spawn(Path(state.home), "operator", [
        sys.executable, "-m", "kopf", "run", "-m", "promoter.handlers", "--standalone",
        "--all-namespaces"], env)
    state.processes.append(proc)
    state.save()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if stack.exited(proc):
            raise StepFailed("start the operator", f"the operator exited ({stack.exit_status(proc)})", proc.log)
        if "Activity 'startup' succeeded" in Path(proc.log).read_text(errors="replace"):
            log(f"demo: operator running (pid {proc.pid}, metrics on :{env['PROMOTER_METRICS_PORT']}); "
                f"log: {proc.log}")
            return proc
        time.sleep(0.3)
    raise StepFailed("start the operator", "not started after 60s", proc.log)


def _train(state: stack.State, log: Log) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(state.env())
    logfile = Path(state.home) / "logs" / "train.log"
    with open(logfile, "w") as out:
        result = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"), "--seed", "42"],
                                env=env, stdout=subprocess.PIPE, stderr=out, text=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not re.fullmatch(r"[0-9a-f]{32}", lines[-1]):
        raise StepFailed("train a model", f"experiments/train.py exited {result.returncode}", str(logfile))
    for line in lines[:-1]:
        if line.startswith("rmse="):
            log(f"demo: trained rf-regressor: {line}")
    return lines[-1]


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
    operator: stack.Proc | None = None
    try:
        log("demo: [1/7] devstack up (builds the Kubernetes binaries the first time)")
        try:
            state = stack.up(log=log)
        except stack.AlreadyRunning as running:
            state = running.state
            log(f"demo: devstack already running from {state.home}")
        step = "install the CRDs"
        log("demo: [2/7] installing the ModelPromotion CRD and the namespace")
        _kubectl(state, "apply", "--server-side", "--force-conflicts", "-f", str(CRD), step=step)
        _kubectl(state, "wait", "--for=condition=established", "--timeout=60s", "crd/modelpromotions.mlops.dev",
                 step=step)
        namespace = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        _kubectl(state, "apply", "-f", "-", input=namespace, step=step)
        secret = _kubectl(state, "-n", NAMESPACE, "create", "secret", "generic", STORAGE_SECRET,
                          f"--from-literal=AWS_ACCESS_KEY_ID={state.s3_access_key}",
                          f"--from-literal=AWS_SECRET_ACCESS_KEY={state.s3_secret_key}",
                          "--dry-run=client", "-o", "json", step=step)
        _kubectl(state, "apply", "-f", "-", input=secret, step=step)
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
            raise StepFailed(step, promoted["status"].get("message", ""), operator.log)
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
            raise StepFailed(step, "the strict gate passed", operator.log)

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
        logs = e.log or (operator.log if operator else str(Path(state.home) / "logs") if state else "")
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
