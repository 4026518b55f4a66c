"""What `kubectl apply -k manifests/` installs is accepted by a real API server: every object of
every variant passes a server-side dry run, the operator's pod passes Pod Security "restricted"
admission, and the pieces agree with each other and with the image (Dockerfile)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from devstack import stack

from .conftest import REPO

pytestmark = pytest.mark.integration

MANIFESTS = REPO / "manifests"
VARIANTS = {
    "all-namespaces": MANIFESTS,
    "namespaced": MANIFESTS / "overlays" / "namespaced",
    "kind": MANIFESTS / "overlays" / "kind",
}
OPERATOR_NAMESPACE = "promoter-system"
WATCHED_EXAMPLE = "models"  # the namespace the namespaced overlay's Role is written for


def build(devstack: stack.State, folder: Path) -> list[dict[str, Any]]:
    out = devstack.kubectl("kustomize", str(folder)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0])


@pytest.fixture(scope="module")
def namespaces(devstack: stack.State) -> None:
    """The namespaces the manifests put objects in, for real: a dry run does not create them.
    promoter-system as the manifests label it, so Pod Security warns of a violating Deployment."""
    devstack.kubectl("apply", "-f", "-", input=json.dumps(one(build(devstack, MANIFESTS), "Namespace")))
    devstack.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WATCHED_EXAMPLE}}))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_of_every_variant_passes_a_server_side_dry_run(
        devstack: stack.State, crd: None, namespaces: None, variant: str) -> None:
    objs = build(devstack, VARIANTS[variant])
    out = devstack.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                           input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))
    assert out.returncode == 0, out.stderr
    assert "would violate PodSecurity" not in out.stderr, out.stderr  # promoter-system warns on "restricted"
    applied = []  # "clusterrole.rbac.authorization.k8s.io/NAME created (server dry run)" -> clusterrole/NAME
    for line in out.stdout.splitlines():
        resource, name = line.split()[0].split("/", 1)
        applied.append(f"{resource.split('.')[0]}/{name}")
    assert sorted(applied) == sorted(f"{o['kind'].lower()}/{o['metadata']['name']}" for o in objs)


def test_the_sample_promotion_with_a_run_id_filled_in_is_accepted(devstack: stack.State, namespace: str) -> None:
    sample = (MANIFESTS / "samples" / "promotion.yaml").read_text()
    assert "runId: RUN_ID" in sample  # the placeholder the README and the e2e substitute
    out = devstack.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", check=False,
                           input=sample.replace("RUN_ID", uuid.uuid4().hex))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "modelpromotion.mlops.dev/rf-regressor created (server dry run)"
    gates = yaml.safe_load(sample)["spec"]["gates"]
    assert gates == [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 80},
                     {"metric": "r2", "op": "GreaterThan", "threshold": 0.3}]


# --- Pod Security -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(devstack: stack.State) -> str:
    name = f"restricted-{uuid.uuid4().hex[:6]}"
    devstack.kubectl("create", "namespace", name)
    devstack.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
                     "pod-security.kubernetes.io/enforce-version=latest")
    return name


def operator_pod(devstack: stack.State, namespace: str) -> dict[str, Any]:
    """The pod the Deployment would create (devstack has no controller-manager to create it)."""
    template = one(build(devstack, MANIFESTS), "Deployment")["spec"]["template"]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "promoter-pod", "namespace": namespace, "labels": template["metadata"]["labels"]},
            "spec": template["spec"]}


def test_the_operator_pod_passes_pod_security_restricted(devstack: stack.State, restricted: str) -> None:
    out = devstack.kubectl("create", "--dry-run=server", "-f", "-", check=False,
                           input=json.dumps(operator_pod(devstack, restricted)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "pod/promoter-pod created (server dry run)"


def test_a_pod_that_may_run_as_root_is_refused_by_the_same_admission(devstack: stack.State, restricted: str) -> None:
    weakened = copy.deepcopy(operator_pod(devstack, restricted))
    del weakened["spec"]["securityContext"]["runAsNonRoot"]
    out = devstack.kubectl("create", "--dry-run=server", "-f", "-", check=False, input=json.dumps(weakened))
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr, out.stderr
    assert "runAsNonRoot != true" in out.stderr


# --- the pieces agree ---------------------------------------------------------------------------


def test_the_deployment_runs_one_replica_recreated_with_probes_limits_and_settings(devstack: stack.State) -> None:
    objs = build(devstack, MANIFESTS)
    deployment = one(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    c = container(objs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": 8080, "liveness": 8081}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert set(c["resources"]) == {"requests", "limits"}
    assert set(c["resources"]["requests"]) == set(c["resources"]["limits"]) == {"cpu", "memory"}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}}
    assert c["args"] == ["--all-namespaces"]
    settings = one(objs, "ConfigMap")
    assert c["envFrom"] == [{"configMapRef": {"name": settings["metadata"]["name"]}}]
    assert settings["data"]["PROMOTER_METRICS_PORT"] == str(ports["http-metrics"])


def test_the_image_serves_liveness_and_metrics_where_the_deployment_looks() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    found = re.search(r"^ENTRYPOINT (\[.*?\])$", dockerfile, re.M | re.S)
    assert found, "the Dockerfile has an exec-form ENTRYPOINT"
    entrypoint = json.loads(found[1].replace("\\\n", ""))
    assert entrypoint[:5] == ["/opt/venv/bin/kopf", "run", "-m", "promoter.handlers", "--standalone"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in entrypoint
    assert re.search(r"^EXPOSE 8080 8081$", dockerfile, re.M)
    assert re.search(r"^USER 65532:65532$", dockerfile, re.M)


def test_the_metrics_service_selects_the_operator_pod(devstack: stack.State) -> None:
    objs = build(devstack, MANIFESTS)
    service = one(objs, "Service")
    labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [{"name": "http-metrics", "port": 8080, "targetPort": "http-metrics"}]
    assert service["metadata"]["annotations"]["prometheus.io/port"] == "8080"


def test_the_namespaced_overlay_watches_its_namespace_and_grants_nothing_cluster_wide(
        devstack: stack.State) -> None:
    objs = build(devstack, VARIANTS["namespaced"])
    assert container(objs)["args"] == [f"--namespace={WATCHED_EXAMPLE}"]
    assert one(objs, "Role")["metadata"]["namespace"] == WATCHED_EXAMPLE
    assert one(objs, "RoleBinding")["metadata"]["namespace"] == WATCHED_EXAMPLE
    assert [o for o in objs if o["kind"] in ("ClusterRole", "ClusterRoleBinding")] == []


def test_the_kind_overlay_uses_the_loaded_image_without_pulling(devstack: stack.State) -> None:
    c = container(build(devstack, VARIANTS["kind"]))
    assert c["image"] == "mlflow-seldon-promoter:e2e"
    assert c["imagePullPolicy"] == "IfNotPresent"


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_rule_grants_a_wildcard(devstack: stack.State, variant: str) -> None:
    for obj in build(devstack, VARIANTS[variant]):
        for rule in obj.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), (obj["metadata"]["name"], rule)


def test_every_package_the_image_installs_is_pinned_in_constraints() -> None:
    """The image runs `pip install -c constraints.txt .`: the runtime dependencies and all they
    pull in must be pinned there, and the tracking and training stacks must stay out."""
    pins = {canonicalize_name(line.split("==")[0]) for line in (REPO / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    closure: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in closure or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        closure.add(name)
        todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    assert sorted(closure - pins) == []
    assert not closure & {"mlflow", "mlflow-skinny", "scikit-learn", "pandas", "boto3"}
