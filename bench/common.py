"""What the benchmarks share: a devstack of their own, the operator as a subprocess under an
identity of its own, watches, RSS/CPU sampling, the audit log, statistics, tables and JSON.

Every benchmark is a plain script run from the repository top with the venv's Python
(``.venv/bin/python bench/latency.py``). Numbers on a shared machine are noisy: each script
measures its baseline in the same run, interleaved with the thing measured, and reports ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "operator"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from devstack import harness, stack  # noqa: E402

RESULTS = REPO / "bench" / "results"
# The operator runs with the runtime dependencies alone, as in the image (`make bench` creates
# .venv-operator); without it, with this interpreter (the dev venv: the tests' kubernetes
# client is installed there, and kopf imports it, ~20 MiB more).
OPERATOR_PYTHON = str(REPO / ".venv-operator" / "bin" / "python") \
    if (REPO / ".venv-operator" / ".installed").exists() else sys.executable
OPERATOR_USER = "promoter-bench"  # the operator's client-certificate CN: its rows in the audit log
DRIVER_AGENT = "bench-driver"  # user agent of the benchmark's own API calls
GROUP, VERSION, PLURAL = "mlops.dev", "v1alpha1", "modelpromotions"
SELDON = ("machinelearning.seldon.io", "v1", "seldondeployments")
TERMINAL = ("Promoted", "Superseded", "Rejected", "Failed")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sigterm_to_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# --- the stack ------------------------------------------------------------------------


@contextlib.contextmanager
def devstack(tag: str, keep: bool = bool(os.environ.get("BENCH_KEEP"))) -> Iterator[stack.State]:
    """A devstack in a fresh temporary DEVSTACK_HOME, stopped (and removed) at the end, failure or not."""
    _sigterm_to_interrupt()
    home = Path(tempfile.mkdtemp(prefix=f"bench-{tag}-"))
    log(f"devstack: starting in {home}")
    try:
        state = stack.up(home, log=lambda m: log(m))
        harness.install_crd(state)
        yield state
    finally:
        log("devstack: stopping")
        stack.down(home, log=lambda m: None)
        if keep:
            log(f"devstack: kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def namespace(state: stack.State, name: str) -> str:
    return harness.namespace(state, name)


def operator_kubeconfig(state: stack.State, user: str = OPERATOR_USER) -> Path:
    """A client certificate of the operator's own, so the audit log tells its requests apart."""
    return harness.kubeconfig_for(state, user)


def kube_client(state: stack.State, pool: int = 32) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=state.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    api = client.ApiClient(cfg)
    api.user_agent = DRIVER_AGENT
    return api


def log_runs(state: stack.State, count: int, extra_bytes: int, experiment: str = "bench",
             example: bool = False, garbage: bool = False) -> list[str]:
    """Log ``count`` finished MLflow-2-layout runs (rmse 0.5), each model folder holding an extra
    file of ``extra_bytes`` random bytes (with ``example``, its serving_input_example.json; with
    ``garbage``, a model.pkl that is not a pickle); returns their ids."""
    env = harness.mlflow_env(state)
    flags = [*(["--example"] if example else []), *(["--garbage"] if garbage else [])]
    out = subprocess.run([sys.executable, str(REPO / "bench" / "log_runs.py"), "--count", str(count),
                          "--extra-bytes", str(extra_bytes), "--experiment", experiment, *flags],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"logging runs failed:\n{out.stderr[-3000:]}")
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def promotion(name: str, run_id: str, deployment: str, prefix: str = "rf-regressor",
              secret_name: str = "seldon-rclone-secret", replicas: int = 0) -> dict[str, Any]:
    """A promotion the runs of log_runs.py (rmse 0.5) pass, carried out in full. With 0 replicas
    (the default) devstack's Seldon double makes a Deployment of no Pod, so the promotion is
    verified on that rollout alone (Verified reason NoReplicas) and no MLServer starts: the
    promotion path and its rollout check, without serving; ``replicas=1`` serves it."""
    return harness.promotion(name, run_id, [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8}],
                             deployment=deployment, prefix=prefix, secret_name=secret_name, replicas=replicas)


# --- the operator ---------------------------------------------------------------------


class Operator(harness.Operator):
    """The operator as the tests run it (devstack.harness), with the runtime dependencies alone
    (OPERATOR_PYTHON) and under the benchmark's own client certificate."""

    def __init__(self, state: stack.State, log_path: Path, extra_env: dict[str, str] | None = None,
                 verbose: bool = False, module: str = "promoter.handlers") -> None:
        env = {"PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'bench' / 'experiments'}",
               "PROMOTER_RETRY_DELAY": "10", **(extra_env or {})}
        super().__init__(state, log_path, env, kubeconfig=operator_kubeconfig(state), python=OPERATOR_PYTHON,
                         module=module, verbose=verbose)


rss_mib, hwm_mib, cpu_seconds = harness.rss_mib, harness.hwm_mib, harness.cpu_seconds


def stack_cpu(state: stack.State) -> dict[str, float]:
    """CPU seconds used so far by each devstack server (its whole process group)."""
    return {proc.name: harness.group_cpu_seconds(proc.pid) for proc in state.processes}


def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core the process used over ``seconds``."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.peak = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                value = rss_mib(self.pid)
            except OSError:
                return
            self.samples.append((time.monotonic(), value))
            self.peak = max(self.peak, value)
            self._halt.wait(self.every)

    def stop(self) -> float:
        self._halt.set()
        self.join(5)
        return self.peak


# --- watches --------------------------------------------------------------------------


class Watcher(threading.Thread):
    """Keeps a cache of every object of a custom resource across namespaces and calls
    ``on_event(kind, obj, t)`` with the monotonic receive time of each watch event."""

    def __init__(self, api: Any, gvp: tuple[str, str, str],
                 on_event: Callable[[str, dict[str, Any], float], None] | None = None) -> None:
        super().__init__(daemon=True)
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api)
        self.gvp = gvp
        self.on_event = on_event
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.last_event = time.monotonic()
        self.events = 0
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        group, version, plural = self.gvp
        rv = ""
        while not self._stopping.is_set():
            try:
                if not rv:
                    listed = self.custom.list_cluster_custom_object(group, version, plural)
                    with self.lock:
                        self.cache = {(o["metadata"]["namespace"], o["metadata"]["name"]): o
                                      for o in listed.get("items", [])}
                    rv = listed["metadata"]["resourceVersion"]
                    self.ready.set()
                w = watch.Watch()
                for ev in w.stream(self.custom.list_cluster_custom_object, group, version, plural,
                                   resource_version=rv, timeout_seconds=5, allow_watch_bookmarks=True):
                    t = time.monotonic()
                    obj, kind = ev["object"], ev["type"]
                    if kind == "ERROR":
                        rv = ""
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if kind == "BOOKMARK":
                        continue
                    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                    with self.lock:
                        if kind == "DELETED":
                            self.cache.pop(key, None)
                        else:
                            self.cache[key] = obj
                        self.last_event = t
                        self.events += 1
                    if self.on_event:
                        self.on_event(kind, obj, t)
                    if self._stopping.is_set():
                        w.stop()
                        break
            except ApiException as e:
                if e.status == 410:
                    rv = ""
                    continue
                log(f"watch {plural}: {e.status} {e.reason}; retrying")
                time.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - a benchmark's watch keeps going
                if self._stopping.is_set():
                    return
                log(f"watch {plural}: {type(e).__name__}: {e}; retrying")
                time.sleep(0.5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.cache.values())

    def stop(self) -> None:
        self._stopping.set()
        self.join(10)


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


def settled(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return st.get("phase") in TERMINAL and st.get("observedGeneration") == obj["metadata"].get("generation")


# --- the audit log --------------------------------------------------------------------


class Audit(harness.Audit):
    """kube-apiserver's audit log; requests of the operator's identity unless told otherwise."""

    def requests(self, start: int = 0, end: int | None = None, user: str | None = OPERATOR_USER
                 ) -> list[harness.Request]:
        return super().requests(start, end, user)


tally, writes = harness.tally, harness.writes


# --- statistics, tables, results ------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """Percentile by linear interpolation (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "mean": statistics.fmean(values) if values else float("nan"),
            "min": min(values, default=float("nan")), "max": max(values, default=float("nan"))}


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys over xs, and the standard deviation of the residuals."""
    if len(xs) < 3:
        return float("nan"), float("nan")
    fit = statistics.linear_regression(xs, ys)
    resid = [y - (fit.slope * x + fit.intercept) for x, y in zip(xs, ys, strict=True)]
    return fit.slope, statistics.pstdev(resid)


def table(title: str, header: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = [title, "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              for r in cells]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "operator"], cwd=REPO, capture_output=True, text=True)
    return {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "host": platform.node(),
            "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "python": platform.python_version(),
            "git": rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else ""),
            "operator_python": os.path.relpath(OPERATOR_PYTHON, REPO)}


@dataclass
class Result:
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)

    def target(self, what: str, value: float, limit: float, unit: str = "", higher_is_better: bool = False) -> None:
        met = value >= limit if higher_is_better else value <= limit
        self.targets.append({"target": what, "value": value, "limit": limit, "unit": unit, "met": bool(met)})

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        self.data.setdefault("machine", machine())
        self.data["targets"] = self.targets
        path = RESULTS / f"{self.name}.json"
        path.write_text(json.dumps(self.data, indent=2, default=str))
        for t in self.tables:
            print(t + "\n", flush=True)
        if self.targets:
            print(table(f"{self.name}: targets", ["target", "value", "limit", "met"],
                        [[t["target"], f"{t['value']:.3g} {t['unit']}".strip(),
                          f"{t['limit']:.3g} {t['unit']}".strip(), "yes" if t["met"] else "NO"]
                         for t in self.targets]) + "\n", flush=True)
        print(f"results: {path}", flush=True)
        return path


# --- profiling (py-spy, installed into the venv by hand: not a project dependency) -----------


class Profiler:
    """``py-spy record`` attached to a running pid, raw (collapsed) stacks, active samples only."""

    def __init__(self, pid: int, path: Path, rate: int = 100) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc: subprocess.Popen[bytes] | None = None
        if not Path(exe).exists():
            log("py-spy not found: no profile (pip install py-spy into the venv)")
            return
        self.proc = subprocess.Popen([exe, "record", "-p", str(pid), "-o", str(path), "-f", "raw",
                                      "-r", str(rate), "--nonblocking"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> dict[str, Any]:
        if self.proc is None:
            return {}
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return attribute(self.path) if self.path.exists() else {}


def _package(frame: str) -> str:
    """The top-level package of a py-spy frame "function (pkg/mod.py:line)" (py-spy shortens
    paths to the importable module path); the standard library's are marked "stdlib"."""
    path = frame.rpartition("(")[2].rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1:]
    top = (parts[0] if parts else "?").removesuffix(".py").strip("<>").removeprefix("frozen ")
    if top == "promoter" or "/promoter/" in path:
        return "promoter"
    return f"stdlib {top}" if top in sys.stdlib_module_names else top


def _function(frame: str) -> str:
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})"


def attribute(raw: Path, top: int = 15) -> dict[str, Any]:
    """Where the active samples went: self time by package (the leaf frame's); inclusive time
    under our code (any promoter frame on the stack) and by the innermost promoter function on
    the stack (which of our calls the time was spent in, dependencies included); the hottest
    leaf functions."""
    self_by: dict[str, int] = {}
    leaf_fn: dict[str, int] = {}
    ours_fn: dict[str, int] = {}
    under_ours = total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack_, _, count_s = line.rpartition(" ")
        try:
            count = int(count_s)
        except ValueError:
            continue
        frames = [f for f in stack_.split(";") if "(" in f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        pkg = _package(leaf)
        self_by[pkg] = self_by.get(pkg, 0) + count
        key = f"{pkg}: {_function(leaf)}"
        leaf_fn[key] = leaf_fn.get(key, 0) + count
        ours = [f for f in frames if _package(f) == "promoter"]
        if ours:
            under_ours += count
            k = _function(ours[-1])
            ours_fn[k] = ours_fn.get(k, 0) + count

    def share(d: dict[str, int], n: int | None = None) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]]

    if not total:
        return {"samples": 0}
    return {"samples": total, "self_percent_by_package": dict(share(self_by)),
            "inclusive_percent_under_promoter": round(100 * under_ours / total, 1),
            "inclusive_percent_by_innermost_promoter_function": share(ours_fn, top),
            "hottest_leaves_percent": share(leaf_fn, top), "raw": str(raw)}


def profile_table(title: str, prof: dict[str, Any]) -> str:
    if not prof.get("samples"):
        return f"{title}: no samples"
    rows = [["self: " + k, v] for k, v in list(prof["self_percent_by_package"].items())[:10]]
    rows.append(["inclusive: any promoter frame on the stack", prof["inclusive_percent_under_promoter"]])
    rows += [["inclusive, innermost promoter fn: " + k, v]
             for k, v in prof["inclusive_percent_by_innermost_promoter_function"][:8]]
    return table(f"{title} ({prof['samples']} active samples, py-spy)", ["where", "%"], rows)


def add_experiment_args(parser: argparse.ArgumentParser) -> None:
    """The options every operator benchmark takes for experiments (bench/README.md)."""
    parser.add_argument("--operator-env", action="append", default=[], metavar="K=V",
                        help="extra environment for the operator (experiments: MALLOC_ARENA_MAX=2, PROMOTER_WORKERS=4)")
    parser.add_argument("--operator-module", default="promoter.handlers",
                        help="kopf -m module (experiments in bench/experiments/)")
    parser.add_argument("--tag", default="", help="write results/<name>-<tag>.json (experiments)")


def experiment(name: str, args: argparse.Namespace) -> tuple[Result, dict[str, str]]:
    """The result named by the benchmark and ``--tag``, and the ``--operator-env`` settings."""
    env = dict(kv.split("=", 1) for kv in getattr(args, "operator_env", []))
    return Result(name + (f"-{args.tag}" if args.tag else "")), env
