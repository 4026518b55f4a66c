"""The MLflow side: a run, its metrics, where its model's files are, and the Model Registry.

Plain REST over ``requests``: MLflow's own client retries for minutes, and inside an operator
kopf's backoff does the retrying. Every call has a deadline for the whole exchange
(``PROMOTER_HTTP_TIMEOUT``) and a cap on the answer's size, and what reaches a message of an
answer that is not a success is its status code and MLflow's ``error_code``, never its body.
Two layouts are supported:

* MLflow 3 logged models: ``runs/get`` lists ``outputs.model_outputs[].model_id``; one
  ``logged-models/search`` (by run and name) gives the model's ``artifact_uri``, outside the
  run's folder, however many models the run logged.
* MLflow 2: the files sit at ``<run artifact_uri>/<model name>``.

Every request, reads and registry writes alike, goes through :meth:`MlflowClient._call`. MLflow
3.x keeps the dataset (name, digest) each metric was computed on with the metrics of the logged
model it scores (``logged-models/{id}``); ``runs/get`` leaves it out. A registered model
version's ``source`` is ``models:/<model_id>`` (MLflow 3), ``runs:/<run>/<path>`` or the files'
own URI (MLflow 2). A registry write MLflow refuses with a 4xx is ``RegistryRefused``, naming
MLflow's ``error_code`` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .deadline import HTTPAdapter, deadline
from .errors import ModelVersionNotFound, RegistryRefused, RunNotFound, Unavailable, clip
from .gates import Dataset

ANSWER_LIMIT = 8 * 1024 * 1024  # bytes of one MLflow answer; a run's metrics and tags fit many times
CHUNK = 64 * 1024

MetricValue = float | str | None
API = "/api/2.0/mlflow"


@dataclass(frozen=True)
class Run:
    run_id: str
    status: str
    lifecycle_stage: str
    artifact_uri: str
    metrics: Mapping[str, MetricValue]
    model_ids: tuple[str, ...] = field(default_factory=tuple)
    experiment_id: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLocation:
    uri: str  # s3://bucket/key/prefix or mlflow-artifacts:/path
    layout: str  # "logged-model" (MLflow 3) or "run-artifacts" (MLflow 2)
    model_id: str = ""


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version as ``model-versions/get`` describes it."""

    name: str
    version: str
    run_id: str
    source: str
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def model_id(self) -> str:
        """The MLflow 3 logged model the version was registered from, if any."""
        rest = self.source.removeprefix("models:/")
        return rest if rest != self.source and rest.startswith("m-") and "/" not in rest else ""


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
    the unit tests). Failures: ``RunNotFound``, ``ModelVersionNotFound``, ``RegistryRefused``,
    else ``Unavailable``."""

    tracking_uri: str

    def get_run(self, run_id: str) -> Run: ...
    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]: ...
    def metric_datasets(self, run: Run) -> dict[str, Dataset]: ...
    # the registry
    def model_version(self, name: str, version: str) -> ModelVersion: ...
    def version_by_alias(self, name: str, alias: str) -> ModelVersion: ...
    def version_candidates(self, version: ModelVersion, run: Run) -> list[ModelLocation]: ...
    def find_versions(self, name: str, run_id: str = "", tag: tuple[str, str] | None = None) -> list[ModelVersion]: ...
    def register(self, name: str, run: Run, location: ModelLocation) -> ModelVersion: ...
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None: ...
    def delete_version_tag(self, name: str, version: str, key: str) -> None: ...
    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...
    def delete_run_tag(self, run_id: str, key: str) -> None: ...


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

    def logged_model(self, model_id: str) -> Mapping[str, Any] | None:
        """``logged-models/{id}``: the model's ``info`` and ``data``; None when there is none."""
        path = f"{API}/logged-models/{model_id}"
        code, payload = self._call("GET", path)
        if code == 404:
            return None
        model = self._ok(path, code, payload).get("model")
        return model if isinstance(model, Mapping) else None

    def metric_datasets(self, run: Run) -> dict[str, Dataset]:
        """metric -> the dataset it was computed on, from the run's logged models."""
        found: dict[str, Dataset] = {}
        for model_id in run.model_ids:
            data = (self.logged_model(model_id) or {}).get("data") or {}
            for metric in data.get("metrics") or []:
                if isinstance(metric, Mapping) and metric.get("dataset_digest") and metric.get("key") not in found:
                    found[str(metric["key"])] = Dataset(clip(str(metric.get("dataset_name", "")), 256),
                                                        clip(str(metric["dataset_digest"]), 64))
        return found

    # --- the registry: reads ---------------------------------------------------------------

    def model_version(self, name: str, version: str) -> ModelVersion:
        return self._version("model-versions/get", name, version=version)

    def version_by_alias(self, name: str, alias: str) -> ModelVersion:
        return self._version("registered-models/alias", name, alias=alias)

    def _version(self, endpoint: str, name: str, version: str = "", alias: str = "") -> ModelVersion:
        path = f"{API}/{endpoint}"
        which = {"version": version} if version else {"alias": alias}
        code, payload = self._call("GET", path, {"name": name, **which})
        if code in (400, 404):
            raise ModelVersionNotFound(name, self.tracking_uri, version=version, alias=alias, code=error_code(payload))
        return parse_version(self._ok(path, code, payload).get("model_version"))

    def version_candidates(self, version: ModelVersion, run: Run) -> list[ModelLocation]:
        """Where a registered version's files are: its logged model, its runs:/ path or its
        source URI as given."""
        if version.model_id:
            info = (self.logged_model(version.model_id) or {}).get("info") or {}
            uri = str(info.get("artifact_uri") or "").rstrip("/")
            return [ModelLocation(uri, "logged-model", version.model_id)] if uri else []
        if version.source.startswith("runs:/"):
            _, _, path = version.source.removeprefix("runs:/").partition("/")
            return [ModelLocation(f"{run.artifact_uri.rstrip('/')}/{path.strip('/')}", "run-artifacts")]
        return [ModelLocation(version.source.rstrip("/"), "run-artifacts")]

    def find_versions(self, name: str, run_id: str = "", tag: tuple[str, str] | None = None) -> list[ModelVersion]:
        """Versions of ``name`` registered from ``run_id`` and/or carrying ``tag`` (key, value)."""
        terms = [f"name = '{name}'"]  # names, run ids and tag values are checked: no quotes in them
        if run_id:
            terms.append(f"run_id = '{run_id}'")
        if tag:
            terms.append(f"tags.`{tag[0]}` = '{tag[1]}'")
        path = f"{API}/model-versions/search"
        code, payload = self._call("GET", path, {"filter": " and ".join(terms), "max_results": "100"})
        if 400 <= code < 500:
            raise RegistryRefused(self.tracking_uri, f"searching the versions of {name!r}", code, error_code(payload))
        found = self._ok(path, code, payload).get("model_versions") or []
        return [parse_version(v) for v in found if isinstance(v, Mapping)]

    # --- the registry: writes --------------------------------------------------------------

    def _write(self, method: str, endpoint: str, body: Mapping[str, Any], what: str,
               absent_is_fine: bool = False) -> Mapping[str, Any]:
        """A registry write; a 4xx is MLflow refusing it (RESOURCE_DOES_NOT_EXIST is what was
        asked for when ``absent_is_fine``: a tag already gone)."""
        path = f"{API}/{endpoint}"
        code, payload = self._call(method, path, body=body)
        if absent_is_fine and code == 404:
            return {}
        if 400 <= code < 500:
            raise RegistryRefused(self.tracking_uri, what, code, error_code(payload))
        return self._ok(path, code, payload)

    def register(self, name: str, run: Run, location: ModelLocation) -> ModelVersion:
        """A new version of ``name`` (created when missing) from the run's model."""
        path = f"{API}/registered-models/create"
        code, payload = self._call("POST", path, body={"name": name})
        if 400 <= code < 500 and error_code(payload) != "RESOURCE_ALREADY_EXISTS":
            raise RegistryRefused(self.tracking_uri, f"creating registered model {name!r}", code, error_code(payload))
        body: dict[str, Any] = {"name": name, "run_id": run.run_id,
                                "source": f"models:/{location.model_id}" if location.model_id else location.uri}
        if location.model_id:
            body["model_id"] = location.model_id
        created = self._write("POST", "model-versions/create", body, f"registering run {run.run_id} as {name!r}")
        return parse_version(created.get("model_version"))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._write("POST", "registered-models/alias", {"name": name, "alias": alias, "version": version},
                    f"setting alias {alias!r} on {name!r} version {version}")

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._write("POST", "model-versions/set-tag", {"name": name, "version": version, "key": key, "value": value},
                    f"tagging {name!r} version {version}")

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        self._write("DELETE", "model-versions/delete-tag", {"name": name, "version": version, "key": key},
                    f"untagging {name!r} version {version}", absent_is_fine=True)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._write("POST", "runs/log-batch", {"run_id": run_id, "tags": [{"key": k, "value": v}
                                                                          for k, v in tags.items()]},
                    f"tagging run {run_id}")

    def delete_run_tag(self, run_id: str, key: str) -> None:
        self._write("POST", "runs/delete-tag", {"run_id": run_id, "key": key}, f"untagging run {run_id}",
                    absent_is_fine=True)


def _read(response: requests.Response) -> bytes | None:
    """The body, or None when it is over ANSWER_LIMIT (the rest is not read)."""
    out = bytearray()
    for chunk in response.iter_content(CHUNK):
        out += chunk
        if len(out) > ANSWER_LIMIT:
            return None
    return bytes(out)


def error_code(payload: Any) -> str:
    """MLflow's error_code (e.g. RESOURCE_DOES_NOT_EXIST), the one part of an error answer the
    operator repeats: a word of capitals, or "-"."""
    code = str(payload.get("error_code") or "") if isinstance(payload, Mapping) else ""
    return code if code and len(code) <= 64 and code.replace("_", "").isalnum() and code.isupper() else "-"


def _error_code(payload: Any) -> str:
    code = error_code(payload)
    return f" ({code})" if code != "-" else ""


def parse_run(payload: Mapping[str, Any]) -> Run:
    run = payload.get("run", {})
    info = run.get("info", {})
    metrics: dict[str, MetricValue] = {}
    for m in run.get("data", {}).get("metrics", []) or []:
        metrics[str(m.get("key"))] = m.get("value")
    outputs = run.get("outputs", {}) or {}
    model_ids = tuple(str(o["model_id"]) for o in outputs.get("model_outputs", []) or [] if o.get("model_id"))
    tags = {str(t.get("key")): str(t.get("value", "")) for t in run.get("data", {}).get("tags", []) or []
            if isinstance(t, Mapping)}
    return Run(
        experiment_id=str(info.get("experiment_id") or ""),
        run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
        status=str(info.get("status", "")),
        lifecycle_stage=str(info.get("lifecycle_stage", "active")),
        artifact_uri=str(info.get("artifact_uri", "")),
        metrics=metrics,
        model_ids=model_ids,
        tags=tags,
    )


def parse_version(payload: Any) -> ModelVersion:
    mv = payload if isinstance(payload, Mapping) else {}
    tags = {str(t.get("key")): str(t.get("value", "")) for t in mv.get("tags") or [] if isinstance(t, Mapping)}
    # what reaches status and messages is bounded: a name as the spec allows, a version number, a run id
    return ModelVersion(name=clip(str(mv.get("name", "")), 256), version=clip(str(mv.get("version", "")), 32),
                        run_id=clip(str(mv.get("run_id") or ""), 64), source=str(mv.get("source") or ""), tags=tags)
