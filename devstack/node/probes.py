"""Readiness, liveness and startup probes, probed for real: httpGet against the Pod IP, tcpSocket,
exec in the container's environment. The kubelet's rules: nothing before initialDelaySeconds,
then one probe per periodSeconds, each bounded by timeoutSeconds; the result flips after
successThreshold successes or failureThreshold failures in a row. Readiness starts as failed,
liveness and startup as passed (a container is not killed before its first failures).
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


def port_number(port: Any, ports: Sequence[Obj]) -> int:
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for item in ports:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def probe_once(spec: Obj, pod_ip: str, ports: Sequence[Obj], env: Mapping[str, str], cwd: str) -> tuple[bool, str]:
    """(passed, what failed) for one probe of spec."""
    timeout = float(spec.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in spec:
            get = spec["httpGet"]
            host, port = get.get("host") or pod_ip, port_number(get["port"], ports)
            conn: http.client.HTTPConnection
            if get.get("scheme", "HTTP").upper() == "HTTPS":
                conn = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                   context=ssl._create_unverified_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                conn.request("GET", get.get("path") or "/", headers={"User-Agent": "kube-probe/1.36", **headers})
                status = conn.getresponse().status
            finally:
                conn.close()
            if 200 <= status < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {status}"
        if "tcpSocket" in spec:
            tcp = spec["tcpSocket"]
            with socket.create_connection((tcp.get("host") or pod_ip, port_number(tcp["port"], ports)), timeout):
                return True, ""
        if "exec" in spec:
            result = subprocess.run(spec["exec"]["command"], env=dict(env), cwd=cwd, capture_output=True,
                                    timeout=timeout)
            if result.returncode == 0:
                return True, ""
            return False, f"command exited {result.returncode}: {result.stdout[-200:]!r}"
        return False, f"probe kind {', '.join(spec)} is not supported by devstack's node"
    except (OSError, ValueError, subprocess.TimeoutExpired, http.client.HTTPException) as e:
        return False, f"{type(e).__name__}: {e}"


@dataclass
class Prober:
    spec: Obj
    passed: bool  # the current result
    started: float  # when the container started
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    last_error: str = ""

    @classmethod
    def for_container(cls, spec: Obj | None, kind: str, started: float) -> Prober | None:
        if not spec:
            return None
        return cls(spec, passed=kind != "readiness", started=started,
                   next_at=started + float(spec.get("initialDelaySeconds") or 0))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, error: str, now: float) -> bool:
        """Count one result; True when the probe's result changed."""
        self.next_at = now + float(self.spec.get("periodSeconds") or 10)
        before = self.passed
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= int(self.spec.get("successThreshold") or 1):
                self.passed = True
        else:
            self.successes, self.failures, self.last_error = 0, self.failures + 1, error
            if self.failures >= int(self.spec.get("failureThreshold") or 3):
                self.passed = False
        return self.passed != before

