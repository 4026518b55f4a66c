"""What the fault suite injects faults with and records evidence by: its operators (one limited
to a namespace may carry a crash point), a server killed outright, a watcher that keeps
every version of the SeldonDeployments, and readers of the operator's log and the bucket."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from minio.error import S3Error

from devstack import stack
from devstack.harness import Operator

from .fault_specs import SCOPE
from .helpers import s3

SELDON = ("machinelearning.seldon.io", "v1", "seldondeployments")
MANIFEST = "promotion-manifest.json"


def fault_operator(devstack: stack.State, log: Path, namespaces: list[str] | None,
                   env: dict[str, str] | None = None) -> Operator:
    """The suite's operator: scope ``faults``, watching the namespaces given (None: all)."""
    return Operator(devstack, log, env, namespaces=namespaces, scope=SCOPE)


def kill_component(devstack: stack.State, name: str) -> None:
    """SIGKILL one server's whole process group: a crash, not a shutdown (weed takes ~30 s on SIGTERM)."""
    for proc in devstack.processes:
        if proc.name == name and stack.alive(proc):
            os.killpg(proc.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while stack.alive(proc) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not stack.alive(proc), f"{name} still runs after SIGKILL"


def api(devstack: stack.State, user_agent: str = "fault-suite") -> client.ApiClient:
    c = config.new_client_from_config(devstack.kubeconfig)  # type: ignore[no-untyped-call]
    c.user_agent = user_agent
    return c


def promoter_api(devstack: stack.State, user_agent: str) -> Any:
    """The operator's own API client (promoter.kube.Api), logged in with devstack's kubeconfig."""
    from unittest import mock

    from promoter.kube import Api, connection

    with mock.patch.dict(os.environ, {"KUBECONFIG": devstack.kubeconfig}):
        info = connection()
    return Api(lambda: info, user_agent=user_agent)


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def bucket_listing(devstack: stack.State, bucket: str = "models", prefix: str = "") -> dict[str, str]:
    """key -> ETag of every object under prefix."""
    return {str(o.object_name): str(o.etag) for o in s3(devstack).list_objects(bucket, prefix=prefix, recursive=True)}


def manifest_problems(devstack: stack.State, model_uri: str) -> list[str]:
    """What is wrong with the copy at model_uri: no manifest, or files that do not match it."""
    bucket, _, prefix = model_uri.removeprefix("s3://").partition("/")
    client_ = s3(devstack)
    try:
        response = client_.get_object(bucket, f"{prefix}/{MANIFEST}")
    except S3Error as e:
        return [f"{model_uri}: no manifest ({e.code})"]
    try:
        manifest = json.loads(response.read())
    finally:
        response.close()
        response.release_conn()
    problems = []
    for entry in manifest["files"]:
        data = client_.get_object(bucket, f"{prefix}/{entry['path']}")
        try:
            digest = hashlib.sha256(data.read()).hexdigest()
        finally:
            data.close()
            data.release_conn()
        if digest != entry["sha256"]:
            problems.append(f"{model_uri}/{entry['path']}: sha256 {digest} != manifest {entry['sha256']}")
    return problems


@dataclass
class Seen:
    """One version of a SeldonDeployment as the watch delivered it."""

    type: str
    resource_version: str
    model_uri: str
    promotion: str
    created: str
    manifest_at_event: bool  # the manifest existed when the event arrived
    at: float = field(default_factory=time.time)


class SeldonWatcher:
    """Records every version of the SeldonDeployments in a namespace, checking at each event
    that the prefix it points at already holds a manifest. The watch starts at the
    resourceVersion of a list made in ``start``, so no version is missed. A write of the status
    alone (Seldon's controller's, devstack's Seldon double's) is not a version of what was
    written: events that leave generation, labels and annotations as they were are skipped."""

    def __init__(self, devstack: stack.State, namespace: str) -> None:
        self.devstack, self.namespace = devstack, namespace
        self.custom = client.CustomObjectsApi(api(devstack, "fault-watcher"))
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rv = ""
        self._written: dict[str, Any] = {}  # name -> (generation, labels, annotations) last recorded

    def start(self) -> SeldonWatcher:
        group, version, plural = SELDON
        listed = self.custom.list_namespaced_custom_object(group, version, self.namespace, plural)
        for obj in listed.get("items", []):
            self._record("EXISTING", obj)
        self._rv = listed["metadata"]["resourceVersion"]
        self._thread.start()
        return self

    def stop(self) -> list[Seen]:
        self._stop.set()
        self._thread.join(10)
        return self.seen

    def _run(self) -> None:
        group, version, plural = SELDON
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.custom.list_namespaced_custom_object, group, version,
                                                  self.namespace, plural, resource_version=self._rv,
                                                  timeout_seconds=1, allow_watch_bookmarks=False):
                    obj = event["object"]
                    self._rv = obj["metadata"]["resourceVersion"]
                    self._record(event["type"], obj)
            except Exception as e:  # noqa: BLE001 - kept as evidence, the test asserts none
                self.errors.append(repr(e))
                time.sleep(0.2)

    def _record(self, type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata", {})
        written = (meta.get("generation"), meta.get("labels"), meta.get("annotations"))
        if type_ == "MODIFIED" and self._written.get(meta.get("name", "")) == written:
            return
        self._written[meta.get("name", "")] = written
        uri = obj["spec"]["predictors"][0]["graph"].get("modelUri", "")
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        try:
            s3(self.devstack).stat_object(bucket, f"{prefix}/{MANIFEST}")
            present = True
        except S3Error:
            present = False
        self.seen.append(Seen(type_, str(meta.get("resourceVersion")), uri,
                              (meta.get("annotations") or {}).get("mlops.dev/promotion", ""),
                              str(meta.get("creationTimestamp")), present))
