"""A small JSON client of the Kubernetes API for devstack's own components (the node, the Seldon
test double): plain dicts in and out, list-then-watch loops that resume from the last
resourceVersion and list again when the API says it is too old (410).

The connection (server, client certificate, CA) comes from the kubernetes client's kubeconfig
loader; requests go through its urllib3 pool. Plain dicts rather than the generated models keep
the objects as ``kubectl get -o json`` shows them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import kubernetes.config
import urllib3

Obj = dict[str, Any]


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        try:
            message = json.loads(body).get("message", body)
        except ValueError:
            message = body
        super().__init__(f"{method} {path}: {status} {message}")
        self.status, self.message = status, message


class Kube:
    def __init__(self, kubeconfig: str, user_agent: str) -> None:
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        self.host = client.configuration.host.rstrip("/")
        self.pool: urllib3.PoolManager = client.rest_client.pool_manager
        self.user_agent = user_agent

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", timeout: float = 30) -> Obj:
        url = self.host + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self.pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False)
        text = resp.data.decode(errors="replace")
        if resp.status >= 400:
            raise ApiError(resp.status, method, path, text)
        return json.loads(text) if text else {}

    def get(self, path: str, **query: Any) -> Obj | None:
        try:
            return self.request("GET", path, query=query or None)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def post(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def put(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Obj, strategic: bool = False) -> Obj:
        kind = "application/strategic-merge-patch+json" if strategic else "application/merge-patch+json"
        return self.request("PATCH", path, body, content_type=kind)

    def delete(self, path: str, body: Obj | None = None) -> Obj | None:
        try:
            return self.request("DELETE", path, body)
        except ApiError as e:
            if e.status in (404, 409):  # gone already, or a precondition (uid) no longer holds
                return None
            raise

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 240, **query: Any) -> Iterator[Obj]:
        """Watch events ({type, object}) from resource_version until the server ends the watch."""
        params = {**query, "watch": "true", "resourceVersion": resource_version,
                  "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        url = f"{self.host}{path}?{urlencode(params)}"
        resp = self.pool.request("GET", url, headers={"Accept": "application/json", "User-Agent": self.user_agent},
                                 preload_content=False, retries=False,
                                 timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30))
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", path, resp.data.decode(errors="replace"))
            buffer = b""
            for chunk in resp.stream(64 * 1024, decode_content=True):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def informer(kube: Kube, path: str, on_list: Callable[[list[Obj]], None],
             on_event: Callable[[str, Obj], None], stop: threading.Event, log: Callable[[str], None],
             **query: Any) -> None:
    """List, hand the items over, then watch and hand over each event; again on any error."""
    while not stop.is_set():
        try:
            listed = kube.request("GET", path, query=query or None)
            on_list(listed.get("items", []))
            version = listed["metadata"]["resourceVersion"]
            while not stop.is_set():
                for event in kube.watch(path, version, **query):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code", 500)), "WATCH", path, json.dumps(obj))
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        on_event(kind, obj)
                    if stop.is_set():
                        return
        except ApiError as e:
            if e.status != 410:
                log(f"watch {path}: {e}; listing again in 1s")
                time.sleep(1)
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            if stop.is_set():
                return
            log(f"watch {path}: {type(e).__name__}: {e}; listing again in 1s")
            time.sleep(1)
