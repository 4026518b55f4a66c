"""The operator image: its size, how long it takes to build cold and warm, and how long the
container takes from start to its first promotion.

    .venv/bin/python bench/image.py [--cold] [--starts 5]

Builds as `make test-image` does (devstack/image.py: podman with runc, a debootstrap base).
``--cold`` first removes the base and the operator images this script names (nothing else) and
builds without podman's layer cache: debootstrap, then every layer. The warm numbers are a rebuild
with the layer cache after the final tag was removed, and the reuse check `make test` makes when
nothing changed. The start time runs the Deployment of manifests/ with devstack/pod.py (uid
65532, read-only root, a TokenRequest token, a Pod network of its own) on a devstack of its own,
once per start, each time with a promotion already waiting, and measures container start →
liveness answering → the promotion Promoted.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import common
import yaml

from devstack import image, stack
from devstack.pod import PodRun

REPO = common.REPO
NAME = "mlflow-seldon-promoter"
INPUTS = [REPO / "pyproject.toml", REPO / "constraints.txt", REPO / "operator"]


def builds(cold: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cold:
        for tag in image.podman("images", "--format", "{{.Repository}}:{{.Tag}}", f"localhost/{NAME}").stdout.split():
            image.podman("rmi", "--force", tag)
        image.podman("rmi", "--force", "--ignore", image.base_tag())
    t0 = time.monotonic()
    base = image.ensure_base(log=common.log)
    out["base_seconds"] = time.monotonic() - t0
    first = image.build(REPO, NAME, INPUTS, base=base, log=common.log, no_cache=cold)
    out["build_seconds"] = first.seconds
    out["build_was_reused"] = first.reused
    image.podman("rmi", first.image)
    warm = image.build(REPO, NAME, INPUTS, base=base, log=common.log)
    out["warm_rebuild_seconds"] = warm.seconds  # podman's layer cache, final tag gone
    t0 = time.monotonic()
    again = image.build(REPO, NAME, INPUTS, base=base, log=common.log)
    out["unchanged_check_seconds"] = time.monotonic() - t0
    assert again.reused and again.image == warm.image
    out["image"] = warm.image
    out["image_mib"] = image.size(warm.image) / 1024**2
    out["base_mib"] = image.size(base) / 1024**2
    return out


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def starts(state: stack.State, tag: str, count: int) -> list[dict[str, float]]:
    objs = [d for d in yaml.safe_load_all(state.kubectl("kustomize", str(REPO / "manifests")).stdout) if d]
    state.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "List", "items": [o for o in objs if o["kind"] != "Deployment"]}))
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    template = deployment["spec"]["template"]
    template["spec"]["containers"][0]["image"] = tag
    configmaps = {o["metadata"]["name"]: {**o["data"], "PROMOTER_TRACKING_URI": state.mlflow_uri,
                                          "PROMOTER_STORAGE_ENDPOINT": state.s3_endpoint}
                  for o in objs if o["kind"] == "ConfigMap"}
    ns_of_operator = deployment["metadata"]["namespace"]
    ca = (Path(state.home) / "certs" / "serving-ca.crt").read_bytes()
    runs = common.log_runs(state, count, 0, experiment="bench-image")
    rows = []
    for i, run_id in enumerate(runs):
        ns = common.namespace(state, f"img-{uuid.uuid4().hex[:6]}")
        state.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(common.promotion("p", run_id, f"sd-{i}")))
        token = state.kubectl("-n", ns_of_operator, "create", "token", template["spec"]["serviceAccountName"],
                              "--duration=1h").stdout.strip()
        pod = PodRun(template, ns_of_operator, token, ca, ("127.0.0.1", _port(state.kube_url)), configmaps,
                     services={_port(u): ("127.0.0.1", _port(u)) for u in (state.mlflow_uri, state.s3_endpoint)},
                     name=f"bench-promoter-{i}")
        t0 = time.monotonic()
        live = promoted = float("nan")
        try:
            pod.start()
            started = time.monotonic() - t0
            deadline = t0 + 120
            while time.monotonic() < deadline and (promoted != promoted or live != live):  # nan: not yet
                if live != live:
                    try:
                        if pod.probe("liveness", "/healthz")[0] == 200:
                            live = time.monotonic() - t0
                    except OSError:
                        pass
                if promoted == promoted:
                    time.sleep(0.05)
                    continue
                phase = json.loads(state.kubectl("-n", ns, "get", "mp", "p", "-o", "json").stdout).get(
                    "status", {}).get("phase")
                if phase in common.TERMINAL:
                    if phase != "Promoted":
                        raise RuntimeError(f"promotion ended {phase}:\n{pod.logs()[-3000:]}")
                    promoted = time.monotonic() - t0
                time.sleep(0.05)
            if promoted != promoted:
                raise RuntimeError(f"not Promoted after 120 s:\n{pod.logs()[-3000:]}")
        finally:
            pod.stop()
        rows.append({"podman_run_s": started, "liveness_s": live, "promoted_s": promoted})
        common.log(f"start {i + 1}/{count}: podman run {started:.2f}s, liveness {live:.2f}s, Promoted {promoted:.2f}s")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold", action="store_true", help="remove the base and operator images, no layer cache")
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    missing = image.missing_tools()
    if missing:
        raise SystemExit(f"bench/image.py: {missing}")
    result = common.Result("image")
    built = builds(args.cold)
    result.data["build"] = built
    with common.devstack("image") as state:
        rows = starts(state, built["image"], args.starts)
    result.data["starts"] = rows
    timing = {k: common.summary([r[k] for r in rows]) for k in rows[0]}
    result.data["start_summary"] = timing
    result.tables.append(common.table(
        f"operator image ({'cold' if args.cold else 'warm'} machine)", ["what", "value"],
        [["image size", f"{built['image_mib']:.1f} MiB (base {built['base_mib']:.1f} MiB)"],
         ["base (debootstrap + import)", f"{built['base_seconds']:.1f} s"],
         ["build" + (" without layer cache" if args.cold else ""), f"{built['build_seconds']:.1f} s"
          + (" (reused)" if built["build_was_reused"] else "")],
         ["rebuild with layer cache", f"{built['warm_rebuild_seconds']:.1f} s"],
         ["unchanged inputs: reuse check", f"{built['unchanged_check_seconds']:.2f} s"]]))
    result.tables.append(common.table(
        f"container start to first promotion ({len(rows)} starts)", ["from podman run to", "min", "p50", "max"],
        [[k, f"{v['min']:.2f} s", f"{v['p50']:.2f} s", f"{v['max']:.2f} s"] for k, v in timing.items()]))
    result.target("container start to first Promoted, p50", timing["promoted_s"]["p50"], 10, "s")
    result.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
