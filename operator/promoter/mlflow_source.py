"""The MLflow side: a run, its metrics, and where its model's files are.

Plain REST over ``requests`` with short timeouts: MLflow's own client retries for minutes, and
inside an operator kopf's backoff does the retrying. Two layouts are supported:

* MLflow 3 logged models: ``runs/get`` lists ``outputs.model_outputs[].model_id``; each
  ``logged-models/{id}`` has a ``name`` and an ``artifact_uri`` outside the run's folder.
* MLflow 2: the files sit at ``<run artifact_uri>/<model name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .errors import RunNotFound, Unavailable

MetricValue = float | str | None


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    lifecycle_stage: str
    artifact_uri: str
    metrics: Mapping[str, MetricValue]
    model_ids: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class ModelLocation:
    uri: str  # s3://bucket/key/prefix or mlflow-artifacts:/path
    layout: str  # "logged-model" (MLflow 3) or "run-artifacts" (MLflow 2)
    model_id: str = ""


@dataclass(frozen=True)
class Auth:
    username: str = ""
    password: str = ""
    token: str = ""

    def apply(self, session: requests.Session) -> None:
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password)


class MlflowApi(Protocol):
    """What the reconcile asks of a tracking server (:class:`MlflowClient`; an in-memory one in
    the unit tests). Failures: ``RunNotFound``, else ``Unavailable``."""

    tracking_uri: str

    def get_run(self, run_id: str) -> Run: ...
    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]: ...


class MlflowClient:
    """One tracking server with one identity; shared by the promotions that use both."""

    def __init__(self, tracking_uri: str, timeout: float, auth: Auth | None = None,
                 retry_delay: float = 10.0) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.session = requests.Session()
        (auth or Auth()).apply(self.session)

    def close(self) -> None:
        self.session.close()

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> requests.Response:
        url = f"{self.tracking_uri}{path}"
        try:
            response = self.session.get(url, params=params, timeout=self.timeout)
        except requests.RequestException as e:
            raise Unavailable("mlflow", f"cannot reach MLflow at {self.tracking_uri}: "
                              f"{type(e).__name__}", self.retry_delay) from None
        if response.status_code == 429 or response.status_code >= 500:
            raise Unavailable("mlflow", f"MLflow at {self.tracking_uri} answered "
                              f"{response.status_code} to {path}", self.retry_delay)
        if response.status_code in (401, 403):
            raise Unavailable("mlflow", f"MLflow at {self.tracking_uri} refused the credentials "
                              f"({response.status_code}) for {path}", self.retry_delay)
        return response

    def get_run(self, run_id: str) -> Run:
        response = self._get("/api/2.0/mlflow/runs/get", {"run_id": run_id})
        if response.status_code in (400, 404):
            raise RunNotFound(run_id, self.tracking_uri)
        _raise_unexpected(response, self.tracking_uri, self.retry_delay)
        return parse_run(response.json())

    def logged_model(self, model_id: str) -> Mapping[str, Any] | None:
        response = self._get(f"/api/2.0/mlflow/logged-models/{model_id}")
        if response.status_code == 404:
            return None
        _raise_unexpected(response, self.tracking_uri, self.retry_delay)
        info = response.json().get("model", {}).get("info", {})
        return info if isinstance(info, dict) else None

    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]:
        """Where the model may be, best first: the MLflow 3 logged model, then the MLflow 2 path."""
        found: list[ModelLocation] = []
        for model_id in run.model_ids:
            info = self.logged_model(model_id)
            if info and info.get("name") == model_name and info.get("artifact_uri"):
                found.append(ModelLocation(str(info["artifact_uri"]).rstrip("/"), "logged-model", model_id))
        found.append(ModelLocation(f"{run.artifact_uri.rstrip('/')}/{model_name}", "run-artifacts"))
        return found


def _raise_unexpected(response: requests.Response, uri: str, delay: float) -> None:
    if response.status_code != 200:
        raise Unavailable("mlflow", f"MLflow at {uri} answered {response.status_code}: "
                          f"{response.text[:200]}", delay)


def parse_run(payload: Mapping[str, Any]) -> Run:
    run = payload.get("run", {})
    info = run.get("info", {})
    metrics: dict[str, MetricValue] = {}
    for m in run.get("data", {}).get("metrics", []) or []:
        metrics[str(m.get("key"))] = m.get("value")
    outputs = run.get("outputs", {}) or {}
    model_ids = tuple(str(o["model_id"]) for o in outputs.get("model_outputs", []) or [] if o.get("model_id"))
    return Run(
        run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
        status=str(info.get("status", "")),
        lifecycle_stage=str(info.get("lifecycle_stage", "active")),
        artifact_uri=str(info.get("artifact_uri", "")),
        metrics=metrics,
        model_ids=model_ids,
    )
