"""Memory: operator RSS idle after start, and over a churn loop (create, promote, delete).

    .venv/bin/python bench/memory.py [--minutes 30] [--batch 4] [--sample-seconds 15]

The churn loop creates ``--batch`` promotions at once (one per SeldonDeployment ``churn-<k>``,
runs alternating between two logged runs, one prefix, so copies are reused after the first),
waits until each is settled, deletes them, waits until they are gone (promotions carry no
finalizer), and repeats until ``--minutes`` have passed. VmRSS is sampled every
``--sample-seconds`` with the number of promotions done. The slope is a least-squares fit of
RSS over promotions after a warm-up (the first 20% of the samples are left out), in MiB per
1,000 promotions; it counts as flat when the growth it predicts over the measured span is
within 2 standard deviations of the residuals + 1 MiB. RSS after 1,000 promotions at once is
scale.py's (read from bench/results/scale.json when that ran first).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import common
from common import GROUP, PLURAL, RESULTS, VERSION, log

NS = "bench-mem"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sample-seconds", type=float, default=15)
    common.add_experiment_args(parser)
    args = parser.parse_args()
    res, op_env = common.experiment("memory", args)
    with common.devstack("memory") as state:
        common.namespace(state, NS)
        runs = common.log_runs(state, 2, 1024 * 1024, "bench-memory")
        api = common.kube_client(state)
        from kubernetes import client

        custom = client.CustomObjectsApi(api)
        watcher = common.Watcher(api, (GROUP, VERSION, PLURAL))
        watcher.start()
        watcher.ready.wait(30)
        op = common.Operator(state, Path(state.home) / "logs" / "operator.log", op_env, module=args.operator_module)
        op.start()
        samples: list[tuple[float, int, float]] = []
        done = [0]
        stop = threading.Event()
        try:
            time.sleep(10)
            idle = [common.rss_mib(op.pid)]
            for _ in range(10):
                time.sleep(1)
                idle.append(common.rss_mib(op.pid))
            rss_idle = sorted(idle)[len(idle) // 2]
            cpu_idle = common.idle_cpu(op.pid, 10)
            log(f"idle RSS {rss_idle:.1f} MiB; churning for {args.minutes:g} min")

            t0 = time.monotonic()

            def sample() -> None:
                while not stop.is_set():
                    samples.append((time.monotonic() - t0, done[0], common.rss_mib(op.pid)))
                    stop.wait(args.sample_seconds)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            cycle_times = []
            deadline = time.monotonic() + args.minutes * 60
            n = 0
            while time.monotonic() < deadline:
                c0 = time.monotonic()
                names = [f"c-{n + j:06d}" for j in range(args.batch)]
                for j, name in enumerate(names):
                    custom.create_namespaced_custom_object(
                        GROUP, VERSION, NS, PLURAL,
                        common.promotion(name, runs[(n + j) % len(runs)], f"churn-{j}"))
                limit = time.monotonic() + 120
                while True:
                    with watcher.lock:
                        cache = {k[1]: o for k, o in watcher.cache.items() if k[0] == NS}
                    if all(nm in cache and common.settled(cache[nm]) for nm in names):
                        break
                    if time.monotonic() > limit:
                        raise RuntimeError(f"not settled in 120s: {[common.phase(cache.get(nm, {})) for nm in names]}")
                    time.sleep(0.05)
                bad = [nm for nm in names if common.phase(cache[nm]) != "Promoted"]
                if bad:
                    log(f"not Promoted: {bad}: {[cache[b]['status'].get('message') for b in bad]}")
                for name in names:
                    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
                while True:
                    with watcher.lock:
                        if not any((NS, nm) in watcher.cache for nm in names):
                            break
                    if time.monotonic() > limit + 60:
                        raise RuntimeError("promotions not gone 60s after delete")
                    time.sleep(0.05)
                n += args.batch
                done[0] = n
                cycle_times.append(time.monotonic() - c0)
                if n % 200 == 0:
                    log(f"{n} promotions churned, RSS {common.rss_mib(op.pid):.1f} MiB")
            stop.set()
            sampler.join(5)
            samples.append((time.monotonic() - t0, n, common.rss_mib(op.pid)))
            rss_end = common.rss_mib(op.pid)
        finally:
            stop.set()
            op.stop()
            watcher.stop()

    warm = samples[len(samples) // 5:]
    xs = [s[1] / 1000 for s in warm]
    ys = [s[2] for s in warm]
    k, noise = common.slope(xs, ys)
    span = (xs[-1] - xs[0]) if xs else 0.0
    growth = k * span
    flat = abs(growth) <= 2 * noise + 1.0
    scale = json.loads((RESULTS / "scale.json").read_text()) if (RESULTS / "scale.json").exists() else {}
    rows = [
        ["RSS idle after start (median of 11 samples), MiB", rss_idle],
        ["CPU idle after start (10 s), % of a core", cpu_idle],
        ["promotions churned (create, promote, delete)", n],
        ["churn duration, min", args.minutes],
        [f"cycle time p50 / p95, s (batch of {args.batch})",
         f"{common.pct(cycle_times, 50):.2f} / {common.pct(cycle_times, 95):.2f}"],
        ["RSS first / last / max sample, MiB",
         f"{samples[0][2]:.1f} / {rss_end:.1f} / {max(s[2] for s in samples):.1f}" if samples else "-"],
        ["slope after warm-up, MiB per 1000 promotions", k],
        ["residual noise (std), MiB", noise],
        ["predicted growth over measured span, MiB", growth],
        ["flat (growth <= 2 std + 1 MiB)", "yes" if flat else "NO"],
    ]
    if scale:
        rows.append(["RSS after 1000 promotions at once (scale.json), MiB", scale.get("rss_after_mib")])
        rows.append(["RSS peak during 1000 at once (scale.json), MiB", scale.get("rss_peak_mib")])
    res.tables.append(common.table("memory: operator RSS (noisy shared machine)", ["measure", "value"], rows))
    step = max(1, len(samples) // 12)
    res.tables.append(common.table("memory: RSS samples during churn", ["minute", "promotions", "RSS MiB"],
                                   [[s[0] / 60, s[1], s[2]] for s in samples[::step]]))
    res.data.update({"rss_idle_mib": rss_idle, "cpu_idle_percent": cpu_idle, "promotions": n,
                     "minutes": args.minutes, "samples": samples, "slope_mib_per_1000": k, "noise_mib": noise,
                     "growth_mib": growth, "flat": flat, "cycle_times": cycle_times, "rss_end_mib": rss_end,
                     "scale_rss_after_mib": scale.get("rss_after_mib"),
                     "scale_rss_peak_mib": scale.get("rss_peak_mib")})
    res.target("RSS idle after start", rss_idle, 100, "MiB")
    res.target("churn growth over span (flat: <= 2 std + 1)", abs(growth), 2 * noise + 1.0, "MiB")
    res.write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
