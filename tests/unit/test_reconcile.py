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
        "Reconciling": "False", "Stalled": "False", "VersionsMatch": "True", "Verified": "Unknown"}
    assert condition(st, "Verified")["reason"] == "NoInputExample"  # the fake model has none
    assert st["rollout"]["state"] == "Done" and st["rollout"]["deployment"] == "sd-default-0-model"
    assert st["artifact"]["files"] == 2 and st["artifact"]["digest"].startswith("sha256:")
    assert sorted(world.s3.buckets["models"]) == [f"ns/rf/{RUN_A}/MLmodel", f"ns/rf/{RUN_A}/model.pkl",
                                                  f"ns/rf/{RUN_A}/promotion-manifest.json"]
    sd = world.kube.obj(SELDON, "ns", "sd")
    assert sd is not None and sd["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A
    assert world.served_by() == "p1"
    assert world.kube.obj(SECRET, "ns", "seldon-rclone-secret") is not None
    assert world.events("p1") == [("Normal", "Deploying"), ("Normal", "Promoted")]
    assert world.counter("modelpromotion_outcomes_total", outcome="Promoted") == 1


def test_the_deploying_status_is_written_before_the_handler_returns(world: World) -> None:
    world.apply("p1", RUN_A)
    from promoter import promotion

    outcome = promotion.reconcile(world.ctx, world.body("p1"), 0.0)
    assert outcome.status == {}  # nothing left for kopf's patch: ownership wrote it under the lock
    assert outcome.watch == 0.5  # the tracker looks at the rollout in half a second
    st = world.status("p1")
    assert st["phase"] == "Deploying" and condition(st, "Deployed")["reason"] == "RollingOut"
    assert world.served_by() == "p1"


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
    assert world.events("p1") == [("Normal", "Deploying"), ("Normal", "Promoted")] * 2


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
    assert f"sd now serves run {RUN_B} (taken over from ModelPromotion p1); verified: " in [
        e["message"] for e in world.kube.events if e["name"] == "p2"][-1]


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
    # each check (the resume, then the sweep) reads the storage Secret once, the rclone Secret once
    secrets = [r for r in world.kube.requests[requests:] if r[1] == SECRET]
    storage = world.settings.storage_secret
    assert secrets == [("get", SECRET, storage), ("get", SECRET, "seldon-rclone-secret")] * 2


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


# --- gates relative to the model now serving (baseline: Serving) ---------------------------------

RUN_C = "c" * 32
BEAT_BY_2_PERCENT = [{"metric": "rmse", "op": "LessThan", "baseline": "Serving", "minRelativeChange": 0.02}]


def champion_world(world: World, challenger_rmse: float) -> World:
    world.mlflow.add_run(RUN_B, {"rmse": challenger_rmse})
    promoted(world, "champion", RUN_A)  # rmse 0.5
    world.apply("challenger", RUN_B, gates=BEAT_BY_2_PERCENT)
    return world


def test_a_worse_challenger_is_rejected_naming_the_champion_and_the_numbers(world: World) -> None:
    champion_world(world, 0.495)  # 1 % better: not enough
    outcome = world.reconcile("challenger")
    st = world.status("challenger")
    assert outcome.rejected is not None and st["phase"] == "Rejected"
    assert st["message"] == (f"gate failed: rmse 0.495 is not < 0.49 (2% better than serving run {RUN_A} "
                             "at 0.5)")
    (gate,) = st["gates"]
    assert gate == {"metric": "rmse", "op": "LessThan", "baseline": "Serving", "minRelativeChange": 0.02,
                    "baselineRunId": RUN_A, "baselineValue": 0.5, "required": 0.49, "value": 0.495,
                    "passed": False}
    assert st["gateSummary"] == "rmse 0.495!<0.49(-2%)"
    assert world.served_by() == "champion" and world.status("champion")["phase"] == "Promoted"
    assert world.kube.obj(SELDON, "ns", "sd")["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A


def test_a_better_challenger_is_promoted_and_the_champion_superseded(world: World) -> None:
    champion_world(world, 0.45)
    before = len(world.kube.requests)
    world.reconcile("challenger")
    st = world.status("challenger")
    assert st["phase"] == "Promoted" and world.served_by() == "challenger"
    assert st["gates"][0]["passed"] and st["gates"][0]["baselineRunId"] == RUN_A
    assert st["message"].startswith(f"promoted: rmse 0.45 < 0.49 (2% better than serving run {RUN_A} at 0.5)")
    assert world.status("champion")["phase"] == "Superseded"
    # the baseline costs one read of the deployment; take reads it again to write it; the look at
    # the rollout reads it, and the verification once more to clear mlops.dev/rollback-to
    assert world.kube.requests[before:].count(("get", SELDON, "sd")) == 4


@pytest.mark.parametrize(("when", "phase"), [(None, "Promoted"), ("Pass", "Promoted"), ("Fail", "Rejected")])
def test_with_nothing_serving_yet_when_no_baseline_decides(world: World, when: str | None, phase: str) -> None:
    gates = [{**BEAT_BY_2_PERCENT[0], **({"whenNoBaseline": when} if when else {})}]
    world.apply("p1", RUN_A, gates=gates)
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == phase and st["gates"][0]["reason"] == "NoBaseline"
    assert "no model serves the deployment yet" in st["message"]


def test_a_champion_that_changed_while_the_challenger_was_judged_is_judged_again(world: World) -> None:
    champion_world(world, 0.45)
    world.mlflow.add_run(RUN_C, {"rmse": 0.9})
    from promoter.ownership import Serving

    real = world.ctx.ownership.serving
    world.ctx.ownership.serving = lambda ns, sd: Serving(RUN_C)  # type: ignore[method-assign]  # read, then moved
    outcome = world.reconcile("challenger")
    assert outcome.retry is not None and outcome.retry.reason == "ServingChanged"
    assert world.served_by() == "champion" and condition(world.status("challenger"), "Reconciling")["reason"] == \
        "ServingChanged"
    world.ctx.ownership.serving = real  # type: ignore[method-assign]
    world.reconcile("challenger")
    assert world.served_by() == "challenger" and world.status("challenger")["gates"][0]["baselineRunId"] == RUN_A


def test_a_baseline_promotion_resumed_after_its_deployment_write_is_not_judged_against_itself(world: World) -> None:
    champion_world(world, 0.45)
    world.kube.fail[("patch", PROMOTION + "/status")] = Unavailable("kubernetes", "connection reset", 1.0)
    from promoter import promotion

    promotion.reconcile(world.ctx, world.body("challenger"), 0.0)  # the deployment is written, the status not
    assert world.served_by() == "challenger"
    world.kube.fail.clear()
    world.restart()
    world.reconcile("challenger")
    st = world.status("challenger")
    assert st["phase"] == "Promoted" and st["gates"][0]["reason"] == "AlreadyServing"


def test_a_run_annotation_that_is_no_run_id_is_no_baseline(world: World) -> None:
    champion_world(world, 0.45)
    world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/run-id"] = "x" * 5000
    calls = len(world.mlflow.calls)
    world.reconcile("challenger")
    st = world.status("challenger")
    assert st["phase"] == "Promoted" and st["gates"][0]["reason"] == "NoBaseline"
    assert not any("x" * 32 in call for call in world.mlflow.calls[calls:])  # never sent to MLflow


def test_a_serving_run_gone_from_mlflow_fails_the_baseline_gate_naming_it(world: World) -> None:
    champion_world(world, 0.45)
    del world.mlflow.runs[RUN_A]
    world.reconcile("challenger")
    st = world.status("challenger")
    assert st["phase"] == "Rejected" and f"serving run {RUN_A}: run {RUN_A} not found on MLflow" in st["message"]


def test_same_dataset_refuses_a_champion_scored_on_other_data(world: World) -> None:
    from promoter.gates import Dataset

    world.mlflow.add_run(RUN_A, {"rmse": 0.5}, datasets={"rmse": Dataset("diabetes-test", "aaaa1111")})
    world.mlflow.add_run(RUN_B, {"rmse": 0.4}, datasets={"rmse": Dataset("diabetes-test", "bbbb2222")})
    promoted(world, "champion", RUN_A)
    world.apply("challenger", RUN_B, gates=[{**BEAT_BY_2_PERCENT[0], "sameDataset": True}])
    world.reconcile("challenger")
    st = world.status("challenger")
    assert st["phase"] == "Rejected" and "digest bbbb2222" in st["message"] and "digest aaaa1111" in st["message"]
    assert world.served_by() == "champion"


# --- the registry as source ----------------------------------------------------------------------


def test_a_registered_version_is_resolved_to_its_run_and_promoted(world: World) -> None:
    version = world.mlflow.add_version("rf", RUN_B)
    world.apply("p1", None, source={"registeredModel": {"name": "rf", "version": int(version)}})
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and st["runId"] == RUN_B
    assert st["modelVersion"] == {"name": "rf", "version": "1"}
    assert st["modelUri"] == f"s3://models/ns/rf/{RUN_B}" and st["message"].endswith("(rf version 1)")
    assert world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"]["mlops.dev/run-id"] == RUN_B


def test_an_alias_is_resolved_once_and_moving_it_later_changes_nothing(world: World) -> None:
    world.mlflow.add_version("rf", RUN_A, alias="champion")
    world.apply("p1", None, source={"registeredModel": {"name": "rf", "alias": "champion"}})
    world.reconcile("p1")
    assert world.status("p1")["modelVersion"] == {"name": "rf", "version": "1", "alias": "champion"}
    world.mlflow.add_version("rf", RUN_B, alias="champion")  # the alias moves to version 2
    writes = len(world.kube.writes())
    world.reconcile("p1")  # resumed: checked, not re-resolved
    world.sweep()
    assert world.status("p1")["runId"] == RUN_A and world.kube.writes()[writes:] == []
    assert world.kube.obj(SELDON, "ns", "sd")["spec"]["predictors"][0]["graph"]["modelUri"] == MODEL_URI_A


@pytest.mark.parametrize(("source", "words"), [
    ({"name": "nope", "version": 1}, "registered model 'nope' version 1 not found on MLflow at"),
    ({"name": "rf", "version": 9}, "registered model 'rf' version 9 not found"),
    ({"name": "rf", "alias": "prod"}, "registered model 'rf' alias @prod not found"),
])
def test_an_unknown_model_version_or_alias_is_rejected_naming_it(world: World, source: dict, words: str) -> None:
    world.mlflow.add_version("rf", RUN_A)
    world.apply("p1", None, source={"registeredModel": source})
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None and condition(st, "Stalled")["reason"] == "ModelVersionNotFound"
    assert words in st["message"] and world.kube.obj(SELDON, "ns", "sd") is None


def test_the_latest_alias_is_refused_with_how_to_pin_instead(world: World) -> None:
    world.apply("p1", None, source={"registeredModel": {"name": "rf", "alias": "latest"}})
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Rejected" and st["message"].startswith(
        "spec.source.registeredModel.alias: 'latest' is reserved by MLflow and moves with every new version: "
        "pin a version")


# --- the registry as record ----------------------------------------------------------------------

RECORD = {"registry": {"model": "rf", "alias": "champion"}}


def test_a_promoted_run_is_registered_aliased_and_tagged(world: World) -> None:
    world.apply("p1", RUN_A, extra=RECORD)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.retry is None and st["phase"] == "Promoted"
    assert world.mlflow.aliases["rf"] == {"champion": "1"} and world.mlflow.versions["rf"]["1"].run_id == RUN_A
    tags = {"mlops.dev/promoted-by": "ns/p1", "mlops.dev/serving": "ns/sd"}
    assert world.mlflow.tags_of("rf", "1") == tags and world.mlflow.run_tags[RUN_A] == tags
    assert st["modelVersion"] == {"name": "rf", "version": "1"}
    recorded = condition(st, "Recorded")
    assert (recorded["status"], recorded["reason"], recorded["observedGeneration"]) == ("True", "Recorded", 1)
    assert recorded["message"].startswith("registered model 'rf' version 1 (registered from run")
    # the condition says it: no Event of its own
    assert world.events("p1") == [("Normal", "Deploying"), ("Normal", "Promoted")]


def test_the_next_champion_takes_the_alias_and_the_serving_tag(world: World) -> None:
    world.apply("p1", RUN_A, extra=RECORD)
    world.reconcile("p1")
    world.apply("p2", RUN_B, extra=RECORD)
    world.reconcile("p2")
    assert world.mlflow.aliases["rf"] == {"champion": "2"}
    assert world.mlflow.tags_of("rf", "1") == {"mlops.dev/promoted-by": "ns/p1"}
    assert world.mlflow.run_tags[RUN_A] == {"mlops.dev/promoted-by": "ns/p1"}
    assert world.mlflow.tags_of("rf", "2")["mlops.dev/serving"] == "ns/sd"
    assert "mlops.dev/serving taken off version 1" in condition(world.status("p2"), "Recorded")["message"]
    p1 = world.status("p1")
    assert p1["phase"] == "Superseded" and condition(p1, "Recorded")["status"] == "True"  # kept by the mark


def test_a_run_serving_another_deployment_keeps_its_serving_tag(world: World) -> None:
    world.apply("p1", RUN_A, extra=RECORD)
    world.reconcile("p1")
    world.apply("elsewhere", RUN_A, "other", extra={"registry": {"model": "rf-other"}})
    world.reconcile("elsewhere")  # RUN_A's run tag now names the other deployment
    world.apply("p2", RUN_B, extra=RECORD)
    world.reconcile("p2")
    assert world.mlflow.tags_of("rf", "1") == {"mlops.dev/promoted-by": "ns/p1"}  # the version loses it
    assert world.mlflow.run_tags[RUN_A]["mlops.dev/serving"] == "ns/other"  # the run, still serving, keeps it


def test_a_run_registered_before_is_not_registered_again(world: World) -> None:
    world.mlflow.add_version("rf", RUN_A)
    world.apply("p1", RUN_A, extra=RECORD)
    world.reconcile("p1")
    assert list(world.mlflow.versions["rf"]) == ["1"] and world.mlflow.aliases["rf"] == {"champion": "1"}


def test_a_promotion_taken_over_before_its_record_leaves_the_record_to_the_one_serving(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from promoter import faults

    world.apply("p1", RUN_A, extra=RECORD)
    world.apply("p2", RUN_B, extra=RECORD)
    real, raced = faults.checkpoint, []

    def race(step: str, done: int = 0) -> None:  # p2 takes the deployment over and records first
        if step == "after-promoted" and not raced:
            raced.append(step)
            world.reconcile("p2")
        real(step, done)

    monkeypatch.setattr(faults, "checkpoint", race)
    world.reconcile("p1")
    assert raced and world.served_by() == "p2"
    assert world.mlflow.aliases["rf"] == {"champion": "1"}  # p2's version (registered first), not moved back
    assert world.mlflow.versions["rf"]["1"].run_id == RUN_B and "2" not in world.mlflow.versions["rf"]
    p1, p2 = world.status("p1"), world.status("p2")
    assert (p1["phase"], p2["phase"]) == ("Superseded", "Promoted")  # p1's status is not written over the mark
    assert condition(p2, "Recorded")["status"] == "True" and all(c["type"] != "Recorded" for c in p1["conditions"])


def test_with_a_takeover_already_waiting_the_record_is_left_to_it_and_else_to_the_check(world: World) -> None:
    world.ctx.ownership._takers[("ns", "sd")] = 1  # another promotion waits to take the deployment
    world.apply("p1", RUN_A, extra=RECORD)
    outcome = world.reconcile("p1")
    assert outcome.retry is None and world.status("p1")["phase"] == "Promoted" and "rf" not in world.mlflow.aliases
    world.ctx.ownership._takers.clear()  # it never came: the drift sweep's check records this one
    world.sweep()
    assert world.mlflow.aliases["rf"] == {"champion": "1"} and condition(world.status("p1"), "Recorded")["status"] \
        == "True"


def test_a_registered_source_is_recorded_on_its_own_version(world: World) -> None:
    world.mlflow.add_version("rf", RUN_A)
    world.mlflow.add_version("rf", RUN_B)
    world.apply("p1", None, source={"registeredModel": {"name": "rf", "version": 2}},
                extra={"registry": {"alias": "champion"}})
    world.reconcile("p1")
    assert world.mlflow.aliases["rf"] == {"champion": "2"} and len(world.mlflow.versions["rf"]) == 2
    assert world.mlflow.tags_of("rf", "2")["mlops.dev/serving"] == "ns/sd"


def test_mlflow_down_during_the_write_back_keeps_serving_and_records_once_back(world: World) -> None:
    world.mlflow.writes_down = True
    world.apply("p1", RUN_A, extra=RECORD)
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and world.served_by() == "p1" and outcome.rejected is None
    assert isinstance(outcome.retry, Unavailable)
    recorded, ready = condition(st, "Recorded"), condition(st, "Ready")
    assert (recorded["status"], recorded["reason"]) == ("False", "MlflowUnavailable")
    assert "cannot reach MLflow" in recorded["message"] and ready["status"] == "True"
    assert world.events("p1") == [("Normal", "Deploying"), ("Normal", "Promoted"), ("Warning", "NotRecorded")]
    world.reconcile("p1")  # kopf's retry: still down, the same problem is not announced again
    assert world.events("p1").count(("Warning", "NotRecorded")) == 1
    world.mlflow.writes_down = False
    writes = len(world.kube.writes())
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.retry is None and condition(st, "Recorded")["status"] == "True"
    assert world.mlflow.aliases["rf"] == {"champion": "1"} and st["phase"] == "Promoted"
    assert [w for w in world.kube.writes()[writes:] if w[1] not in (PROMOTION + "/status", "events")] == []
    assert world.events("p1")[-1] == ("Normal", "Recorded")


def test_a_refused_write_back_says_only_mlflows_error_code(world: World) -> None:
    world.mlflow.refuse = "PERMISSION_DENIED"
    world.apply("p1", RUN_A, extra=RECORD)
    outcome = world.reconcile("p1")
    recorded = condition(world.status("p1"), "Recorded")
    assert outcome.retry is not None and world.status("p1")["phase"] == "Promoted"
    assert (recorded["status"], recorded["reason"]) == ("False", "RegistryRefused")
    assert recorded["message"].endswith(": 403 PERMISSION_DENIED")


def test_a_recorded_promotion_is_not_recorded_again_by_its_check(world: World) -> None:
    world.apply("p1", RUN_A, extra=RECORD)
    world.reconcile("p1")
    world.restart()
    calls = len(world.mlflow.calls)
    assert world.reconcile("p1").status == {} and world.sweep() == 1
    assert world.mlflow.calls[calls:] == []


def test_a_new_generation_without_a_registry_drops_the_old_record(world: World) -> None:
    world.apply("p1", RUN_A, extra=RECORD)
    world.reconcile("p1")
    world.apply("p1", RUN_B)
    world.reconcile("p1")
    st = world.status("p1")
    assert "modelVersion" not in st and all(c["type"] != "Recorded" for c in st["conditions"])


# --- the model's library versions against the serving image's -----------------------------------


def skewed(world: World) -> None:
    world.s3.buckets["mlflow"].clear()
    world.s3.put_model(RUN_A, sklearn="1.9.1", python="3.11.2")


def test_a_model_from_a_newer_scikit_learn_is_promoted_with_a_warning_naming_both_versions(world: World) -> None:
    skewed(world)
    promoted(world)
    st = world.status("p1")
    versions = condition(st, "VersionsMatch")
    assert (versions["status"], versions["reason"]) == ("False", "VersionSkew")
    assert versions["message"].startswith(
        "the model was saved with scikit-learn 1.9.1 and Python 3.11.2; seldonio/mlserver:1.7.1-sklearn "
        "(SKLEARN_SERVER, protocol v2) has scikit-learn 1.5.2 and Python 3.10")
    assert world.events("p1") == [("Warning", "VersionSkew"), ("Normal", "Deploying"), ("Normal", "Promoted")]


def test_a_skewed_model_is_rejected_under_strict_before_a_byte_is_copied(world: World) -> None:
    skewed(world)
    world.apply("p1", RUN_A, extra={"compatibility": "Strict"})
    outcome = world.reconcile("p1")
    st = world.status("p1")
    assert outcome.rejected is not None and condition(st, "Stalled")["reason"] == "VersionSkew"
    assert "scikit-learn 1.9.1" in st["message"] and "scikit-learn 1.5.2" in st["message"]
    assert world.s3.writes == [] and world.kube.obj(SELDON, "ns", "sd") is None


def test_compatibility_ignore_checks_nothing(world: World) -> None:
    skewed(world)
    world.apply("p1", RUN_A, extra={"compatibility": "Ignore"})
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted" and all(c["type"] != "VersionsMatch" for c in st["conditions"])


def test_the_image_table_is_the_operators_to_override(world: World) -> None:
    skewed(world)
    world.settings = world.settings.__class__(**{
        **world.settings.__dict__, "serving_images": {"SKLEARN_SERVER/v2": "my/mlserver:2"},
        "image_versions": {"my/mlserver:2": {"python": "3.11", "scikit-learn": "1.9.1"}}})
    world.restart()
    promoted(world)
    versions = condition(world.status("p1"), "VersionsMatch")
    assert versions["status"] == "True" and "as my/mlserver:2 has" in versions["message"]
