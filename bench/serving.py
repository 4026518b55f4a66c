"""Serving: from ``kubectl apply`` of the sample promotion to a model that answers, on devstack's
node with the real rclone and MLServer, and what the cluster part costs in memory.

    .venv/bin/python bench/serving.py [--rollouts 2]

One devstack of its own. It trains experiments/train.py's model, applies
manifests/samples/promotion.yaml, and times: apply -> Promoted, -> ``kubectl rollout status``
done, -> the first V2 inference equal to the run's own predictions. Then ``--rollouts`` more runs
(new seeds) promoted to the same SeldonDeployment: apply -> the new Pod ready -> the old Pod
gone. The floor of each rollout is Seldon's own probe settings (readiness first probed 20 s after
start) and its preStop sleep (10 s). RSS: each devstack process (stack.status) after the first
rollout, and each MLServer Pod (its containers' process groups), sampled while it serves.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
from common import REPO

from devstack import predict, stack

NS, SDEP = "bench-serving", "rf-regressor"
SAMPLE = REPO / "manifests" / "samples" / "promotion.yaml"


def train(state: stack.State, seed: int) -> str:
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "train.py"), "--seed", str(seed)],
                         env=predict.client_env(state), capture_output=True, text=True, timeout=600, check=True)
    return out.stdout.strip().splitlines()[-1]


def apply(state: stack.State, name: str, run_id: str) -> None:
    body = SAMPLE.read_text().replace("RUN_ID", run_id).replace("name: rf-regressor\nspec", f"name: {name}\nspec")
    state.kubectl("-n", NS, "apply", "-f", "-", input=body)


def wait(what: str, check: Any, timeout: float = 300, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(what)


def get(state: stack.State, *args: str) -> Any:
    out = state.kubectl("-n", NS, "get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def pods(state: stack.State) -> list[dict[str, Any]]:
    return list((get(state, "pods", "-l", f"seldon-deployment-id={SDEP}") or {"items": []})["items"])


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def pod_rss_mib(pod: dict[str, Any]) -> float:
    statuses = pod["status"].get("containerStatuses", [])
    groups = [int(s["containerID"].removeprefix("devstack://")) for s in statuses if "running" in s.get("state", {})]
    return sum(stack._group_rss(g) for g in groups) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=2, help="later promotions rolled out over the first")
    args = parser.parse_args()
    result = common.Result("serving")
    t_up = time.monotonic()
    with common.devstack("serving") as state:
        up = time.monotonic() - t_up
        common.namespace(state, NS)
        with common.Operator(state, Path(state.home) / "logs" / "operator.log"):
            run_id = train(state, 42)
            t0 = time.monotonic()
            apply(state, "first", run_id)
            wait("Promoted", lambda: ((get(state, "modelpromotion", "first") or {}).get("status") or {}).get(
                "phase") == "Promoted")
            promoted = time.monotonic() - t0
            deployment = predict.deployment_of(state, NS, SDEP)
            predict.rollout(state, NS, deployment, timeout=300)
            rolled = time.monotonic() - t0
            model_uri = f"s3://models/rf-regressor/{run_id}"
            example = predict.serving_example(state, model_uri)
            local = predict.local_predictions(model_uri, predict.rows(example), predict.client_env(state))
            url = wait("serviceStatus", lambda: _url(state))
            wait("a correct prediction", lambda: _answers(url, example, local))
            answered = time.monotonic() - t0
            (pod,) = pods(state)
            processes = {name: rss / 1024 for name, _pid, alive, rss in stack.status(Path(state.home)) if alive}
            mlservers = [pod_rss_mib(pod)]

            swaps = []
            for i in range(args.rollouts):
                later = train(state, 100 + i)
                (old,) = pods(state)
                t1 = time.monotonic()
                apply(state, f"later-{i}", later)
                new = wait("the new Pod ready", lambda: next(  # noqa: B023
                    (p for p in pods(state) if p["metadata"]["uid"] != old["metadata"]["uid"] and ready(p)), None))  # noqa: B023
                new_ready = time.monotonic() - t1
                mlservers.append(pod_rss_mib(new))
                wait("the old Pod gone", lambda: all(p["metadata"]["uid"] != old["metadata"]["uid"]  # noqa: B023
                                                     for p in pods(state)))
                swaps.append((new_ready, time.monotonic() - t1))
    result.data.update(up_seconds=up, first={"promoted": promoted, "rolled_out": rolled, "answered": answered},
                       rollouts=[{"new_pod_ready": a, "old_pod_gone": b} for a, b in swaps],
                       rss_mib=processes, mlserver_rss_mib=mlservers)
    result.tables.append(common.table("serving: the first promotion, seconds from kubectl apply",
                                      ["Promoted", "rollout status done", "first correct prediction"],
                                      [[f"{promoted:.1f}", f"{rolled:.1f}", f"{answered:.1f}"]]))
    if swaps:
        result.tables.append(common.table("serving: later promotions, seconds from kubectl apply",
                                          ["rollout", "new Pod ready", "old Pod gone"],
                                          [[i + 1, f"{a:.1f}", f"{b:.1f}"] for i, (a, b) in enumerate(swaps)]))
    result.tables.append(common.table(f"serving: RSS MiB (devstack up took {up:.0f} s)", ["process", "RSS MiB"],
                                      [[k, f"{v:.0f}"] for k, v in processes.items()]
                                      + [[f"MLServer Pod {i + 1}", f"{v:.0f}"] for i, v in enumerate(mlservers)]))
    result.write()
    return 0


def _url(state: stack.State) -> str | None:
    try:
        return predict.infer_url(get(state, "seldondeployment", SDEP))
    except LookupError:
        return None


def _answers(url: str, example: dict[str, Any], local: list[float]) -> bool:
    try:
        served = predict.infer(url, predict.v2_request(example))
    except OSError:
        return False
    return all(abs(a - b) <= 1e-9 * max(abs(b), 1e-300) for a, b in zip(served, local, strict=True))


if __name__ == "__main__":
    sys.exit(main())
