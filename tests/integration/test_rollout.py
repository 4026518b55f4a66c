"""Promoted means serving, on devstack's real controller-manager, scheduler, node, rclone and
MLServer (the Seldon Core v1 double makes the predictor's Deployment, as Seldon's controller does).

One SeldonDeployment ``rf`` in one namespace goes through, in file order: a good model (2x)
Promoted only once it answers its own example; models that pass every check the operator makes
before serving but fail once served (a garbage model.pkl, a pickle MLServer cannot import, a
model answering two numbers per row), each Failed with its evidence while the 2x model serves
again and stays Promoted, one of them with the operator SIGKILLed during the rollout; a second
good model (3x), the first Superseded only once it is verified; the first restored on request;
and a failing model with ``rollback: None``, left in place. The runs: rollout_runs.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import harness, predict, stack

from .conftest import Operator, new_namespace
from .helpers import RMSE_BELOW_1, apply, condition, events, get, phase_in, wait_for

SCOPE = "rollout"
TIMEOUT = 120  # rollout.timeout of these promotions, seconds
XS = [1.0, 2.0, 3.0]  # the models' input example


@dataclass
class Rf:
    namespace: str
    operator: Operator
    runs: dict[str, str]


@pytest.fixture(scope="module")
def rf(devstack: stack.State, crd: None, mlflow_env: dict[str, str],
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rf]:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("rollout_runs.py"))], env=mlflow_env,
                         capture_output=True, text=True, timeout=300, check=True)
    runs = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    ns = new_namespace(devstack, "ro")
    op = Operator(devstack, tmp_path_factory.mktemp("rollout") / "operator.log", namespaces=[ns], scope=SCOPE)
    op.start()
    try:
        yield Rf(ns, op, runs)
    finally:
        op.stop()
        harness.delete_namespace(devstack, ns)


def promote(rf: Rf, devstack: stack.State, name: str, kind: str, **rollout: str) -> None:
    obj = harness.promotion(name, rf.runs[kind], RMSE_BELOW_1, deployment="rf", prefix="rollout", scope=SCOPE,
                            replicas=1)
    obj["spec"]["rollout"] = {"timeout": f"{TIMEOUT}s", **rollout}
    apply(devstack, rf.namespace, obj)


def answers(devstack: stack.State, ns: str) -> list[float]:
    """What SeldonDeployment rf answers for the example, through its Service."""
    sdep = get(devstack, ns, "seldondeployment", "rf")
    assert sdep is not None
    return predict.infer(predict.infer_url(sdep), predict.v2_request({"inputs": [[x] for x in XS]}))


def serves(devstack: stack.State, ns: str) -> tuple[str, str]:
    sdep = get(devstack, ns, "seldondeployment", "rf")
    assert sdep is not None
    return sdep["metadata"]["annotations"]["mlops.dev/promotion"], sdep["spec"]["predictors"][0]["graph"]["modelUri"]


def reasons(devstack: stack.State, ns: str, name: str) -> list[str]:
    """The promotion's Events' reasons, sorted (their timestamps have a resolution of a second),
    beside the VersionSkew Warning every one of them has (trained under the project's
    scikit-learn, served under the image's: README, the version table)."""
    return sorted(e["reason"] for e in events(devstack, ns, name) if e["reason"] != "VersionSkew")


def phases_until(devstack: stack.State, ns: str, name: str, phases: tuple[str, ...], watch: str,
                 timeout: float) -> tuple[dict[str, Any], set[str]]:
    """Wait for ``name`` to reach one of ``phases``; meanwhile, the phases ``watch`` was seen in
    while ``name`` had not reached them (``watch`` is read first: a promotion verified marks the
    one it replaces Superseded right after its own Promoted)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while True:
        other = ((get(devstack, ns, "mp", watch) or {}).get("status") or {}).get("phase", "")
        mp = get(devstack, ns, "mp", name)
        if mp and (mp.get("status") or {}).get("phase") in phases:
            return mp, seen
        seen.add(other)
        assert time.monotonic() < deadline, f"{name}: {(mp or {}).get('status')}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def first(devstack: stack.State, rf: Rf) -> dict[str, Any]:
    """good-2x promoted: the baseline every failure must come back to."""
    promote(rf, devstack, "two-x", "good-2x")
    mp = wait_for(devstack, rf.namespace, "two-x", phase_in("Deploying", "Promoted", "Failed"), timeout=60)
    assert mp["status"]["phase"] == "Deploying", mp["status"]  # seen before it serves
    return wait_for(devstack, rf.namespace, "two-x", phase_in("Promoted", "Failed"), timeout=TIMEOUT + 30)


def test_a_good_model_is_promoted_once_rolled_out_and_answering_its_own_example(
        devstack: stack.State, rf: Rf, first: dict[str, Any]) -> None:
    st = first["status"]
    assert st["phase"] == "Promoted", st
    assert (condition(first, "Deployed")["reason"], condition(first, "Verified")["reason"]) == (
        "RolledOut", "SmokeTestPassed")
    assert st["verification"]["example"] == "serving_input_example.json" and st["verification"]["rows"] == 3
    assert st["verification"]["predictions"] == pytest.approx([2.0, 4.0, 6.0])
    assert st["verification"]["endpoint"].endswith(":9000/v2/models/model/infer")  # a Pod, not the Service
    deployment = predict.deployment_of(devstack, rf.namespace, "rf")
    rolled = devstack.kubectl("-n", rf.namespace, "rollout", "status", f"deploy/{deployment}", "--timeout=1s")
    assert "successfully rolled out" in rolled.stdout  # already, when it said Promoted
    assert answers(devstack, rf.namespace) == pytest.approx([2.0, 4.0, 6.0])
    assert reasons(devstack, rf.namespace, "two-x") == sorted(["Deploying", "Promoted"])


@pytest.mark.parametrize(("name", "kind", "reason", "evidence"), [
    ("garbage", "garbage", "RolloutFailed", "CrashLoopBackOff"),
    ("two-outputs", "two-outputs", "SmokeTestFailed", "output 'predict' holds 6 values for 3 example rows"),
])
def test_a_model_that_fails_once_served_is_failed_with_evidence_and_the_previous_one_serves_again(
        devstack: stack.State, rf: Rf, first: dict[str, Any], name: str, kind: str, reason: str,
        evidence: str) -> None:
    started = time.monotonic()
    promote(rf, devstack, name, kind)
    mp, seen = phases_until(devstack, rf.namespace, name, ("Failed", "Promoted"), "two-x", TIMEOUT + 30)
    took = time.monotonic() - started
    st = mp["status"]
    assert st["phase"] == "Failed" and condition(mp, "Stalled")["reason"] == reason, st
    assert evidence in st["message"] and st["message"].endswith(
        f"rolled back: rf serves {first['status']['modelUri']} of ModelPromotion two-x again"), st["message"]
    assert st["rollout"]["rolledBackTo"] == "two-x" and st["rollout"]["evidence"]
    assert seen == {"Promoted"}  # the serving promotion was never demoted while the new one was tried
    assert serves(devstack, rf.namespace) == ("two-x", first["status"]["modelUri"])
    assert answers(devstack, rf.namespace) == pytest.approx([2.0, 4.0, 6.0])
    assert reasons(devstack, rf.namespace, name) == sorted(["Deploying", "RollingBack", reason])
    print(f"{name}: Failed and rolled back {took:.1f}s after apply")


def test_the_operator_killed_during_the_rollout_resumes_it_once(
        devstack: stack.State, rf: Rf, first: dict[str, Any]) -> None:
    promote(rf, devstack, "unloadable", "unloadable")
    wait_for(devstack, rf.namespace, "unloadable", phase_in("Deploying"), timeout=60)
    rf.operator.kill()
    time.sleep(3)
    rf.operator.start()
    mp = wait_for(devstack, rf.namespace, "unloadable", phase_in("Failed", "Promoted"), timeout=TIMEOUT + 30)
    assert condition(mp, "Stalled")["reason"] == "RolloutFailed", mp["status"]
    assert mp["status"]["rollout"]["rolledBackTo"] == "two-x"
    assert reasons(devstack, rf.namespace, "unloadable") == sorted(["Deploying", "RollingBack", "RolloutFailed"])
    assert serves(devstack, rf.namespace)[0] == "two-x"
    assert answers(devstack, rf.namespace) == pytest.approx([2.0, 4.0, 6.0])
    deadline = time.monotonic() + 60  # the failed model's Pod stops (Seldon's preStop sleeps 10 s)
    while len(json.loads(devstack.kubectl("-n", rf.namespace, "get", "pods", "-o", "json").stdout)["items"]) > 1:
        assert time.monotonic() < deadline, "the failed model's Pod still runs"
        time.sleep(1)


def test_a_second_good_model_supersedes_the_first_only_once_verified(
        devstack: stack.State, rf: Rf, first: dict[str, Any]) -> None:
    promote(rf, devstack, "three-x", "good-3x")
    mp, seen = phases_until(devstack, rf.namespace, "three-x", ("Promoted", "Failed"), "two-x", TIMEOUT + 30)
    assert mp["status"]["phase"] == "Promoted" and seen == {"Promoted"}
    assert wait_for(devstack, rf.namespace, "two-x", phase_in("Superseded"), timeout=10)["status"]["supersededBy"] \
        == "three-x"
    assert answers(devstack, rf.namespace) == pytest.approx([3.0, 6.0, 9.0])


def test_a_superseded_promotion_is_restored_on_request(devstack: stack.State, rf: Rf, first: dict[str, Any]) -> None:
    devstack.kubectl("-n", rf.namespace, "annotate", "mp", "two-x", "mlops.dev/restore=1")
    wait_for(devstack, rf.namespace, "two-x", phase_in("Deploying"), timeout=30)
    mp = wait_for(devstack, rf.namespace, "two-x", phase_in("Promoted", "Failed"), timeout=TIMEOUT + 30)
    assert mp["status"]["phase"] == "Promoted" and mp["status"]["restore"] == "1"
    assert mp["status"]["message"].startswith("restored on request (mlops.dev/restore=1)")
    assert wait_for(devstack, rf.namespace, "three-x", phase_in("Superseded"), timeout=10)
    assert answers(devstack, rf.namespace) == pytest.approx([2.0, 4.0, 6.0])
    history = devstack.kubectl("-n", rf.namespace, "get", "mp", "--field-selector",
                               "spec.target.seldonDeployment.name=rf", "-o", "name").stdout.split()
    assert len(history) == 5 and "modelpromotion.mlops.dev/three-x" in history


def test_rollback_none_leaves_the_failed_model_in_place_and_says_so(
        devstack: stack.State, rf: Rf, first: dict[str, Any]) -> None:
    promote(rf, devstack, "kept-garbage", "garbage", rollback="None")
    mp = wait_for(devstack, rf.namespace, "kept-garbage", phase_in("Failed", "Promoted"), timeout=TIMEOUT + 30)
    assert mp["status"]["phase"] == "Failed"
    assert mp["status"]["message"].endswith("rollout.rollback is None: SeldonDeployment rf is left as it is, set to "
                                            "this model")
    assert serves(devstack, rf.namespace) == ("kept-garbage", mp["status"]["modelUri"])
    assert get(devstack, rf.namespace, "mp", "two-x")["status"]["phase"] == "Promoted"  # its Pod still answers
