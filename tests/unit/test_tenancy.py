"""What a tenant who may only create ModelPromotions can make the operator do, over the in-memory
gateways: nothing it could not do itself. The same refusals against devstack's real servers,
as a tenant ServiceAccount, are in tests/integration/test_tenancy.py."""

from __future__ import annotations

import dataclasses
import json
import time

from promoter.errors import redact
from promoter.seldon import ADOPT_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION

from .fakes import KEYS, RUN_A, RUN_B, SECRET, SELDON, World, condition

OTHER_S3 = "http://tenant-s3.example:9000"


def configure(world: World, **settings: object) -> None:
    world.settings = dataclasses.replace(world.settings, **settings)
    world.restart()


def rejected(world: World, name: str, reason: str) -> dict:
    st = world.status(name)
    assert st["phase"] == "Rejected", st
    assert condition(st, "Stalled")["reason"] == reason, st["message"]
    return st


# --- children the operator did not make ---------------------------------------------------------


def test_a_secret_of_the_tenants_choosing_never_receives_the_storage_keys(world: World) -> None:
    world.kube.put_secret("ns", "app-config", {"LOG_LEVEL": "debug"})
    world.apply("p1", RUN_A, secretName="app-config")
    world.reconcile("p1")
    st = rejected(world, "p1", "NotManaged")
    assert st["message"].startswith("Secret ns/app-config (spec.target.seldonDeployment.secretName) exists "
                                    "and was not made by the operator; it is left as it is")
    secret = world.kube.obj(SECRET, "ns", "app-config")
    assert secret is not None and set(secret["data"]) == {"LOG_LEVEL"}
    assert world.kube.obj(SELDON, "ns", "sd") is None


def test_a_service_account_token_secret_is_never_patched_even_when_labelled(world: World) -> None:
    world.kube.put(SECRET, "ns", "token", {"type": "kubernetes.io/service-account-token",
                                           "metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY},
                                                        "annotations": {ADOPT_ANNOTATION: "true"}}})
    world.apply("p1", RUN_A, secretName="token")
    world.reconcile("p1")
    assert "is of type kubernetes.io/service-account-token" in rejected(world, "p1", "NotManaged")["message"]
    assert "data" not in world.kube.obj(SECRET, "ns", "token")


def test_a_secret_handed_over_with_the_adopt_annotation_is_written_and_owned(world: World) -> None:
    world.kube.put(SECRET, "ns", "rclone", {"type": "Opaque", "metadata": {"annotations": {ADOPT_ANNOTATION: "true"}},
                                            "stringData": {"OLD": "x"}})
    world.apply("p1", RUN_A, secretName="rclone")
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Promoted"
    secret = world.kube.obj(SECRET, "ns", "rclone")
    assert secret["metadata"]["labels"][MANAGED_BY_LABEL] == MANAGED_BY
    assert secret["metadata"]["annotations"][OWNER_ANNOTATION] == "ns/p1/uid-p1"


def test_a_seldondeployment_the_operator_did_not_make_is_not_patched_until_adopted(world: World) -> None:
    platform = {"metadata": {"labels": {"team": "platform"}},
                "spec": {"predictors": [{"name": "default", "replicas": 3, "graph": {"name": "model",
                                                                                      "modelUri": "s3://x"}}]}}
    world.kube.put(SELDON, "ns", "sd", platform)
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    assert rejected(world, "p1", "NotManaged")["message"].startswith(
        "SeldonDeployment ns/sd (spec.target.seldonDeployment.name) exists and was not made by the operator")
    assert world.kube.obj(SELDON, "ns", "sd")["spec"] == platform["spec"]
    world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"] = {ADOPT_ANNOTATION: "true"}
    world.apply("p1", RUN_B)  # a new generation tries again
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Promoted" and world.served_by() == "p1"


def test_children_made_before_owner_annotations_are_still_the_operators(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    for resource, name in ((SECRET, "seldon-rclone-secret"), (SELDON, "sd")):
        del world.kube.obj(resource, "ns", name)["metadata"]["annotations"][OWNER_ANNOTATION]
    world.apply("p2", RUN_B)
    world.reconcile("p2")
    assert world.status("p2")["phase"] == "Promoted"
    assert world.kube.obj(SELDON, "ns", "sd")["metadata"]["annotations"][OWNER_ANNOTATION] == "ns/p2/uid-p2"


# --- where requests and credentials may go --------------------------------------------------------


def test_a_tracking_uri_outside_the_allowlist_is_rejected_before_any_secret_is_read(world: World) -> None:
    world.kube.put_secret("ns", "mlflow-auth", {"MLFLOW_TRACKING_PASSWORD": "pw"})
    world.apply("p1", RUN_A)
    world.kube.obj("modelpromotions", "ns", "p1")["spec"]["source"].update(
        trackingUri="http://evil.example:8080/api", credentialsSecretRef={"name": "mlflow-auth"})
    world.reconcile("p1")
    st = rejected(world, "p1", "NotAllowed")
    assert st["message"] == ("spec.source.trackingUri 'http://evil.example:8080/api' is not allowed by the "
                             "operator's settings (PROMOTER_ALLOWED_TRACKING_URIS: http://mlflow.test:5000); "
                             "ask the platform admin to add it")
    assert world.mlflow.calls == [] and ("get", SECRET, "mlflow-auth") not in world.kube.requests


def test_an_allowed_tracking_uri_path_is_accepted(world: World) -> None:
    configure(world, allowed_tracking_uris=("http://mlflow.test:5000",))
    world.apply("p1", RUN_A)
    world.kube.obj("modelpromotions", "ns", "p1")["spec"]["source"]["trackingUri"] = "http://mlflow.test:5000/"
    world.reconcile("p1")
    assert world.status("p1")["phase"] == "Promoted"


def test_a_storage_endpoint_outside_the_allowlist_is_rejected(world: World) -> None:
    world.kube.put_secret("ns", "tenant-keys", KEYS)
    world.apply("p1", RUN_A)
    world.kube.obj("modelpromotions", "ns", "p1")["spec"]["target"]["storage"].update(
        endpoint=OTHER_S3, credentialsSecretRef={"name": "tenant-keys"})
    world.reconcile("p1")
    assert "PROMOTER_ALLOWED_STORAGE_ENDPOINTS" in rejected(world, "p1", "NotAllowed")["message"]


def test_an_allowed_custom_endpoint_may_not_use_the_default_storage_secret(world: World) -> None:
    configure(world, allowed_storage_endpoints=(world.settings.storage_endpoint, OTHER_S3))
    world.apply("p1", RUN_A)
    world.kube.obj("modelpromotions", "ns", "p1")["spec"]["target"]["storage"].update(
        endpoint=OTHER_S3, credentialsSecretRef={"name": "minio-credentials"})
    world.reconcile("p1")
    st = rejected(world, "p1", "InvalidSpec")
    assert st["message"].startswith("spec.target.storage.credentialsSecretRef: must name a Secret of its own")


def test_a_run_whose_model_lies_in_another_tenants_copy_is_not_read(world: World) -> None:
    world.mlflow.runs[RUN_B] = dataclasses.replace(world.mlflow.runs[RUN_B],
                                                   artifact_uri="s3://models/other-team/rf/x")
    world.apply("p1", RUN_B)
    world.reconcile("p1")
    st = rejected(world, "p1", "NotAllowed")
    assert "PROMOTER_ALLOWED_ARTIFACT_ROOTS: s3://mlflow/" in st["message"]
    assert world.s3.writes == []


# --- the tenant's part of the bucket --------------------------------------------------------------


def test_copies_land_under_the_namespace_or_where_the_admin_maps_it(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    assert world.status("p1")["modelUri"] == f"s3://models/ns/rf/{RUN_A}"
    configure(world, storage_roots=(("ns", "models", "teams/blue"),))
    world.apply("p2", RUN_B, deployment="sd2")
    world.reconcile("p2")
    assert world.status("p2")["modelUri"] == f"s3://models/teams/blue/rf/{RUN_B}"


def test_a_namespace_mapped_to_a_bucket_cannot_write_to_another(world: World) -> None:
    configure(world, storage_roots=(("ns", "team-bucket", ""),))
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    assert "PROMOTER_STORAGE_ROOTS: ns=team-bucket" in rejected(world, "p1", "NotAllowed")["message"]


def test_a_look_alike_copy_planted_at_the_target_is_neither_reused_nor_overwritten(world: World) -> None:
    """Same file names and sizes, other bytes, and a manifest that claims this run and source."""
    source = world.s3.buckets["mlflow"]
    target = world.s3.buckets["models"]
    planted = {}
    for key, data in source.items():
        if key.startswith(f"{RUN_A}/"):
            path = key.rsplit("/", 1)[1]
            planted[f"ns/rf/{RUN_A}/{path}"] = bytes(len(data))  # zeros, same size
    target.update(planted)
    files = [{"path": k.rsplit("/", 1)[1], "size": len(v), "sha256": "0" * 64, "etag": ""} for k, v in planted.items()]
    target[f"ns/rf/{RUN_A}/promotion-manifest.json"] = json.dumps({
        "runId": RUN_A, "source": f"s3://mlflow/{RUN_A}/artifacts/rf-regressor", "files": files}).encode()
    before = dict(target)
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    st = rejected(world, "p1", "CopyConflict")
    assert st["message"].startswith(f"s3://models/ns/rf/{RUN_A} already holds a copy that is not of this model")
    assert target == before and world.kube.obj(SELDON, "ns", "sd") is None


def test_a_copy_of_another_run_at_the_target_is_a_conflict(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    manifest = f"ns/rf/{RUN_A}/promotion-manifest.json"
    body = json.loads(world.s3.buckets["models"][manifest])
    body["runId"] = RUN_B
    world.s3.buckets["models"][manifest] = json.dumps(body).encode()
    world.apply("p2", RUN_A, deployment="sd2")
    world.reconcile("p2")
    assert f"names run '{RUN_B}'" in rejected(world, "p2", "CopyConflict")["message"]


def test_the_same_model_promoted_again_reuses_its_copy(world: World) -> None:
    world.apply("p1", RUN_A)
    world.reconcile("p1")
    writes = len(world.s3.writes)
    world.apply("p2", RUN_A, deployment="sd2")
    world.reconcile("p2")
    assert condition(world.status("p2"), "ArtifactCopied")["reason"] == "Reused"
    assert len(world.s3.writes) == writes


# --- bounded ---------------------------------------------------------------------------------------


def test_a_huge_run_status_is_clipped_and_redacted_in_linear_time(world: World) -> None:
    world.mlflow.add_run(RUN_A, {"rmse": 0.5}, status="R" * 300_000 + " http://u:pw@h/")
    world.apply("p1", RUN_A)
    started = time.monotonic()
    world.reconcile("p1")
    took = time.monotonic() - started
    st = world.status("p1")
    assert took < 2, took
    assert len(json.dumps(st)) < 8_000
    assert st["message"].endswith("characters)") and len(st["message"]) <= 1024


def test_thirty_two_long_gate_names_give_a_bounded_status(world: World) -> None:
    names = [f"{i:02d}" + "m" * 240 for i in range(32)]
    world.mlflow.add_run(RUN_A, {n: 0.5 for n in names})
    world.apply("p1", RUN_A, gates=[{"metric": n, "op": "LessThan", "threshold": 1} for n in names])
    world.reconcile("p1")
    st = world.status("p1")
    assert st["phase"] == "Promoted"
    assert len(json.dumps(st)) < 16_000  # the 32 gates' evidence, messages of at most 1 KiB
    assert len(st["gateSummary"]) <= 256


def test_redaction_is_linear() -> None:
    started = time.monotonic()
    redact("a" * 300_000 + "://" + "b" * 300_000 + " x" * 100_000)
    assert time.monotonic() - started < 1.0
    assert redact("see https://alice:s3cr3t@mlflow.example.com/x") == "see https://***@mlflow.example.com/x"
