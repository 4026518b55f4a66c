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
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "operator"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from devstack import stack  # noqa: E402

RESULTS = REPO / "bench" / "results"
# The operator runs with the runtime dependencies alone, as in the image (`make bench` creates
# .venv-operator); without it, with this interpreter (the dev venv: the tests' kubernetes
# client is installed there, and kopf imports it, ~20 MiB more).
OPERATOR_PYTHON = str(REPO / ".venv-operator" / "bin" / "python") \
    if (REPO / ".venv-operator" / ".installed").exists() else sys.executable
CRD = REPO / "crds" / "modelpromotions.mlops.dev.yaml"
STORAGE_SECRET = "minio-credentials"
OPERATOR_USER = "promoter-bench"  # the operator's client-certificate CN: its rows in the audit log
DRIVER_AGENT = "bench-driver"  # user agent of the benchmark's own API calls
GROUP, VERSION, PLURAL = "mlops.dev", "v1alpha1", "modelpromotions"
SELDON = ("machinelearning.seldon.io", "v1", "seldondeployments")
TERMINAL = ("Promoted", "Superseded", "Rejected", "Failed")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
        state.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
        state.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/modelpromotions.mlops.dev")
        yield state
    finally:
        log("devstack: stopping")
        stack.down(home, log=lambda m: None)
        if keep:
            log(f"devstack: kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def namespace(state: stack.State, name: str) -> str:
    state.kubectl("create", "namespace", name)
    state.kubectl("-n", name, "create", "secret", "generic", STORAGE_SECRET,
                  f"--from-literal=AWS_ACCESS_KEY_ID={state.s3_access_key}",
                  f"--from-literal=AWS_SECRET_ACCESS_KEY={state.s3_secret_key}")
    return name


def operator_kubeconfig(state: stack.State, user: str = OPERATOR_USER) -> Path:
    """A kubeconfig for a client certificate of its own (O=system:masters), signed by devstack's
    client CA, so the audit log tells the operator's requests from the benchmark's."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    certs = Path(state.home) / "certs"
    ca_cert = x509.load_pem_x509_certificate((certs / "client-ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "client-ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user),
                                 x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    cfg = json.loads(Path(state.kubeconfig).read_text())
    cfg["users"] = [{"name": user, "user": {
        "client-certificate-data": base64.b64encode(cert.public_bytes(serialization.Encoding.PEM)).decode(),
        "client-key-data": base64.b64encode(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())).decode()}}]
    cfg["contexts"][0]["context"]["user"] = user
    path = Path(state.home) / f"kubeconfig-{user}"
    path.write_text(json.dumps(cfg))
    path.chmod(0o600)
    return path


def kube_client(state: stack.State, pool: int = 32) -> Any:
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=state.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = pool
    api = client.ApiClient(cfg)
    api.user_agent = DRIVER_AGENT
    return api


def log_runs(state: stack.State, count: int, extra_bytes: int, experiment: str = "bench") -> list[str]:
    """Log ``count`` finished MLflow-2-layout runs (rmse 0.5), each model folder holding an extra
    file of ``extra_bytes`` random bytes; returns their ids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(state.env())
    env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
                "GIT_PYTHON_REFRESH": "quiet"})
    out = subprocess.run([sys.executable, str(REPO / "bench" / "log_runs.py"), "--count", str(count),
                          "--extra-bytes", str(extra_bytes), "--experiment", experiment],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"logging runs failed:\n{out.stderr[-3000:]}")
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def promotion(name: str, run_id: str, deployment: str, prefix: str = "rf-regressor",
              secret_name: str = "seldon-rclone-secret") -> dict[str, Any]:
    """A promotion the operator carries out in full and devstack's Seldon double does not serve
    (MLFLOW_SERVER with protocol seldon: state Failed, no Deployment, no Pod): these benchmarks
    measure the promotion path up to the SeldonDeployment write; serving.py measures serving."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelPromotion",
        "metadata": {"name": name},
        "spec": {
            "source": {"runId": run_id, "modelName": "rf-regressor"},
            "gates": [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8}],
            "target": {
                "storage": {"bucket": "models", "prefix": prefix},
                "seldonDeployment": {"name": deployment, "implementation": "MLFLOW_SERVER",
                                     "protocol": "seldon", "secretName": secret_name},
            },
        },
    }


# --- the operator ---------------------------------------------------------------------


class Operator:
    """`python -m kopf run -m promoter.handlers --standalone --all-namespaces`, as
    tests/integration/conftest.py runs it, under the benchmark's own client certificate."""

    def __init__(self, state: stack.State, log_path: Path, extra_env: dict[str, str] | None = None,
                 verbose: bool = False, module: str = "promoter.handlers") -> None:
        self.state, self.log = state, log_path
        self.module = module
        self.metrics_port = stack.free_port()
        self.verbose = verbose
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "AWS_", "MLFLOW_"))},
            "KUBECONFIG": str(operator_kubeconfig(state)),
            "PROMOTER_TRACKING_URI": state.mlflow_uri,
            "PROMOTER_STORAGE_ENDPOINT": state.s3_endpoint,
            "PROMOTER_STORAGE_SECRET": STORAGE_SECRET,
            "PROMOTER_METRICS_PORT": str(self.metrics_port),
            "PYTHONPATH": f"{REPO / 'operator'}:{REPO / 'bench' / 'experiments'}",
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wrap: list[str] | None = None) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        argv = [OPERATOR_PYTHON, "-m", "kopf", "run", "-m", self.module, "--standalone", "--all-namespaces"]
        if self.verbose:
            argv.append("--verbose")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen((wrap or []) + argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO)
        self.started_at = time.monotonic()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited at start:\n{self.log.read_text()[-3000:]}")
            if "settings: tracking" in self.since_start():
                return
            time.sleep(0.1)
        raise RuntimeError(f"operator not started after 90s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def since_start(self) -> str:
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus metrics, name{labels} -> value."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[key] = float(value)
        return out

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def stack_cpu(state: stack.State) -> dict[str, float]:
    """CPU seconds used so far by each devstack server (its whole process group)."""
    out: dict[str, float] = {}
    for proc in state.processes:
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == proc.pid:
                    total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, ValueError, IndexError):
                continue
        out[proc.name] = total
    return out


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


class Audit:
    """kube-apiserver's audit log (devstack writes it at level Metadata, one JSON line per stage)."""

    def __init__(self, state: stack.State) -> None:
        self.path = Path(getattr(state, "audit_log", Path(state.home) / "logs" / "audit.log"))

    @property
    def available(self) -> bool:
        return self.path.exists()

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def requests(self, start: int, end: int | None = None, user: str = OPERATOR_USER) -> list[dict[str, Any]]:
        """One record per request of ``user`` completed between two marks."""
        out = []
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        for line in data.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("stage") not in ("ResponseComplete", "Panic"):
                continue
            if (ev.get("user") or {}).get("username") != user:
                continue
            ref = ev.get("objectRef") or {}
            out.append({"verb": ev.get("verb", ""), "resource": ref.get("resource", ""),
                        "subresource": ref.get("subresource", ""), "namespace": ref.get("namespace", ""),
                        "name": ref.get("name", ""), "code": (ev.get("responseStatus") or {}).get("code"),
                        "agent": (ev.get("userAgent") or "").split("/")[0]})
        return out


def tally(reqs: list[dict[str, Any]]) -> dict[str, int]:
    """'verb resource[/sub] (agent)' -> count, largest first."""
    counts: dict[str, int] = {}
    for r in reqs:
        res = r["resource"] + (f"/{r['subresource']}" if r["subresource"] else "")
        key = f"{r['verb']} {res} ({r['agent']})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def writes(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in reqs if r["verb"] in WRITE_VERBS]


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
