"""Promoted means serving: the operator's SeldonDeployment becomes Pods that answer predictions.

On devstack: the real kube-controller-manager and kube-scheduler, devstack's node running the
real rclone (Debian's) and the real MLServer 1.7.1, and devstack's Seldon Core v1 test double in
between. Each test reads what a user would: kubectl, the Pods' status and logs, a V2 inference.
The Seldon double is not what is tested here; it only stands where Seldon's controller would.

Each test works in a namespace of its own and deletes it at the end (the controller-manager
finishes the deletion and garbage collection stops the processes), so at most a few MLServers
(~500 MiB each) run at once, within the node's Pod capacity.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from devstack import cluster, predict, stack
from devstack.harness import delete_namespace
from promoter.seldon import render_rclone_secret

from .conftest import Operator, new_namespace, train
from .helpers import apply, get, phase_in, promotion, s3, wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")


# --- helpers ---------------------------------------------------------------------------------


def eventually(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.5) -> T:
    """probe()'s first truthy value within timeout, else an AssertionError saying what and the last value."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def kubectl_json(devstack: stack.State, namespace: str, *args: str) -> Any:
    return json.loads(devstack.kubectl("-n", namespace, "get", *args, "-o", "json").stdout)


def pods(devstack: stack.State, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    args = ["pods"] + (["-l", selector] if selector else [])
    return list(kubectl_json(devstack, namespace, *args)["items"])


def pods_on_node(devstack: stack.State) -> list[dict[str, Any]]:
    """The Pods that take one of the node's slots: bound to it and not finished."""
    items = json.loads(devstack.kubectl("get", "pods", "-A", "-o", "json",
                                        f"--field-selector=spec.nodeName={cluster.NODE_NAME}").stdout)["items"]
    return [p for p in items if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def pids(pod: dict[str, Any]) -> list[int]:
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
    return [int(s["containerID"].removeprefix("devstack://")) for s in statuses if s.get("containerID")]


def running(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def container_log(devstack: stack.State, pod: dict[str, Any], container: str, run: int = 0) -> str:
    meta = pod["metadata"]
    folder = Path(devstack.home) / "logs" / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    path = folder / container / f"{run}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def rclone_secret(devstack: stack.State, namespace: str, secret_key: str | None = None) -> None:
    """The rclone Secret as the operator writes it, with the right keys unless told otherwise."""
    body = render_rclone_secret("seldon-rclone-secret", namespace, devstack.s3_endpoint, devstack.s3_access_key,
                                secret_key or devstack.s3_secret_key, f"{namespace}/test/none")
    devstack.kubectl("apply", "-f", "-", input=json.dumps(body))


def seldon_deployment(name: str, model_uri: str, **predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment", "metadata": {"name": name},
        "spec": {"protocol": "v2", "predictors": [{
            "name": "default", "replicas": 1, **predictor,
            "graph": {"name": "model", "type": "MODEL", "implementation": "SKLEARN_SERVER", "modelUri": model_uri,
                      "envSecretRefName": "seldon-rclone-secret"}}]},
    }


def upload(devstack: stack.State, files: dict[str, bytes]) -> str:
    """Files under a fresh prefix of the models bucket; its s3:// URI."""
    import io

    prefix = f"serving-tests/{uuid.uuid4().hex[:10]}"
    for name, data in files.items():
        s3(devstack).put_object("models", f"{prefix}/{name}", io.BytesIO(data), len(data))
    return f"s3://models/{prefix}"


def small_model_files(slope: float) -> dict[str, bytes]:
    """An MLflow scikit-learn model folder (model.pkl, MLmodel) predicting slope * x."""
    import tempfile

    import mlflow.sklearn
    from sklearn.linear_model import LinearRegression

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "m"
        model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, slope, 2 * slope])
        mlflow.sklearn.save_model(model, str(folder), serialization_format="cloudpickle")
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _when(stamp: str) -> float:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def infer_one(url: str, x: float) -> float:
    return predict.infer(url, {"inputs": [{"name": "input-0", "shape": [1, 1], "datatype": "FP64", "data": [x]}]})[0]


def sdep_url(devstack: stack.State, namespace: str, name: str) -> str:
    def url() -> str | None:
        obj = get(devstack, namespace, "seldondeployment", name)
        try:
            return predict.infer_url(obj) if obj else None
        except LookupError:
            return None

    return eventually(url, 60, f"serviceStatus of SeldonDeployment {name}")


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def room_on_the_node(devstack: stack.State) -> None:
    """These tests need Pods to be scheduled: wait (bounded) for the node to have room."""
    node = json.loads(devstack.kubectl("get", "node", cluster.NODE_NAME, "-o", "json").stdout)
    capacity = int(node["status"]["allocatable"]["pods"])

    def holders() -> list[str] | None:
        names = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in pods_on_node(devstack)]
        return None if capacity - len(names) >= 5 else names

    deadline = time.monotonic() + 120
    while (held := holders()) is not None:
        assert time.monotonic() < deadline, (
            f"the serving tests need 5 of the node's {capacity} Pod slots; after 120s these Pods hold them: {held} "
            "(tests must delete what they are done with: harness.delete_namespace)")
        time.sleep(1)


@pytest.fixture
def ns(namespace: str) -> str:
    """conftest's namespace: fresh, with the storage Secret, deleted when the test is done."""
    return namespace


@pytest.fixture(scope="module")
def good_model(devstack: stack.State) -> str:
    return upload(devstack, small_model_files(2.0))


@dataclass
class Prestarted:
    """SeldonDeployments made when the module starts, so that their waits (Seldon's readiness
    probe starts 20 s after MLServer; a progress deadline must pass) run beside the first tests
    rather than one after another. Each test that reads one deletes its namespace when done."""

    quirk: str  # namespace of SeldonDeployment "quirk": the good model, rolling out
    broken: str  # namespace of SeldonDeployments "empty" and "garbage" (progress deadline 20 s)


@pytest.fixture(scope="module", autouse=True)
def prestarted(devstack: stack.State, crd: None, room_on_the_node: None, good_model: str) -> Iterator[Prestarted]:
    garbage = small_model_files(1.0)
    garbage["model.pkl"] = b"this is not a pickle"
    quirk, broken = new_namespace(devstack, "s"), new_namespace(devstack, "s")
    for ns in (quirk, broken):
        rclone_secret(devstack, ns)
    apply(devstack, quirk, seldon_deployment("quirk", good_model))
    apply(devstack, broken, seldon_deployment("empty", f"s3://models/serving-tests/{uuid.uuid4().hex[:10]}",
                                              progressDeadlineSeconds=20))  # nothing under its modelUri
    apply(devstack, broken, seldon_deployment("garbage", upload(devstack, garbage), progressDeadlineSeconds=20))
    yield Prestarted(quirk, broken)
    for ns in (quirk, broken):
        delete_namespace(devstack, ns)


# --- a promotion serves --------------------------------------------------------------------------


def _promote_and_roll_out(devstack: stack.State, ns: str, name: str, run_id: str) -> str:
    apply(devstack, ns, promotion(name, run_id, deployment="rf", replicas=1))
    mp = wait_for(devstack, ns, name, phase_in("Promoted", "Rejected", "Failed"), timeout=120)
    assert mp["status"]["phase"] == "Promoted", mp["status"].get("message")
    deployment = predict.deployment_of(devstack, ns, "rf")
    out = predict.rollout(devstack, ns, deployment, timeout=180)
    assert f'deployment "{deployment}" successfully rolled out' in out
    return deployment


@dataclass
class Served:
    namespace: str
    run_id: str
    deployment: str
    example: dict[str, Any]
    local: list[float]  # what the run's model predicts on its example
    later_run: Future[tuple[str, dict[str, float]]]  # a second run, trained meanwhile


@pytest.fixture(scope="module")
def served(devstack: stack.State, crd: None, operator: Operator, trained: tuple[str, dict[str, float]],
           mlflow_env: dict[str, str]) -> Iterator[Served]:
    """The trained run promoted to SeldonDeployment rf and rolled out. The second test rolls a
    later run out over it: the two run in file order, sharing one rollout's wait."""
    with ThreadPoolExecutor(1) as pool:
        later_run = pool.submit(train, devstack, 7)
        ns = new_namespace(devstack, "s")
        run_id, _ = trained
        deployment = _promote_and_roll_out(devstack, ns, "first", run_id)
        model_uri = f"s3://models/{ns}/rf-regressor/{run_id}"
        example = predict.serving_example(devstack, model_uri)
        local = predict.local_predictions(model_uri, predict.rows(example), predict.client_env(devstack))
        yield Served(ns, run_id, deployment, example, local, later_run)
    delete_namespace(devstack, ns)


def test_a_promoted_model_answers_v2_inference_with_exactly_what_model_predict_says(
        devstack: stack.State, served: Served) -> None:
    assert served.deployment == "rf-default-0-model"
    table = devstack.kubectl("-n", served.namespace, "get", "pods", "-l", "seldon-deployment-id=rf").stdout
    rows = table.splitlines()
    assert len(rows) == 2 and rows[1].split()[1:3] == ["1/1", "Running"], table
    answer = predict.infer(sdep_url(devstack, served.namespace, "rf"), predict.v2_request(served.example))
    assert len(answer) == len(predict.rows(served.example)) >= 1
    assert answer == pytest.approx(served.local, rel=1e-9)


def test_a_second_promotion_rolls_out_new_pod_ready_before_old_one_stops_and_no_request_fails(
        devstack: stack.State, served: Served) -> None:
    ns, before = served.namespace, served.local
    second_run, _ = served.later_run.result(timeout=300)
    url = sdep_url(devstack, ns, "rf")
    request = predict.v2_request(served.example)
    (old_pod,) = pods(devstack, ns, "seldon-deployment-id=rf")
    assert predict.infer(url, request) == pytest.approx(before, rel=1e-9)

    answers: list[list[float]] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:  # 20 requests a second, each on a connection of its own, as curl sends them
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                answers.append(predict.infer(url, request, timeout=5))
            except Exception as e:  # noqa: BLE001 - every failure counts, whatever its kind
                failures.append(f"{type(e).__name__}: {e}")
            stop.wait(max(0.0, 0.05 - (time.monotonic() - t0)))

    seen: dict[str, dict[str, float]] = {}  # pod uid -> when it was first seen ready, deleting, gone

    def watch() -> bool:
        now = time.monotonic()
        current = pods(devstack, ns, "seldon-deployment-id=rf")
        for pod in current:
            marks = seen.setdefault(pod["metadata"]["uid"], {})
            if is_ready(pod):
                marks.setdefault("ready", now)
            if pod["metadata"].get("deletionTimestamp"):
                marks.setdefault("deleting", now)
        for uid in set(seen) - {p["metadata"]["uid"] for p in current}:
            seen[uid].setdefault("gone", now)
        return [p["metadata"]["uid"] for p in current] != [old_pod["metadata"]["uid"]] and len(current) == 1

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        apply(devstack, ns, promotion("second", second_run, deployment="rf", replicas=1))
        eventually(watch, 180, "the rollout to a new Pod, the old one gone", every=0.2)
        time.sleep(2)
    finally:
        stop.set()
        loader.join(10)
    after = predict.local_predictions(f"s3://models/{ns}/rf-regressor/{second_run}", predict.rows(served.example),
                                      predict.client_env(devstack))
    assert before != after
    (new_pod,) = pods(devstack, ns, "seldon-deployment-id=rf")
    old, new = seen[old_pod["metadata"]["uid"]], seen[new_pod["metadata"]["uid"]]
    # the Deployment controller deletes the old Pod once the new one is ready; the old one then
    # serves through its preStop sleep (10 s) before it is stopped
    assert new["ready"] <= old["deleting"] < old["gone"], (new, old)
    assert old["gone"] - new["ready"] >= 10, (new, old)
    assert failures == [], f"{len(failures)} of {len(answers) + len(failures)} requests failed: {failures[:5]}"
    assert len(answers) >= 20 * 20  # the swap took more than 20 s: at least 400 requests went through it
    assert answers[0] == pytest.approx(before, rel=1e-9) and answers[-1] == pytest.approx(after, rel=1e-9)
    assert all(a == pytest.approx(before, rel=1e-9) or a == pytest.approx(after, rel=1e-9) for a in answers)
    assert all(not running(pid) for pid in pids(old_pod))
    assert wait_for(devstack, ns, "first", phase_in("Superseded"))["status"]["phase"] == "Superseded"


# --- when the model cannot be served ---------------------------------------------------------


def test_wrong_s3_keys_fail_the_init_container_with_rclones_message_and_mlserver_never_starts(
        devstack: stack.State, ns: str, good_model: str) -> None:
    rclone_secret(devstack, ns, secret_key="not-the-secret-key")
    apply(devstack, ns, seldon_deployment("badkeys", good_model))

    def crash_looping() -> dict[str, Any] | None:
        items = pods(devstack, ns, "seldon-deployment-id=badkeys")
        init = items[0]["status"].get("initContainerStatuses", [{}])[0] if items else {}
        return items[0] if init.get("restartCount", 0) >= 1 and "terminated" in init.get("lastState", {}) else None

    pod = eventually(crash_looping, 60, "the storage initializer restarted after failing")
    init = pod["status"]["initContainerStatuses"][0]
    assert init["name"] == "model-model-initializer"
    assert init["lastState"]["terminated"]["exitCode"] == 1 and init["lastState"]["terminated"]["reason"] == "Error"
    log = devstack.kubectl("-n", ns, "logs", pod["metadata"]["name"], "-c", "model-model-initializer",
                           "--previous").stdout  # the failed start's log, as the kubelet serves it
    assert "SignatureDoesNotMatch" in log and "Failed to copy" in log
    model = pod["status"]["containerStatuses"][0]
    assert model["state"] == {"waiting": {"reason": "PodInitializing"}} and model["restartCount"] == 0
    assert not container_log(devstack, pod, "model"), "MLServer was started"
    assert pod["status"]["phase"] == "Pending"
    status = devstack.kubectl("-n", ns, "get", "pods", "-l", "seldon-deployment-id=badkeys").stdout
    assert "Init:Error" in status or "Init:CrashLoopBackOff" in status
    assert "not-the-secret-key" not in log


def test_a_model_mlserver_cannot_load_crash_loops_and_the_deployment_exceeds_its_progress_deadline(
        devstack: stack.State, prestarted: Prestarted) -> None:
    ns = prestarted.broken  # "empty": nothing under its modelUri; "garbage": a model.pkl that is not one
    for name in ("empty", "garbage"):
        deployment = predict.deployment_of(devstack, ns, name)

        def stalled() -> dict[str, Any] | None:
            dep = kubectl_json(devstack, ns, "deployment", deployment)  # noqa: B023 - called in this iteration
            cond = {c["type"]: c for c in dep["status"].get("conditions", [])}.get("Progressing", {})
            return dep if cond.get("reason") == "ProgressDeadlineExceeded" else None

        dep = eventually(stalled, 90, f"{name}: {deployment} reporting ProgressDeadlineExceeded")
        progressing = next(c for c in dep["status"]["conditions"] if c["type"] == "Progressing")
        assert progressing["status"] == "False"
        # reported within its deadline (20 s) of the Deployment's creation, give or take a sync
        took = _when(progressing["lastTransitionTime"]) - _when(dep["metadata"]["creationTimestamp"])
        assert 20 <= took <= 35, (name, took)

        def restarted() -> dict[str, Any] | None:
            (pod,) = pods(devstack, ns, f"seldon-deployment-id={name}")  # noqa: B023
            statuses = pod["status"].get("containerStatuses") or [{}]
            return pod if statuses[0].get("restartCount", 0) >= 1 else None

        pod = eventually(restarted, 60, f"{name}: MLServer exited and was started again")
        init, model = pod["status"]["initContainerStatuses"][0], pod["status"]["containerStatuses"][0]
        assert init["state"]["terminated"]["exitCode"] == 0, name  # rclone copied what there was
        assert not model["ready"] and "terminated" in model["lastState"], (name, model)
        rollout = devstack.kubectl("-n", ns, "rollout", "status", f"deploy/{deployment}", "--timeout=5s",
                                   check=False)
        assert rollout.returncode != 0 and "exceeded its progress deadline" in rollout.stderr, name
        assert "Some of the models failed to load during startup!" in container_log(devstack, pod, "model"), name
        sdep = eventually(lambda: (o := get(devstack, ns, "seldondeployment", name)) and o["status"].get(  # noqa: B023
            "state") == "Failed" and o, 30, f"{name}: the SeldonDeployment's state Failed")
        assert sdep["status"]["description"] == "Deployment is no longer progressing and not available."
    delete_namespace(devstack, ns)


def test_a_bad_update_leaves_the_old_pod_serving_and_seldon_creating_never_failed_nor_generation_aware(
        devstack: stack.State, prestarted: Prestarted) -> None:
    ns = prestarted.quirk
    deployment = predict.deployment_of(devstack, ns, "quirk")
    predict.rollout(devstack, ns, deployment)
    url = sdep_url(devstack, ns, "quirk")
    assert infer_one(url, 3.0) == pytest.approx(6.0)

    empty = f"s3://models/serving-tests/{uuid.uuid4().hex[:10]}"
    apply(devstack, ns, seldon_deployment("quirk", empty, progressDeadlineSeconds=10))

    def stalled() -> dict[str, Any] | None:
        dep = kubectl_json(devstack, ns, "deployment", deployment)
        cond = {c["type"]: c for c in dep["status"].get("conditions", [])}
        return dep if cond.get("Progressing", {}).get("reason") == "ProgressDeadlineExceeded" else None

    dep = eventually(stalled, 90, f"{deployment} reporting ProgressDeadlineExceeded for the bad update")
    available = next(c for c in dep["status"]["conditions"] if c["type"] == "Available")
    assert available["status"] == "True"  # the old Pod
    items = pods(devstack, ns, "seldon-deployment-id=quirk")
    assert len(items) == 2 and sum(is_ready(p) for p in items) == 1
    time.sleep(2)  # a few passes of the double over the stalled rollout
    sdep = get(devstack, ns, "seldondeployment", "quirk")
    assert sdep is not None and sdep["metadata"]["generation"] == 2
    # Seldon reads readyReplicas and unavailableReplicas, not the rollout's conditions: an update
    # that can never finish is "Creating" for ever, never "Failed" while an old Pod is available,
    # and nothing in the status says which generation it describes.
    assert sdep["status"]["state"] == "Creating"
    assert "observedGeneration" not in sdep["status"]
    assert sdep["status"]["deploymentStatus"][deployment] == {"replicas": 2, "availableReplicas": 1}
    assert infer_one(url, 3.0) == pytest.approx(6.0)  # the old model still answers
    delete_namespace(devstack, ns)


def test_a_server_devstack_does_not_serve_gets_state_failed_saying_so(
        devstack: stack.State, ns: str, good_model: str) -> None:
    body = seldon_deployment("seldonproto", good_model)
    body["spec"]["protocol"] = "seldon"
    apply(devstack, ns, body)
    sdep = eventually(lambda: (o := get(devstack, ns, "seldondeployment", "seldonproto")) and (
        o.get("status") or {}).get("state") and o, 30, "a state on the SeldonDeployment")
    assert sdep["status"]["state"] == "Failed"
    assert "devstack does not serve protocol 'seldon' with implementation 'SKLEARN_SERVER'" in (
        sdep["status"]["description"])
    assert devstack.kubectl("-n", ns, "get", "deploy", "-o", "name").stdout == ""


# --- deletion and capacity -------------------------------------------------------------------


def _running_pod(devstack: stack.State, ns: str, sdep: str) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        items = pods(devstack, ns, f"seldon-deployment-id={sdep}")
        ok = items and items[0]["status"].get("containerStatuses", [{}])[0].get("state", {}).get("running")
        return items[0] if ok else None

    return eventually(started, 60, f"a Pod of {sdep} running MLServer")


def test_deleting_a_seldon_deployment_or_its_namespace_stops_its_pods_and_their_processes(
        devstack: stack.State, ns: str, crd: None, good_model: str) -> None:
    other = new_namespace(devstack, "s")
    for where in (ns, other):
        rclone_secret(devstack, where)
        apply(devstack, where, seldon_deployment("doomed", good_model))
    processes = {where: pids(_running_pod(devstack, where, "doomed")) for where in (ns, other)}
    assert all(running(p[-1]) for p in processes.values()), processes

    devstack.kubectl("-n", ns, "delete", "seldondeployment", "doomed")  # garbage collection
    deleting = subprocess.Popen([str(Path(devstack.bin_dir) / "kubectl"), "--kubeconfig", devstack.kubeconfig,
                                 "delete", "namespace", other, "--timeout=90s"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    eventually(lambda: devstack.kubectl("-n", ns, "get", "deploy,rs,pods,svc", "-o", "name").stdout == "" or None,
               60, "the SeldonDeployment's Deployment, ReplicaSet, Pod and Services gone")
    _, err = deleting.communicate(timeout=120)
    assert deleting.returncode == 0, err  # the namespace finished deleting
    assert devstack.kubectl("get", "namespace", other, check=False).returncode != 0
    assert not any(running(pid) for p in processes.values() for pid in p)


def _bare_pod(name: str, image: str, **container: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": image, **container}]}}


def test_pods_beyond_the_nodes_capacity_stay_pending_and_an_unknown_image_waits_in_err_image_pull(
        devstack: stack.State, ns: str) -> None:
    node = json.loads(devstack.kubectl("get", "node", cluster.NODE_NAME, "-o", "json").stdout)
    capacity = int(node["status"]["allocatable"]["pods"])
    for i in range(capacity + 1):  # one more than fits, whatever else runs there
        apply(devstack, ns, _bare_pod(f"p{i}", "example.invalid/nothing:1"))

    def unschedulable(pod: dict[str, Any]) -> bool:
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                   for c in pod.get("status", {}).get("conditions", []))

    def settled() -> list[dict[str, Any]] | None:
        items = pods(devstack, ns)
        bound = [p for p in items if p["spec"].get("nodeName")]
        reported = all(p["status"].get("containerStatuses") for p in bound)
        pending = [p for p in items if not p["spec"].get("nodeName")]
        return items if bound and reported and pending and all(unschedulable(p) for p in pending) else None

    items = eventually(settled, 60, "the Pods that fit bound and reported, the others Unschedulable")
    assert len(pods_on_node(devstack)) <= capacity
    waiting = next(p for p in items if not p["spec"].get("nodeName"))
    scheduled = next(c for c in waiting["status"]["conditions"] if c["type"] == "PodScheduled")
    assert scheduled["status"] == "False" and "Too many pods" in scheduled["message"]
    bound = next(p for p in items if p["spec"].get("nodeName"))
    state = bound["status"]["containerStatuses"][0]["state"]["waiting"]
    assert state["reason"] == "ErrImagePull"
    assert 'Failed to pull image "example.invalid/nothing:1"' in state["message"]
    assert "seldonio/mlserver" in state["message"]  # the table of what the node runs
    assert bound["status"]["phase"] == "Pending"


def test_a_container_asking_for_its_log_as_termination_message_gets_it_in_its_status(
        devstack: stack.State, ns: str) -> None:
    apply(devstack, ns, _bare_pod("copy", "seldonio/rclone-storage-initializer:1.18.2",
                                  args=["nowhere:bucket/path", "/mnt/out"],
                                  terminationMessagePolicy="FallbackToLogsOnError"))

    def finished() -> dict[str, Any] | None:
        (pod,) = pods(devstack, ns) or [{}]
        return pod if pod.get("status", {}).get("phase") in ("Failed", "Succeeded") else None

    pod = eventually(finished, 60, "the Pod finished")
    assert pod["status"]["phase"] == "Failed"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] != 0 and terminated["reason"] == "Error"
    assert "didn't find section in config file" in terminated["message"]


@pytest.fixture(autouse=True)
def _mlflow_s3_env(devstack: stack.State, monkeypatch: pytest.MonkeyPatch) -> None:
    # small_model_files runs mlflow in this process: keep it off whatever the shell pointed at
    for key in [k for k in os.environ if k.startswith(("MLFLOW_", "AWS_"))]:
        monkeypatch.delenv(key)
