"""Faults and bad input, against devstack's real processes: the operator SIGKILLed at each step
of a promotion, MLflow / S3 / the API server down mid-promotion, writers racing the operator,
children deleted, a promoted copy tampered with, and well over a hundred hostile specs.

The operator here has a scope of its own (``faults``: the session's operator leaves these
promotions alone), re-checks promoted promotions every 5 s (PROMOTER_DRIFT_INTERVAL) and retries
after 1 s, doubling (PROMOTER_RETRY_DELAY).
``make test`` runs a subset; ``make test-faults`` (FAULTS_FULL=1) runs every crash point and
outage, and prints the table of faults injected, outcomes and recovery times.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from devstack import harness, stack
from devstack.harness import STORAGE_SECRET, Operator

from .fault_specs import SCOPE, TABLE, Case, base, mutate, mutations, names_a_field
from .fault_support import (
    MANIFEST,
    SELDON,
    SeldonWatcher,
    api,
    bucket_listing,
    fault_operator,
    kill_component,
    manifest_problems,
    promoter_api,
    wait_until,
)
from .helpers import apply, as_written, condition, events, get, objects, phase_in, s3, secret_data, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FULL = os.environ.get("FAULTS_FULL") == "1"
full_only = pytest.mark.skipif(not FULL, reason="long fault test: `make test-faults` runs it (FAULTS_FULL=1)")

MIB = 1024 * 1024
MAX_FILES, MAX_BYTES = 30, 32 * MIB
FAULT_ENV = {
    "PROMOTER_DRIFT_INTERVAL": "5",
    "PROMOTER_RETRY_DELAY": "1",
    "PROMOTER_MAX_FILES": str(MAX_FILES),
    "PROMOTER_MAX_BYTES": str(MAX_BYTES),
}
GATE = [{"metric": "rmse", "op": "LessThan", "threshold": 1}]
PROMOTIONS = ("mlops.dev", "v1alpha1", "modelpromotions")


# --- the record behind the closing table -----------------------------------------------------


@dataclass
class Row:
    fault: str
    injected: int
    outcome: str
    recovery: str
    lost: str = "nothing"


TABLE_ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def fault_table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not TABLE_ROWS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("| fault | injected | outcome | time to recover | lost |")
        reporter.write_line("|---|---|---|---|---|")
        for row in TABLE_ROWS:
            reporter.write_line(f"| {row.fault} | {row.injected} | {row.outcome} | {row.recovery} | {row.lost} |")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faults_operator(devstack: stack.State, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    op = fault_operator(devstack, tmp_path_factory.mktemp("faults") / "operator.log", None, FAULT_ENV)
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture(scope="module")
def fruns(mlflow_env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("fault_runs.py"))], env=mlflow_env,
                         capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def new_namespace(devstack: stack.State) -> str:
    return harness.namespace(devstack, prefix="f")


@pytest.fixture
def fns(devstack: stack.State, faults_operator: Operator) -> Iterator[str]:
    name = new_namespace(devstack)
    yield name
    if not faults_operator.alive():  # a test that stopped it failed before starting it again
        faults_operator.start()
    harness.delete_namespace(devstack, name)


def promote(name: str, run_id: str, prefix: str, deployment: str) -> dict[str, Any]:
    return harness.promotion(name, run_id, GATE, deployment=deployment, prefix=prefix, scope=SCOPE)


def reconciling(obj: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", [])
                 if c["type"] == "Reconciling" and c["status"] == "True"), None)


def seldons(devstack: stack.State, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(devstack.kubectl("-n", namespace, "get", "seldondeployments", "-o", "json").stdout)["items"])


def secret_names(devstack: stack.State, namespace: str) -> set[str]:
    out = json.loads(devstack.kubectl("-n", namespace, "get", "secrets", "-o", "json").stdout)
    return {s["metadata"]["name"] for s in out["items"]}


def sd_uri(sdep: dict[str, Any]) -> str:
    return str(sdep["spec"]["predictors"][0]["graph"]["modelUri"])


def reasons(devstack: stack.State, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in events(devstack, namespace, name)]


# --- 1. bad input ----------------------------------------------------------------------------


def _generated(count: int) -> list[list[tuple[Any, Any]]]:
    found: list[list[tuple[Any, Any]]] = []
    seen: set[str] = set()

    @settings(max_examples=count, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mutations)
    def collect(changes: list[tuple[Any, Any]]) -> None:
        key = json.dumps(changes, default=repr, sort_keys=True)
        if key not in seen:
            seen.add(key)
            found.append(changes)

    collect()
    return found


def test_malformed_and_hostile_specs_are_refused_or_rejected_once_and_write_nothing(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    op = faults_operator
    custom = client.CustomObjectsApi(api(devstack))
    before = {b: bucket_listing(devstack, b) for b in ("models", "mlflow")}
    tracebacks = op.tracebacks()
    devstack.kubectl("-n", fns, "create", "secret", "generic", "keyless", "--from-literal=user=someone")

    cases: list[tuple[str, Case | None, dict[str, Any], Any]] = []
    for i, case in enumerate(TABLE):
        run_id = fruns.get(case.run, case.run)
        cases.append((f"bad-t{i:03d}", case, mutate(base(f"bad-t{i:03d}", run_id), case.changes), case.changes))
    for j, changes in enumerate(_generated(120)):
        obj = mutate(base(f"bad-h{j:03d}", "0123456789abcdef0123456789abcdef", prefix="fuzz"), tuple(changes))
        cases.append((f"bad-h{j:03d}", None, obj, changes))

    refused: dict[str, str] = {}
    accepted: dict[str, str] = {}  # id -> object name
    for id_, _, obj, _ in cases:
        try:
            custom.create_namespaced_custom_object(*PROMOTIONS[:2], fns, PROMOTIONS[2], obj, field_validation="Strict")
            accepted[id_] = str(obj["metadata"]["name"])
        except ApiException as e:
            assert e.status in (400, 422), (id_, e.status, e.body)
            refused[id_] = str(json.loads(e.body or "{}").get("message", ""))

    # NaN and Infinity cannot travel in JSON: kubectl refuses the YAML before it leaves the machine
    for value, shown in ((".nan", "NaN"), (".inf", "+Inf"), ("-.inf", "-Inf")):
        doc = yaml.safe_dump(base("bad-nan", "0" * 32)).replace("threshold: 1\n", f"threshold: {value}\n")
        assert f"threshold: {value}" in doc
        out = devstack.kubectl("-n", fns, "apply", "-f", "-", input=doc, check=False)
        assert out.returncode != 0 and f"unsupported value: {shown}" in out.stderr, out.stderr

    wrong = []
    for id_, case, _obj, changes in cases:
        if case is not None and case.stop == "apply":
            if id_ not in refused:
                wrong.append(f"{id_} ({case.id}) was accepted")
            elif case.text not in refused[id_]:
                wrong.append(f"{id_} ({case.id}): {case.text!r} not in {refused[id_][:300]!r}")
        elif case is not None and id_ in refused:
            wrong.append(f"{id_} ({case.id}) was refused at apply time: {refused[id_][:300]}")
        elif case is None and id_ in refused and not (names_a_field(refused[id_], changes)
                                                      or "metadata.name" in refused[id_]):
            wrong.append(f"{id_} {changes!r}: the refusal names no changed field: {refused[id_][:300]!r}")
    assert not wrong, "\n".join(wrong)

    def settled(id_: str) -> dict[str, Any] | None:
        mp = get(devstack, fns, "mp", accepted[id_]) or {}
        status = mp.get("status") or {}
        if status.get("phase") == "Rejected" or reconciling(mp):
            return mp
        return None

    final = {id_: wait_until(f"{id_} decided", lambda i=id_: settled(i), 60) for id_ in accepted}
    time.sleep(6)  # longer than the drift interval: a spinning promotion would be invoked again
    for id_, case, _obj, changes in cases:
        if id_ not in accepted:
            continue
        mp, name = final[id_], accepted[id_]
        message = mp["status"].get("message", "")
        waits = reconciling(mp)
        if case is not None and case.stop == "waiting":
            if waits is None or waits["reason"] != "S3Unavailable":
                wrong.append(f"{id_} ({case.id}) is not waiting for S3: {mp['status']}")
        elif mp["status"]["phase"] != "Rejected" or condition(mp, "Stalled")["status"] != "True":
            wrong.append(f"{id_} ({case.id if case else changes!r}) is not Rejected: {mp['status']}")
        if case is not None and case.text not in message:
            wrong.append(f"{id_} ({case.id}): {case.text!r} not in {message!r}")
        if case is None and not (names_a_field(message, changes) or "not found on MLflow" in message):
            wrong.append(f"{id_} {changes!r}: the message names no changed field: {message!r}")
        # decided once: a Rejected promotion is never retried, a waiting one not before its delay
        if len(op.invocations(fns, name)) != 1:
            wrong.append(f"{id_} reconciled {len(op.invocations(fns, name))} times")
    assert not wrong, "\n".join(wrong)

    assert op.alive(), op.text()[-3000:]
    assert op.tracebacks() == tracebacks, op.text()[-5000:]
    assert {b: bucket_listing(devstack, b) for b in ("models", "mlflow")} == before
    assert seldons(devstack, fns) == []
    assert secret_names(devstack, fns) == {STORAGE_SECRET, "keyless"}
    generated = len(cases) - len(TABLE)
    TABLE_ROWS.append(Row(
        "malformed/hostile specs", len(cases) + 3,
        f"{len(TABLE) + 3} from the table (3 NaN/Inf refused by kubectl), {generated} generated: "
        f"{len(refused) + 3} refused at apply, {len(accepted)} accepted then Rejected (1 waits for its "
        "bucket), each reconciled once; operator alive, no Traceback, no bucket write", "n/a"))


# --- 2. crash-safety -------------------------------------------------------------------------

CRASH_POINTS = [
    pytest.param("after-gates", marks=full_only),
    pytest.param("mid-copy:4", marks=full_only),
    "before-manifest",
    pytest.param("after-secret", marks=full_only),
    "after-seldon",
]


@pytest.fixture(scope="module")
def reference(devstack: stack.State, faults_operator: Operator, fruns: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The same run promoted with no fault: what every crashed promotion must end as."""
    ns = new_namespace(devstack)
    apply(devstack, ns, promote("reference", fruns["multi"], "crash-ref", "served"))
    mp = wait_for(devstack, ns, "reference", phase_in("Promoted", "Rejected", "Failed"), timeout=60)
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    files = set(objects(devstack, "models", f"{ns}/crash-ref/{fruns['multi']}/"))
    assert len(files) >= 7 and MANIFEST in files
    yield {"status": mp["status"], "files": files}
    harness.delete_namespace(devstack, ns)


def _left_behind(devstack: stack.State, ns: str, prefix: str) -> dict[str, Any]:
    files = set(objects(devstack, "models", prefix))
    return {"files": len(files - {MANIFEST}), "manifest": MANIFEST in files,
            "secret": "seldon-rclone-secret" in secret_names(devstack, ns), "seldon": len(seldons(devstack, ns))}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_crash_at_each_step_converges_to_the_clean_end_state_with_nothing_half_done_exposed(
        point: str, devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str],
        reference: dict[str, Any], tmp_path: Path) -> None:
    run_id = fruns["multi"]
    prefix = f"crash-{point.replace(':', '-')}"
    key_prefix = f"{fns}/{prefix}/{run_id}/"
    total = len(reference["files"]) - 1
    watcher = SeldonWatcher(devstack, fns).start()
    faults_operator.stop()
    crashing = fault_operator(devstack, tmp_path / "crashing.log", [fns], {**FAULT_ENV, "PROMOTER_CRASH_AT": point})
    crashing.start()
    try:
        apply(devstack, fns, promote("crashy", run_id, prefix, "served"))
        code = crashing.wait_dead(60)
    finally:
        crashing.stop()
    assert code == -9, crashing.text()[-2000:]
    assert f"crash point {point.split(':')[0]} reached" in crashing.text()

    left = _left_behind(devstack, fns, key_prefix)
    expected_left = {
        "after-gates": {"files": 0, "manifest": False, "secret": False, "seldon": 0},
        "before-manifest": {"files": total, "manifest": False, "secret": False, "seldon": 0},
        "after-secret": {"files": total, "manifest": True, "secret": True, "seldon": 0},
        "after-seldon": {"files": total, "manifest": True, "secret": True, "seldon": 1},
    }.get(point)
    if expected_left is not None:
        assert left == expected_left
    else:  # mid-copy: some files, never a manifest, nothing deployed
        assert 4 <= left["files"] <= total and not left["manifest"] and left["seldon"] == 0, left
    crashed = get(devstack, fns, "mp", "crashy")
    assert crashed is not None and (crashed.get("status") or {}).get("phase") != "Promoted"

    assert "PROMOTER_CRASH_AT" not in faults_operator.env
    restarted = time.monotonic()
    faults_operator.start()
    mp = wait_for(devstack, fns, "crashy", phase_in("Promoted", "Rejected", "Failed"), timeout=60)
    recovery = time.monotonic() - restarted
    time.sleep(1)
    seen = watcher.stop()

    # the same end state as the run without a crash
    ref = reference["status"]
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    assert mp["status"]["modelUri"] == f"s3://models/{fns}/{prefix}/{run_id}"
    assert {k: mp["status"]["artifact"][k] for k in ("files", "bytes", "digest")} == \
        {k: ref["artifact"][k] for k in ("files", "bytes", "digest")}
    assert mp["status"]["message"] == ref["message"] and mp["status"]["gates"] == ref["gates"]
    assert "progress" not in mp["status"]
    # one decision, told once (the models are saved in the dev venv: the serving image's
    # scikit-learn differs, which is said once too)
    assert sorted(reasons(devstack, fns, "crashy")) == [("Normal", "Deploying"), ("Normal", "Promoted"),
                                                        ("Warning", "VersionSkew")]
    # no duplicates: one deployment, one rclone Secret, the bucket holds the model and its manifest
    sdeps = seldons(devstack, fns)
    assert [sd_uri(s) for s in sdeps] == [mp["status"]["modelUri"]]
    assert sdeps[0]["metadata"]["annotations"]["mlops.dev/artifact-digest"] == ref["artifact"]["digest"]
    assert secret_names(devstack, fns) == {STORAGE_SECRET, "seldon-rclone-secret"}
    assert set(objects(devstack, "models", key_prefix)) == reference["files"]

    # every version of the deployment pointed at a verified copy, from the moment it existed
    assert not watcher.errors, watcher.errors
    assert [s.type for s in seen] == ["ADDED"], seen  # written once, never rewritten
    assert all(s.manifest_at_event for s in seen), seen
    for uri in {s.model_uri for s in seen}:
        assert manifest_problems(devstack, uri) == []
    stat = s3(devstack).stat_object("models", key_prefix + MANIFEST)
    created = dt.datetime.fromisoformat(seen[0].created.replace("Z", "+00:00"))
    assert stat.last_modified is not None and stat.last_modified <= created
    TABLE_ROWS.append(Row(f"operator SIGKILL at {point}", 1,
                          f"left {left}; restart converged to the reference (digest equal)",
                          f"{recovery:.1f}s after restart"))


# --- 3. conflicts ----------------------------------------------------------------------------


def _audit_conflicts(devstack: stack.State, offset: int) -> int:
    """409s the API server answered to someone else's SeldonDeployment patches, from the audit log."""
    return sum(1 for r in harness.Audit(devstack).requests(offset)
               if r.resource == "seldondeployments" and r.verb == "patch" and r.code == 409
               and not r.agent.startswith("fault-"))


def test_another_writer_racing_the_operator_loses_nothing_and_neither_does_the_operator(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    apply(devstack, fns, promote("first", fruns["small-0"], "race", "contended"))
    wait_for(devstack, fns, "first", phase_in("Promoted"), timeout=60)
    custom = client.CustomObjectsApi(api(devstack, "fault-patcher"))
    stop, ticks = threading.Event(), [0]

    def patcher() -> None:
        while not stop.is_set():
            ticks[0] += 1
            custom.patch_namespaced_custom_object(*SELDON[:2], fns, SELDON[2], "contended", {"metadata": {
                "labels": {"team": "fraud"}, "annotations": {"other-writer/tick": str(ticks[0])}}})

    offset = harness.Audit(devstack).mark()
    thread = threading.Thread(target=patcher, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        apply(devstack, fns, promote("second", fruns["small-1"], "race", "contended"))
        mp = wait_for(devstack, fns, "second", phase_in("Promoted", "Rejected", "Failed"), timeout=90)
    finally:
        stop.set()
        thread.join(10)
    took = time.monotonic() - started
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    sdep = get(devstack, fns, "seldondeployment", "contended")
    assert sdep is not None
    assert sd_uri(sdep) == f"s3://models/{fns}/race/{fruns['small-1']}"
    assert sdep["metadata"]["annotations"]["mlops.dev/promotion"] == "second"
    assert sdep["metadata"]["labels"]["team"] == "fraud"
    assert sdep["metadata"]["annotations"]["other-writer/tick"] == str(ticks[0])
    wait_for(devstack, fns, "first", phase_in("Superseded"), timeout=30)
    # How often the loop hit the operator's read-write window depends on timing; the
    # deterministic 409 is the next test's.
    conflicts = _audit_conflicts(devstack, offset)
    TABLE_ROWS.append(Row("writer patching the SeldonDeployment in a loop (409)", ticks[0],
                          f"promoted through {conflicts} conflicts; "
                          "other writer's label and last annotation kept", f"{took:.1f}s to Promoted"))


def test_a_write_between_the_operators_read_and_patch_is_a_409_retried_on_fresh_state(
        devstack: stack.State, fns: str) -> None:
    """The operator's create-or-patch helper against the real API server, with the other writer
    placed exactly in its read-write window: the stale patch gets 409, the helper re-reads and
    patches again, and both writers' fields are there."""
    from promoter.kube import Kube
    from promoter.seldon import merge_owned

    custom = client.CustomObjectsApi(api(devstack, "other-writer"))
    custom.create_namespaced_custom_object(*SELDON[:2], fns, SELDON[2], {
        "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
        "metadata": {"name": "window"},
        "spec": {"predictors": [{"name": "default", "graph": {"name": "model", "modelUri": "s3://models/old"}}]}})
    desired = {"metadata": {"annotations": {"mlops.dev/promotion": "mine"}},
               "spec": {"protocol": "v2", "predictors": [{"name": "default", "replicas": 1,
                                                          "graph": {"name": "model", "modelUri": "s3://models/new"}}]}}
    reads: list[str] = []

    def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
        assert have is not None
        reads.append(have["metadata"]["resourceVersion"])
        if len(reads) == 1:  # the other writer, right between the operator's read and its patch
            custom.patch_namespaced_custom_object(*SELDON[:2], fns, SELDON[2], "window",
                                                  {"metadata": {"labels": {"team": "fraud"}}})
        return merge_owned(have, desired)

    audit_offset = harness.Audit(devstack).mark()
    assert Kube(promoter_api(devstack, "promoter-under-test")).ensure_seldon(fns, "window", merge) == "patched"
    assert len(reads) == 2 and reads[0] != reads[1]
    sdep = get(devstack, fns, "seldondeployment", "window")
    assert sdep is not None
    assert sdep["metadata"]["labels"]["team"] == "fraud"
    assert sdep["metadata"]["annotations"]["mlops.dev/promotion"] == "mine"
    assert sd_uri(sdep) == "s3://models/new"
    codes = [r.code for r in harness.Audit(devstack).requests(audit_offset)
             if r.agent == "promoter-under-test" and r.verb == "patch"]
    assert codes == [409, 200]


def test_a_promotion_wrongly_marked_superseded_reclaims_the_deployment_that_names_it(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    """Two promotions finishing within milliseconds can each mark the other Superseded; the
    SeldonDeployment says who serves, and the drift check puts that one back to Promoted."""
    apply(devstack, fns, promote("named", fruns["small-0"], "reclaim", "reclaimed"))
    wait_for(devstack, fns, "named", phase_in("Promoted"), timeout=60)
    devstack.kubectl("-n", fns, "patch", "mp", "named", "--subresource=status", "--type=merge", "-p",
                     json.dumps({"status": {"phase": "Superseded", "supersededBy": "ghost"}}))
    started = time.monotonic()
    mp = wait_for(devstack, fns, "named", phase_in("Promoted"), timeout=30)
    assert "supersededBy" not in mp["status"]
    assert mp["status"]["message"] == (f"reclaimed serves run {fruns['small-0']} of this promotion "
                                       "(it had been marked superseded by ghost)")
    assert "Reclaimed" in [e["reason"] for e in events(devstack, fns, "named")]
    TABLE_ROWS.append(Row("promotion wrongly marked Superseded", 1, "back to Promoted (the deployment names it)",
                          f"{time.monotonic() - started:.1f}s"))


def test_two_promotions_for_one_deployment_applied_at_once_settle_on_one(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    runs = {"left": fruns["small-2"], "right": fruns["small-3"]}
    items = [promote(name, run, "duo", "duo") for name, run in runs.items()]
    started = time.monotonic()
    listing = {"apiVersion": "v1", "kind": "List", "items": items}
    devstack.kubectl("-n", fns, "apply", "-f", "-", input=json.dumps(listing))

    def one_each() -> dict[str, str] | None:
        phases = {n: ((get(devstack, fns, "mp", n) or {}).get("status") or {}).get("phase", "") for n in runs}
        return phases if sorted(phases.values()) == ["Promoted", "Superseded"] else None

    wait_until("one Promoted and one Superseded", one_each, 60)
    took = time.monotonic() - started
    time.sleep(6)  # a drift tick later it is still so
    phases = one_each()
    assert phases is not None
    winner = next(n for n, p in phases.items() if p == "Promoted")
    loser = next(n for n in runs if n != winner)
    sdep = get(devstack, fns, "seldondeployment", "duo")
    assert sdep is not None
    assert sdep["metadata"]["annotations"]["mlops.dev/promotion"] == winner
    assert sdep["metadata"]["annotations"]["mlops.dev/run-id"] == runs[winner]
    assert sd_uri(sdep) == f"s3://models/{fns}/duo/{runs[winner]}"
    assert (get(devstack, fns, "mp", loser) or {})["status"]["supersededBy"] == winner
    TABLE_ROWS.append(Row("two promotions for one deployment at once", 1,
                          f"{winner} Promoted and serving, {loser} Superseded", f"{took:.1f}s to settle"))


def test_a_takeover_applied_while_the_operator_was_down_supersedes_the_promotion_serving_before(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    """The new process has written no status yet: the promotion taken over is read (a list by
    name) or checked on resume, and either way ends Superseded."""
    apply(devstack, fns, promote("before", fruns["small-0"], "down", "handed"))
    wait_for(devstack, fns, "before", phase_in("Promoted"), timeout=60)
    faults_operator.stop()
    apply(devstack, fns, promote("after", fruns["small-1"], "down", "handed"))
    faults_operator.start()
    after = wait_for(devstack, fns, "after", phase_in("Promoted", "Rejected", "Failed"), timeout=60)
    before = wait_for(devstack, fns, "before", phase_in("Superseded"), timeout=30)
    assert after["status"]["phase"] == "Promoted" and before["status"]["supersededBy"] == "after"
    sdep = get(devstack, fns, "seldondeployment", "handed")
    assert sdep is not None and sdep["metadata"]["annotations"]["mlops.dev/promotion"] == "after"


def test_a_deleted_secret_or_deployment_is_restored_by_the_drift_timer(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    apply(devstack, fns, promote("kept", fruns["small-0"], "restore", "kept"))
    wait_for(devstack, fns, "kept", phase_in("Promoted"), timeout=60)
    uri = f"s3://models/{fns}/restore/{fruns['small-0']}"
    times = []
    for kind, name in (("secret", "seldon-rclone-secret"), ("seldondeployment", "kept")):
        devstack.kubectl("-n", fns, "delete", kind, name)
        deleted = time.monotonic()
        wait_until(f"{kind} {name} restored", lambda k=kind, n=name: get(devstack, fns, k, n), 30)
        times.append(time.monotonic() - deleted)
    assert secret_data(devstack, fns, "seldon-rclone-secret")["RCLONE_CONFIG_S3_ENDPOINT"] == devstack.s3_endpoint
    assert sd_uri(get(devstack, fns, "seldondeployment", "kept") or {}) == uri
    restored = wait_until("two Restored events", lambda: [
        e for e in events(devstack, fns, "kept") if e["reason"] == "Restored"], 10)
    assert sum(int(e.get("count") or 1) for e in restored) >= 2, restored
    assert (get(devstack, fns, "mp", "kept") or {})["status"]["phase"] == "Promoted"
    TABLE_ROWS.append(Row("user deletes the rclone Secret, then the SeldonDeployment", 2,
                          "both re-created by the drift sweep, Event Restored",
                          f"{times[0]:.1f}s / {times[1]:.1f}s (drift interval 5s)"))


# --- 4. tampering ----------------------------------------------------------------------------


def test_a_changed_file_in_a_promoted_copy_is_reported_and_serving_is_not_repointed(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    run_id = fruns["small-1"]
    apply(devstack, fns, promote("guarded", run_id, "tamper", "guarded"))
    wait_for(devstack, fns, "guarded", phase_in("Promoted"), timeout=60)
    before = as_written(get(devstack, fns, "seldondeployment", "guarded"))
    assert before is not None
    key = f"{fns}/tamper/{run_id}/MLmodel"
    original = s3(devstack).get_object("models", key)
    try:
        data = original.read()
    finally:
        original.close()
        original.release_conn()
    forged = data.replace(b"cloudpickle", b"cloudpickl3") if b"cloudpickle" in data else data[:-1] + b"#"
    assert len(forged) == len(data) and forged != data  # same size: only the ETag tells
    import io

    s3(devstack).put_object("models", key, io.BytesIO(forged), len(forged))
    tampered = time.monotonic()
    mp = wait_for(devstack, fns, "guarded", phase_in("Failed"), timeout=30)
    detected = time.monotonic() - tampered
    stalled = condition(mp, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "ArtifactTampered")
    assert mp["status"]["message"].startswith(f"artifact at s3://models/{fns}/tamper/{run_id} does not match its "
                                              "manifest: MLmodel changed")
    assert ("Warning", "ArtifactTampered") in reasons(devstack, fns, "guarded")
    time.sleep(6)  # another drift tick: still reported once, serving still untouched
    assert as_written(get(devstack, fns, "seldondeployment", "guarded")) == before
    assert reasons(devstack, fns, "guarded").count(("Warning", "ArtifactTampered")) == 1
    TABLE_ROWS.append(Row("a promoted file overwritten (same size)", 1,
                          "Failed, Stalled/ArtifactTampered, one Warning; deployment untouched",
                          f"detected in {detected:.1f}s; a person decides", "nothing (the tampering is reported)"))


# --- 5. outages ------------------------------------------------------------------------------


def _retry_gaps(op: Operator, ns: str, name: str) -> list[float]:
    times = op.invocations(ns, name)
    return [round(b - a, 1) for a, b in zip(times, times[1:], strict=False)]


def test_mlflow_down_for_a_while_is_waited_for_then_the_promotion_completes(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    stack.stop_component(devstack, "mlflow")
    down = time.monotonic()
    try:
        apply(devstack, fns, promote("patient", fruns["small-2"], "out-mlflow", "patient"))
        waiting = wait_for(devstack, fns, "patient", lambda o: reconciling(o) is not None, timeout=30)
        why = reconciling(waiting)
        assert why is not None and why["reason"] == "MlflowUnavailable"
        assert why["message"].startswith(f"MLflow is unavailable: cannot reach MLflow at {devstack.mlflow_uri}")
        assert get(devstack, fns, "seldondeployment", "patient") is None
        time.sleep(max(0.0, 12 - (time.monotonic() - down)))
    finally:
        stack.start_component(devstack, "mlflow")
    up = time.monotonic()
    mp = wait_for(devstack, fns, "patient", phase_in("Promoted", "Rejected", "Failed"), timeout=90)
    recovery = time.monotonic() - up
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    assert condition(mp, "Reconciling")["status"] == "False"
    gaps = _retry_gaps(faults_operator, fns, "patient")
    assert all(g <= 300 for g in gaps) and gaps == sorted(gaps), gaps  # doubling, capped
    TABLE_ROWS.append(Row("MLflow stopped", 1, f"Reconciling/MlflowUnavailable, retries {gaps}s apart, then Promoted",
                          f"{recovery:.1f}s after MLflow was back (down {up - down:.0f}s)"))


@full_only
def test_the_s3_server_killed_mid_copy_is_waited_for_and_the_copy_redone(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    run_id = fruns["big"]
    key_prefix = f"{fns}/out-s3/{run_id}/"
    watcher = SeldonWatcher(devstack, fns).start()
    apply(devstack, fns, promote("sturdy", run_id, "out-s3", "sturdy"))
    wait_until("the copy under way", lambda: objects(devstack, "models", key_prefix), 30, every=0.02)
    kill_component(devstack, "weed")
    down = time.monotonic()
    try:
        waiting = wait_for(devstack, fns, "sturdy", lambda o: reconciling(o) is not None, timeout=30)
        why = reconciling(waiting)
        assert why is not None and why["reason"] == "S3Unavailable", why
        assert get(devstack, fns, "seldondeployment", "sturdy") is None
        time.sleep(max(0.0, 5 - (time.monotonic() - down)))
    finally:
        stack.start_component(devstack, "weed")
    up = time.monotonic()
    mp = wait_for(devstack, fns, "sturdy", phase_in("Promoted", "Rejected", "Failed"), timeout=120)
    recovery = time.monotonic() - up
    seen = watcher.stop()
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    assert manifest_problems(devstack, mp["status"]["modelUri"]) == []
    assert all(s.manifest_at_event for s in seen) and [s.type for s in seen] == ["ADDED"], seen
    assert mp["status"]["artifact"]["bytes"] >= 28 * MIB
    TABLE_ROWS.append(Row("S3 server SIGKILLed mid-copy", 1,
                          "Reconciling/S3Unavailable, no deployment; copy redone and verified, then Promoted",
                          f"{recovery:.1f}s after S3 was back (down {up - down:.0f}s)"))


@full_only
def test_the_api_server_restarted_mid_promotion_is_survived(
        devstack: stack.State, faults_operator: Operator, fns: str, fruns: dict[str, str]) -> None:
    run_id = fruns["big"]
    apply(devstack, fns, promote("steadfast", run_id, "out-kube", "steadfast"))
    # The first copied object is the earliest sign of the copy (a copy this short writes no
    # progress): the Secret and SeldonDeployment writes are still to come.
    wait_until("the copy under way", lambda: objects(devstack, "models", f"{fns}/out-kube/{run_id}/"), 30, every=0.02)
    kill_component(devstack, "kube-apiserver")
    down = time.monotonic()
    try:
        time.sleep(3)
    finally:
        stack.start_component(devstack, "kube-apiserver")
    up = time.monotonic()
    mp = wait_for(devstack, fns, "steadfast", phase_in("Promoted", "Rejected", "Failed"), timeout=120)
    recovery = time.monotonic() - up
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    assert faults_operator.alive()
    log = faults_operator.since_start()
    assert f"[{fns}/steadfast] Handler 'reconcile' failed temporarily: the Kubernetes API is unavailable" in log
    assert [sd_uri(s) for s in seldons(devstack, fns)] == [f"s3://models/{fns}/out-kube/{run_id}"]
    assert manifest_problems(devstack, mp["status"]["modelUri"]) == []
    TABLE_ROWS.append(Row("kube-apiserver restarted mid-promotion", 1,
                          "handler failed temporarily (KubernetesUnavailable), kopf re-watched; Promoted",
                          f"{recovery:.1f}s after the API server was ready (down {up - down:.0f}s)"))
