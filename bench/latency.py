"""Latency: ``kubectl apply`` of a ModelPromotion -> status Promoted, and -> SeldonDeployment
written, for a ~1 MiB model; against the same steps scripted by hand in the same run. Then the
same served: -> Promoted, which now means a Pod of MLServer answering the model's own example.

    .venv/bin/python bench/latency.py [--promotions 60] [--serving 20] [--failures 5] [--size-mib 1]

The first part promotes to SeldonDeployments of 0 replicas (the rollout check without a Pod).
``--serving``: promotions of a run with an input example to SeldonDeployments of 1 replica, each
its own, on devstack's node (real rclone, real MLServer), beside a hand-scripted baseline in the
same run: the same copy and writes, then a poll of the predictor's Deployment every 0.5 s until
``kubectl rollout status`` would say done, then the example POSTed to the new Pod. ``--failures``:
a model whose model.pkl is not a pickle promoted over a serving one: from the moment its Pod is
seen crash-looping (the failure is detectable) to the promotion Failed with the previous model
rolled out again.

One MLflow run (MLflow 2 layout, rf-regressor plus a --size-mib weights.bin). Every promotion
is a real one: its own ModelPromotion, its own SeldonDeployment and rclone Secret (both created),
and its own storage prefix (``oplat<i>``), so every promotion copies and verifies the files
(no reuse). The hand baseline (``handlat<i>``), interleaved with the operator's promotions:
one ``runs/get`` (requests), a listing and a server-side CopyObject per file plus a manifest put
(minio), a Secret create and a SeldonDeployment create (kubernetes client), with long-lived
clients. Overhead = operator - baseline. Times start before ``kubectl apply`` is spawned; the
"created ->" columns start when the benchmark's watch saw the object (kubectl's own cost removed).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import GROUP, PLURAL, SELDON, VERSION, log

NS = "bench-lat"


class Timings:
    def __init__(self) -> None:
        self.created: dict[str, float] = {}
        self.promoted: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self.failed_at: dict[str, float] = {}
        self.sdep: dict[str, float] = {}
        self.cond = threading.Condition()

    def on_mp(self, kind: str, obj: dict[str, Any], t: float) -> None:
        name = obj["metadata"]["name"]
        with self.cond:
            self.created.setdefault(name, t)
            ph = common.phase(obj)
            if ph == "Promoted":
                self.promoted.setdefault(name, t)
            elif ph in ("Rejected", "Failed"):
                self.failed[name] = (obj.get("status") or {}).get("message", ph)
                self.failed_at.setdefault(name, t)
            self.cond.notify_all()

    def on_sdep(self, kind: str, obj: dict[str, Any], t: float) -> None:
        owner = (obj["metadata"].get("annotations") or {}).get("mlops.dev/promotion")
        if owner:
            with self.cond:
                self.sdep.setdefault(owner, t)
                self.cond.notify_all()

    def wait(self, name: str, timeout: float = 120) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: name in self.failed or (name in self.promoted and name in self.sdep),
                                    timeout)
        if name in self.failed:
            raise RuntimeError(f"{name} ended {self.failed[name]}")
        if not ok:
            raise RuntimeError(f"{name} not promoted after {timeout}s")


class Hand:
    """The same steps scripted by hand, with long-lived clients."""

    def __init__(self, state: Any, api: Any, run_id: str) -> None:
        import requests
        from kubernetes import client
        from minio import Minio

        from promoter.spec import parse_spec

        self.state, self.run_id = state, run_id
        self.http = requests.Session()
        self.s3 = Minio(state.s3_endpoint.removeprefix("http://"), access_key=state.s3_access_key,
                        secret_key=state.s3_secret_key, secure=False)
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.parse_spec = parse_spec

    def promote(self, i: int, name: str = "", replicas: int = 0) -> float:
        from minio.commonconfig import CopySource

        from promoter import seldon

        name = name or f"hand-{i:03d}"
        prefix = f"handsrv{i}" if replicas else f"handlat{i}"
        spec = self.parse_spec(common.promotion(name, self.run_id, name, prefix, f"rclone-{name}",
                                                replicas=replicas)["spec"])
        t0 = time.monotonic()
        r = self.http.get(f"{self.state.mlflow_uri}/api/2.0/mlflow/runs/get", params={"run_id": self.run_id},
                          timeout=10)
        r.raise_for_status()
        info = r.json()["run"]["info"]
        assert info["status"] == "FINISHED"
        bucket, _, key = info["artifact_uri"].removeprefix("s3://").partition("/")
        src = f"{key.rstrip('/')}/rf-regressor/"
        dst = f"{prefix}/{self.run_id}/"
        files = []
        for o in self.s3.list_objects(bucket, prefix=src, recursive=True):
            rel = o.object_name[len(src):]
            res = self.s3.copy_object("models", dst + rel, CopySource(bucket, o.object_name))
            files.append({"path": rel, "size": o.size, "etag": res.etag})
        raw = json.dumps({"files": files}).encode()
        import io

        self.s3.put_object("models", dst + "promotion-manifest.json", io.BytesIO(raw), len(raw))
        owner = seldon.owner(NS, name, "hand-scripted")  # the owner annotation the operator's children carry
        secret = seldon.render_rclone_secret(f"rclone-{name}", NS, self.state.s3_endpoint,
                                             self.state.s3_access_key, self.state.s3_secret_key, owner)
        self.core.create_namespaced_secret(NS, secret)
        sdep = seldon.render_seldon_deployment(spec.target.seldon_deployment, NS, f"s3://models/{dst}",
                                               {"mlops.dev/promotion": name}, owner)
        self.custom.create_namespaced_custom_object(*SELDON[:2], NS, SELDON[2], sdep)
        return time.monotonic() - t0


class HandServing(Hand):
    """The serving baseline: Hand's steps with a SeldonDeployment of one replica, then a poll of
    the Deployment and the example sent to the new Pod."""

    def promote_served(self, i: int, example: dict[str, Any]) -> float:
        from kubernetes import client

        from promoter import rollout, smoke

        t0 = time.monotonic()
        name = f"hsrv-{i:03d}"
        self.promote(i, name=name, replicas=1)
        uri = f"s3://models/handsrv{i}/{self.run_id}/"  # as Hand.promote writes it
        apps, discovery = client.AppsV1Api(self.core.api_client), client.DiscoveryV1Api(self.core.api_client)
        labels = rollout.selector(name, "default")
        deadline = t0 + 300
        while True:
            deps = [d.to_dict() for d in apps.list_namespaced_deployment(NS, label_selector=labels).items]
            if deps and _rolled_out(deps[0], uri):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: not rolled out in 300 s")
            time.sleep(0.5)
        request = smoke.request_of(example)
        while True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no ready endpoint in 300 s")
            slices = discovery.list_namespaced_endpoint_slice(
                NS, label_selector=f"kubernetes.io/service-name={name}-default").items
            ready = [(e.addresses[0], p.port) for sl in slices for e in sl.endpoints or []
                     for p in sl.ports or [] if p.name == "http" and e.conditions and e.conditions.ready]
            if ready:
                break
            time.sleep(0.1)
        r = self.http.post(f"http://{ready[0][0]}:{ready[0][1]}/v2/models/model/infer", json=request.body, timeout=10)
        r.raise_for_status()
        assert len(r.json()["outputs"][0]["data"]) == request.rows
        return time.monotonic() - t0


def _rolled_out(dep: dict[str, Any], uri: str) -> bool:
    meta, spec, st = dep["metadata"], dep["spec"], dep.get("status") or {}
    inits = spec["template"]["spec"].get("init_containers") or []
    if not any((c.get("args") or [None])[0] == uri for c in inits):
        return False
    if (st.get("observed_generation") or 0) < (meta.get("generation") or 0):
        return False
    replicas, updated = spec.get("replicas", 1), st.get("updated_replicas") or 0
    return bool(updated >= replicas and (st.get("replicas") or 0) <= updated
                and (st.get("available_replicas") or 0) >= updated)


def serving(state: Any, api: Any, tm: Timings, hand_run: str, count: int, size: int,
            failures: int) -> dict[str, Any]:
    """The served part: ``count`` operator promotions and as many hand-scripted ones, each onto a
    SeldonDeployment of its own (deleted after, to free the node), then ``failures`` garbage
    models promoted over a serving one."""
    from kubernetes import client, watch

    from devstack import predict

    run_id = common.log_runs(state, 1, size, "bench-latency-serving", example=True)[0]
    garbage = common.log_runs(state, 1, size, "bench-latency-garbage", example=True, garbage=True)[0]
    example = predict.serving_example(state, f"s3://mlflow/{_artifact_prefix(state, run_id)}/rf-regressor")
    hand = HandServing(state, api, run_id)
    rows: list[dict[str, float]] = []

    def apply(name: str, run: str, deployment: str, prefix: str) -> float:
        obj = common.promotion(name, run, deployment, prefix, "seldon-rclone-secret", replicas=1)
        t0 = time.monotonic()
        state.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps(obj))
        return t0

    def drop(*names: str) -> None:
        for n in names:
            state.kubectl("-n", NS, "delete", "mp", n, "--ignore-not-found", "--wait=false")
            state.kubectl("-n", NS, "delete", "seldondeployment", n, "--ignore-not-found", "--wait=false")

    for i in range(count):
        base = hand.promote_served(i, example)
        name = f"srv-{i:03d}"
        t0 = apply(name, run_id, name, f"opsrv{i}")
        tm.wait(name, timeout=300)
        rows.append({"baseline": base, "to_verified": tm.promoted[name] - t0})
        log(f"serving {i + 1}/{count}: apply->verified {rows[-1]['to_verified']:.2f}s, baseline {base:.2f}s")
        drop(name, f"hsrv-{i:03d}")
    out: dict[str, Any] = {"rows": rows,
                           "stats": {c: common.summary([r[c] for r in rows]) for c in ("baseline", "to_verified")}}
    # failure -> the previous model serving again
    apply("srv-good", run_id, "srv-fail", "opsrvgood")
    tm.wait("srv-good", timeout=300)
    core = client.CoreV1Api(api)
    back: list[float] = []
    for i in range(failures):
        name = f"srv-bad-{i}"
        apply(name, garbage, "srv-fail", "opsrvbad")
        seen = None
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, NS, label_selector="seldon-deployment-id=srv-fail",
                           timeout_seconds=300):
            pod = ev["object"]
            for c in (pod.status.container_statuses or []):
                if c.state and c.state.waiting and c.state.waiting.reason == "CrashLoopBackOff":
                    seen = time.monotonic()
            if seen:
                w.stop()
        with tm.cond:
            tm.cond.wait_for(lambda: name in tm.failed, 300)  # noqa: B023 - waited for in this iteration
        ended = tm.failed_at.get(name)
        if seen and ended:
            back.append(ended - seen)
            log(f"failure {i + 1}/{failures}: detectable -> previous model serving again {back[-1]:.2f}s")
        for _ in range(60):  # the garbage Pod gone before the next one
            pods = core.list_namespaced_pod(NS, label_selector="seldon-deployment-id=srv-fail").items
            if len(pods) <= 1:
                break
            time.sleep(1)
    out["failure_to_previous_serving"] = common.summary(back)
    return out


def _artifact_prefix(state: Any, run_id: str) -> str:
    import requests

    r = requests.get(f"{state.mlflow_uri}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=10)
    r.raise_for_status()
    return str(r.json()["run"]["info"]["artifact_uri"]).removeprefix("s3://mlflow/").rstrip("/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promotions", type=int, default=60)
    parser.add_argument("--serving", type=int, default=20, help="promotions served by MLServer (0: none)")
    parser.add_argument("--failures", type=int, default=5, help="garbage models rolled back (0: none)")
    parser.add_argument("--size-mib", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="py-spy record the operator during the run")
    parser.add_argument("--verbose-operator", action="store_true")
    common.add_experiment_args(parser)
    args = parser.parse_args()
    res, op_env = common.experiment("latency", args)
    with common.devstack("latency") as state:
        common.namespace(state, NS)
        run_id = common.log_runs(state, 1, int(args.size_mib * 1024 * 1024), "bench-latency")[0]
        api = common.kube_client(state)
        tm = Timings()
        watchers = [common.Watcher(api, (GROUP, VERSION, PLURAL), tm.on_mp), common.Watcher(api, SELDON, tm.on_sdep)]
        for w in watchers:
            w.start()
            w.ready.wait(30)
        hand = Hand(state, api, run_id)
        audit = common.Audit(state)
        oplog = Path(state.home) / "logs" / "operator.log"
        op = common.Operator(state, oplog, op_env, verbose=args.verbose_operator, module=args.operator_module)
        op.start()
        prof = None
        try:
            def apply(name: str, i: int) -> float:
                obj = common.promotion(name, run_id, name, f"oplat{i}", f"rclone-{name}")
                t0 = time.monotonic()
                state.kubectl("-n", NS, "apply", "-f", "-", input=json.dumps(obj))
                return t0

            # warm-up, not counted: first imports, connections, kubectl's discovery cache
            t0 = apply("warmup", 9999)
            tm.wait("warmup")
            first = {"to_promoted": tm.promoted["warmup"] - t0, "to_sdep": tm.sdep["warmup"] - t0}
            hand.promote(9999)
            time.sleep(1)
            if args.profile:
                prof = common.Profiler(op.pid, common.RESULTS / "latency.pyspy.txt")
            mark = audit.mark()
            m0 = op.metrics()
            rows: list[dict[str, float]] = []
            for i in range(args.promotions):
                base = hand.promote(i)
                name = f"lat-{i:03d}"
                t0 = apply(name, i)
                t_applied = time.monotonic()
                tm.wait(name)
                rows.append({"baseline": base, "kubectl_apply": t_applied - t0,
                             "to_promoted": tm.promoted[name] - t0, "to_sdep": tm.sdep[name] - t0,
                             "created_to_promoted": tm.promoted[name] - tm.created[name],
                             "created_to_sdep": tm.sdep[name] - tm.created[name]})
                if (i + 1) % 10 == 0:
                    log(f"{i + 1}/{args.promotions}: last apply->Promoted {rows[-1]['to_promoted']:.3f}s, "
                        f"baseline {base:.3f}s")
            m1 = op.metrics()
            time.sleep(1)
            reqs = audit.requests(mark) if audit.available else []
            profile = prof.stop() if prof else {}
            served = serving(state, api, tm, run_id, args.serving, int(args.size_mib * 1024 * 1024),
                             args.failures) if args.serving else {}
        finally:
            op.stop()
            for w in watchers:
                w.stop()

    cols = ["baseline", "to_promoted", "to_sdep", "created_to_promoted", "created_to_sdep", "kubectl_apply"]
    stats = {c: common.summary([r[c] for r in rows]) for c in cols}
    base = stats["baseline"]
    labels = {"baseline": "hand-scripted baseline", "to_promoted": "apply -> Promoted",
              "to_sdep": "apply -> SeldonDeployment written", "created_to_promoted": "created -> Promoted",
              "created_to_sdep": "created -> SeldonDeployment", "kubectl_apply": "kubectl apply itself"}
    table_rows = [[labels[c], stats[c]["p50"], stats[c]["p95"], stats[c]["p99"], stats[c]["mean"],
                   stats[c]["p50"] / base["p50"] if c != "baseline" else 1.0] for c in cols]

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    n = len(rows)
    reconcile_mean = delta("modelpromotion_reconcile_duration_seconds_sum") / max(
        1.0, delta("modelpromotion_reconcile_duration_seconds_count"))
    copy_mean = delta('modelpromotion_copy_duration_seconds_sum{mode="server-side"}') / max(
        1.0, delta('modelpromotion_copy_duration_seconds_count{mode="server-side"}'))
    res.tables.append(common.table(
        f"latency: {n} promotions of a {args.size_mib:g} MiB model, seconds (noisy shared machine: "
        "compare ratios)", ["step", "p50", "p95", "p99", "mean", "p50/baseline"], table_rows))
    res.tables.append(common.table("latency: decomposition (means, seconds)", ["what", "value"], [
        ["operator reconcile() (its Prometheus histogram)", reconcile_mean],
        ["  of which copy+verify (server-side)", copy_mean],
        ["overhead p50: apply->Promoted - baseline", stats["to_promoted"]["p50"] - base["p50"]],
        ["overhead p50: created->Promoted - baseline", stats["created_to_promoted"]["p50"] - base["p50"]],
        ["first promotion (warm-up), apply->Promoted", first["to_promoted"]],
    ]))
    per = common.tally(reqs)
    if reqs:
        res.tables.append(common.table(
            f"latency: API requests by the operator per promotion (audit log, user {common.OPERATOR_USER})",
            ["verb resource (client)", "per promotion"], [[k, v / n] for k, v in per.items()]))
    res.data.update({"promotions": n, "size_mib": args.size_mib, "run_id": run_id, "copy_reused": False,
                     "stats": stats, "rows": rows, "first": first, "reconcile_mean_s": reconcile_mean,
                     "copy_mean_s": copy_mean, "api_requests_per_promotion": len(reqs) / n if reqs else None,
                     "api_requests_by_kind": per, "profile": profile})
    if profile:
        res.tables.append(common.profile_table("latency: operator profile", profile))
    if served:
        sv = served["stats"]
        res.tables.append(common.table(
            f"latency, served: {len(served['rows'])} promotions onto SeldonDeployments of 1 replica (MLServer), "
            "seconds", ["step", "p50", "p95", "mean"],
            [["hand-scripted: write, poll the Deployment, send the example", sv["baseline"]["p50"],
              sv["baseline"]["p95"], sv["baseline"]["mean"]],
             ["apply -> Promoted (rolled out, smoke test passed)", sv["to_verified"]["p50"], sv["to_verified"]["p95"],
              sv["to_verified"]["mean"]],
             ["overhead (p50 - p50)", sv["to_verified"]["p50"] - sv["baseline"]["p50"], "", ""],
             ["failure detectable -> previous model serving again", served["failure_to_previous_serving"]["p50"],
              served["failure_to_previous_serving"]["p95"], served["failure_to_previous_serving"]["mean"]]]))
        res.data["serving"] = served
        res.target("served: overhead over the baseline p50", sv["to_verified"]["p50"] - sv["baseline"]["p50"],
                   0.5, "s")
        res.target("failure -> previous serving again p50", served["failure_to_previous_serving"]["p50"], 10.0, "s")
    res.target("apply->Promoted p50", stats["to_promoted"]["p50"], 0.5, "s")
    res.target("apply->Promoted p99", stats["to_promoted"]["p99"], 2.0, "s")
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
