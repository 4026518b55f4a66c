"""`make demo`: the seed's whole pipeline on devstack, with one command.

devstack up -> CRDs -> operator -> train a model -> promote it (Promoted, recorded as the
registry's @champion) -> a promotion whose gate cannot pass (Rejected) -> a challenger trained with
other hyper-parameters, promoted against the serving model (baseline: Serving) -> the serving
model's predictions, served, beside the run's own. Leaves everything running and says what to
type next.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from . import harness, predict, stack
from .binaries import SetupError

REPO = stack.REPO
SAMPLE = REPO / "manifests" / "samples" / "promotion.yaml"
NAMESPACE = "mlops-demo"
# The registry record of the demo's promotions: the winner carries @champion.
REGISTRY = {"model": "rf-regressor", "alias": "champion"}
CHALLENGER_TREES, CHALLENGER_DEPTH = 200, 3  # the champion is train.py's default: 100 trees of depth 6
BEAT_BY = 0.01  # the challenger's rmse must be at least 1 % below the champion's

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


def _promotion(name: str, run_id: str, gates: list[dict[str, Any]] | None = None,
               registry: dict[str, str] | None = None) -> str:
    """The sample with the run id filled in, under another name, with other gates and a registry
    record if asked."""
    obj = yaml.safe_load(SAMPLE.read_text().replace("RUN_ID", run_id))
    obj["metadata"]["name"] = name
    obj["metadata"]["namespace"] = NAMESPACE
    if gates is not None:
        obj["spec"]["gates"] = gates
    if registry is not None:
        obj["spec"]["registry"] = registry
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


def _champion_challenger(state: stack.State, log: Log, champion: dict[str, Any]) -> str:
    """A second run with other hyper-parameters, promoted onto the same deployment with a
    ``baseline: Serving`` gate; returns the lines that say who won, by how much, and where the
    registry's @champion points now."""
    step = "champion/challenger"
    logfile = Path(state.home) / "logs" / "train-challenger.log"
    try:
        run_id, metrics = harness.train(state, 42, n_estimators=CHALLENGER_TREES, max_depth=CHALLENGER_DEPTH,
                                        log=logfile)
    except RuntimeError as e:
        raise StepFailed(step, str(e), str(logfile)) from None
    log(f"demo: trained the challenger ({CHALLENGER_TREES} trees of depth {CHALLENGER_DEPTH}): rmse "
        f"{metrics['rmse']:g}, run {run_id}")
    gates = [{"metric": "rmse", "op": "LessThan", "baseline": "Serving", "minRelativeChange": BEAT_BY,
              "sameDataset": True}]
    _kubectl(state, "-n", NAMESPACE, "apply", "-f", "-", input=_promotion("challenger", run_id, gates, REGISTRY),
             step=step)
    outcome = _wait(state, "challenger", ("Promoted", "Rejected", "Failed"), log, step)
    gate = outcome["status"]["gates"][0]
    won = outcome["status"]["phase"] == "Promoted"
    if not won and "baselineValue" not in gate:
        raise StepFailed(step, outcome["status"].get("message", ""))
    name = champion["metadata"]["name"]
    winner = "challenger" if won else name
    _wait_recorded(state, winner, step)
    old, new, needed = gate["baselineValue"], gate["value"], gate["required"]
    change = (old - new) / abs(old) * 100
    if won:
        verdict = (f"the challenger won: rmse {new:.4f} against the champion's {old:.4f}, {change:.2f} % better "
                   f"(needed {BEAT_BY * 100:g} %: rmse < {needed:.4f}); it serves now, and {name} is Superseded")
    else:
        verdict = (f"the champion stays: the challenger's rmse {new:.4f} against its {old:.4f} is {change:.2f} % "
                   f"better, and {BEAT_BY * 100:g} % was needed (rmse < {needed:.4f}); the challenger is Rejected")
    version = _alias(state, REGISTRY["model"], REGISTRY["alias"])
    return (f"Champion/challenger: {verdict}.\n"
            f"MLflow registry: {REGISTRY['model']}@{REGISTRY['alias']} is version {version['version']} "
            f"(run {version['run_id']}, the {winner}'s)")


def _wait_recorded(state: stack.State, name: str, step: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = state.kubectl("-n", NAMESPACE, "get", "modelpromotion", name, "-o", "json", check=False)
        conditions = (json.loads(out.stdout).get("status") or {}).get("conditions", []) if out.returncode == 0 else []
        recorded = next((c for c in conditions if c["type"] == "Recorded"), None)
        if recorded and recorded["status"] == "True":
            return
        time.sleep(0.5)
    raise StepFailed(step, f"{name} was not recorded in the registry in {timeout:.0f}s (last: {recorded})")


def _alias(state: stack.State, model: str, alias: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"name": model, "alias": alias})
    with urllib.request.urlopen(f"{state.mlflow_uri}/api/2.0/mlflow/registered-models/alias?{query}",
                                timeout=10) as r:
        found: dict[str, Any] = json.load(r)["model_version"]
    return found


def main(log: Log) -> int:
    t0 = time.monotonic()
    step = "bring devstack up"
    state: stack.State | None = None
    operator: harness.Operator | stack.Proc | None = None
    try:
        log("demo: [1/8] devstack up (builds the Kubernetes binaries the first time)")
        try:
            state = stack.up(log=log)
        except stack.AlreadyRunning as running:
            state = running.state
            log(f"demo: devstack already running from {state.home}")
        step = "install the CRDs"
        log("demo: [2/8] installing the ModelPromotion CRD and the namespace")
        try:
            harness.install_crd(state)
            harness.namespace(state, NAMESPACE)
        except subprocess.CalledProcessError as e:
            raise StepFailed(step, f"kubectl {' '.join(e.cmd[3:])}: {(e.stderr or '').strip()}") from None
        step = "start the operator"
        log("demo: [3/8] starting the operator")
        operator = _operator(state, log)
        step = "train a model"
        log("demo: [4/8] training rf-regressor (experiments/train.py) and logging it to MLflow")
        run_id = _train(state, log)
        log(f"demo: run id {run_id}")
        step = "promote the run"
        log(f"demo: [5/8] applying {SAMPLE.relative_to(REPO)} with that run id")
        champion = _promotion("rf-regressor", run_id, registry=REGISTRY)
        _kubectl(state, "-n", NAMESPACE, "apply", "-f", "-", input=champion, step=step)
        promoted = _wait(state, "rf-regressor", ("Promoted", "Rejected", "Failed"), log, step)
        if promoted["status"]["phase"] != "Promoted":
            raise StepFailed(step, promoted["status"].get("message", ""), str(operator.log))
        sdep_name = promoted["spec"]["target"]["seldonDeployment"]["name"]
        step = "promote a run whose gate cannot pass"
        log("demo: [6/8] a second promotion whose gate cannot pass (rmse <= 1)")
        strict = [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 1}]
        _kubectl(state, "-n", NAMESPACE, "apply", "-f", "-", input=_promotion("too-strict", run_id, strict),
                 step=step)
        rejected = _wait(state, "too-strict", ("Rejected", "Promoted"), log, step)
        if rejected["status"]["phase"] != "Rejected":
            raise StepFailed(step, "the strict gate passed", str(operator.log))
        step = "champion/challenger"
        log("demo: [7/8] champion/challenger: a second run with other hyper-parameters, promoted only if "
            f"its rmse beats the serving model's by {BEAT_BY * 100:g} %")
        contest = _champion_challenger(state, log, promoted)
        model_uri = _kubectl(state, "-n", NAMESPACE, "get", "seldondeployment", sdep_name, "-o",
                             "jsonpath={.spec.predictors[0].graph.modelUri}", step=step)

        print("\n$ kubectl get modelpromotions -n " + NAMESPACE)
        print(_kubectl(state, "-n", NAMESPACE, "get", "modelpromotions", step="show the outcome").rstrip())
        print(f"\nSeldonDeployment {sdep_name} serves: {model_uri}")
        print(f"\nBucket listing of {model_uri}/:")
        print(_listing(state, model_uri))
        print(f"\nRejected: too-strict: {rejected['status']['message']}")
        print(f"\n{contest}")
        step = "predict with the serving model"
        log(f"demo: [8/8] asking {sdep_name} for predictions on the serving model's own input example")
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
