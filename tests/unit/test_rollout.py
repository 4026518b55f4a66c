"""The rollout's verdict over in-memory gateways: Deploying until the predictor's Deployment has
rolled the model out and the model answered its own example, then Promoted; a failure rolls the
deployment back to the promotion that served before. The same paths run on devstack's real
controller-manager, node, rclone and MLServer in tests/integration/test_rollout.py."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from promoter import promotion, rollout, smoke
from promoter.spec import RolloutState

from .fakes import DEPLOYMENTS, PODS, PROMOTION, RUN_A, RUN_B, SELDON, SLICES, World, condition

URI_A, URI_B = f"s3://models/ns/rf/{RUN_A}", f"s3://models/ns/rf/{RUN_B}"
CRASHING = {"phase": "Running", "containerStatuses": [{
    "name": "model", "ready": False, "restartCount": 2,
    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}},
    "lastState": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}


def uri_served(world: World) -> str:
    sd = world.kube.obj(SELDON, "ns", "sd")
    assert sd is not None
    return str(sd["spec"]["predictors"][0]["graph"]["modelUri"])


def two(world: World, **target: Any) -> None:
    """p1 Promoted on sd; p2 applied and its deployment written (Deploying)."""
    world.apply("p1", RUN_A, **target)
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Promoted"
    world.apply("p2", RUN_B, **target)
    world.reconcile("p2", roll_out=False)
    assert world.status("p2")["phase"] == "Deploying" and world.served_by() == "p2"


# --- observe: what kubectl rollout status would say -------------------------------------------------


def _deployment(uri: str, generation: int = 2, observed: int = 2, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "sd-default-0-model", "generation": generation},
            "spec": {"replicas": 1, "template": {"spec": {"initContainers": [{"args": [uri, "/mnt/models"]}]}}},
            "status": {"observedGeneration": observed, **status}}


@pytest.mark.parametrize(("deployment", "detail"), [
    (None, "no Deployment labelled seldon-deployment-id=sd yet"),
    (_deployment(URI_A), f"does not load {URI_B} yet"),
    (_deployment(URI_B, observed=1), "spec update to be observed"),
    (_deployment(URI_B, updatedReplicas=0, replicas=1), "0 of 1 new replicas updated"),
    (_deployment(URI_B, updatedReplicas=1, replicas=2, availableReplicas=1), "1 old replicas pending termination"),
    (_deployment(URI_B, updatedReplicas=1, replicas=1, availableReplicas=0), "0 of 1 updated replicas available"),
])
def test_a_rollout_under_way_says_what_it_waits_for(deployment: dict[str, Any] | None, detail: str) -> None:
    seen = rollout.observe([deployment] if deployment else [], [], URI_B, "sd")
    assert not seen.done and not seen.failed and detail in seen.detail


def test_a_rollout_is_done_when_every_replica_is_updated_and_available_and_none_old_is_left() -> None:
    seen = rollout.observe([_deployment(URI_B, updatedReplicas=1, replicas=1, availableReplicas=1)], [], URI_B, "sd")
    assert seen.done and seen.deployment == "sd-default-0-model" and seen.replicas == 1


def test_a_crash_looping_new_pod_fails_the_rollout_with_its_reason_exit_code_and_restarts() -> None:
    pod = {"metadata": {"name": "sd-x"}, "spec": {"initContainers": [{"args": [URI_B, "/mnt/models"]}]},
           "status": CRASHING}
    old = {**pod, "spec": {"initContainers": [{"args": [URI_A, "/mnt/models"]}]}}
    seen = rollout.observe([_deployment(URI_B, updatedReplicas=1, replicas=2)], [old, pod], URI_B, "sd")
    assert seen.failed and seen.evidence is not None
    assert (seen.evidence.pod, seen.evidence.reason, seen.evidence.exit_code, seen.evidence.restarts) == (
        "sd-x", "CrashLoopBackOff", 0, 2)
    assert seen.detail == ("Pod sd-x: container model CrashLoopBackOff (exit code 0, 2 restarts): "
                           "back-off 10s restarting failed container")
    # an old Pod crash-looping is not this rollout's failure
    assert not rollout.observe([_deployment(URI_B, updatedReplicas=1, replicas=2)], [old], URI_B, "sd").failed


def test_a_failing_init_container_and_an_exceeded_progress_deadline_fail_the_rollout() -> None:
    init = {"metadata": {"name": "sd-y"}, "spec": {"initContainers": [{"args": [URI_B, "/mnt/models"]}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": "model-model-initializer", "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                             "message": "Failed to copy: SignatureDoesNotMatch"}}}]}}
    seen = rollout.observe([_deployment(URI_B, updatedReplicas=1, replicas=1)], [init], URI_B, "sd")
    assert seen.failed and "exit code 1" in seen.detail and "SignatureDoesNotMatch" in seen.detail
    stalled = _deployment(URI_B, updatedReplicas=1, replicas=1, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}])
    seen = rollout.observe([stalled], [], URI_B, "sd")
    assert seen.failed and seen.detail == "Deployment sd-default-0-model exceeded its progress deadline"


# --- the smoke test's request and answer -----------------------------------------------------------


def test_mlflow_examples_become_v2_requests() -> None:
    split = smoke.request_of({"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}})
    assert split.rows == 2 and split.body == {"inputs": [
        {"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1, 2.5, 3, 4]}]}
    assert smoke.request_of({"inputs": [[1, 2], [3, 4]]}).body["inputs"][0]["datatype"] == "INT64"
    assert smoke.request_of({"columns": ["a"], "data": [[0.1]]}).rows == 1  # input_example.json, split orient
    mixed = smoke.request_of([{"city": "Oslo", "n": 3}, {"city": "Rome", "n": 4}])  # records, text: pandas codec
    assert mixed.body == {"parameters": {"content_type": "pd"}, "inputs": [
        {"name": "city", "shape": [2, 1], "datatype": "BYTES", "data": ["Oslo", "Rome"]},
        {"name": "n", "shape": [2, 1], "datatype": "INT64", "data": [3, 4]}]}
    assert smoke.request_of({"inputs": [[0.0]] * 500}).rows == smoke.MAX_ROWS
    for bad in ({}, {"inputs": []}, {"inputs": {"a": [1]}}, {"columns": ["a", "b"], "data": [[1]]},
                {"inputs": [[1, 2], [3]]}):
        with pytest.raises(smoke.NotConvertible):
            smoke.request_of(bad)


def test_an_answer_counts_only_with_one_finite_number_per_row_per_output() -> None:
    good = json.dumps({"outputs": [{"name": "predict", "shape": [2, 1], "data": [1.5, 2.5]}]}).encode()
    assert smoke.predictions(200, good, 2) == [1.5, 2.5]
    two_per_row = json.dumps({"outputs": [{"name": "predict", "shape": [2, 2], "data": [1, 2, 3, 4]}]}).encode()
    for code, body, words in ((200, two_per_row, "holds 4 values for 2 example rows"),
                              (500, b"model not ready", "answered HTTP 500: model not ready"),
                              (200, b"<html>", "no JSON"),
                              (200, b'{"outputs": [{"name": "p", "data": [1, NaN]}]}', "not a finite number"),
                              (200, b'{"outputs": [{"name": "p", "data": ["a", "b"]}]}', "not a finite number"),
                              (200, b'{"outputs": []}', "no outputs")):
        with pytest.raises(smoke.BadAnswer, match=words.replace("(", r"\(")):
            smoke.predictions(code, body, 2)


def test_the_next_look_comes_soon_then_less_often() -> None:
    assert rollout.delay(0) == rollout.delay(59) == 0.5
    assert rollout.delay(120) == 1.5 and rollout.delay(600) == 5.0


# --- the verdict -------------------------------------------------------------------------------------


def test_promoted_only_once_rolled_out_and_the_previous_promotion_superseded_only_then(world: World) -> None:
    two(world)
    for _ in range(3):  # not rolled out: still Deploying, p1 still Promoted, and the check agrees
        world.roll_out(ready=False)
        assert world.look("p2").watch is not None
        world.sweep()
        assert (world.status("p1")["phase"], world.status("p2")["phase"]) == ("Promoted", "Deploying")
    assert world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/rollback-to"] == "p1"
    world.roll_out()
    world.look("p2")
    p1, p2 = world.status("p1"), world.status("p2")
    assert (p1["phase"], p2["phase"]) == ("Superseded", "Promoted")
    assert condition(p2, "Deployed")["reason"] == "RolledOut" and p2["rollout"]["previous"] == "p1"
    assert world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/rollback-to"] == ""
    assert world.counter("modelpromotion_rollout_duration_seconds_count", result="Verified") == 2


def test_a_crash_looping_model_is_failed_with_its_evidence_and_the_previous_model_restored(world: World) -> None:
    two(world)
    world.roll_out(ready=False, pod=CRASHING)
    world.look("p2")
    p2 = world.status("p2")
    assert p2["phase"] == "Deploying" and p2["rollout"]["state"] == "RollingBack"
    assert uri_served(world) == URI_A and world.served_by() == "p1"  # written back at once
    assert world.status("p1")["phase"] == "Promoted"
    assert world.events("p2")[-1] == ("Warning", "RollingBack")
    world.restart()  # the operator stopped during the rollback: resumed, not repeated
    world.roll_out()  # p1's model rolled out again
    world.look("p2")
    p2 = world.status("p2")
    assert p2["phase"] == "Failed" and condition(p2, "Stalled")["reason"] == "RolloutFailed"
    assert p2["message"].startswith("rollout failed: Pod sd-default-0-model-0: container model CrashLoopBackOff "
                                    "(exit code 0, 2 restarts)")
    assert p2["message"].endswith(f"rolled back: sd serves {URI_A} of ModelPromotion p1 again")
    assert p2["rollout"]["evidence"] == {"pod": "sd-default-0-model-0", "container": "model",
                                         "reason": "CrashLoopBackOff", "exitCode": 0, "restarts": 2,
                                         "message": "back-off 10s restarting failed container"}
    assert p2["rollout"]["rolledBackTo"] == "p1" and world.status("p1")["phase"] == "Promoted"
    assert [r for _, r in world.events("p2")].count("RollingBack") == 1
    assert world.counter("modelpromotion_rollbacks_total", reason="RolloutFailed") == 1
    assert world.look("p2").watch is None  # decided
    assert world.sweep() == 1 and world.status("p1")["phase"] == "Promoted"  # p1 checked, still serving


def test_rollback_none_fails_and_leaves_the_deployment_set_to_the_new_model(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    world.apply("p2", RUN_B, extra={"rollout": {"rollback": "None"}})
    world.reconcile("p2", roll_out=False)
    world.roll_out(ready=False, pod=CRASHING)
    world.look("p2")
    p2 = world.status("p2")
    assert p2["phase"] == "Failed"
    assert p2["message"].endswith("rollout.rollback is None: SeldonDeployment sd is left as it is, set to this model")
    assert uri_served(world) == URI_B and world.served_by() == "p2"


def test_a_first_promotion_that_fails_leaves_the_deployment_and_says_nothing_served_before(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1", roll_out=False)
    world.roll_out(ready=False, pod=CRASHING)
    world.look("p1")
    p1 = world.status("p1")
    assert p1["phase"] == "Failed" and "no verified promotion served sd before this one" in p1["message"]


def test_a_rollout_that_never_finishes_fails_at_its_timeout(world: World) -> None:
    two(world, replicas=1)
    world.roll_out(ready=False)
    obj = world.kube.obj(PROMOTION, "ns", "p2")
    obj["status"]["rollout"]["started"] = time.time() - 11  # rollout.timeout 10s has passed
    obj["spec"]["rollout"] = {"timeout": "10s"}
    before = len(world.kube.requests)
    world.look("p2")
    assert world.kube.requests[before:].count(("list", PODS, "")) == 1  # the evidence is from the look's own list
    p2 = world.status("p2")
    assert p2["rollout"]["state"] == "RollingBack" and condition(p2, "Deployed")["reason"] == "RolloutFailed"
    assert (p2["rollout"]["evidence"]["pod"], p2["rollout"]["evidence"]["container"]) == ("sd-default-0-model-0",
                                                                                         "model")
    assert p2["message"].startswith("not rolled out within rollout.timeout 10s: Deployment sd-default-0-model: "
                                    "1 old replicas pending termination")


def test_a_promotion_overtaken_while_deploying_is_superseded_and_the_fallback_is_kept(world: World) -> None:
    two(world)
    world.apply("p3", RUN_A)
    world.reconcile("p3", roll_out=False)
    sd = world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]
    assert (sd["mlops.dev/promotion"], sd["mlops.dev/rollback-to"]) == ("p3", "p1")  # p2 was never verified
    world.look("p2")
    assert world.status("p2")["phase"] == "Superseded" and world.status("p2")["supersededBy"] == "p3"
    world.roll_out()
    world.look("p3")
    assert [world.status(n)["phase"] for n in ("p1", "p2", "p3")] == ["Superseded", "Superseded", "Promoted"]


def test_a_promotion_whose_previous_copy_was_tampered_with_is_not_rolled_back_onto_it(world: World) -> None:
    two(world)
    world.s3.buckets["models"][f"ns/rf/{RUN_A}/model.pkl"] = b"someone else's pickle"
    world.roll_out(ready=False, pod=CRASHING)
    world.look("p2")
    p2 = world.status("p2")
    assert p2["phase"] == "Failed" and "cannot roll back to ModelPromotion p1: artifact at" in p2["message"]
    assert uri_served(world) == URI_B


# --- rollback on request -------------------------------------------------------------------------------


def test_a_superseded_promotion_is_restored_on_request_once_per_value(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    world.apply("p2", RUN_B)
    world.reconcile("p2")
    obj = world.kube.obj(PROMOTION, "ns", "p1")
    obj["metadata"]["annotations"] = {promotion.RESTORE_ANNOTATION: "1"}
    outcome = promotion.restore(world.ctx, world.body("p1"))
    assert outcome.watch is not None and world.status("p1")["phase"] == "Deploying"
    assert world.status("p2")["phase"] == "Promoted" and uri_served(world) == URI_A  # p2 kept until verified
    world.roll_out()
    world.look("p1")
    assert (world.status("p1")["phase"], world.status("p2")["phase"]) == ("Promoted", "Superseded")
    assert world.status("p1")["restore"] == "1"
    assert world.status("p1")["message"].startswith("restored on request (mlops.dev/restore=1): sd serves run")
    assert promotion.restore(world.ctx, world.body("p1")).events == []  # the same value again: nothing
    obj = world.kube.obj(PROMOTION, "ns", "p1")
    obj["metadata"]["annotations"] = {promotion.RESTORE_ANNOTATION: "2"}
    ignored = promotion.restore(world.ctx, world.body("p1"))  # it serves already
    assert [e.reason for e in ignored.events] == ["RestoreIgnored"]


# --- the smoke test against a real HTTP server ----------------------------------------------------------


class _Model(http.server.BaseHTTPRequestHandler):
    answer: dict[str, Any] = {}
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        body = json.dumps(type(self).answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Model.seen = []
    yield server.server_address[1]
    server.shutdown()


def _with_example_and_endpoint(world: World, port: int) -> None:
    world.s3.put_model(RUN_B, {"MLmodel": b"flavors: {sklearn: {pickled_model: model.pkl}}\n",
                               "model.pkl": b"pickled", "serving_input_example.json": json.dumps(
                                   {"dataframe_split": {"columns": ["x"], "data": [[1.0], [2.0]]}}).encode()})
    two(world, replicas=1)
    world.roll_out()
    world.kube.put(SLICES, "ns", "sd-default-xyz", {
        "metadata": {"labels": {"kubernetes.io/service-name": "sd-default"}},
        "ports": [{"name": "http", "port": port}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "name": "sd-default-0-model-0"}}]})


def test_the_model_answering_its_example_is_verified_and_its_predictions_recorded(
        world: World, model_server: int) -> None:
    _Model.answer = {"outputs": [{"name": "predict", "shape": [2, 1], "datatype": "FP64", "data": [10.5, 20.5]}]}
    _with_example_and_endpoint(world, model_server)
    world.look("p2")
    p2 = world.status("p2")
    assert p2["phase"] == "Promoted" and condition(p2, "Verified")["reason"] == "SmokeTestPassed"
    assert p2["verification"] | {"latencySeconds": 0} == {
        "endpoint": f"http://127.0.0.1:{model_server}/v2/models/model/infer", "example": "serving_input_example.json",
        "rows": 2, "latencySeconds": 0, "predictions": [10.5, 20.5]}
    assert _Model.seen == [{"inputs": [{"name": "input-0", "shape": [2, 1], "datatype": "FP64", "data": [1.0, 2.0]}]}]
    assert world.counter("modelpromotion_smoke_test_duration_seconds_count") == 1


def test_a_model_answering_the_wrong_shape_fails_its_smoke_test_and_is_rolled_back(
        world: World, model_server: int) -> None:
    _Model.answer = {"outputs": [{"name": "predict", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    _with_example_and_endpoint(world, model_server)
    world.look("p2")
    p2 = world.status("p2")
    assert p2["rollout"]["state"] == RolloutState.ROLLING_BACK.value and uri_served(world) == URI_A
    assert condition(p2, "Verified")["status"] == "False" and condition(p2, "Verified")["reason"] == "SmokeTestFailed"
    assert condition(p2, "Deployed")["reason"] == "RolledOut"  # it rolled out: the model answered wrongly
    assert "output 'predict' holds 4 values for 2 example rows" in p2["message"]
    world.roll_out()
    world.look("p2")
    assert world.status("p2")["phase"] == "Failed" and condition(world.status("p2"), "Stalled")["reason"] == \
        "SmokeTestFailed"


def test_a_look_at_a_rollout_under_way_reads_three_objects_and_writes_only_news(world: World) -> None:
    two(world)
    world.roll_out(ready=False)
    world.look("p2")  # news: what it waits for now
    before = len(world.kube.requests)
    world.look("p2")
    assert world.kube.requests[before:] == [("get", SELDON, "sd"), ("list", DEPLOYMENTS, ""), ("list", PODS, "")]
