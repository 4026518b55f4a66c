"""The MLflow side: a run, its metrics, and where its model's files are.

Plain REST over ``requests``: MLflow's own client retries for minutes, and inside an operator
kopf's backoff does the retrying. Every call has a deadline for the whole exchange
(``PROMOTER_HTTP_TIMEOUT``) and a cap on the answer's size, and what reaches a message of an
answer that is not a success is its status code and MLflow's ``error_code``, never its body.
Two layouts are supported:

* MLflow 3 logged models: ``runs/get`` lists ``outputs.model_outputs[].model_id``; one
  ``logged-models/search`` (by run and name) gives the model's ``artifact_uri``, outside the
  run's folder, however many models the run logged.
* MLflow 2: the files sit at ``<run artifact_uri>/<model name>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .deadline import HTTPAdapter, deadline
from .errors import RunNotFound, Unavailable, clip

ANSWER_LIMIT = 8 * 1024 * 1024  # bytes of one MLflow answer; a run's metrics and tags fit many times
CHUNK = 64 * 1024

MetricValue = float | str | None


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    lifecycle_stage: str
    artifact_uri: str
    metrics: Mapping[str, MetricValue]
    model_ids: tuple[str, ...] = field(default_factory=tuple)
    experiment_id: str = ""


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
        self.session.mount("http://", HTTPAdapter())
        self.session.mount("https://", HTTPAdapter())
        (auth or Auth()).apply(self.session)

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, params: Mapping[str, str] | None = None,
              body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        """(status code, parsed JSON or None) of one call, within the deadline and the size cap;
        429, 5xx, 401/403, no answer in time or an answer too large are ``Unavailable``."""
        what = f"MLflow at {self.tracking_uri}"
        with deadline(self.timeout) as watch:
            try:
                response = self.session.request(method, f"{self.tracking_uri}{path}", params=params, json=body,
                                                timeout=self.timeout, stream=True, allow_redirects=False)
                try:
                    raw = _read(response)
                finally:
                    response.close()
            except requests.RequestException as e:
                problem = (f"{what} did not answer {path} within {self.timeout:g}s" if watch.expired
                           else f"cannot reach {what}: {type(e).__name__}")
                raise Unavailable("mlflow", problem, self.retry_delay) from None
            if watch.expired:  # cut short: what was read is not the answer
                raise Unavailable("mlflow", f"{what} did not answer {path} within {self.timeout:g}s",
                                  self.retry_delay)
        code = response.status_code
        if raw is None:
            raise Unavailable("mlflow", f"{what} answered {path} with more than {ANSWER_LIMIT} bytes",
                              self.retry_delay)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if code == 429 or code >= 500:
            raise Unavailable("mlflow", f"{what} answered {code}{_error_code(payload)} to {path}", self.retry_delay)
        if code in (401, 403):
            raise Unavailable("mlflow", f"{what} refused the credentials ({code}) for {path}", self.retry_delay)
        return code, payload

    def _ok(self, path: str, code: int, payload: Any) -> Mapping[str, Any]:
        if code != 200 or not isinstance(payload, Mapping):
            raise Unavailable("mlflow", f"MLflow at {self.tracking_uri} answered {code} to {path}"
                              f"{_error_code(payload)}", self.retry_delay)
        return payload

    def get_run(self, run_id: str) -> Run:
        path = "/api/2.0/mlflow/runs/get"
        code, payload = self._call("GET", path, {"run_id": run_id})
        if code in (400, 404):
            raise RunNotFound(run_id, self.tracking_uri)
        return parse_run(self._ok(path, code, payload))

    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]:
        """Where the model may be, best first: the MLflow 3 logged model, then the MLflow 2 path."""
        found: list[ModelLocation] = []
        if run.model_ids and run.experiment_id:
            path = "/api/2.0/mlflow/logged-models/search"
            name = model_name.replace("'", "")  # the spec's pattern allows none; the filter is MLflow's syntax
            code, payload = self._call("POST", path, body={
                "experiment_ids": [run.experiment_id], "max_results": 10,
                "filter": f"source_run_id = '{run.run_id}' AND name = '{name}'"})
            if code != 404:  # an MLflow 2 server has no logged models
                for model in self._ok(path, code, payload).get("models") or []:
                    info = (model or {}).get("info") or {}
                    if info.get("name") == model_name and info.get("artifact_uri") and \
                            info.get("model_id") in run.model_ids:
                        found.append(ModelLocation(str(info["artifact_uri"]).rstrip("/"), "logged-model",
                                                   str(info["model_id"])))
        found.append(ModelLocation(f"{run.artifact_uri.rstrip('/')}/{model_name}", "run-artifacts"))
        return found


def _read(response: requests.Response) -> bytes | None:
    """The body, or None when it is over ANSWER_LIMIT (the rest is not read)."""
    out = bytearray()
    for chunk in response.iter_content(CHUNK):
        out += chunk
        if len(out) > ANSWER_LIMIT:
            return None
    return bytes(out)


def _error_code(payload: Any) -> str:
    """MLflow's error_code, the one part of an error answer worth showing."""
    code = payload.get("error_code") if isinstance(payload, Mapping) else None
    return f" ({clip(str(code), 64)})" if code else ""


def parse_run(payload: Mapping[str, Any]) -> Run:
    run = payload.get("run", {})
    info = run.get("info", {})
    metrics: dict[str, MetricValue] = {}
    for m in run.get("data", {}).get("metrics", []) or []:
        metrics[str(m.get("key"))] = m.get("value")
    outputs = run.get("outputs", {}) or {}
    model_ids = tuple(str(o["model_id"]) for o in outputs.get("model_outputs", []) or [] if o.get("model_id"))
    return Run(
        experiment_id=str(info.get("experiment_id") or ""),
        run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
        status=str(info.get("status", "")),
        lifecycle_stage=str(info.get("lifecycle_stage", "active")),
        artifact_uri=str(info.get("artifact_uri", "")),
        metrics=metrics,
        model_ids=model_ids,
    )
