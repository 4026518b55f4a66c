"""The Kubernetes side: one create-or-patch helper for every child, Secrets, promotion status.

``ensure`` reads the child, lets a pure ``merge`` function compute the object with the
operator's fields set (everything else kept as it is), and writes only when that differs:
create when absent, a merge patch carrying the ``resourceVersion`` it read otherwise. A 409
(someone wrote in between, or created it first) re-reads and tries again; a 404 on patch
creates. API failures become :class:`~promoter.errors.Unavailable`.
"""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from .errors import CredentialsProblem, Unavailable

SELDON = ("machinelearning.seldon.io", "v1", "seldondeployments")
PROMOTIONS = ("mlops.dev", "v1alpha1", "modelpromotions")
ATTEMPTS = 5

Merge = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""existing object (None when absent) -> the object to write, or None when nothing changes."""


class Kube:
    def __init__(self, api: client.ApiClient, retry_delay: float = 10.0) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.retry_delay = retry_delay

    # --- error edge -------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ApiException as e:
            if e.status in (429,) or (e.status or 0) >= 500:
                raise Unavailable("kubernetes", f"the API server answered {e.status} to {what}",
                                  self.retry_delay) from None
            raise
        except (HTTPError, OSError) as e:
            raise Unavailable("kubernetes", f"cannot reach the API server for {what}: "
                              f"{type(e).__name__}", self.retry_delay) from None

    # --- Secrets ----------------------------------------------------------------------

    def secret_data(self, namespace: str, name: str, field: str) -> dict[str, str]:
        """The decoded data of a Secret the spec references; ``field`` names the reference."""
        who = f"{namespace}/{name} ({field})"
        try:
            secret = self._call(f"reading Secret {namespace}/{name}",
                                lambda: self.core.read_namespaced_secret(name, namespace))
        except ApiException as e:
            if e.status == 404:
                raise CredentialsProblem(who, "not found") from None
            if e.status == 403:
                raise CredentialsProblem(who, "the operator is not allowed to read it") from None
            raise Unavailable("kubernetes", f"reading Secret {namespace}/{name} failed ({e.status})",
                              self.retry_delay) from None
        data = secret.data or {}
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}

    # --- create or patch ----------------------------------------------------------------

    def ensure_secret(self, namespace: str, name: str, merge: Merge) -> str:
        return self._ensure(
            f"Secret {namespace}/{name}",
            get=lambda: json.loads(cast(Any, self.core.read_namespaced_secret(
                name, namespace, _preload_content=False)).data),
            create=lambda body: self.core.create_namespaced_secret(namespace, body),
            patch=lambda body: self.core.patch_namespaced_secret(name, namespace, body),
            merge=merge,
        )

    def get_seldon(self, namespace: str, name: str) -> dict[str, Any] | None:
        group, version, plural = SELDON
        try:
            obj = self._call(f"reading SeldonDeployment {namespace}/{name}",
                             lambda: self.custom.get_namespaced_custom_object(
                                 group, version, namespace, plural, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise self._refused(f"reading SeldonDeployment {namespace}/{name}", e) from None
        return dict(obj)

    def ensure_seldon(self, namespace: str, name: str, merge: Merge) -> str:
        group, version, plural = SELDON
        return self._ensure(
            f"SeldonDeployment {namespace}/{name}",
            get=lambda: self.custom.get_namespaced_custom_object(group, version, namespace, plural, name),
            create=lambda body: self.custom.create_namespaced_custom_object(
                group, version, namespace, plural, body),
            patch=lambda body: self.custom.patch_namespaced_custom_object(
                group, version, namespace, plural, name, body),
            merge=merge,
        )

    def _ensure(self, what: str, get: Callable[[], Any], create: Callable[[Any], Any],
                patch: Callable[[Any], Any], merge: Merge) -> str:
        for _ in range(ATTEMPTS):
            try:
                existing: dict[str, Any] | None = dict(self._call(f"reading {what}", get))
            except ApiException as e:
                if e.status != 404:
                    raise self._refused(f"reading {what}", e) from None
                existing = None
            body = merge(existing)
            if body is None:
                return "unchanged"
            try:
                if existing is None:
                    self._call(f"creating {what}", functools.partial(create, body))
                    return "created"
                rv = _resource_version(existing)
                body.setdefault("metadata", {})["resourceVersion"] = rv
                self._call(f"patching {what}", functools.partial(patch, body))
                return "patched"
            except ApiException as e:
                if e.status in (404, 409):  # gone or changed since we read it: read again
                    continue
                raise self._refused(f"writing {what}", e) from None
        raise Unavailable("kubernetes", f"{what} kept changing under the operator "
                          f"({ATTEMPTS} conflicts in a row)", self.retry_delay)

    def _refused(self, what: str, e: ApiException) -> Exception:
        if e.status == 403:
            return Unavailable("kubernetes", f"{what} is forbidden to the operator's identity "
                               "(check its RBAC)", max(self.retry_delay, 60.0))
        reason = _api_message(e)
        return Unavailable("kubernetes", f"{what} failed ({e.status}: {reason})", self.retry_delay)

    # --- promotions ---------------------------------------------------------------------

    def list_promotions(self, namespace: str) -> list[dict[str, Any]]:
        group, version, plural = PROMOTIONS
        try:
            found = self._call(f"listing ModelPromotions in {namespace}",
                               lambda: self.custom.list_namespaced_custom_object(group, version, namespace, plural))
        except ApiException as e:
            raise self._refused(f"listing ModelPromotions in {namespace}", e) from None
        return list(found.get("items") or [])

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch of a promotion's status (progress while copying, supersession)."""
        group, version, plural = PROMOTIONS
        try:
            self._call(f"patching the status of ModelPromotion {namespace}/{name}",
                       lambda: self.custom.patch_namespaced_custom_object_status(
                           group, version, namespace, plural, name, {"status": dict(status)}))
        except ApiException as e:
            if e.status == 404:  # deleted meanwhile: nothing to report to
                return
            raise self._refused(f"patching the status of ModelPromotion {namespace}/{name}", e) from None


def _resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("resourceVersion") or "")


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message", e.reason))[:300]
    except ValueError:
        return str(e.reason)
