"""promotion.reconcile over in-memory gateways (tests/unit/fakes.py): every transition of the
status table in the README, with the status it writes, the Events it posts and whether it
retries. The same paths run against devstack's real servers in tests/integration."""

from __future__ import annotations

import pytest

from promoter.errors import CredentialsProblem, RunNotFinished, Unavailable
from promoter.status import DEGRADED

from .fakes import KEYS, PROMOTION, RUN_A, RUN_B, SECRET, SELDON, World, condition

MODEL_URI_A = f"s3://models/ns/rf/{RUN_A}"  # under the namespace's root


def promoted(world: World, name: str = "p1", run_id: str = RUN_A, deployment: str = "sd") -> dict:
    world.apply(name, run_id, deployment)
    outcome = world.reconcile(name)
    assert outcome.retry is None and outcome.rejected is None, outcome
    return world.status(name)


# --- a new generation ------------------------------------------------------------------------


def test_a_passing_run_is_copied_deployed_and_promoted_with_one_event(world: World) -> None:
    st = promoted(world)
    assert st["phase"] == "Promoted" and st["observedGeneration"] == 1
    assert st["modelUri"] == MODEL_URI_A and st["runId"] == RUN_A and st["deployment"] == "sd"
    assert st["message"] == f"promoted: rmse 0.5 < 1; sd now serves run {RUN_A}"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "GatesPassed": "True", "ArtifactCopied": "True", "Deployed": "True", "Ready": "True",
        "Reconciling": "False", "Stalled": "False"}
    assert st["artifact"]["files"] == 2 and st["artifact"]["digest"].startswith("sha256:")
    assert sorted(world.s3.buckets["models"]) == [f"ns/rf/{RUN_A}/MLmodel", f"ns/rf/{RUN_A}/model.pkl",
                                                  f"ns/rf/{RUN_A}/promotion-manifest.json"]
    sd = world.kube.obj(SELDON, "ns", "sd")
    assert sd is not None and sd["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A
    assert world.served_by() == "p1"
    assert world.kube.obj(SECRET, "ns", "seldon-rclone-secret") is not None
    assert world.events("p1") == [("Normal", "Promoted")]
    assert world.counter("modelpromotion_outcomes_total", outcome="Promoted") == 1


def test_the_promoted_status_is_written_before_the_handler_returns(world: World) -> None:
    world.apply("p1", RUN_A)
    from promoter import promotion

    outcome = promotion.reconcile(world.ctx, world.body("p1"), 0.0)
    assert outcome.status == {}  # nothing left for kopf's patch: ownership wrote it under the lock
    assert world.status("p1")["phase"] == "Promoted"


def test_a_failed_gate_is_rejected_once_and_touches_nothing(world: World) -> None:
    world.apply("p1", RUN_A, gates=[{"metric": "rmse", "op": "LessThan", "threshold": 0.1}])
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None and outcome.retry is None
    assert st["phase"] == "Rejected" and st["message"] == "gate failed: rmse 0.5 is not < 0.1"
    assert condition(st, "GatesPassed")["status"] == "False"
    assert condition(st, "Stalled") | {"lastTransitionTime": ""} == {
        "type": "Stalled", "status": "True", "reason": "GatesFailed", "message": st["message"],
        "lastTransitionTime": "", "observedGeneration": 1}
    assert st["gateSummary"] == "rmse 0.5!<0.1"
    assert world.kube.obj(SELDON, "ns", "sd") is None and world.s3.writes == []
    assert world.events("p1") == [("Warning", "GatesFailed")]
    requests = len(world.kube.requests)
    assert world.reconcile("p1").status == {}  # resumed: decided, nothing to do
    assert world.kube.requests[requests:] == [] and world.events("p1") == [("Warning", "GatesFailed")]


@pytest.mark.parametrize(("change", "reason", "words"), [
    (lambda w: w.mlflow.add_run(RUN_A, {"rmse": 0.5}, status="FAILED"), "RunNotUsable", "it is FAILED"),
    (lambda w: w.mlflow.add_run(RUN_A, {"rmse": 0.5}, lifecycle_stage="deleted"), "RunNotUsable", "deleted"),
    (lambda w: w.mlflow.runs.pop(RUN_A), "RunNotFound", f"run {RUN_A} not found on MLflow"),
    (lambda w: w.mlflow.add_run(RUN_A, {"rmse": "NaN"}), "GatesFailed", "rmse is NaN"),
    (lambda w: w.mlflow.add_run(RUN_A, {}), "GatesFailed", "rmse was not logged"),
    (lambda w: w.kube.objects.pop((SECRET, "ns", "minio-credentials")), "CredentialsInvalid",
     "Secret ns/minio-credentials (operator default PROMOTER_STORAGE_SECRET): not found, not readable, or "
     "without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    (lambda w: w.kube.put_secret("ns", "minio-credentials", {"AWS_ACCESS_KEY_ID": "x"}), "CredentialsInvalid",
     "Secret ns/minio-credentials (operator default PROMOTER_STORAGE_SECRET): not found, not readable, or "
     "without AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    (lambda w: w.s3.accepted.clear(), "CredentialsInvalid", "refused it"),
    (lambda w: w.s3.buckets["mlflow"].clear(), "ModelNotFound", "model 'rf-regressor' of run"),
    (lambda w: w.s3.put_model(RUN_A, {"MLmodel": b"flavors: {sklearn: {serialization_format: skops}}",
                                      "model.skops": b"x"}), "IncompatibleModel", "skops"),
])
def test_each_permanent_problem_is_rejected_with_its_reason_and_nothing_deployed(
        world: World, change, reason: str, words: str) -> None:
    if reason == "IncompatibleModel":
        world.s3.buckets["mlflow"].clear()
    change(world)
    world.apply("p1", RUN_A)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None, st
    assert (st["phase"], condition(st, "Stalled")["reason"]) == ("Rejected", reason)
    assert words in st["message"]
    assert world.kube.obj(SELDON, "ns", "sd") is None
    assert world.events("p1") == [("Warning", reason)]
    assert KEYS["AWS_SECRET_ACCESS_KEY"] not in str(st) + str(world.kube.events)


def test_a_model_over_the_file_limit_is_rejected_before_a_byte_is_copied(world: World) -> None:
    world.settings = world.settings.__class__(**{**world.settings.__dict__, "max_files": 1})
    world.restart()
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    st = world.status("p1")
    assert condition(st, "Stalled")["reason"] == "ModelTooLarge" and "PROMOTER_MAX_FILES=1" in st["message"]
    assert world.s3.writes == []


def test_a_malformed_spec_is_rejected_naming_the_field(world: World) -> None:
    world.apply("p1", RUN_A, replicas=-1)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None and st["phase"] == "Rejected"
    assert st["message"] == "spec.target.seldonDeployment.replicas: must be >= 0, got -1"


def test_a_running_run_is_waited_for_with_one_event_then_promoted(world: World) -> None:
    world.mlflow.add_run(RUN_A, {"rmse": 0.5}, status="RUNNING")
    world.apply("p1", RUN_A)
    for _ in range(3):
        outcome = world.reconcile("p1", waited=5)
        assert isinstance(outcome.retry, RunNotFinished) and outcome.rejected is None
    st = world.status("p1")
    assert st["phase"] == "Pending" and "observedGeneration" not in st
    assert condition(st, "Reconciling") | {"lastTransitionTime": ""} == {
        "type": "Reconciling", "status": "True", "reason": "RunNotFinished",
        "message": f"run {RUN_A} is RUNNING; waiting for it to finish", "lastTransitionTime": "",
        "observedGeneration": 1}
    assert world.events("p1") == [("Normal", "RunNotFinished")]  # once, not per retry
    assert world.counter("modelpromotion_upstream_errors_total", upstream="mlflow") == 0  # not an error
    world.mlflow.add_run(RUN_A, {"rmse": 0.5})
    world.reconcile("p1", waited=10)
    assert world.status("p1")["phase"] == "Promoted"
    assert condition(world.status("p1"), "Reconciling")["status"] == "False"


def test_a_run_still_running_after_the_bound_is_rejected(world: World) -> None:
    world.mlflow.add_run(RUN_A, {"rmse": 0.5}, status="RUNNING")
    world.apply("p1", RUN_A)
    outcome = world.reconcile("p1", waited=61)
    st = world.status("p1")
    assert outcome.rejected is not None and st["phase"] == "Rejected"
    assert condition(st, "Stalled")["reason"] == "RunNotFinished" and "after 61s" in st["message"]


@pytest.mark.parametrize(("outage", "upstream", "reason"), [
    (lambda w: setattr(w.mlflow, "down", True), "mlflow", "MlflowUnavailable"),
    (lambda w: setattr(w.s3, "down", True), "s3", "S3Unavailable"),
    (lambda w: w.kube.fail.__setitem__(("get", SELDON), Unavailable("kubernetes", "timed out", 1.0)),
     "kubernetes", "KubernetesUnavailable"),
])
def test_an_outage_is_waited_for_counted_and_then_the_promotion_completes(
        world: World, outage, upstream: str, reason: str) -> None:
    outage(world)
    world.apply("p1", RUN_A)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert isinstance(outcome.retry, Unavailable) and outcome.retry.upstream == upstream
    assert condition(st, "Reconciling")["reason"] == reason and st["phase"] != "Promoted"
    assert world.counter("modelpromotion_upstream_errors_total", upstream=upstream) == 1
    assert world.events("p1") == [("Normal", reason)]
    assert world.kube.obj(SELDON, "ns", "sd") is None
    world.mlflow.down = world.s3.down = False
    world.kube.fail.clear()
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Promoted"


def test_a_new_generation_starts_over_and_serves_the_new_run(world: World) -> None:
    promoted(world)
    world.apply("p1", RUN_B)
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and st["observedGeneration"] == 2 and st["runId"] == RUN_B
    assert world.kube.obj(SELDON, "ns", "sd")["spec"]["predictors"][0]["graph"]["modelUri"].endswith(RUN_B)
    assert world.events("p1") == [("Normal", "Promoted"), ("Normal", "Promoted")]


def test_a_new_generation_that_fails_its_gate_leaves_the_deployment_as_it_was(world: World) -> None:
    promoted(world)
    world.apply("p1", RUN_B, gates=[{"metric": "rmse", "op": "LessThan", "threshold": 0.1}])
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Rejected" and world.status("p1")["observedGeneration"] == 2
    assert world.kube.obj(SELDON, "ns", "sd")["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A


# --- who serves --------------------------------------------------------------------------------


def test_a_later_promotion_takes_the_deployment_and_the_earlier_one_is_superseded(world: World) -> None:
    promoted(world, "p1", RUN_A)
    before = len(world.kube.requests)
    promoted(world, "p2", RUN_B)
    assert world.served_by() == "p2"
    p1 = world.status("p1")
    assert (p1["phase"], p1["supersededBy"]) == ("Superseded", "p2")
    assert condition(p1, "Ready")["reason"] == "Superseded" and condition(p1, "GatesPassed")["status"] == "True"
    # no read of p1: its status was the one this process wrote
    assert ("get", PROMOTION, "p1") not in world.kube.requests[before:]
    assert [e["message"] for e in world.kube.events if e["name"] == "p2"][-1].endswith(
        "(taken over from ModelPromotion p1)")


def test_after_a_restart_the_previous_promotion_is_read_once_then_marked_superseded(world: World) -> None:
    promoted(world, "p1", RUN_A)
    world.restart()
    promoted(world, "p2", RUN_B)
    assert ("get", PROMOTION, "p1") in world.kube.requests
    assert world.status("p1")["phase"] == "Superseded"


def test_a_previous_promotion_with_a_new_generation_in_flight_is_left_to_decide_for_itself(world: World) -> None:
    promoted(world, "p1", RUN_A)
    world.restart()
    world.apply("p1", RUN_B)  # generation 2, not reconciled yet
    promoted(world, "p2", RUN_B)
    assert world.status("p1")["phase"] == "Promoted" and world.status("p1")["observedGeneration"] == 1
    world.reconcile("p1")  # generation 2 takes the deployment back: the later writer wins
    assert world.served_by() == "p1" and world.status("p2")["phase"] == "Superseded"


def test_a_promoted_promotion_the_deployment_no_longer_names_becomes_superseded_on_its_check(world: World) -> None:
    promoted(world, "p1", RUN_A)
    world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/promotion"] = "someone-else"
    world.reconcile("p1")
    st = world.status("p1")
    assert (st["phase"], st["supersededBy"]) == ("Superseded", "someone-else")
    assert world.events("p1")[-1] == ("Normal", "Superseded")


def test_a_superseded_promotion_the_deployment_still_names_is_reclaimed(world: World) -> None:
    promoted(world, "p1", RUN_A)
    promoted(world, "p2", RUN_B)
    world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/promotion"] = "p1"
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and "supersededBy" not in st
    assert world.events("p1")[-1] == ("Normal", "Reclaimed")
    requests = len(world.kube.requests)
    world.reconcile("p2")  # still Superseded: the deployment names p1
    assert world.status("p2")["phase"] == "Superseded" and world.kube.writes() == world.kube.writes()[:requests]


def test_a_crash_between_the_deployment_write_and_the_status_converges_on_resume(world: World) -> None:
    promoted(world, "p1", RUN_A)
    world.apply("p2", RUN_B)
    world.kube.fail[("patch", PROMOTION + "/status")] = Unavailable("kubernetes", "connection reset", 1.0)
    from promoter import promotion

    outcome = promotion.reconcile(world.ctx, world.body("p2"), 0.0)  # kopf's patch would fail too
    assert isinstance(outcome.retry, Unavailable) and world.served_by() == "p2"
    world.kube.fail.clear()
    world.restart()
    world.reconcile("p2")  # resumed: the copy is reused, the deployment already names it
    world.reconcile("p1")  # resumed: the deployment names p2
    assert (world.status("p1")["phase"], world.status("p2")["phase"]) == ("Superseded", "Promoted")


# --- a generation already promoted: the check (resume, drift sweep) ----------------------------------


def test_a_check_with_nothing_changed_writes_nothing_and_posts_nothing(world: World) -> None:
    promoted(world)
    world.restart()
    requests, events = len(world.kube.requests), len(world.kube.events)
    assert world.reconcile("p1").status == {}
    assert world.sweep() == 1
    assert [r for r in world.kube.requests[requests:] if r[0] != "get" and r[0] != "list"] == []
    assert len(world.kube.events) == events


def test_a_deleted_deployment_or_secret_is_restored_by_the_sweep(world: World) -> None:
    promoted(world)
    world.kube.objects.pop((SELDON, "ns", "sd"))
    world.kube.objects.pop((SECRET, "ns", "seldon-rclone-secret"))
    assert world.sweep() == 1
    assert world.served_by() == "p1" and world.kube.obj(SECRET, "ns", "seldon-rclone-secret") is not None
    assert world.events("p1")[-1] == ("Normal", "Restored") and world.status("p1")["phase"] == "Promoted"


def test_a_missing_storage_secret_degrades_a_serving_promotion_and_never_rejects_it(world: World) -> None:
    promoted(world)
    sd_before = world.kube.obj(SELDON, "ns", "sd")
    secret = world.kube.objects.pop((SECRET, "ns", "minio-credentials"))
    world.restart()
    outcome = world.reconcile("p1")  # resume
    st = world.status("p1")
    assert st["phase"] == "Promoted" and outcome.rejected is None and outcome.retry is not None
    ready = condition(st, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", DEGRADED)
    assert "Secret ns/minio-credentials" in ready["message"] and "keeps serving" in ready["message"]
    assert world.events("p1")[-1] == ("Warning", DEGRADED)
    world.sweep()  # still swept; the same problem is not announced twice
    assert world.events("p1").count(("Warning", DEGRADED)) == 1
    assert world.kube.obj(SELDON, "ns", "sd") == sd_before
    writes = len(world.kube.writes())
    world.kube.objects[(SECRET, "ns", "minio-credentials")] = secret
    world.sweep()
    st = world.status("p1")
    assert (condition(st, "Ready")["status"], condition(st, "Ready")["reason"]) == ("True", "Promoted")
    assert world.events("p1")[-1] == ("Normal", "Recovered")
    assert [w for w in world.kube.writes()[writes:] if w[1] != PROMOTION + "/status" and w[1] != "events"] == []


@pytest.mark.parametrize(("problem", "words"), [
    (lambda w: w.s3.accepted.clear(), "refused it"),
    (lambda w: setattr(w.s3, "down", True), "cannot reach S3"),
    (lambda w: w.kube.fail.__setitem__(("get", SECRET), CredentialsProblem("ns/minio-credentials", "forbidden")),
     "Secret ns/minio-credentials (operator default PROMOTER_STORAGE_SECRET): not found, not readable"),
])
def test_any_failed_check_of_a_serving_promotion_is_degraded_and_retried(world: World, problem, words: str) -> None:
    promoted(world)
    problem(world)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and outcome.retry is not None and outcome.rejected is None
    assert condition(st, "Ready")["reason"] == DEGRADED and words in condition(st, "Ready")["message"]


def test_a_tampered_copy_fails_the_promotion_and_leaves_the_deployment_alone(world: World) -> None:
    promoted(world)
    world.s3.buckets["models"][f"ns/rf/{RUN_A}/model.pkl"] = b"something else entirely"
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None and st["phase"] == "Failed"
    assert condition(st, "Stalled")["reason"] == "ArtifactTampered" and "model.pkl changed" in st["message"]
    assert world.served_by() == "p1"
    assert world.kube.obj(SELDON, "ns", "sd")["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A


def test_a_settled_promotion_whose_spec_no_longer_parses_keeps_serving(world: World) -> None:
    promoted(world)
    body = world.kube.obj(PROMOTION, "ns", "p1")
    body["spec"]["target"]["storage"]["bucket"] = "Not_A_Bucket"  # as if the schema had tightened since
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and outcome.rejected is None and outcome.retry is None
    assert condition(st, "Ready")["reason"] == DEGRADED and "spec.target.storage.bucket" in st["message"] + str(st)
