"""The Kubernetes side: one create-or-patch helper for every child, Secrets, promotion status.

``ensure`` reads the child, lets a pure ``merge`` function compute the object with the
operator's fields set (everything else kept as it is), and writes only when that differs:
create when absent, a merge patch carrying the ``resourceVersion`` it read otherwise. A 409
(someone wrote in between, or created it first) re-reads and tries again; a 404 on patch
creates. API failures become :class:`~promoter.errors.Unavailable`.

Requests go out through :class:`Api`: a urllib3 pool with the credentials kopf's own login
functions find (the Pod's service account, else the kubeconfig). The operator makes a handful
of kinds of calls, and the ``kubernetes`` client package would cost ~20 MiB of resident memory
for them (its import alone; kopf imports it too when it is installed).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import urlencode

import kopf
import urllib3
from urllib3.exceptions import HTTPError

from .errors import CredentialsProblem, Unavailable
from .seldon import Merge

SELDON = "/apis/machinelearning.seldon.io/v1/namespaces/{namespace}/seldondeployments"
PROMOTIONS = "/apis/mlops.dev/v1alpha1/namespaces/{namespace}/modelpromotions"
SECRETS = "/api/v1/namespaces/{namespace}/secrets"
EVENTS = "/api/v1/namespaces/{namespace}/events"
# What a rollout is watched through: read only (list), nothing else of these kinds.
LISTED = {
    "deployments": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "pods": "/api/v1/namespaces/{namespace}/pods",
    "endpointslices": "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
}
MERGE_PATCH = "application/merge-patch+json"
ATTEMPTS = 5
COMPONENT = "mlflow-seldon-promoter"  # the Events' reportingComponent and source
log = logging.getLogger("promoter.kube")



class KubeApi(Protocol):
    """What the reconcile asks of the API server (:class:`Kube`; a recording one in unit tests)."""

    def secret_data(self, namespace: str, name: str, field: str) -> dict[str, str]: ...
    def ensure_secret(self, namespace: str, name: str, merge: Merge) -> str: ...
    def get_seldon(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def ensure_seldon(self, namespace: str, name: str, merge: Merge) -> str: ...
    def get_promotion(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    def iter_promotions(self, namespace: str, selector: str = "", page: int = 100) -> Iterator[dict[str, Any]]: ...
    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...
    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]: ...
    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   action: str = "Reconcile") -> None: ...


def connection(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """The API server and credentials: the Pod's service account, else the kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``; a token or a client certificate; exec plugins are
    not run)."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig (KUBECONFIG or ~/.kube/config)")
    return info


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        try:
            self.message = str(json.loads(body or b"{}").get("message", ""))[:300]
        except ValueError:
            self.message = body[:300].decode(errors="replace")
        super().__init__(f"{status}: {self.message}")


class Api:
    """JSON over HTTPS to the API server; logs in again once when a token is refused (401)."""

    def __init__(self, login: Callable[[], kopf.ConnectionInfo], timeout: float = 30.0,
                 user_agent: str = "mlflow-seldon-promoter", pool_size: int = 8) -> None:
        self._login, self._timeout, self._agent, self._size = login, timeout, user_agent, pool_size
        self._lock = threading.Lock()
        self._connect()

    def _connect(self) -> None:
        info = self._login()
        kwargs: dict[str, Any] = {"maxsize": self._size, "ssl_context": info.as_ssl_context(),
                                  "timeout": urllib3.Timeout(connect=10.0, read=self._timeout),
                                  "retries": False}
        pool = urllib3.ProxyManager(info.proxy_url, **kwargs) if info.proxy_url else urllib3.PoolManager(**kwargs)
        with self._lock:
            self._server = info.server.rstrip("/")
            self._pool = pool
            self._headers = {**info.as_http_headers(), "User-Agent": self._agent, "Accept": "application/json"}

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = path + ("?" + urlencode(query) if query else "")
        for attempt in range(2):
            with self._lock:
                server, pool, headers = self._server, self._pool, dict(self._headers)
            if body is not None:
                headers["Content-Type"] = content_type
            response = pool.request(method, server + url, headers=headers,
                                    body=json.dumps(body).encode() if body is not None else None)
            if response.status == 401 and attempt == 0:
                self._connect()  # a rotated service-account token, an expired one
                continue
            if response.status >= 400:
                raise ApiError(response.status, response.data)
            return dict(json.loads(response.data)) if response.data else {}
        raise AssertionError("unreachable")


class Kube:
    def __init__(self, api: Api, retry_delay: float = 10.0) -> None:
        self.api = api
        self.retry_delay = retry_delay

    # --- error edge -------------------------------------------------------------------

    def _call(self, what: str, method: str, path: str, body: Any = None, content_type: str = "application/json",
              query: Mapping[str, Any] | None = None) -> dict[str, Any]:
        try:
            return self.api.request(method, path, body, content_type, query)
        except ApiError as e:
            if e.status == 429 or e.status >= 500:
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
            secret = self._call(f"reading Secret {namespace}/{name}", "GET",
                                f"{SECRETS.format(namespace=namespace)}/{name}")
        except ApiError as e:
            if e.status == 404:
                raise CredentialsProblem(who, "not found") from None
            if e.status == 403:
                raise CredentialsProblem(who, "the operator is not allowed to read it") from None
            raise Unavailable("kubernetes", f"reading Secret {namespace}/{name} failed ({e.status})",
                              self.retry_delay) from None
        data = secret.get("data") or {}
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in data.items()}

    # --- create or patch ----------------------------------------------------------------

    def ensure_secret(self, namespace: str, name: str, merge: Merge) -> str:
        return self._ensure(f"Secret {namespace}/{name}", SECRETS.format(namespace=namespace), name, merge)

    def get_seldon(self, namespace: str, name: str) -> dict[str, Any] | None:
        what = f"reading SeldonDeployment {namespace}/{name}"
        try:
            return self._call(what, "GET", f"{SELDON.format(namespace=namespace)}/{name}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise self._refused(what, e) from None

    def ensure_seldon(self, namespace: str, name: str, merge: Merge) -> str:
        return self._ensure(f"SeldonDeployment {namespace}/{name}", SELDON.format(namespace=namespace), name, merge)

    def _ensure(self, what: str, collection: str, name: str, merge: Merge) -> str:
        for _ in range(ATTEMPTS):
            try:
                existing: dict[str, Any] | None = self._call(f"reading {what}", "GET", f"{collection}/{name}")
            except ApiError as e:
                if e.status != 404:
                    raise self._refused(f"reading {what}", e) from None
                existing = None
            body = merge(existing)
            if body is None:
                return "unchanged"
            try:
                if existing is None:
                    self._call(f"creating {what}", "POST", collection, body)
                    return "created"
                body.setdefault("metadata", {})["resourceVersion"] = _resource_version(existing)
                self._call(f"patching {what}", "PATCH", f"{collection}/{name}", body, MERGE_PATCH)
                return "patched"
            except ApiError as e:
                if e.status in (404, 409):  # gone or changed since we read it: read again
                    continue
                raise self._refused(f"writing {what}", e) from None
        raise Unavailable("kubernetes", f"{what} kept changing under the operator "
                          f"({ATTEMPTS} conflicts in a row)", self.retry_delay)

    def _refused(self, what: str, e: ApiError) -> Exception:
        if e.status == 403:
            return Unavailable("kubernetes", f"{what} is forbidden to the operator's identity "
                               "(check its RBAC)", max(self.retry_delay, 60.0))
        return Unavailable("kubernetes", f"{what} failed ({e.status}: {e.message})", self.retry_delay)

    # --- promotions ---------------------------------------------------------------------

    def get_promotion(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One promotion, read as a list filtered by name: the operator lists promotions
        anyway (kopf's watch, the drift sweep), so it needs no grant to get them."""
        what = f"reading ModelPromotion {namespace}/{name}"
        try:
            found = self._call(what, "GET", PROMOTIONS.format(namespace=namespace),
                               query={"fieldSelector": f"metadata.name={name}"})
        except ApiError as e:
            raise self._refused(what, e) from None
        items = found.get("items") or []
        if not items:
            return None
        item = dict(items[0])
        item.setdefault("apiVersion", found.get("apiVersion"))
        item.setdefault("kind", str(found.get("kind", "")).removesuffix("List"))
        return item

    def iter_promotions(self, namespace: str, selector: str = "", page: int = 100) -> Iterator[dict[str, Any]]:
        """Every promotion of ``namespace`` (matching the label ``selector``), ``page`` at a time."""
        what = f"listing ModelPromotions in {namespace}"
        base: dict[str, Any] = {"limit": page, **({"labelSelector": selector} if selector else {})}
        query = dict(base)
        while True:
            try:
                found = self._call(what, "GET", PROMOTIONS.format(namespace=namespace), query=query)
            except ApiError as e:
                raise self._refused(what, e) from None
            yield from found.get("items") or []
            token = (found.get("metadata") or {}).get("continue")
            if not token:
                return
            query = {**base, "continue": token}

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The Deployments, Pods or EndpointSlices of ``namespace`` matching a label selector
        (one page: a predictor has a handful)."""
        what = f"listing {kind} in {namespace} ({selector})"
        try:
            found = self._call(what, "GET", LISTED[kind].format(namespace=namespace),
                               query={"labelSelector": selector, "limit": 500})
        except ApiError as e:
            raise self._refused(what, e) from None
        return list(found.get("items") or [])

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """A merge patch of a promotion's status (progress while copying, supersession)."""
        what = f"patching the status of ModelPromotion {namespace}/{name}"
        try:
            self._call(what, "PATCH", f"{PROMOTIONS.format(namespace=namespace)}/{name}/status",
                       {"status": dict(status)}, MERGE_PATCH)
        except ApiError as e:
            if e.status == 404:  # deleted meanwhile: nothing to report to
                return
            raise self._refused(what, e) from None

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   action: str = "Reconcile") -> None:
        """An Event about a promotion; auxiliary: a failure is logged, never raised."""
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        stamp = dt.datetime.now(dt.UTC).isoformat()
        body = {
            "metadata": {"namespace": namespace, "generateName": f"{meta.get('name')}."},
            "type": type_, "reason": reason, "message": message[:1024], "action": action,
            "reportingComponent": COMPONENT, "reportingInstance": _INSTANCE,
            "source": {"component": COMPONENT, "host": _INSTANCE},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "namespace": namespace, "name": meta.get("name"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": stamp, "count": 1,
        }
        try:
            self._call(f"posting an Event about {namespace}/{meta.get('name')}", "POST",
                       EVENTS.format(namespace=namespace), body)
        except (ApiError, Unavailable) as e:
            log.warning("could not post Event %s about %s/%s: %s", reason, namespace, meta.get("name"), e)


# The Pod's name in a cluster (the Deployment's Pods get it as their hostname).
_INSTANCE = os.environ.get("HOSTNAME") or socket.gethostname()


def _resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return str(meta.get("resourceVersion") or "")
