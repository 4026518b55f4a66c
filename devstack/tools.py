"""helm and promtool, built once from the Go module proxy and cached outside the repository, as
the Kubernetes binaries are (``python -m devstack.tools helm`` prints the path, building first
when needed).

Each lands in ``${XDG_DATA_HOME:-~/.local/share}/mlflow-seldon-promoter/tools/<name>-<version>/``;
a ``<NAME>`` variable in the environment (``HELM=/usr/bin/helm``) names an installed one instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .binaries import SetupError

# Build tags: promtool without the cloud service-discovery plugins (Prometheus' own `remove_all_sd`),
# which it does not need to check rules and which are most of its compile time.
TAGS = {"promtool": "remove_all_sd"}
# name -> (Go package, version)
TOOLS = {
    "helm": ("helm.sh/helm/v3/cmd/helm", "v3.22.0"),
    # Prometheus' Go module versions are v0.<minor>.<patch> for release 3.<minor>.<patch>.
    "promtool": ("github.com/prometheus/prometheus/cmd/promtool", "v0.316.0"),
}


def _ldflags(go: str, name: str) -> str:
    """What the tool's own Makefile stamps: helm's version, and the Kubernetes version its
    client-go is (the default for ``helm template``'s ``.Capabilities.KubeVersion``)."""
    flags = "-s -w"
    if name != "helm":
        return flags
    package, version = TOOLS[name]
    served = subprocess.run([go, "mod", "download", "-json", f"helm.sh/helm/v3@{version}"], capture_output=True,
                            text=True, timeout=600, check=True)
    gomod = Path(json.loads(served.stdout)["GoMod"]).read_text()
    found = re.search(r"^\s*k8s.io/client-go v0\.(\d+)\.", gomod, re.M)
    flags += f" -X helm.sh/helm/v3/internal/version.version={version}"
    if found:
        for pkg in ("helm.sh/helm/v3/pkg/lint/rules", "helm.sh/helm/v3/pkg/chartutil"):
            flags += f" -X {pkg}.k8sVersionMajor=1 -X {pkg}.k8sVersionMinor={found[1]}"
    return flags


def folder(name: str) -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "mlflow-seldon-promoter" / "tools" / f"{name}-{TOOLS[name][1]}"


def cached(name: str) -> Path | None:
    given = os.environ.get(name.upper())
    if given:
        return Path(given)
    path = folder(name) / name
    return path if os.access(path, os.X_OK) else None


def ensure(name: str, log: Callable[[str], None] = print) -> Path:
    found = cached(name)
    if found is not None:
        return found
    go = shutil.which("go")
    if go is None:
        raise SetupError(f"{name} is built with Go: install Go (https://go.dev/doc/install) or set {name.upper()} "
                         f"to an installed {name}")
    package, version = TOOLS[name]
    dest = folder(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    log(f"tools: building {name} {version} from the Go module proxy (first time only: a few minutes)")
    t0 = time.monotonic()
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        tags = [f"-tags={TAGS[name]}"] if name in TAGS else []
        cmd = [go, "install", "-trimpath", *tags, f"-ldflags={_ldflags(go, name)}", f"{package}@{version}"]
        out = subprocess.run(cmd,
                             env={**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0"},
                             capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            tail = "\n".join("  | " + line for line in out.stderr.splitlines()[-20:])
            raise SetupError(f"go install {package}@{version} failed (exit {out.returncode}):\n{tail}")
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, dest / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"tools: {name} built in {time.monotonic() - t0:.0f}s -> {dest / name}")
    return dest / name


if __name__ == "__main__":  # python -m devstack.tools helm|promotool
    try:
        print(ensure(sys.argv[1], log=lambda m: print(m, file=sys.stderr)))
    except (SetupError, KeyError, IndexError) as e:
        print(f"devstack.tools: {e or 'usage: python -m devstack.tools ' + '|'.join(TOOLS)}", file=sys.stderr)
        sys.exit(1)
