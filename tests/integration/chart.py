"""helm over devstack: render and install charts/mlflow-seldon-promoter with the helm binary
devstack.tools builds once (the same one `make lint` uses)."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack import stack, tools

from .conftest import REPO

CHART = REPO / "charts" / "mlflow-seldon-promoter"
PSA_LABELS = yaml.safe_load((CHART / "values.yaml").read_text())["namespace"]["labels"]


def helm(devstack: stack.State | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    kube = ["--kubeconfig", devstack.kubeconfig] if devstack else []
    out = subprocess.run([str(tools.ensure("helm")), *kube, *args], capture_output=True, text=True, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed: {out.stderr}")
    return out


def set_args(values: dict[str, Any]) -> list[str]:
    """``--set-json`` per top-level value: no string escaping rules of ``--set`` to get wrong."""
    return [arg for key, value in values.items() for arg in ("--set-json", f"{key}={json.dumps(value)}")]


def render(values: dict[str, Any] | None = None, namespace: str = "promoter-system",
           release: str = "mlflow-seldon-promoter", crds: bool = False) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, *set_args(values or {})]
    if crds:
        args.append("--include-crds")
    return [doc for doc in yaml.safe_load_all(helm(None, *args).stdout) if doc]


@dataclass
class Release:
    devstack: stack.State
    name: str
    namespace: str

    def uninstall(self) -> None:
        helm(self.devstack, "uninstall", self.name, "--namespace", self.namespace, check=False)


def install(devstack: stack.State, values: dict[str, Any], prefix: str = "mlflow-seldon-promoter") -> Release:
    """A release of its own (a fresh name and namespace): its ClusterRole and ClusterRoleBinding
    are named for it, so releases of several tests do not meet. The namespace is made first and
    labelled for Pod Security "restricted", as the README says to (helm keeps its release record
    in it before it creates anything, so the chart's ``namespace.create`` is for rendered installs)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    devstack.kubectl("create", "namespace", name)
    devstack.kubectl("label", "namespace", name, *(f"{k}={v}" for k, v in PSA_LABELS.items()))
    helm(devstack, "install", name, str(CHART), "--namespace", name, *set_args(values))
    return Release(devstack, name, name)


def values_for(devstack: stack.State, **more: Any) -> dict[str, Any]:
    """The settings a platform engineer would give to reach this devstack's MLflow and S3."""
    return {"settings": {"PROMOTER_TRACKING_URI": devstack.mlflow_uri,
                         "PROMOTER_STORAGE_ENDPOINT": devstack.s3_endpoint,
                         "PROMOTER_STORAGE_SECRET": "minio-credentials", "PROMOTER_RETRY_DELAY": "1"}, **more}


def chart_file(*parts: str) -> Path:
    return CHART.joinpath(*parts)
