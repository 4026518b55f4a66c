"""Scale: 1,000 ModelPromotions created at once, across a few SeldonDeployments and namespaces.

    .venv/bin/python bench/scale.py [--promotions 1000] [--namespaces 4] [--deployments 5] [--runs 3]
                                    [--idle-seconds 30] [--profile] [--baseline] [--registry]

Few distinct runs (``--runs``, 1 MiB each) and one prefix, so copies are reused: each run is
copied once per bucket prefix (or a few times, when promotions of one run race), most promotions
end Superseded, one per SeldonDeployment Promoted. Deployments ``sd-<k>`` go round-robin to the
namespaces; promotion i targets ``sd-<i % deployments>`` with run ``i % runs``.

Measured: time from the first create until every promotion is settled (terminal phase, observed
generation current) and no promotion changed for 10 s; Kubernetes API requests per promotion,
counted in kube-apiserver's audit log for the operator's own client certificate (user
``promoter-bench``; the benchmark's calls are another user); peak operator RSS (VmRSS polled every
0.2 s); operator CPU while idle afterwards (utime+stime over --idle-seconds); then the operator is
restarted and the writes it makes while resuming every promotion are counted (target: zero).
MLflow requests are counted in the tracking server's access log (only the operator calls it then).

``--baseline`` adds a gate against the serving run (``rmse LessThanOrEqual baseline: Serving,
minRelativeChange: 0``: the runs tie, so every promotion still passes); ``--registry`` records each
Promoted promotion in the Model Registry (``registry: {model: bench-sd-<k>, alias: champion}``).
Use them with ``--tag`` to keep the plain run's results.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common
from common import GROUP, PLURAL, SELDON, VERSION, log


def wait_quiet(audit: common.Audit, mark: int, quiet: float, limit: float) -> tuple[float, int]:
    """Wait until the operator made no request for ``quiet`` seconds; returns (time of its last
    request relative to now-start, the audit mark at the end)."""
    start = time.monotonic()
    last_n, last_change = -1, time.monotonic()
    while time.monotonic() - start < limit:
        n = len(audit.requests(mark))
        if n != last_n:
            last_n, last_change = n, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            break
        time.sleep(1)
    return last_change - start, audit.mark()


MLFLOW_REQUEST = re.compile(r'"(GET|POST|DELETE|PATCH) /api/2\.0/mlflow/([a-z/-]+?)(?:/m-[0-9a-f]+)?(?:\?\S*)? HTTP')


def mlflow_requests(state: Any, start: int, end: int) -> dict[str, int]:
    """'METHOD endpoint' -> count, from MLflow's access log between two byte offsets."""
    with open(Path(state.home) / "logs" / "mlflow.log", "rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    counts: dict[str, int] = {}
    for method, endpoint in MLFLOW_REQUEST.findall(text):
        key = f"{method} {endpoint}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def mlflow_mark(state: Any) -> int:
    return (Path(state.home) / "logs" / "mlflow.log").stat().st_size


def copies(metrics: dict[str, float]) -> str:
    out = []
    for k, v in metrics.items():
        if k.startswith("modelpromotion_copy_duration_seconds_count"):
            out.append(f"{k.partition('mode=')[2].strip(chr(34) + '}')} {v:g}")
    return ", ".join(out) or "none"


def check(custom: Any, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deployments that do not have exactly one Promoted promotion, the one they name."""
    sdeps = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
             for o in custom.list_cluster_custom_object(*SELDON)["items"]}
    promoted_by: dict[tuple[str, str], list[str]] = {}
    for o in objs:
        if common.phase(o) == "Promoted":
            key = (o["metadata"]["namespace"], o["spec"]["target"]["seldonDeployment"]["name"])
            promoted_by.setdefault(key, []).append(o["metadata"]["name"])
    bad = []
    for key, sd in sorted(sdeps.items()):
        owner = (sd["metadata"].get("annotations") or {}).get("mlops.dev/promotion")
        names = sorted(promoted_by.get(key, []))
        if names != [owner]:
            bad.append({"deployment": "/".join(key), "owner": owner, "promoted": names})
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--promotions", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=4)
    parser.add_argument("--deployments", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--quiet", type=float, default=10, help="seconds without a change that count as settled")
    parser.add_argument("--profile", action="store_true", help="py-spy record the operator while it works")
    parser.add_argument("--baseline", action="store_true", help="add a baseline: Serving gate to every promotion")
    parser.add_argument("--registry", action="store_true", help="record every promotion in the Model Registry")
    common.add_experiment_args(parser)
    args = parser.parse_args()
    res, op_env = common.experiment("scale", args)
    n = args.promotions
    with common.devstack("scale") as state:
        namespaces = [common.namespace(state, f"scale-{k}") for k in range(args.namespaces)]
        runs = common.log_runs(state, args.runs, 1024 * 1024, "bench-scale")
        api = common.kube_client(state)
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        audit = common.Audit(state)
        if not audit.available:
            log("no audit log at " + str(audit.path) + ": request counts unavailable")
        watcher = common.Watcher(api, (GROUP, VERSION, PLURAL))
        watcher.start()
        watcher.ready.wait(30)
        op = common.Operator(state, Path(state.home) / "logs" / "operator.log", op_env, module=args.operator_module)
        op.start()
        try:
            time.sleep(10)
            rss_idle_start = common.rss_mib(op.pid)
            sampler = common.RssSampler(op.pid)
            sampler.start()
            prof = common.Profiler(op.pid, common.RESULTS / "scale.pyspy.txt") if args.profile else None
            mark, mlflow0 = audit.mark(), mlflow_mark(state)
            cpu0 = common.cpu_seconds(op.pid)
            servers0 = common.stack_cpu(state)

            def target(i: int) -> tuple[str, str]:
                k = i % args.deployments
                return namespaces[k % len(namespaces)], f"sd-{k}"

            def create(i: int) -> None:
                ns, sd = target(i)
                body = common.promotion(f"s-{i:04d}", runs[i % len(runs)], sd)
                if args.baseline:
                    body["spec"]["gates"].append({"metric": "rmse", "op": "LessThanOrEqual", "baseline": "Serving",
                                                  "minRelativeChange": 0.0})
                if args.registry:
                    body["spec"]["registry"] = {"model": f"bench-{sd}", "alias": "champion"}
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)

            log(f"creating {n} promotions")
            t0 = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(n)))
            t_created = time.monotonic() - t0
            log(f"created in {t_created:.1f}s; waiting for all to settle")
            t_all_terminal = None
            while True:
                now = time.monotonic()
                objs = watcher.snapshot()
                done = sum(1 for o in objs if common.settled(o))
                if done >= n and t_all_terminal is None:
                    t_all_terminal = now - t0
                    log(f"all {n} in a terminal phase after {t_all_terminal:.1f}s")
                if done < n:
                    t_all_terminal = None
                if t_all_terminal is not None and now - watcher.last_event >= args.quiet:
                    break
                if now - t0 > args.timeout:
                    log(f"timeout: {done}/{n} settled")
                    break
                if int(now - t0) % 15 == 0:
                    log(f"{now - t0:.0f}s: {done}/{n} settled")
                time.sleep(0.5)
            t_settled = watcher.last_event - t0
            cpu_busy = common.cpu_seconds(op.pid) - cpu0
            servers = {k: v - servers0.get(k, 0.0) for k, v in common.stack_cpu(state).items()}
            profile = prof.stop() if prof else {}
            mark_settled = audit.mark()
            mlflow_reqs = mlflow_requests(state, mlflow0, mlflow_mark(state))
            metrics = op.metrics()
            rss_after = common.rss_mib(op.pid)
            time.sleep(5)
            idle_mark = audit.mark()
            cpu_idle = common.idle_cpu(op.pid, args.idle_seconds)
            idle_reqs = audit.requests(idle_mark) if audit.available else []
            rss_idle_after = common.rss_mib(op.pid)
            peak = sampler.stop()
            reqs = audit.requests(mark, mark_settled) if audit.available else []

            objs = watcher.snapshot()
            phases: dict[str, int] = {}
            for o in objs:
                phases[common.phase(o) or "(none)"] = phases.get(common.phase(o) or "(none)", 0) + 1
            inconsistent = check(custom, watcher.snapshot())
            sizes = [len(json.dumps(o, separators=(",", ":"))) for o in objs]

            # restart: a re-reconcile of everything. The first one may heal what the run left
            # inconsistent (deployments with two Promoted promotions); the second one has nothing
            # to change and must write nothing.
            restarts = []
            for k in (1, 2):
                log(f"restart {k} of the operator")
                restart_mark = audit.mark()
                op.stop()
                op.start()
                t_resume, _ = wait_quiet(audit, restart_mark, args.quiet, 300)
                restarts.append((t_resume, audit.requests(restart_mark) if audit.available else []))
                if k == 1:
                    time.sleep(2)
                    healed = check(custom, watcher.snapshot())
            heal_reqs = restarts[0][1]
            t_resume, resume_reqs = restarts[1]
            rss_after_resume = common.rss_mib(op.pid)
        finally:
            op.stop()
            watcher.stop()

    per = len(reqs) / n if reqs else float("nan")
    w = common.writes(reqs)
    rw = common.writes(resume_reqs)
    hw = common.writes(heal_reqs)
    res.tables.append(common.table(
        f"scale: {n} promotions, {args.deployments} SeldonDeployments, {args.namespaces} namespaces, "
        f"{args.runs} runs (noisy shared machine)", ["measure", "value"], [
            ["create all (8 client threads), s", t_created],
            ["first create -> all in a terminal phase, s", t_all_terminal if t_all_terminal is not None else "never"],
            ["first create -> last promotion change (settled), s", t_settled],
            ["throughput, promotions/s", n / t_settled if t_settled > 0 else float("nan")],
            ["phases", ", ".join(f"{k} {v}" for k, v in sorted(phases.items()))],
            ["deployments with != 1 Promoted or owner mismatch", len(inconsistent)],
            ["promotion object size (JSON), bytes, mean", sum(sizes) / max(1, len(sizes))],
            ["API requests by the operator (audit log)", len(reqs)],
            ["  per promotion", per],
            ["  writes per promotion", len(w) / n if reqs else float("nan")],
            ["MLflow requests by the operator (its access log), per promotion", sum(mlflow_reqs.values()) / n],
            ["operator CPU while working, s (of one core)", cpu_busy],
            ["devstack servers' CPU meanwhile, s", ", ".join(f"{k} {v:.1f}" for k, v in servers.items())],
            ["operator RSS idle after start, MiB", rss_idle_start],
            ["operator RSS peak, MiB", peak],
            ["operator RSS after settle, MiB", rss_after],
            ["operator RSS idle after, MiB", rss_idle_after],
            [f"operator CPU idle after ({args.idle_seconds:g} s), % of a core", cpu_idle],
            ["  API requests while idle", len(idle_reqs)],
            ["copies made (by mode, from its metrics)", copies(metrics)],
            ["restart 1 (heals the above): API requests / writes", f"{len(heal_reqs)} / {len(hw)}"],
            ["  deployments inconsistent after restart 1", len(healed)],
            ["restart 2 (nothing changed): quiet after, s", t_resume],
            ["restart 2 (nothing changed): API requests / writes", f"{len(resume_reqs)} / {len(rw)}"],
            ["operator RSS after resume, MiB", rss_after_resume],
        ]))
    res.tables.append(common.table("scale: operator API requests per promotion, by kind (audit log)",
                                   ["verb resource (client)", "total", "per promotion"],
                                   [[k, v, v / n] for k, v in common.tally(reqs).items()]))
    res.tables.append(common.table("scale: operator MLflow requests per promotion, by endpoint (MLflow's access log)",
                                   ["method endpoint", "total", "per promotion"],
                                   [[k, v, v / n] for k, v in mlflow_reqs.items()]))
    if resume_reqs:
        res.tables.append(common.table("scale: requests on restart 2 (resume of every promotion, nothing changed)",
                                       ["verb resource (client)", "total"],
                                       [[k, v] for k, v in common.tally(resume_reqs).items()]))
    if profile:
        res.tables.append(common.profile_table("scale: operator profile while working", profile))
    res.data.update({
        "promotions": n, "namespaces": args.namespaces, "deployments": args.deployments, "runs": args.runs,
        "baseline_gate": args.baseline, "registry": args.registry, "mlflow_requests_by_endpoint": mlflow_reqs,
        "mlflow_requests_per_promotion": sum(mlflow_reqs.values()) / n,
        "object_bytes_mean": sum(sizes) / max(1, len(sizes)),
        "create_s": t_created, "all_terminal_s": t_all_terminal, "settled_s": t_settled, "phases": phases,
        "inconsistent": inconsistent, "api_requests": len(reqs), "api_requests_per_promotion": per,
        "api_writes_per_promotion": len(w) / n if reqs else None, "api_requests_by_kind": common.tally(reqs),
        "request_count_method": "kube-apiserver audit log, user " + common.OPERATOR_USER,
        "cpu_busy_s": cpu_busy, "servers_cpu_s": servers, "rss_idle_start_mib": rss_idle_start, "rss_peak_mib": peak,
        "rss_after_mib": rss_after, "rss_idle_after_mib": rss_idle_after, "cpu_idle_percent": cpu_idle,
        "idle_requests": len(idle_reqs),
        "metrics": {k: v for k, v in metrics.items() if k.startswith("modelpromotion")},
        "resume_quiet_s": t_resume, "resume_requests": common.tally(resume_reqs),
        "resume_writes": len(rw), "heal_requests": common.tally(heal_reqs), "heal_writes": len(hw),
        "inconsistent_after_restart": healed, "resume_write_examples": rw[:10],
        "rss_after_resume_mib": rss_after_resume,
        "rss_samples": sampler.samples[:: max(1, len(sampler.samples) // 300)], "profile": profile,
    })
    res.target("1000 promotions settled", t_settled, 180, "s")
    res.target("API requests per promotion", per, 10)
    res.target("writes on re-reconcile (restart)", len(rw), 0)
    res.target("RSS idle after start", rss_idle_start, 100, "MiB")
    res.target("RSS after 1000 promotions", rss_after, 200, "MiB")
    res.target("deployments inconsistent after settle", len(inconsistent), 0)
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
