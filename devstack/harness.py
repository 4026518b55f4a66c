"""What the tests, the benchmarks and the demo share on a devstack: the operator as a process of
its own, namespaces with their storage Secret, the promotion builder, the MLflow client
environment, a kubeconfig of its own for an identity, the audit-log reader, and /proc readings
of a process or a process group.

The operator runs as ``kopf run -m promoter.handlers --standalone``, as ``make run`` and the
image run it. Several may share one devstack: each has a scope (``PROMOTER_SCOPE``), and a
promotion built with the same ``scope`` is handled by that operator alone.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import stack

REPO = stack.REPO
CRD = REPO / "crds" / "modelpromotions.mlops.dev.yaml"
STORAGE_SECRET = "minio-credentials"
SCOPE_LABEL = "mlops.dev/scope"
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
CLK_TCK = os.sysconf("SC_CLK_TCK")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")


def install_crd(state: stack.State) -> None:
    state.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    state.kubectl("wait", "--for=condition=established", "--timeout=60s", "crd/modelpromotions.mlops.dev")


def namespace(state: stack.State, name: str | None = None, prefix: str = "t", storage_secret: bool = True) -> str:
    """A namespace (fresh when ``name`` is None) with the storage Secret the operator's default
    names, holding devstack's S3 keys."""
    name = name or f"{prefix}-{uuid.uuid4().hex[:8]}"
    state.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
    if storage_secret:
        secret = state.kubectl("-n", name, "create", "secret", "generic", STORAGE_SECRET,
                               f"--from-literal=AWS_ACCESS_KEY_ID={state.s3_access_key}",
                               f"--from-literal=AWS_SECRET_ACCESS_KEY={state.s3_secret_key}",
                               "--dry-run=client", "-o", "json").stdout
        state.kubectl("-n", name, "apply", "-f", "-", input=secret)
    return name


def delete_namespace(state: stack.State, name: str) -> None:
    """Start deleting a namespace a test or benchmark is done with, without waiting: the
    controller-manager finishes it, and garbage collection stops the Pods (MLServers) its
    SeldonDeployments made, which frees devstack's node for what comes next."""
    state.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def promotion(name: str, run_id: str, gates: list[dict[str, Any]] | None = None,
              deployment: str = "minio-sklearn", prefix: str = "rf-regressor",
              secret_name: str = "seldon-rclone-secret", scope: str | None = None, replicas: int = 0,
              **source: Any) -> dict[str, Any]:
    """A ModelPromotion of ``run_id``'s rf-regressor onto ``deployment`` (MLServer, protocol v2).

    ``replicas`` is 0 unless a test serves the model: such a promotion is verified on the rollout
    of a Deployment scaled to zero (no Pod, so no smoke test), and takes none of the node's Pod
    slots; the serving tests, the demo and the benchmarks of serving ask for 1."""
    metadata: dict[str, Any] = {"name": name}
    if scope:
        metadata["labels"] = {SCOPE_LABEL: scope}
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "ModelPromotion",
        "metadata": metadata,
        "spec": {
            "source": {"runId": run_id, "modelName": "rf-regressor", **source},
            "gates": gates if gates is not None else [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 70}],
            "target": {
                "storage": {"bucket": "models", "prefix": prefix},
                "seldonDeployment": {"name": deployment, "implementation": "SKLEARN_SERVER", "protocol": "v2",
                                     "secretName": secret_name, "replicas": replicas},
            },
        },
    }


def mlflow_env(state: stack.State) -> dict[str, str]:
    """The environment an MLflow client (experiments/train.py) needs to log to this devstack,
    without the caller's own MLflow and AWS settings, and with retries off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env.update(state.env())
    env.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
                "GIT_PYTHON_REFRESH": "quiet"})
    return env


def train(state: stack.State, seed: int = 42, n_estimators: int | None = None, experiment: str | None = None,
          log: Path | None = None, timeout: float = 600, max_depth: int | None = None) -> tuple[str, dict[str, float]]:
    """experiments/train.py as a user runs it: the run id and the metrics it printed."""
    argv = [sys.executable, str(REPO / "experiments" / "train.py"), "--seed", str(seed)]
    if n_estimators:
        argv += ["--n-estimators", str(n_estimators)]
    if max_depth:
        argv += ["--max-depth", str(max_depth)]
    if experiment:
        argv += ["--experiment", experiment]
    with open(log, "w") if log else contextlib.nullcontext() as err:
        out = subprocess.run(argv, env=mlflow_env(state), stdout=subprocess.PIPE,
                             stderr=err if err else subprocess.PIPE, text=True, timeout=timeout)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines or not RUN_ID.match(lines[-1]):
        detail = f"see {log}" if log else (out.stderr or "")[-2000:]
        raise RuntimeError(f"experiments/train.py exited {out.returncode}: {detail}")
    metrics = dict(kv.split("=") for kv in lines[-2].split()) if len(lines) > 1 else {}
    return lines[-1], {k: float(v) for k, v in metrics.items()}


def kubeconfig_for(state: stack.State, user: str, groups: Iterable[str] = ("system:masters",)) -> Path:
    """A kubeconfig for a client certificate of its own (CN ``user``, O ``groups``) signed by
    devstack's client CA, so the audit log tells that identity's requests from everyone else's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    certs = Path(state.home) / "certs"
    ca_cert = x509.load_pem_x509_certificate((certs / "client-ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "client-ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    names += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
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


# --- the operator ---------------------------------------------------------------------------


class Operator:
    """``python -m kopf run -m promoter.handlers --standalone`` against a devstack.

    ``namespaces`` None watches all of them; ``scope`` sets PROMOTER_SCOPE; ``kubeconfig``
    logs it in as another identity; ``python`` picks the interpreter (the benchmarks run it
    with the runtime dependencies alone); ``detached`` starts it in a session of its own that
    ``devstack down`` stops with the rest (the demo's operator outlives the demo)."""

    def __init__(self, state: stack.State, log: Path, env: Mapping[str, str] | None = None,
                 namespaces: list[str] | None = None, scope: str | None = None,
                 kubeconfig: Path | str | None = None, python: str = sys.executable,
                 module: str = "promoter.handlers", verbose: bool = True, detached: bool = False) -> None:
        self.state = state
        # a detached operator logs where devstack keeps every server's log
        self.log = Path(state.home) / "logs" / "operator.log" if detached else Path(log)
        self.namespaces, self.module, self.python = namespaces, module, python
        self.verbose, self.detached = verbose, detached
        self.metrics_port = stack.free_port()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PROMOTER_", "AWS_", "MLFLOW_"))},
            "KUBECONFIG": str(kubeconfig or state.kubeconfig),
            "PROMOTER_TRACKING_URI": state.mlflow_uri,
            "PROMOTER_STORAGE_ENDPOINT": state.s3_endpoint,
            "PROMOTER_STORAGE_SECRET": STORAGE_SECRET,
            "PROMOTER_METRICS_PORT": str(self.metrics_port),
            "PROMOTER_RETRY_DELAY": "1",
            "PYTHONPATH": str(REPO / "operator"),
            **({"PROMOTER_SCOPE": scope} if scope else {}),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.detached_proc: stack.Proc | None = None
        self.offset = 0
        self.started_at = 0.0

    @property
    def argv(self) -> list[str]:
        where = [f"--namespace={ns}" for ns in self.namespaces] if self.namespaces else ["--all-namespaces"]
        return [self.python, "-m", "kopf", "run", "-m", self.module, "--standalone", *where,
                *(["--verbose"] if self.verbose else [])]

    @property
    def pid(self) -> int:
        if self.detached_proc is not None:
            return self.detached_proc.pid
        assert self.proc is not None, "the operator is not running"
        return self.proc.pid

    def start(self, wrap: list[str] | None = None, timeout: float = 90) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if self.detached:
            self.detached_proc = stack.spawn(Path(self.state.home), "operator", (wrap or []) + self.argv, self.env)
            self.state.processes.append(self.detached_proc)
            self.state.save()
        else:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen((wrap or []) + self.argv, env=self.env, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=REPO)
        self.started_at = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"operator exited at start:\n{self.text()[-3000:]}")
            if "settings: tracking" in self.since_start():
                return
            time.sleep(0.1)
        raise RuntimeError(f"operator not started after {timeout:.0f}s:\n{self.text()[-3000:]}")

    def alive(self) -> bool:
        if self.detached_proc is not None:
            return not stack.exited(self.detached_proc)
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGINT, as kopf expects for a clean exit (its watches end, the audit log completes)."""
        if self.detached_proc is not None:
            stack.stop(self.detached_proc, grace=timeout)
            self.detached_proc = None
            return
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def wait_dead(self, timeout: float) -> int:
        """Wait for the process to end by itself (a crash point); its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def since_start(self) -> str:
        """The log of the current process only."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def invocations(self, namespace: str, name: str, handler: str = "reconcile") -> list[float]:
        """Times (epoch seconds) at which kopf invoked the handler for one object, whole log."""
        pattern = re.compile(rf"^\[(\S+ \S+)\] .*\[{re.escape(namespace)}/{re.escape(name)}\] "
                             rf"Handler '{re.escape(handler)}' is invoked", re.M)
        return [_log_time(m.group(1)) for m in pattern.finditer(self.text())]

    def tracebacks(self) -> int:
        return self.text().count("Traceback (most recent call last)")

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


def _log_time(stamp: str) -> float:
    day, _, millis = stamp.partition(",")
    return time.mktime(time.strptime(day, "%Y-%m-%d %H:%M:%S")) + int(millis or 0) / 1000


# --- the audit log --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request as kube-apiserver's audit log has it (level Metadata: no bodies)."""

    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str
    name: str
    code: int
    agent: str
    uri: str

    @property
    def qualified(self) -> str:
        """resource[/subresource], as RBAC rules name it."""
        return self.resource + (f"/{self.subresource}" if self.subresource else "")


class Audit:
    """kube-apiserver's audit log, read between marks (byte offsets)."""

    def __init__(self, state: stack.State) -> None:
        self.path = Path(state.audit_log)

    @property
    def available(self) -> bool:
        return self.path.exists()

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def requests(self, start: int = 0, end: int | None = None, user: str | None = None) -> list[Request]:
        """One record per request (by audit ID: a watch's ResponseComplete replaces its
        ResponseStarted) of ``user`` (everyone's when None) between two marks."""
        with open(self.path, "rb") as f:
            f.seek(start)
            data = f.read() if end is None else f.read(end - start)
        seen: dict[str, Request] = {}
        for line in data.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if user is not None and (ev.get("user") or {}).get("username") != user:
                continue
            ref = ev.get("objectRef") or {}
            seen[str(ev.get("auditID"))] = Request(
                ev.get("verb", ""), ref.get("apiGroup", ""), ref.get("resource", ""), ref.get("subresource", ""),
                ref.get("namespace", ""), ref.get("name", ""), int((ev.get("responseStatus") or {}).get("code") or 0),
                (ev.get("userAgent") or "").split("/")[0], ev.get("requestURI", ""))
        return list(seen.values())


def tally(reqs: Iterable[Request]) -> dict[str, int]:
    """'verb resource[/sub] (agent)' -> count, largest first."""
    counts: dict[str, int] = {}
    for r in reqs:
        key = f"{r.verb} {r.qualified} ({r.agent})"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def writes(reqs: Iterable[Request]) -> list[Request]:
    return [r for r in reqs if r.verb in WRITE_VERBS]


# --- /proc ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def hwm_mib(pid: int) -> float:
    return _status_kib(pid, "VmHWM") / 1024


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def group(pgid: int) -> list[int]:
    """The pids of a process group (a devstack server and what it forked)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat(int(entry.name))[2]) == pgid:
                    pids.append(int(entry.name))
    return pids


def group_rss_kib(pgid: int) -> int:
    total = 0
    for pid in group(pgid):
        with contextlib.suppress(OSError, ValueError):
            total += _status_kib(pid, "VmRSS")
    return total


def group_cpu_seconds(pgid: int) -> float:
    total = 0.0
    for pid in group(pgid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(pid)
    return total


__all__ = ["CRD", "SCOPE_LABEL", "STORAGE_SECRET", "Audit", "Operator", "Request", "cpu_seconds", "delete_namespace",
           "group",
           "group_cpu_seconds", "group_rss_kib", "hwm_mib", "install_crd", "kubeconfig_for", "mlflow_env",
           "namespace", "promotion", "rss_mib", "tally", "train", "writes"]
