"""tests/e2e/run_kind.sh's helpers, sourced into bash with stand-ins for kubectl and kind on PATH,
and test_kind.py's step runner with a stand-in for run_kind.sh.

The stand-in kubectl does what `kubectl port-forward svc/NAME [LOCAL]:REMOTE --address 127.0.0.1`
does as a process: one process, listening on LOCAL or a port it picks, printing client-go's "Forwarding from
127.0.0.1:<port> -> <remote>", ended by SIGTERM. Each records its pid, so a test can check that no
forward outlives the script. RUN_KIND_BASH picks the bash (e.g. a 3.2 build, as macOS has).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "e2e" / "run_kind.sh"
BASH = os.environ.get("RUN_KIND_BASH", "bash")

KUBECTL = """\
import os, re, signal, socket, sys

args = sys.argv[1:]
mode = os.environ.get("STUB_MODE", "answer")
if "secret" in args:  # get secret NAME -o jsonpath={.data.KEY}
    sys.stdout.write(os.environ.get("STUB_SECRET_B64", ""))
    sys.exit(int(os.environ.get("STUB_SECRET_RC", "0")))
if "port-forward" not in args:
    sys.exit("stand-in kubectl: only port-forward and get secret")
open(os.path.join(os.environ["STUB_PIDS"], str(os.getpid())), "w").close()
service = next(a for a in args if a.startswith("svc/"))
local, remote = next(a for a in args if re.fullmatch(r"[0-9]*:[0-9]+", a)).split(":")
if mode == "fail":
    sys.exit(f'error: services "{service[4:]}" not found')
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
server = socket.create_server(("127.0.0.1", int(local or 0)))
print(f"Forwarding from 127.0.0.1:{server.getsockname()[1]} -> {remote}", flush=True)
held = []
while True:
    conn, _ = server.accept()
    if mode == "hang":
        held.append(conn)  # accepted, never answered
        continue
    conn.recv(65536)
    body = f"{service}:{remote}".encode()
    conn.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
    conn.close()
"""

# A kind whose cluster list goes on after the name, a line per write, and that dies of SIGPIPE as
# a Go program does: `kind get clusters | grep -qx` would end it so, and pipefail would turn the
# match into a failure.
KIND = """\
import signal, sys

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
if sys.argv[1:] != ["get", "clusters"]:
    sys.exit("stand-in kind: only get clusters")
for name in ["promoter-e2e", *(f"other-{i}" for i in range(100_000))]:
    print(name, flush=True)
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("kubectl", KUBECTL), ("kind", KIND)):
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)
    (tmp_path / "pids").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def env_for(stubs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2E_", "STUB_")) and "proxy" not in k.lower()}
    env.update(PATH=f"{stubs / 'bin'}{os.pathsep}{env['PATH']}", STUB_PIDS=str(stubs / "pids"),
               TMPDIR=str(stubs / "tmp"), E2E_FORWARD_TIMEOUT="20")
    return env | extra


def source_and_run(stubs: Path, body: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    script = f'source "{SCRIPT}"\n{textwrap.dedent(body)}'
    return subprocess.run([BASH, "-c", script], env=env_for(stubs, **env), capture_output=True, text=True,
                          timeout=timeout)


def forward_pids(stubs: Path) -> list[int]:
    return sorted(int(p.name) for p in (stubs / "pids").iterdir())


def gone(pid: int, within: float = 5.0) -> bool:
    """No such process, or a zombie (it runs nothing and holds no port) waiting to be reaped."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def value(out: str, name: str) -> str:
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith(f"{name}="))


def test_two_forwards_answer_on_their_ports_and_neither_outlives_the_script(stubs: Path) -> None:
    proc = source_and_run(stubs, """
        forward mlflow mlflow 5000
        echo "MLFLOW=${PORT}"
        forward minio-system minio 9000
        echo "MINIO=${PORT}"
        echo "FORWARDS=${FORWARDS[*]}"
        echo "ANSWER=$(curl -s "http://127.0.0.1:${PORT}/")"
    """)
    assert proc.returncode == 0, proc.stderr
    ports = [int(value(proc.stdout, "MLFLOW")), int(value(proc.stdout, "MINIO"))]
    assert ports[0] != ports[1]
    assert value(proc.stdout, "ANSWER") == "svc/minio:9000"
    pids = forward_pids(stubs)
    # the pids the script keeps are the kubectl processes themselves, not subshells around them
    assert sorted(int(p) for p in value(proc.stdout, "FORWARDS").split()) == pids and len(pids) == 2
    assert all(gone(pid) for pid in pids)
    assert all(refused(port) for port in ports)
    assert list((stubs / "tmp").iterdir()) == []  # the scratch folder went with them


def test_a_forward_that_accepts_but_never_answers_fails_within_its_timeout(stubs: Path) -> None:
    started = time.monotonic()
    proc = source_and_run(stubs, "forward mlflow mlflow 5000; echo unreachable", STUB_MODE="hang",
                          E2E_FORWARD_TIMEOUT="3")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1 and "unreachable" not in proc.stdout
    assert "port-forward to mlflow/svc/mlflow:5000 did not answer within 3s" in proc.stderr
    assert "Forwarding from 127.0.0.1:" in proc.stderr  # kubectl's own output, for the reader
    assert elapsed < 3 + 2 + 5  # the timeout, one curl --max-time, and the cleanup
    assert [gone(pid) for pid in forward_pids(stubs)] == [True]


def test_a_forward_whose_kubectl_exits_fails_at_once_with_kubectls_message(stubs: Path) -> None:
    started = time.monotonic()
    proc = source_and_run(stubs, "forward models rf-regressor-default 8000", STUB_MODE="fail")
    assert proc.returncode == 1
    assert time.monotonic() - started < 10  # not the 20 s E2E_FORWARD_TIMEOUT
    assert "port-forward to models/svc/rf-regressor-default:8000 exited:" in proc.stderr
    assert 'error: services "rf-regressor-default" not found' in proc.stderr


def test_a_forward_that_ignores_sigterm_is_killed_and_the_script_still_ends(stubs: Path) -> None:
    started = time.monotonic()
    proc = source_and_run(stubs, "forward mlflow mlflow 5000", STUB_MODE="stubborn")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 15  # 5 s of grace, then SIGKILL
    assert [gone(pid) for pid in forward_pids(stubs)] == [True]


def test_sigterm_to_the_script_alone_still_stops_its_forwards(stubs: Path) -> None:
    # `wait` returns at once on a trapped signal, as a step blocked in kubectl wait would after
    # pytest's timeout; the TERM goes to bash only, so only its trap can end the forward.
    script = f'source "{SCRIPT}"\nforward mlflow mlflow 5000\necho "PORT=${{PORT}}"\nsleep 300 &\nwait $!\n'
    proc = subprocess.Popen([BASH, "-c", script], env=env_for(stubs), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip().split("=", 1)[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 143
        assert [gone(pid) for pid in forward_pids(stubs)] == [True]
        assert refused(port)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the sleep, orphaned by design
        except ProcessLookupError:
            pass
        proc.communicate()


def test_stopping_no_forwards_works_under_set_u(stubs: Path) -> None:
    # bash 3.2 calls "${FORWARDS[@]}" of an empty array an unbound variable
    proc = source_and_run(stubs, 'stop_forwards; echo "stopped ${#FORWARDS[@]}"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "stopped 0"


def test_a_missing_secret_key_stops_the_script_with_its_name(stubs: Path) -> None:
    proc = source_and_run(stubs, 'user="$(secret_value minio-system minio-root rootUser)"; echo "user=${user}"',
                          STUB_SECRET_B64="")
    assert proc.returncode == 1
    assert "user=" not in proc.stdout
    assert "Secret minio-system/minio-root has no key rootUser" in proc.stderr


def test_a_failed_secret_read_stops_the_script(stubs: Path) -> None:
    proc = source_and_run(stubs, 'user="$(secret_value minio-system minio-root rootUser)"; echo "user=${user}"',
                          STUB_SECRET_B64="ZTJl", STUB_SECRET_RC="1")
    assert proc.returncode != 0 and "user=" not in proc.stdout


def test_a_secret_value_is_decoded(stubs: Path) -> None:
    proc = source_and_run(stubs, 'user="$(secret_value minio-system minio-root rootUser)"; echo "user=${user}"',
                          STUB_SECRET_B64="ZTJlLWFiY2Q=")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "user=e2e-abcd"


def test_a_cluster_listed_before_a_long_list_is_found_under_pipefail(stubs: Path) -> None:
    proc = source_and_run(stubs, """
        cluster_exists && echo "promoter-e2e: yes"
        CLUSTER=absent
        cluster_exists || echo "absent: no"
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["promoter-e2e: yes", "absent: no"]


def test_the_e2e_step_timeouts_fit_inside_ci_so_a_hang_still_gets_its_diagnostics() -> None:
    from tests.e2e.test_kind import STEP_TIMEOUTS

    job = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["e2e-kind"]
    steps = {s.get("name"): s for s in job["steps"]}
    longest = sum(STEP_TIMEOUTS.values())  # every step, one diagnose after a failure, down
    venv = 5 * 60  # make test-e2e installs .venv first
    assert longest + venv <= steps["make test-e2e"]["timeout-minutes"] * 60
    assert steps["Diagnostics"]["if"] == "failure()"
    setup = 5  # checkout, tools, the upload
    assert steps["make test-e2e"]["timeout-minutes"] + steps["Diagnostics"]["timeout-minutes"] + setup \
        <= job["timeout-minutes"]


def test_the_trainer_the_e2e_builds_for_its_server_is_a_variant_of_the_trainer_image(stubs: Path) -> None:
    proc = source_and_run(stubs, 'echo "${MLSERVER_IMAGE} ${SERVING}"')
    assert proc.stdout.split() == ["seldonio/mlserver:1.7.1-sklearn", "mlserver-1.7.1"]
    dockerfile = (ROOT / "experiments" / "Dockerfile").read_text().splitlines()
    stage = dockerfile.index("FROM python:3.10.19-slim-bookworm AS python-mlserver-1.7.1")
    requirements = dockerfile[stage + 1].removeprefix("ENV TRAINER_REQUIREMENTS=")
    pins = (ROOT / "experiments" / requirements).read_text().splitlines()
    assert {"scikit-learn==1.5.2", "numpy==1.26.4"} <= set(pins)  # the image's, per the README


STEPS = """\
#!/usr/bin/env bash
case "$1" in
    up) sleep 300 & echo $! > "$MARKS/child"; wait ;;
    train) echo "half a log"; exit 3 ;;
    diagnose) : > "$MARKS/diagnosed" ;;
esac
"""


@pytest.fixture
def steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from tests.e2e import test_kind

    script = tmp_path / "run_kind.sh"
    script.write_text(STEPS)
    script.chmod(0o755)
    monkeypatch.setattr(test_kind, "SCRIPT", script)
    monkeypatch.setitem(test_kind.STEP_TIMEOUTS, "up", 2)
    monkeypatch.setenv("MARKS", str(tmp_path))
    return tmp_path


def test_a_step_past_its_timeout_ends_with_everything_it_started_and_is_diagnosed(steps: Path) -> None:
    from tests.e2e.test_kind import step

    with pytest.raises(AssertionError, match="run_kind.sh up did not finish within 2 s"):
        step("up")
    assert gone(int((steps / "child").read_text()))  # the script's child, not the script alone
    assert (steps / "diagnosed").is_file()


def test_a_failed_step_is_diagnosed_and_reports_its_output(steps: Path) -> None:
    from tests.e2e.test_kind import step

    with pytest.raises(AssertionError, match="run_kind.sh train exited 3:\nhalf a log"):
        step("train")
    assert (steps / "diagnosed").is_file()
