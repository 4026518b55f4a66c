"""Small helpers the integration tests share: build a promotion, apply it, wait, read back."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from minio import Minio

from devstack import stack
from devstack.harness import promotion

__all__ = ["RMSE_BELOW_1", "apply", "condition", "events", "get", "none_contain", "objects", "phase_in",
           "promotion", "read_object", "s3", "secret_data", "wait_for"]

# A gate the small models of tests/integration/runs.py (rmse 0.5) pass.
RMSE_BELOW_1 = [{"metric": "rmse", "op": "LessThan", "threshold": 1}]


def apply(devstack: stack.State, namespace: str, obj: dict[str, Any], check: bool = True) -> Any:
    return devstack.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(obj), check=check)


def get(devstack: stack.State, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    out = devstack.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def as_written(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a writer of the object's spec and metadata changes: the generation, labels,
    annotations and spec. Not its status or resourceVersion, which devstack's Seldon double
    updates as the Deployment it made rolls out, as Seldon's controller does."""
    if obj is None:
        return None
    meta = obj["metadata"]
    return {"generation": meta.get("generation"), "labels": meta.get("labels") or {},
            "annotations": meta.get("annotations") or {}, "spec": obj.get("spec")}


def wait_for(devstack: stack.State, namespace: str, name: str,
             until: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = get(devstack, namespace, "modelpromotion", name)
        if last is not None and until(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"modelpromotion {namespace}/{name} did not get there in {timeout}s; "
                         f"last status: {json.dumps((last or {}).get('status'), indent=1)}")


def phase_in(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: (obj.get("status") or {}).get("phase") in phases


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def secret_data(devstack: stack.State, namespace: str, name: str) -> dict[str, str]:
    obj = get(devstack, namespace, "secret", name)
    assert obj is not None, f"Secret {namespace}/{name} not found"
    return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}


def events(devstack: stack.State, namespace: str, name: str) -> list[dict[str, Any]]:
    out = devstack.kubectl("-n", namespace, "get", "events", "-o", "json",
                           f"--field-selector=involvedObject.name={name}")
    return list(json.loads(out.stdout)["items"])


def s3(devstack: stack.State) -> Minio:
    return Minio(devstack.s3_endpoint.removeprefix("http://"), access_key=devstack.s3_access_key,
                 secret_key=devstack.s3_secret_key, secure=False)


def objects(devstack: stack.State, bucket: str, prefix: str) -> dict[str, Any]:
    return {o.object_name[len(prefix):]: o for o in s3(devstack).list_objects(bucket, prefix=prefix, recursive=True)}


def read_object(devstack: stack.State, bucket: str, key: str) -> bytes:
    response = s3(devstack).get_object(bucket, key)
    try:
        return bytes(response.read())
    finally:
        response.close()
        response.release_conn()


def none_contain(secret: str, texts: Iterable[str]) -> bool:
    return all(secret not in text for text in texts)
