"""The operator image, built here and run the way the chart's Deployment runs it.

The image is built with podman from the Dockerfile, on a bookworm base made with debootstrap
(devstack/image.py; reused while its inputs are unchanged). The chart is installed on devstack
(`helm install`); devstack has no kubelet, so devstack/pod.py runs the Deployment's Pod template
with podman as a kubelet would: its args and env, uid 65532, read-only root filesystem plus its
emptyDir, all capabilities dropped, no privilege escalation, a TokenRequest token of the
ServiceAccount and the cluster CA at the in-cluster paths, in a network namespace of its own
where kubernetes.default.svc is the API server, with a scope of its own (PROMOTER_SCOPE, a chart
setting) so that the session's operator leaves its promotion alone. The operator must log in as that ServiceAccount,
promote a model, answer its liveness probe and serve /metrics. The trainer image
(experiments/Dockerfile) is built and run once too, logging a run to devstack's MLflow.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.utils import canonicalize_name

from devstack import harness, image, stack
from devstack.pod import PodRun
from tests.unit.argocd_lua import CUSTOMIZATIONS, LUA, health

from .chart import Release, install, values_for
from .conftest import REPO, new_namespace, train
from .helpers import apply, get, phase_in, promotion, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(image.missing_tools() is not None, reason=str(image.missing_tools()))]

OPERATOR_INPUTS = [REPO / "pyproject.toml", REPO / "constraints.txt", REPO / "operator"]
TRAINER_INPUTS = [REPO / "experiments" / p for p in ("requirements.txt", "train.py", "data")]
# The operator's own layers (the venv) on top of the base: kopf, aiohttp, pydantic, minio, ...
MAX_OPERATOR_LAYERS = 80 * 1024**2
SCOPE = "image"
NOT_IN_IMAGE = {"mlflow", "mlflow-skinny", "scikit-learn", "pandas", "numpy", "boto3", "kubernetes"}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def built() -> image.Built:
    return image.build(REPO, "mlflow-seldon-promoter", OPERATOR_INPUTS, log=print)


@dataclass
class Evidence:
    release: Release
    pod: PodRun
    namespace: str
    promoted: dict[str, Any]
    seconds_to_promoted: float
    requests: list[harness.Request]


@pytest.fixture(scope="module")
def running(devstack: stack.State, crd: None, built: image.Built) -> Iterator[Evidence]:
    # A run of its own: a later test promoting the session's run expects to make the first copy.
    run_id, _ = train(devstack, seed=15)
    repository, tag = built.image.rsplit(":", 1)
    values = values_for(devstack, image={"repository": repository, "tag": tag, "pullPolicy": "Never"})
    values["settings"]["PROMOTER_SCOPE"] = SCOPE
    release = install(devstack, values)
    pod: PodRun | None = None
    namespace: str | None = None
    try:
        deployment = get(devstack, release.namespace, "deployment", release.name)
        assert deployment is not None
        template = deployment["spec"]["template"]  # as the API server stored it, defaults filled in
        configmaps = {}
        for source in template["spec"]["containers"][0].get("envFrom") or []:
            name = source["configMapRef"]["name"]
            configmaps[name] = (get(devstack, release.namespace, "configmap", name) or {})["data"]
        sa = template["spec"]["serviceAccountName"]
        token = devstack.kubectl("-n", release.namespace, "create", "token", sa, "--duration=1h").stdout.strip()
        namespace = new_namespace(devstack, "img")
        apply(devstack, namespace, promotion("served-by-image", run_id, deployment="image-served", scope=SCOPE))
        ca = (Path(devstack.home) / "certs" / "serving-ca.crt").read_bytes()
        pod = PodRun(template, release.namespace, token, ca,
                     ("127.0.0.1", _port(devstack.kube_url)), configmaps,
                     services={_port(u): ("127.0.0.1", _port(u)) for u in (devstack.mlflow_uri, devstack.s3_endpoint)},
                     name=f"promoter-{release.name[-6:]}")
        audit = harness.Audit(devstack)
        offset = audit.mark()
        started = time.monotonic()
        pod.start()
        try:
            promoted = wait_for(devstack, namespace, "served-by-image", phase_in("Promoted", "Rejected", "Failed"),
                                timeout=120)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{pod.logs()[-4000:]}") from None
        seconds = time.monotonic() - started
        print(f"image: container start to Promoted in {seconds:.2f}s")
        username = f"system:serviceaccount:{release.namespace}:{sa}"
        yield Evidence(release, pod, namespace, promoted, seconds, audit.requests(offset, user=username))
    finally:
        if pod is not None:
            pod.stop()
        if namespace is not None:
            harness.delete_namespace(devstack, namespace)
        release.uninstall()


def _exec_python(pod: PodRun, code: str) -> str:
    return image.podman("exec", pod.name, "/opt/venv/bin/python", "-c", code).stdout


# --- the tests --------------------------------------------------------------------------------


def test_the_image_promotes_a_model_as_its_service_account(devstack: stack.State, running: Evidence) -> None:
    status = running.promoted["status"]
    assert status["phase"] == "Promoted", status
    sdep = get(devstack, running.namespace, "seldondeployment", "image-served")
    assert sdep is not None
    assert sdep["spec"]["predictors"][0]["graph"]["modelUri"] == status["modelUri"]
    writes = {(r.verb, r.qualified) for r in running.requests if r.namespace == running.namespace and r.code < 300}
    assert {("create", "seldondeployments"), ("patch", "modelpromotions/status")} <= writes, writes
    assert "login_with_service_account' succeeded" in running.pod.logs()


def test_no_request_of_the_service_account_was_refused(running: Evidence) -> None:
    assert running.requests, "the audit log shows no request by the ServiceAccount"
    assert [(r.verb, r.uri, r.code) for r in running.requests if r.code in (401, 403)] == []


def test_the_liveness_probe_answers_where_the_deployment_probes(running: Evidence) -> None:
    probe = running.pod.template["spec"]["containers"][0]["livenessProbe"]["httpGet"]
    status, _ = running.pod.probe(probe["port"], probe["path"])
    assert status == 200


def test_metrics_count_the_promotion_on_the_metrics_port(running: Evidence) -> None:
    status, body = running.pod.probe("http-metrics", "/metrics")
    assert status == 200
    assert re.search(rb'^modelpromotion_outcomes_total\{outcome="Promoted"\} 1\.0$', body, re.M), body[:2000]


def test_the_operator_process_runs_as_65532_with_no_capabilities_and_no_new_privileges(running: Evidence) -> None:
    fields = dict(line.split(":\t", 1) for line in _exec_python(running.pod, "print(open('/proc/1/status').read())")
                  .splitlines() if ":\t" in line)
    assert fields["Uid"].split() == ["65532"] * 4
    assert fields["Gid"].split() == ["65532"] * 4
    assert int(fields["CapEff"], 16) == int(fields["CapPrm"], 16) == int(fields["CapBnd"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert "kopf" in _exec_python(running.pod, "print(open('/proc/1/cmdline').read())")


def test_the_root_filesystem_is_read_only_and_only_the_empty_dir_is_writable(running: Evidence) -> None:
    out = json.loads(_exec_python(running.pod, """
import json, os, tempfile
result = {}
for folder in ("/", "/opt/venv", "/etc", "/tmp", "/var/run/secrets/kubernetes.io/serviceaccount"):
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            result[folder] = "writable"
    except OSError as e:
        result[folder] = e.strerror
print(json.dumps(result))
"""))
    assert out == {"/": "Read-only file system", "/opt/venv": "Read-only file system",
                   "/etc": "Read-only file system", "/tmp": "writable",
                   "/var/run/secrets/kubernetes.io/serviceaccount": "Read-only file system"}


@pytest.mark.skipif(LUA is None, reason="lua5.1 is not installed (apt-get install -y lua5.1)")
def test_argo_cd_calls_the_promotion_the_image_made_healthy(running: Evidence) -> None:
    verdict = health(CUSTOMIZATIONS / "mlops.dev" / "ModelPromotion" / "health.lua", running.promoted)
    assert verdict == {"status": "Healthy", "message": running.promoted["status"]["message"]}


def test_the_image_holds_only_the_operators_pinned_packages(built: image.Built) -> None:
    listing = image.podman("run", "--rm", "--network=none", "--entrypoint", "/opt/venv/bin/python", built.image, "-c",
                           "import importlib.metadata as m, json;"
                           "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))")
    installed = json.loads(listing.stdout)
    pins = {canonicalize_name(name): version for name, version in (
        line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#"))}
    canonical = {canonicalize_name(name): version for name, version in installed.items()}
    assert sorted(set(canonical) & NOT_IN_IMAGE) == []
    assert "pip" not in canonical and "setuptools" not in canonical
    unpinned = {n: v for n, v in canonical.items() if n != "mlflow-seldon-promoter" and pins.get(n) != v}
    assert unpinned == {}, "installed versions differ from constraints.txt"


def test_the_image_adds_little_to_its_base(built: image.Built) -> None:
    total = image.size(built.image)
    added = total - image.size(image.base_tag())
    print(f"image: {built.image} {total / 1024**2:.1f} MiB, of which the operator's layers {added / 1024**2:.1f} MiB")
    assert 0 < added <= MAX_OPERATOR_LAYERS


def test_the_trainer_image_logs_a_run_to_devstacks_mlflow(devstack: stack.State) -> None:
    trainer = image.build(REPO / "experiments", "rf-trainer", TRAINER_INPUTS, log=print)
    env = devstack.env()
    out = image.podman("run", "--rm", "--network=host",
                       *(f"--env={k}={env[k]}" for k in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL",
                                                          "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
                       trainer.image, "--n-estimators", "5", "--experiment", "trainer-image", timeout=600)
    run_id = out.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{32}", run_id), out.stdout[-2000:] + out.stderr[-2000:]
    with urllib.request.urlopen(f"{devstack.mlflow_uri}/api/2.0/mlflow/runs/get?run_id={run_id}", timeout=30) as r:
        run = json.loads(r.read())["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {m["key"] for m in run["data"]["metrics"]} >= {"rmse", "r2"}
