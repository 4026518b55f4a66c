"""RBAC is enough and no more, proven on devstack's real API server.

The operator runs the way the namespaced overlay (manifests/overlays/namespaced) deploys it: as
its ServiceAccount, authenticated by a token from the TokenRequest API, watching one namespace
(with a scope of its own, so the session's operator leaves these promotions alone). It promotes
a model, restores a SeldonDeployment and a Secret someone edited, is restarted, and hands the
SeldonDeployment to a later promotion. The API server's audit log then lists every request that
identity made; the overlay's Role and ClusterRole must grant exactly those verbs, nothing was
refused, and `kubectl auth can-i` as the same identity says no to everything else.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import harness, stack
from devstack.harness import REPO, Operator

from .helpers import apply, get, phase_in, secret_data, wait_for

pytestmark = pytest.mark.integration

OVERLAY = REPO / "manifests" / "overlays" / "namespaced"
EXAMPLE_NAMESPACE = "models"  # the watched namespace the overlay's example Role is for
SA_NAMESPACE, SA_NAME = "promoter-system", "mlflow-seldon-promoter"
USERNAME = f"system:serviceaccount:{SA_NAMESPACE}:{SA_NAME}"
RBAC_KINDS = {"Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
CLUSTER_SCOPED = {"customresourcedefinitions", "namespaces"}
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Everything the operator touches or might be tempted to, as (API group, resource[/subresource]).
RESOURCES = (
    ("mlops.dev", "modelpromotions"), ("mlops.dev", "modelpromotions/status"),
    ("", "secrets"), ("machinelearning.seldon.io", "seldondeployments"),
    ("machinelearning.seldon.io", "seldondeployments/status"), ("", "events"),
    ("events.k8s.io", "events"), ("", "configmaps"), ("", "pods"), ("", "namespaces"),
    ("apps", "deployments"), ("apps", "replicasets"), ("discovery.k8s.io", "endpointslices"), ("", "services"),
    ("apiextensions.k8s.io", "customresourcedefinitions"), ("coordination.k8s.io", "leases"),
)
SCOPE = "rbac"

Grant = tuple[str, str, str]  # (API group, resource[/subresource], verb)


def kustomize(devstack: stack.State, folder: Path) -> list[dict[str, Any]]:
    out = devstack.kubectl("kustomize", str(folder)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def watching(objs: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The overlay's RBAC with its example namespace swapped for this test's watched one."""
    text = json.dumps([o for o in objs if o["kind"] in RBAC_KINDS])
    return list(json.loads(text.replace(f'"namespace": "{EXAMPLE_NAMESPACE}"', f'"namespace": "{namespace}"')))


def granted(objs: list[dict[str, Any]]) -> set[Grant]:
    """Every (group, resource, verb) the Roles and ClusterRoles grant; wildcards would show as '*'."""
    out: set[Grant] = set()
    for obj in objs:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in obj.get("rules") or []:
            for group in rule.get("apiGroups") or []:
                for resource in rule.get("resources") or []:
                    out.update((group, resource, verb) for verb in rule["verbs"])
    return out


def service_account_operator(devstack: stack.State, log: Path, kubeconfig: Path, namespaces: list[str]) -> Operator:
    """The operator as the Deployment runs it: kubeconfig with the SA's token, `--namespace=NS`.
    A short drift interval so the restore path (patches of children) runs within the test."""
    return Operator(devstack, log, {"PROMOTER_DRIFT_INTERVAL": "5"}, namespaces=namespaces, scope=SCOPE,
                    kubeconfig=kubeconfig)


@dataclass
class Request:
    verb: str
    group: str
    resource: str  # with "/subresource" when there is one; "" for non-resource URLs
    namespace: str
    name: str
    code: int
    uri: str

    @property
    def grant(self) -> Grant:
        return (self.group, self.resource, self.verb)


def audit(devstack: stack.State, offset: int, username: str) -> list[Request]:
    """The requests ``username`` made since ``offset`` of the audit log, one per audit ID."""
    return [Request(r.verb, r.group, r.qualified, r.namespace, r.name, r.code, r.uri)
            for r in harness.Audit(devstack).requests(offset, user=username)]


@dataclass
class Evidence:
    namespace: str
    rbac: list[dict[str, Any]]
    kubeconfig: Path
    requests: list[Request]
    first: dict[str, Any]
    second: dict[str, Any]
    operator_log: str


def _sa_kubeconfig(devstack: stack.State, path: Path, namespace: str) -> Path:
    token = devstack.kubectl("-n", SA_NAMESPACE, "create", "token", SA_NAME, "--duration=2h").stdout.strip()
    admin = json.loads(Path(devstack.kubeconfig).read_text())
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "promoter",
        "clusters": admin["clusters"],
        "users": [{"name": SA_NAME, "user": {"token": token}}],
        "contexts": [{"name": "promoter", "context": {
            "cluster": admin["clusters"][0]["name"], "user": SA_NAME, "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def evidence(devstack: stack.State, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    """One session of real work by the ServiceAccount, and the audit log of it."""
    tmp = tmp_path_factory.mktemp("rbac")
    ns = harness.namespace(devstack, prefix="w")
    rbac = watching(kustomize(devstack, OVERLAY), ns)
    devstack.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": rbac}))
    run_id, _ = harness.train(devstack, n_estimators=10, experiment="promoter-rbac", timeout=300)
    kubeconfig = _sa_kubeconfig(devstack, tmp / "promoter.kubeconfig", ns)
    audit_log = harness.Audit(devstack)
    offset = audit_log.mark()
    sa_operator = service_account_operator(devstack, tmp / "operator.log", kubeconfig, [ns])
    sa_operator.start()
    try:
        first, second = _work(devstack, ns, run_id, sa_operator)
    finally:
        sa_operator.stop()  # ends its watches, so their audit events are complete
    time.sleep(0.5)
    yield Evidence(ns, rbac, kubeconfig, audit(devstack, offset, USERNAME), first, second, sa_operator.text())
    harness.delete_namespace(devstack, ns)


def _work(devstack: stack.State, ns: str, run_id: str, operator: Operator) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every path that writes: promote, restore edited children, restart, supersede (the
    promotion taken over is read, since the new process never wrote its status)."""
    gates = [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 80},
             {"metric": "r2", "op": "GreaterThan", "threshold": 0.3}]

    def promotion(name: str, replicas: int = 0) -> dict[str, Any]:
        return harness.promotion(name, run_id, gates, deployment="served", scope=SCOPE, replicas=replicas)

    # served by a Pod of MLServer: the rollout check lists the Deployment, its Pods and the
    # Service's EndpointSlices, and the smoke test reaches the Pod
    apply(devstack, ns, promotion("first", replicas=1))
    wait_for(devstack, ns, "first", phase_in("Promoted", "Rejected", "Failed"), timeout=180)

    # someone edits both children; the drift sweep puts them back with patches
    devstack.kubectl("-n", ns, "patch", "seldondeployment", "served", "--type=json", "-p",
                     '[{"op": "replace", "path": "/spec/predictors/0/graph/modelUri", "value": "s3://models/x"}]')
    devstack.kubectl("-n", ns, "patch", "secret", "seldon-rclone-secret", "-p",
                     '{"stringData": {"RCLONE_CONFIG_S3_ENDPOINT": "http://elsewhere:9000"}}')
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        sdep = get(devstack, ns, "seldondeployment", "served") or {}
        uri = sdep["spec"]["predictors"][0]["graph"]["modelUri"]
        endpoint = secret_data(devstack, ns, "seldon-rclone-secret")["RCLONE_CONFIG_S3_ENDPOINT"]
        if uri != "s3://models/x" and endpoint == devstack.s3_endpoint:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the operator did not restore the edited SeldonDeployment and Secret in 60s")

    operator.stop()
    operator.start()
    apply(devstack, ns, promotion("second"))
    second = wait_for(devstack, ns, "second", phase_in("Promoted", "Rejected", "Failed"), timeout=90)
    first = wait_for(devstack, ns, "first", phase_in("Superseded"), timeout=30)
    return first, second


def can_i(devstack: stack.State, kubeconfig: Path, verb: str, resource: str, namespace: str | None) -> bool:
    kind, _, sub = resource.partition("/")
    args = [str(Path(devstack.bin_dir) / "kubectl"), "--kubeconfig", str(kubeconfig), "auth", "can-i", verb, kind]
    if sub:
        args.append(f"--subresource={sub}")
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() in ("yes", "no"), out
    return out.stdout.strip() == "yes"


def _qualified(group: str, resource: str) -> str:
    kind, _, sub = resource.partition("/")
    return (f"{kind}.{group}" if group else kind) + (f"/{sub}" if sub else "")


# --- the tests ------------------------------------------------------------------------------


def test_the_service_account_promotes_restores_and_supersedes_in_namespaced_mode(
        devstack: stack.State, evidence: Evidence) -> None:
    assert evidence.second["status"]["phase"] == "Promoted", evidence.second["status"]
    assert evidence.first["status"]["phase"] == "Superseded"
    assert evidence.first["status"]["supersededBy"] == "second"
    sdep = get(devstack, evidence.namespace, "seldondeployment", "served")
    assert sdep is not None
    assert sdep["metadata"]["annotations"]["mlops.dev/promotion"] == "second"
    assert "Traceback" not in evidence.operator_log


def test_no_request_of_the_service_account_was_refused(evidence: Evidence) -> None:
    assert evidence.requests, "the audit log shows no request by the ServiceAccount"
    refused = [(r.verb, r.uri, r.code) for r in evidence.requests if r.code in (401, 403)]
    assert refused == []
    assert "Not enough permissions" not in evidence.operator_log


def test_the_service_account_worked_only_in_the_watched_namespace(evidence: Evidence) -> None:
    namespaced = {r.namespace for r in evidence.requests if r.resource and r.resource not in CLUSTER_SCOPED}
    assert namespaced == {evidence.namespace}


def test_the_roles_grant_exactly_the_verbs_the_audit_log_shows_used(evidence: Evidence) -> None:
    used = {r.grant for r in evidence.requests if r.resource}
    grants = granted(evidence.rbac)
    assert not any("*" in g for g in grants), "no wildcards"
    assert sorted(used - grants) == [], "used but not granted"
    assert sorted(grants - used) == [], "granted but never used"


def test_the_cluster_wide_role_grants_the_same_verbs_as_namespaced_mode(devstack: stack.State) -> None:
    # --all-namespaces watches promotions cluster-wide instead of per namespace; with kopf's
    # scanning off, neither mode lists namespaces or CRDs.
    cluster_wide = granted(kustomize(devstack, REPO / "manifests"))
    namespaced = granted(kustomize(devstack, OVERLAY))
    assert cluster_wide == namespaced


def test_the_service_account_cannot_delete_seldondeployments(devstack: stack.State, evidence: Evidence) -> None:
    assert not can_i(devstack, evidence.kubeconfig, "delete", "seldondeployments.machinelearning.seldon.io",
                     evidence.namespace)
    refused = subprocess.run(
        [str(Path(devstack.bin_dir) / "kubectl"), "--kubeconfig", str(evidence.kubeconfig), "-n", evidence.namespace,
         "delete", "seldondeployment", "served"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr, refused.stderr
    assert get(devstack, evidence.namespace, "seldondeployment", "served") is not None


@pytest.mark.parametrize("elsewhere", [SA_NAMESPACE, "default", "kube-system"])
def test_the_service_account_cannot_read_secrets_outside_the_watched_namespace(
        devstack: stack.State, evidence: Evidence, elsewhere: str) -> None:
    for verb in ("get", "list", "watch"):
        assert not can_i(devstack, evidence.kubeconfig, verb, "secrets", elsewhere), (verb, elsewhere)
    assert can_i(devstack, evidence.kubeconfig, "get", "secrets", evidence.namespace)
    assert not can_i(devstack, evidence.kubeconfig, "list", "secrets", evidence.namespace)


def test_every_verb_the_code_does_not_use_is_refused(devstack: stack.State, evidence: Evidence) -> None:
    used = {r.grant for r in evidence.requests if r.resource}
    checks = [(group, resource, verb) for group, resource in RESOURCES for verb in VERBS]

    def ask(check: Grant) -> tuple[Grant, bool]:
        group, resource, verb = check
        namespace = None if resource in CLUSTER_SCOPED else evidence.namespace
        return check, can_i(devstack, evidence.kubeconfig, verb, _qualified(group, resource), namespace)

    with ThreadPoolExecutor(8) as pool:
        answers = dict(pool.map(ask, checks))
    allowed = {check for check, yes in answers.items() if yes}
    assert allowed == used & set(checks)
