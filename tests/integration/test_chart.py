"""The Helm chart (charts/mlflow-seldon-promoter) and the kustomize base are one install: they
render the same RBAC, Deployment, settings, Service and Namespace; the chart's objects pass a
server-side dry run on devstack's API server; `helm install`, `upgrade` and `uninstall` behave as
the README says; the monitoring objects carry monitoring/ as it is, and its PromQL parses
(`promtool check rules`)."""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import stack, tools
from devstack.harness import CRD, REPO

from .chart import CHART, helm, install, render, values_for
from .helpers import get

pytestmark = pytest.mark.integration

MANIFESTS = REPO / "manifests"
NAMESPACED = MANIFESTS / "overlays" / "namespaced"
MONITORING = CHART / "monitoring"


def kustomize(devstack: stack.State, folder: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(devstack.kubectl("kustomize", str(folder)).stdout) if doc]


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment's Pod spec without what differs by design: the settings ConfigMap's name
    (kustomize appends a hash, the chart rolls the Pod by an annotation) and the image reference."""
    deployment = one(objs, "Deployment")
    spec = copy.deepcopy(deployment["spec"]["template"]["spec"])
    for container in spec["containers"]:
        container.pop("image")
        container.pop("imagePullPolicy", None)
        for source in container.get("envFrom") or []:
            source["configMapRef"]["name"] = "<settings>"
    return {"replicas": deployment["spec"]["replicas"], "strategy": deployment["spec"]["strategy"], "pod": spec}


def server_dry_run(devstack: stack.State, objs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    return devstack.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


# --- one source of truth ---------------------------------------------------------------------


def test_the_chart_and_manifests_grant_the_same_cluster_wide_rules(devstack: stack.State) -> None:
    chart, kust = render(), kustomize(devstack, MANIFESTS)
    assert one(chart, "ClusterRole")["rules"] == one(kust, "ClusterRole")["rules"]
    assert one(chart, "ClusterRoleBinding")["subjects"] == one(kust, "ClusterRoleBinding")["subjects"]
    assert one(chart, "ServiceAccount")["metadata"]["name"] == one(kust, "ServiceAccount")["metadata"]["name"]
    assert by_kind(chart, "Role") == []


def test_the_chart_with_watch_namespaces_grants_what_the_namespaced_overlay_grants(devstack: stack.State) -> None:
    chart, kust = render({"watchNamespaces": ["models"]}), kustomize(devstack, NAMESPACED)
    assert one(chart, "Role")["rules"] == one(kust, "Role")["rules"]
    assert one(chart, "Role")["metadata"]["namespace"] == one(kust, "Role")["metadata"]["namespace"] == "models"
    assert one(chart, "RoleBinding")["subjects"] == one(kust, "RoleBinding")["subjects"]
    assert by_kind(chart, "ClusterRole") == by_kind(chart, "ClusterRoleBinding") == []
    assert pod_spec(chart) == pod_spec(kust)


def test_the_chart_makes_a_role_in_each_watched_namespace_and_watches_each() -> None:
    chart = render({"watchNamespaces": ["team-a", "team-b"]})
    assert sorted(r["metadata"]["namespace"] for r in by_kind(chart, "Role")) == ["team-a", "team-b"]
    assert sorted(r["metadata"]["namespace"] for r in by_kind(chart, "RoleBinding")) == ["team-a", "team-b"]
    assert one(chart, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--namespace=team-a", "--namespace=team-b"]


def test_the_chart_and_manifests_run_the_same_pod_with_the_same_settings(devstack: stack.State) -> None:
    chart, kust = render(), kustomize(devstack, MANIFESTS)
    assert pod_spec(chart) == pod_spec(kust)
    assert one(chart, "ConfigMap")["data"] == one(kust, "ConfigMap")["data"]
    chart_service, kust_service = one(chart, "Service"), one(kust, "Service")
    assert chart_service["spec"]["ports"] == kust_service["spec"]["ports"]
    assert chart_service["metadata"]["annotations"] == kust_service["metadata"]["annotations"]


def test_the_chart_and_manifests_hold_the_operator_to_the_same_egress_and_admission_policy(
        devstack: stack.State) -> None:
    chart, kust = render(), kustomize(devstack, MANIFESTS)
    assert one(chart, "NetworkPolicy")["spec"]["egress"] == one(kust, "NetworkPolicy")["spec"]["egress"]
    chart_pod = one(chart, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert one(chart, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= chart_pod.items()
    chart_vap, kust_vap = one(chart, "ValidatingAdmissionPolicy"), one(kust, "ValidatingAdmissionPolicy")
    assert chart_vap["spec"]["validations"] == kust_vap["spec"]["validations"]
    assert chart_vap["spec"]["matchConstraints"] == kust_vap["spec"]["matchConstraints"]
    sa = one(chart, "ServiceAccount")["metadata"]
    condition = chart_vap["spec"]["matchConditions"][0]["expression"]
    assert f"system:serviceaccount:{sa['namespace']}:{sa['name']}" in condition
    binding = one(chart, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {"policyName": chart_vap["metadata"]["name"], "validationActions": ["Deny"]}
    assert by_kind(render({"networkPolicy": {"enabled": False}, "admissionPolicy": {"enabled": False}}),
                   "NetworkPolicy") == []


def test_the_namespace_the_chart_can_make_is_labelled_as_the_manifests_label_it(devstack: stack.State) -> None:
    chart = one(render({"namespace": {"create": True}}), "Namespace")
    kust = one(kustomize(devstack, MANIFESTS), "Namespace")
    assert chart["metadata"]["name"] == kust["metadata"]["name"] == "promoter-system"
    psa = {k: v for k, v in kust["metadata"]["labels"].items() if k.startswith("pod-security")}
    assert psa.items() <= chart["metadata"]["labels"].items()


def test_the_chart_ships_the_crd_make_crds_generates() -> None:
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes()


def test_a_changed_setting_changes_the_pod_template() -> None:
    """Settings are read once at start-up: a new value must roll the Pod."""
    before = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]
    after = one(render({"settings": {"PROMOTER_TRACKING_URI": "http://mlflow.other:5000"}}),
                "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/settings"] != after["checksum/settings"]


@pytest.mark.parametrize(("values", "message"), [
    ({"settings": {"TRACKING_URI": "http://x"}}, "settings.TRACKING_URI: the operator reads PROMOTER_* variables only"),
    ({"settings": {"PROMOTER_METRICS_PORT": "9000"}}, "settings.PROMOTER_METRICS_PORT: set metrics.port instead"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name: name an existing ServiceAccount"),
])
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], message: str) -> None:
    out = helm(None, "template", "x", str(CHART), "--set-json", *(f"{k}={json.dumps(v)}" for k, v in values.items()),
               check=False)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr


# --- on the API server -------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{"namespace": {"create": True}}, {"watchNamespaces": ["models"]},
                                    {"metrics": {"port": 9090}}], ids=["all-namespaces", "namespaced", "port"])
def test_every_object_the_chart_renders_passes_a_server_side_dry_run(
        devstack: stack.State, crd: None, values: dict[str, Any]) -> None:
    # A dry run creates no namespace: make them, promoter-system labelled as the chart labels it,
    # so Pod Security admission warns of a Deployment that would violate "restricted".
    devstack.kubectl("apply", "-f", "-", input=json.dumps(one(render({"namespace": {"create": True}}), "Namespace")))
    devstack.kubectl("create", "namespace", "models", check=False)
    objs = render(values)
    out = server_dry_run(devstack, objs)
    assert out.returncode == 0, out.stderr
    assert "would violate PodSecurity" not in out.stderr, out.stderr
    assert len(out.stdout.strip().splitlines()) == len(objs)


def test_helm_install_upgrade_and_uninstall_on_devstack(devstack: stack.State, crd: None) -> None:
    watched = f"helm-{uuid.uuid4().hex[:8]}"
    devstack.kubectl("create", "namespace", watched)
    release = install(devstack, values_for(devstack, watchNamespaces=[watched]))
    try:
        status = json.loads(helm(devstack, "status", release.name, "-n", release.namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed"
        deployment = get(devstack, release.namespace, "deployment", release.name)
        assert deployment is not None
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [f"--namespace={watched}"]
        assert get(devstack, watched, "role", release.name) is not None
        assert get(devstack, watched, "rolebinding", release.name) is not None
        settings = get(devstack, release.namespace, "configmap", f"{release.name}-settings")
        assert settings is not None and settings["data"]["PROMOTER_TRACKING_URI"] == devstack.mlflow_uri

        helm(devstack, "upgrade", release.name, str(CHART), "-n", release.namespace, "--reuse-values",
             "--set", "settings.PROMOTER_RETRY_DELAY=5")
        upgraded = get(devstack, release.namespace, "deployment", release.name)
        assert upgraded is not None
        assert upgraded["metadata"]["generation"] == deployment["metadata"]["generation"] + 1  # the Pod rolls
        settings = get(devstack, release.namespace, "configmap", f"{release.name}-settings")
        assert settings is not None and settings["data"]["PROMOTER_RETRY_DELAY"] == "5"
    finally:
        release.uninstall()
    assert get(devstack, release.namespace, "deployment", release.name) is None
    assert get(devstack, watched, "role", release.name) is None
    # The CRD (crds/: installed by helm, never deleted by it) and every promotion stay.
    assert devstack.kubectl("get", "crd", "modelpromotions.mlops.dev", check=False).returncode == 0


# --- monitoring --------------------------------------------------------------------------------


def test_the_monitoring_objects_carry_monitoring_as_it_is() -> None:
    objs = render({"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True}})
    rule = one(objs, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    dashboard = next(o for o in by_kind(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard"))
    assert json.loads(dashboard["data"]["mlflow-seldon-promoter.json"]) == json.loads(
        (MONITORING / "dashboard.json").read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert by_kind(render(), "PrometheusRule") == by_kind(render(), "ServiceMonitor") == []


def _promtool() -> Path:
    try:
        return tools.ensure("promtool", log=print)
    except tools.SetupError as e:
        pytest.fail(f"promtool could not be built: {e}")


def test_promtool_accepts_the_alert_rules() -> None:
    out = subprocess.run([str(_promtool()), "check", "rules", str(MONITORING / "alerts.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 3 rules found" in out.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's query as a recording rule, Grafana's interval variables given a value."""
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}",
              "expr": t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$job", ".*")}
             for p in dashboard["panels"] for t in p["targets"]]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = subprocess.run([str(_promtool()), "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout
