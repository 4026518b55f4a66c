"""devstack's pod runner turns the Deployment's Pod template into the podman command a kubelet
would amount to, and refuses, by field name, what it cannot run faithfully."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.pod import SA_MOUNT, Unsupported, run_args

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = yaml.safe_load((REPO / "manifests" / "base" / "deployment.yaml").read_text())["spec"]["template"]
SETTINGS = {"mlflow-seldon-promoter-settings": {"PROMOTER_TRACKING_URI": "http://127.0.0.1:5000",
                                                "PROMOTER_METRICS_PORT": "8080"}}


def args(template: dict[str, Any] = TEMPLATE, configmaps: dict[str, dict[str, str]] = SETTINGS) -> list[str]:
    return run_args(template, name="pod", network="/run/netns/x", service_account=Path("/sa"),
                    empty_dirs={"tmp": Path("/volumes/tmp")}, configmaps=configmaps,
                    hosts={"kubernetes.default.svc": "127.0.0.1"})


def test_the_deployments_security_context_becomes_podmans() -> None:
    out = args()
    assert out[out.index("--user") + 1] == "65532:65532"
    assert {"--read-only", "--read-only-tmpfs=false", "--cap-drop=all"} <= set(out)
    assert out[out.index("--security-opt") + 1] == "no-new-privileges"


def test_the_empty_dir_and_the_service_account_are_the_only_mounts() -> None:
    out = args()
    mounts = [out[i + 1] for i, a in enumerate(out) if a == "--volume"]
    assert mounts == ["/volumes/tmp:/tmp:rw", f"/sa:{SA_MOUNT}:ro"]


def test_env_from_the_configmap_then_the_kubernetes_service_variables() -> None:
    out = args()
    env = [out[i + 1] for i, a in enumerate(out) if a == "--env"]
    assert env == ["PROMOTER_TRACKING_URI=http://127.0.0.1:5000", "PROMOTER_METRICS_PORT=8080",
                   "KUBERNETES_SERVICE_HOST=127.0.0.1", "KUBERNETES_SERVICE_PORT=443",
                   "KUBERNETES_SERVICE_PORT_HTTPS=443"]


def test_the_container_args_follow_the_image_and_replace_its_cmd() -> None:
    out = args()
    assert out[-2:] == ["mlflow-seldon-promoter", "--all-namespaces"]
    assert "--entrypoint" not in out
    assert out[out.index("--memory") + 1] == "512m" and out[out.index("--cpus") + 1] == "1"
    assert out[out.index("--network") + 1] == "ns:/run/netns/x"


def _edited(path: list[str | int], value: Any) -> dict[str, Any]:
    template = copy.deepcopy(TEMPLATE)
    node: Any = template
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return template


@pytest.mark.parametrize(("path", "value", "message"), [
    (["spec", "hostNetwork"], True, "spec.hostNetwork: not run"),
    (["spec", "containers", 0, "stdin"], True, "spec.containers[0].stdin: not run"),
    (["spec", "securityContext", "runAsUser"], 0, "runAsNonRoot needs a non-zero runAsUser"),
    (["spec", "securityContext", "seccompProfile"], {"type": "Localhost"}, "seccompProfile.type=Localhost"),
    (["spec", "volumes"], [{"name": "tmp", "hostPath": {"path": "/"}}], "volumeMounts[0] (tmp): only emptyDir"),
    (["spec", "containers", 0, "env"], [{"name": "X", "valueFrom": {}}], "env[0] (X): only plain values"),
])
def test_what_it_cannot_run_is_refused_by_field(path: list[str | int], value: Any, message: str) -> None:
    with pytest.raises(Unsupported, match=re.escape(message)):
        args(_edited(path, value))


def test_a_missing_configmap_is_named() -> None:
    with pytest.raises(Unsupported, match="no ConfigMap 'mlflow-seldon-promoter-settings'"):
        args(configmaps={})
