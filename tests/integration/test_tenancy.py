"""Multi-tenant safety on devstack: a tenant ServiceAccount that may only write ModelPromotions
(and read one Secret of its namespace by name) reaches, through the operator, no credential,
model or object it could not reach itself.

Each finding of the security review is reproduced here and now meets a refusal: a Secret the
tenant can read never receives the storage keys; a host outside the allowlist receives no
request at all, credentials or not; an allowed upstream's answer reaches status only as a
status code; a look-alike copy planted at the tenant's prefix is never served; a platform's
SeldonDeployment is not patched until it is handed over; one namespace's stalling, huge or
model-heavy upstream leaves another namespace's promotion on time; and the admission policy
keeps the operator's own ServiceAccount to the Secrets it made.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack import harness, stack
from devstack.harness import REPO, Operator

from .helpers import RMSE_BELOW_1, as_written, condition, events, get, objects, phase_in, read_object, s3, wait_for

pytestmark = pytest.mark.integration

SCOPE = "tenancy"
MARKER = "EVIL-ANSWER-3f1c"  # what a misbehaving upstream says; it must land nowhere


# --- upstreams -------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    authorization: str


@dataclass
class Upstream:
    """A local HTTP server that plays a misbehaving MLflow by the first segment of the path:
    /trickle (one byte every 2 s), /huge (a 300 KB run status), /many (3,000 logged models),
    /body500 (errors with a body), and records every request."""

    server: socketserver.ThreadingTCPServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def _handler(upstream: list[Upstream]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: Any) -> None:
            raw = (json.dumps(body) if not isinstance(body, bytes) else body) if body is not None else b""
            data = raw.encode() if isinstance(raw, str) else raw
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            upstream[0].seen.append(Seen(self.command, self.path, self.headers.get("Authorization", "")))
            mode = self.path.split("/")[1]
            if mode == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                try:
                    while True:
                        self.wfile.write(b"X")
                        self.wfile.flush()
                        time.sleep(2)
                except OSError:
                    return
            run = {"run_id": "0" * 32, "status": "FINISHED", "lifecycle_stage": "active",
                   "artifact_uri": "s3://mlflow/nowhere/artifacts", "experiment_id": "1"}
            if mode == "huge" and "runs/get" in self.path:
                self._answer(200, {"run": {"info": {**run, "status": "R" * 300_000 + " " + MARKER}}})
            elif mode == "many" and "runs/get" in self.path:
                ids = [{"model_id": f"m-{i:04d}", "step": 0} for i in range(3000)]
                self._answer(200, {"run": {"info": run, "data": {"metrics": [{"key": "rmse", "value": 0.5}]},
                                           "outputs": {"model_outputs": ids}}})
            elif mode == "many" and "logged-models/search" in self.path:
                self._answer(200, {"models": []})
            elif mode == "body500":
                self._answer(500, {"error_code": "INTERNAL_ERROR", "message": MARKER * 50})
            else:
                self._answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": MARKER})

        do_GET = do_POST = _serve

    return Handler


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[Upstream, Upstream]]:
    """(evil: not allowed, allowed: an admin-allowed MLflow that misbehaves)."""
    made = []
    for _ in range(2):
        holder: list[Upstream] = []
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(holder))
        server.daemon_threads = True
        holder.append(Upstream(server))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(holder[0])
    try:
        yield made[0], made[1]
    finally:
        for u in made:
            u.server.shutdown()
            u.server.server_close()


@pytest.fixture(scope="module")
def tenancy_operator(devstack: stack.State, crd: None, upstreams: tuple[Upstream, Upstream],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    _, allowed = upstreams
    op = Operator(devstack, tmp_path_factory.mktemp("tenancy") / "operator.log", {
        "PROMOTER_ALLOWED_TRACKING_URIS": f"{devstack.mlflow_uri},{allowed.url}",
        "PROMOTER_HTTP_TIMEOUT": "3", "PROMOTER_WORKERS": "4", "PROMOTER_RUN_WAIT_TIMEOUT": "600",
    }, scope=SCOPE)
    op.start()
    try:
        yield op
    finally:
        op.stop()


# --- the tenant -------------------------------------------------------------------------------


@dataclass
class Tenant:
    namespace: str
    kubeconfig: Path

    def kubectl(self, devstack: stack.State, *args: str, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(Path(devstack.bin_dir) / "kubectl"), "--kubeconfig", str(self.kubeconfig),
                               "-n", self.namespace, *args], input=input, capture_output=True, text=True,
                              timeout=60, check=check)

    def apply(self, devstack: stack.State, obj: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl(devstack, "apply", "-f", "-", input=json.dumps(obj), check=check)


@pytest.fixture
def tenant(devstack: stack.State, crd: None, tmp_path: Path) -> Iterator[Tenant]:
    """A namespace with the storage Secret, a Secret the tenant may read (app-config), and the
    tenant's ServiceAccount: ModelPromotions, and `get` of app-config, nothing else."""
    ns = harness.namespace(devstack, prefix="tn")
    devstack.kubectl("-n", ns, "create", "secret", "generic", "app-config", "--from-literal=LOG_LEVEL=info")
    devstack.kubectl("-n", ns, "create", "serviceaccount", "tenant")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "tenant"},
            "rules": [{"apiGroups": ["mlops.dev"], "resources": ["modelpromotions"],
                       "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
                      {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["app-config"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "tenant"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
               "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}]}
    for obj in (role, binding):
        devstack.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(obj))
    yield Tenant(ns, _token_kubeconfig(devstack, ns, "tenant", tmp_path / "tenant.kubeconfig"))
    harness.delete_namespace(devstack, ns)


def _token_kubeconfig(devstack: stack.State, ns: str, sa: str, path: Path) -> Path:
    token = devstack.kubectl("-n", ns, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = json.loads(Path(devstack.kubeconfig).read_text())
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": sa, "clusters": admin["clusters"],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": admin["clusters"][0]["name"], "user": sa,
                                              "namespace": ns}}]}))
    path.chmod(0o600)
    return path


def promotion(name: str, run_id: str, **changes: Any) -> dict[str, Any]:
    obj = harness.promotion(name, run_id, RMSE_BELOW_1, deployment=changes.pop("deployment", "tenant-sd"),
                            scope=SCOPE)
    obj["spec"]["source"].update(changes.pop("source", {}))
    obj["spec"]["target"]["seldonDeployment"].update(changes.pop("seldon", {}))
    assert not changes, changes
    return obj


def decided(devstack: stack.State, ns: str, name: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(devstack, ns, name, phase_in("Promoted", "Rejected", "Failed"), timeout=timeout)


def reason(mp: dict[str, Any]) -> str:
    return str(condition(mp, "Stalled")["reason"])


# --- the findings -------------------------------------------------------------------------------


def test_a_secret_the_tenant_can_read_never_receives_the_storage_keys(
        devstack: stack.State, tenancy_operator: Operator, tenant: Tenant, runs: dict[str, str]) -> None:
    can = tenant.kubectl(devstack, "auth", "can-i", "get", "secret/minio-credentials", check=False)
    assert can.stdout.strip() == "no"
    tenant.apply(devstack, promotion("leak", runs["mlflow2"], seldon={"secretName": "app-config"}))
    mp = decided(devstack, tenant.namespace, "leak")
    assert (mp["status"]["phase"], reason(mp)) == ("Rejected", "NotManaged")
    assert "Secret " + tenant.namespace + "/app-config (spec.target.seldonDeployment.secretName) exists and was " \
           "not made by the operator" in mp["status"]["message"]
    seen = json.loads(tenant.kubectl(devstack, "get", "secret", "app-config", "-o", "json").stdout)
    assert set(seen["data"]) == {"LOG_LEVEL"}
    assert devstack.s3_secret_key not in json.dumps(seen)
    time.sleep(6)  # a drift sweep later it is still so
    assert set(json.loads(tenant.kubectl(devstack, "get", "secret", "app-config", "-o", "json").stdout)["data"]) \
        == {"LOG_LEVEL"}


def test_a_host_outside_the_allowlist_receives_no_request_credentials_or_not(
        devstack: stack.State, tenancy_operator: Operator, tenant: Tenant, runs: dict[str, str],
        upstreams: tuple[Upstream, Upstream]) -> None:
    evil, _ = upstreams
    devstack.kubectl("-n", tenant.namespace, "create", "secret", "generic", "mlflow-auth",
                     "--from-literal=MLFLOW_TRACKING_USERNAME=svc", "--from-literal=MLFLOW_TRACKING_PASSWORD=pw-9c1e")
    before = len(evil.seen)
    for uri in (f"{evil.url}/anything#", f"{evil.url}/x?a=", "http://169.254.169.254/latest/meta-data#"):
        refused = tenant.apply(devstack, promotion("ssrf-q", runs["mlflow2"], source={"trackingUri": uri}), check=False)
        assert refused.returncode != 0 and "spec.source.trackingUri" in refused.stderr, refused.stderr
    for i, uri in enumerate((f"{evil.url}/anything", "http://169.254.169.254/latest/meta-data")):
        tenant.apply(devstack, promotion(f"ssrf-{i}", runs["mlflow2"], source={
            "trackingUri": uri, "credentialsSecretRef": {"name": "mlflow-auth"}}))
        mp = decided(devstack, tenant.namespace, f"ssrf-{i}")
        assert (mp["status"]["phase"], reason(mp)) == ("Rejected", "NotAllowed")
        assert "PROMOTER_ALLOWED_TRACKING_URIS" in mp["status"]["message"]
    time.sleep(1)
    assert evil.seen[before:] == []


def test_an_allowed_upstreams_answer_reaches_status_only_as_its_status_code(
        devstack: stack.State, tenancy_operator: Operator, tenant: Tenant, runs: dict[str, str],
        upstreams: tuple[Upstream, Upstream]) -> None:
    _, allowed = upstreams
    tenant.apply(devstack, promotion("noisy", runs["mlflow2"], source={"trackingUri": f"{allowed.url}/body500"}))
    mp = wait_for(devstack, tenant.namespace, "noisy", lambda o: bool((o.get("status") or {}).get("conditions"))
                  and condition(o, "Reconciling")["status"] == "True")
    assert condition(mp, "Reconciling")["reason"] == "MlflowUnavailable"
    assert "answered 500" in mp["status"]["message"] and "(INTERNAL_ERROR)" in mp["status"]["message"]
    tenant.apply(devstack, promotion("missing", runs["mlflow2"], source={"trackingUri": f"{allowed.url}/gone"}))
    assert reason(decided(devstack, tenant.namespace, "missing")) == "RunNotFound"
    texts = [devstack.kubectl("-n", tenant.namespace, "get", "mp", "-o", "json").stdout,
             json.dumps(events(devstack, tenant.namespace, "noisy") + events(devstack, tenant.namespace, "missing")),
             tenancy_operator.text()]
    assert all(MARKER not in t for t in texts)


def test_a_look_alike_copy_planted_at_the_tenants_prefix_is_never_served(
        devstack: stack.State, tenancy_operator: Operator, tenant: Tenant, runs: dict[str, str]) -> None:
    run_id = runs["mlflow2"]
    source = objects(devstack, "mlflow", "")
    folder = next(k.rsplit("/", 1)[0] for k in source if k.endswith("/rf-regressor/MLmodel") and run_id in k)
    client, target = s3(devstack), f"{tenant.namespace}/rf-regressor/{run_id}"
    files = []
    for key, obj in source.items():
        if key.startswith(folder + "/"):
            path = key[len(folder) + 1:]
            fake = b"\0" * int(obj.size or 0)  # the same names and sizes, other bytes
            client.put_object("models", f"{target}/{path}", _bytes(fake), len(fake))
            files.append({"path": path, "size": len(fake), "sha256": "0" * 64, "etag": ""})
    manifest = json.dumps({"runId": run_id, "source": f"s3://mlflow/{folder}", "files": files}).encode()
    client.put_object("models", f"{target}/promotion-manifest.json", _bytes(manifest), len(manifest))
    planted = {k: o.etag for k, o in objects(devstack, "models", target + "/").items()}

    tenant.apply(devstack, promotion("victim", run_id))
    mp = decided(devstack, tenant.namespace, "victim")
    assert (mp["status"]["phase"], reason(mp)) == ("Rejected", "CopyConflict")
    assert mp["status"]["message"].startswith(f"s3://models/{target} already holds a copy that is not of this model")
    assert get(devstack, tenant.namespace, "seldondeployment", "tenant-sd") is None
    assert {k: o.etag for k, o in objects(devstack, "models", target + "/").items()} == planted
    assert read_object(devstack, "models", f"{target}/model.pkl") == b"\0" * len(
        read_object(devstack, "mlflow", f"{folder}/model.pkl"))


def test_a_platform_seldondeployment_is_not_patched_until_its_owner_hands_it_over(
        devstack: stack.State, tenancy_operator: Operator, tenant: Tenant, runs: dict[str, str]) -> None:
    platform = {"apiVersion": "machinelearning.seldon.io/v1", "kind": "SeldonDeployment",
                "metadata": {"name": "platform"},
                "spec": {"protocol": "v2", "predictors": [{"name": "default", "replicas": 1, "graph": {
                    "name": "model", "implementation": "SKLEARN_SERVER", "modelUri": "s3://models/platform/v7"}}]}}
    devstack.kubectl("-n", tenant.namespace, "apply", "-f", "-", input=json.dumps(platform))
    before = as_written(get(devstack, tenant.namespace, "seldondeployment", "platform"))
    tenant.apply(devstack, promotion("grab", runs["mlflow2"], deployment="platform"))
    mp = decided(devstack, tenant.namespace, "grab")
    assert (mp["status"]["phase"], reason(mp)) == ("Rejected", "NotManaged")
    assert as_written(get(devstack, tenant.namespace, "seldondeployment", "platform")) == before
    devstack.kubectl("-n", tenant.namespace, "annotate", "seldondeployment", "platform", "mlops.dev/adopt=true")
    obj = promotion("grab", runs["mlflow2"], deployment="platform")
    obj["spec"]["gates"][0]["threshold"] = 71  # a new generation tries again
    tenant.apply(devstack, obj)
    mp = wait_for(devstack, tenant.namespace, "grab", phase_in("Promoted"))
    sdep = get(devstack, tenant.namespace, "seldondeployment", "platform")
    assert sdep is not None and sdep["metadata"]["annotations"]["mlops.dev/promotion"] == "grab"
    assert sdep["metadata"]["annotations"]["mlops.dev/owner"].startswith(f"{tenant.namespace}/grab/")


def test_one_namespaces_stalling_huge_or_model_heavy_upstream_leaves_another_namespace_on_time(
        devstack: stack.State, tenancy_operator: Operator, runs: dict[str, str],
        upstreams: tuple[Upstream, Upstream], namespaces: Callable[[str], str]) -> None:
    _, allowed = upstreams
    quiet, noisy = namespaces("tq"), namespaces("tx")

    def timed(name: str, deployment: str) -> float:
        started = time.monotonic()
        harness_apply(devstack, quiet, promotion(name, runs["mlflow2"], deployment=deployment))
        mp = wait_for(devstack, quiet, name, phase_in("Promoted", "Rejected", "Failed"), timeout=120)
        assert mp["status"]["phase"] == "Promoted", mp["status"]
        return time.monotonic() - started

    normal = timed("alone", "quiet-a")
    before = len(allowed.seen)
    for i in range(4):
        for mode in ("trickle", "huge", "many"):
            harness_apply(devstack, noisy, promotion(f"{mode}-{i}", runs["mlflow2"], deployment=f"{mode}-{i}",
                                                     source={"trackingUri": f"{allowed.url}/{mode}"}))
    time.sleep(2)  # the noisy ones hold their lanes
    loaded = timed("beside", "quiet-b")
    assert loaded <= normal + 10, (normal, loaded)

    huge = get(devstack, noisy, "mp", "huge-0")
    assert huge is not None and len(json.dumps(huge["status"])) < 10_000
    assert len(huge["status"]["message"]) <= 1024
    many = [s for s in allowed.seen[before:] if s.path.startswith("/many/")]
    assert not [s for s in many if "/logged-models/m-" in s.path], "one search, not a GET per model"
    trickling = get(devstack, noisy, "mp", "trickle-0")
    assert trickling is not None
    assert "did not answer" in condition(trickling, "Reconciling")["message"]


def test_the_operators_service_account_may_update_only_the_secrets_it_made(
        devstack: stack.State, crd: None, tmp_path: Path, namespaces: Callable[[str], str]) -> None:
    devstack.kubectl("apply", "-k", str(REPO / "manifests" / "admission"))
    devstack.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                           "metadata": {"name": "promoter-system"}}))
    devstack.kubectl("-n", "promoter-system", "apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "mlflow-seldon-promoter"}}))
    ns = namespaces("vap")
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "secrets"},
            "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "secrets"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets"},
               "subjects": [{"kind": "ServiceAccount", "name": "mlflow-seldon-promoter",
                             "namespace": "promoter-system"}]}
    for obj in (role, binding):
        devstack.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(obj))
    devstack.kubectl("-n", ns, "create", "secret", "generic", "theirs", "--from-literal=x=1")
    devstack.kubectl("-n", ns, "create", "secret", "generic", "ours", "--from-literal=x=1")
    devstack.kubectl("-n", ns, "label", "secret", "ours", "app.kubernetes.io/managed-by=mlflow-seldon-promoter")
    kubeconfig = _token_kubeconfig(devstack, "promoter-system", "mlflow-seldon-promoter", tmp_path / "sa.kubeconfig")
    patch = json.dumps({"stringData": {"RCLONE_CONFIG_S3_ACCESS_KEY_ID": "k"}})

    def patch_as_operator(name: str) -> subprocess.CompletedProcess[str]:
        deadline = time.monotonic() + 30
        while True:  # the policy takes a moment to be enforced after it is created
            out = subprocess.run([str(Path(devstack.bin_dir) / "kubectl"), "--kubeconfig", str(kubeconfig), "-n", ns,
                                  "patch", "secret", name, "-p", patch], capture_output=True, text=True, timeout=30)
            if name == "ours" or out.returncode != 0 or time.monotonic() > deadline:
                return out
            devstack.kubectl("-n", ns, "patch", "secret", name, "--type=json",
                             "-p", '[{"op": "remove", "path": "/data/RCLONE_CONFIG_S3_ACCESS_KEY_ID"}]')
            time.sleep(1)

    refused = patch_as_operator("theirs")
    assert refused.returncode != 0 and "may update only Secrets it made" in refused.stderr, refused
    theirs = json.loads(devstack.kubectl("-n", ns, "get", "secret", "theirs", "-o", "json").stdout)
    assert set(theirs["data"]) == {"x"}
    allowed = patch_as_operator("ours")
    assert allowed.returncode == 0, allowed.stderr
    ours = json.loads(devstack.kubectl("-n", ns, "get", "secret", "ours", "-o", "json").stdout)
    assert base64.b64decode(ours["data"]["RCLONE_CONFIG_S3_ACCESS_KEY_ID"]) == b"k"


def harness_apply(devstack: stack.State, ns: str, obj: dict[str, Any]) -> None:
    devstack.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(obj))


def _bytes(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)

