"""The MLflow side: a run, its metrics, where its model's files are, and the Model Registry.

Plain REST over ``requests`` with short timeouts: MLflow's own client retries for minutes, and
inside an operator kopf's backoff does the retrying. Every request goes through
:meth:`MlflowClient._call`, the one place that turns transport failures, 429/5xx and refused
credentials into :class:`~promoter.errors.Unavailable`; what MLflow says back about a refusal
reaches status only as its ``error_code``, never its body. Two model layouts are supported:

* MLflow 3 logged models: ``runs/get`` lists ``outputs.model_outputs[].model_id``; each
  ``logged-models/{id}`` has a ``name`` and an ``artifact_uri`` outside the run's folder, and
  its ``data.metrics`` carry the dataset (name, digest) each metric was computed on.
* MLflow 2: the files sit at ``<run artifact_uri>/<model name>``.

A registered model version's ``source`` is ``models:/<model_id>`` (MLflow 3), ``runs:/<run>/<path>``
or the files' own URI (MLflow 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests

from .errors import ModelVersionNotFound, RegistryRefused, RunNotFound, Unavailable
from .gates import Dataset

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
        (auth or Auth()).apply(self.session)

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, params: Mapping[str, str] | None = None,
              json: Mapping[str, Any] | None = None) -> requests.Response:
        """One request to ``API + path``; outages and refused credentials raise Unavailable."""
        try:
            response = self.session.request(method, f"{self.tracking_uri}{API}/{path}", params=params, json=json,
                                            timeout=self.timeout)
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

    def _json(self, response: requests.Response, path: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise Unavailable("mlflow", f"MLflow at {self.tracking_uri} answered {response.status_code} "
                              f"({error_code(response)}) to {path}", self.retry_delay)
        try:
            body = response.json()
        except ValueError:
            raise Unavailable("mlflow", f"MLflow at {self.tracking_uri} answered {path} with something "
                              "that is not JSON", self.retry_delay) from None
        return body if isinstance(body, dict) else {}

    def _write(self, method: str, path: str, body: Mapping[str, Any], what: str) -> dict[str, Any]:
        """A registry write; a 4xx is MLflow refusing it (RegistryRefused names its error_code)."""
        response = self._call(method, path, json=body)
        if 400 <= response.status_code < 500:
            raise RegistryRefused(self.tracking_uri, what, response.status_code, error_code(response))
        return self._json(response, path)

    # --- runs and logged models -----------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        response = self._call("GET", "runs/get", {"run_id": run_id})
        if response.status_code in (400, 404):
            raise RunNotFound(run_id, self.tracking_uri)
        return parse_run(self._json(response, "runs/get"))

    def logged_model(self, model_id: str) -> Mapping[str, Any] | None:
        """``logged-models/{id}``: the model's ``info`` and ``data``; None when there is none."""
        response = self._call("GET", f"logged-models/{model_id}")
        if response.status_code == 404:
            return None
        model = self._json(response, "logged-models").get("model")
        return model if isinstance(model, dict) else None

    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]:
        """Where the model may be, best first: the MLflow 3 logged model, then the MLflow 2 path."""
        found: list[ModelLocation] = []
        for model_id in run.model_ids:
            info = _info(self.logged_model(model_id))
            if info.get("name") == model_name and info.get("artifact_uri"):
                found.append(ModelLocation(str(info["artifact_uri"]).rstrip("/"), "logged-model", model_id))
        found.append(ModelLocation(f"{run.artifact_uri.rstrip('/')}/{model_name}", "run-artifacts"))
        return found

    def metric_datasets(self, run: Run) -> dict[str, Dataset]:
        """metric -> the dataset it was computed on, from the run's logged models (MLflow 3.x
        keeps the dataset on a model's metrics; ``runs/get`` leaves it out)."""
        found: dict[str, Dataset] = {}
        for model_id in run.model_ids:
            data = (self.logged_model(model_id) or {}).get("data") or {}
            for metric in data.get("metrics") or []:
                if isinstance(metric, dict) and metric.get("dataset_digest") and metric.get("key") not in found:
                    found[str(metric["key"])] = Dataset(str(metric.get("dataset_name", "")),
                                                        str(metric["dataset_digest"]))
        return found

    # --- the registry: reads ---------------------------------------------------------------

    def model_version(self, name: str, version: str) -> ModelVersion:
        response = self._call("GET", "model-versions/get", {"name": name, "version": version})
        if response.status_code in (400, 404):
            raise ModelVersionNotFound(name, self.tracking_uri, version=version, code=error_code(response))
        return parse_version(self._json(response, "model-versions/get").get("model_version"))

    def version_by_alias(self, name: str, alias: str) -> ModelVersion:
        response = self._call("GET", "registered-models/alias", {"name": name, "alias": alias})
        if response.status_code in (400, 404):
            raise ModelVersionNotFound(name, self.tracking_uri, alias=alias, code=error_code(response))
        return parse_version(self._json(response, "registered-models/alias").get("model_version"))

    def version_candidates(self, version: ModelVersion, run: Run) -> list[ModelLocation]:
        """Where a registered version's files are: its logged model, its runs:/ path or its
        source URI as given."""
        if version.model_id:
            info = _info(self.logged_model(version.model_id))
            return [ModelLocation(str(info["artifact_uri"]).rstrip("/"), "logged-model", version.model_id)] \
                if info.get("artifact_uri") else []
        if version.source.startswith("runs:/"):
            _, _, path = version.source.removeprefix("runs:/").partition("/")
            return [ModelLocation(f"{run.artifact_uri.rstrip('/')}/{path.strip('/')}", "run-artifacts")]
        return [ModelLocation(version.source.rstrip("/"), "run-artifacts")]

    def find_versions(self, name: str, run_id: str = "", tag: tuple[str, str] | None = None) -> list[ModelVersion]:
        """Versions of ``name`` registered from ``run_id`` and/or carrying ``tag`` (key, value)."""
        terms = [f"name = '{name}'"]  # names and tag values are checked: no quotes in them
        if run_id:
            terms.append(f"run_id = '{run_id}'")
        if tag:
            terms.append(f"tags.`{tag[0]}` = '{tag[1]}'")
        response = self._call("GET", "model-versions/search", {"filter": " and ".join(terms), "max_results": "100"})
        if 400 <= response.status_code < 500:
            raise RegistryRefused(self.tracking_uri, f"searching the versions of {name!r}", response.status_code,
                                  error_code(response))
        found = self._json(response, "model-versions/search").get("model_versions") or []
        return [parse_version(v) for v in found if isinstance(v, dict)]

    # --- the registry: writes --------------------------------------------------------------

    def register(self, name: str, run: Run, location: ModelLocation) -> ModelVersion:
        """A new version of ``name`` (created when missing) from the run's model."""
        response = self._call("POST", "registered-models/create", json={"name": name})
        if 400 <= response.status_code < 500 and error_code(response) != "RESOURCE_ALREADY_EXISTS":
            raise RegistryRefused(self.tracking_uri, f"creating registered model {name!r}", response.status_code,
                                  error_code(response))
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
        response = self._call("DELETE", "model-versions/delete-tag", json={"name": name, "version": version,
                                                                            "key": key})
        if response.status_code != 404:  # already gone: that is what was asked
            self._ok(response, f"untagging {name!r} version {version}")

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._write("POST", "runs/log-batch", {"run_id": run_id, "tags": [{"key": k, "value": v}
                                                                          for k, v in tags.items()]},
                    f"tagging run {run_id}")

    def delete_run_tag(self, run_id: str, key: str) -> None:
        response = self._call("POST", "runs/delete-tag", json={"run_id": run_id, "key": key})
        if response.status_code != 404 and error_code(response) != "RESOURCE_DOES_NOT_EXIST":
            self._ok(response, f"untagging run {run_id}")

    def _ok(self, response: requests.Response, what: str) -> None:
        if 400 <= response.status_code < 500:
            raise RegistryRefused(self.tracking_uri, what, response.status_code, error_code(response))
        self._json(response, what)


def error_code(response: requests.Response) -> str:
    """MLflow's ``error_code`` (e.g. RESOURCE_DOES_NOT_EXIST), the only part of an error body the
    operator repeats: a word of capitals, or ``"-"``."""
    try:
        code = response.json().get("error_code", "")
    except (ValueError, AttributeError):
        return "-"
    text = str(code)[:64]
    return text if text.replace("_", "").isalnum() and text.isupper() else "-"


def _info(model: Mapping[str, Any] | None) -> Mapping[str, Any]:
    info = (model or {}).get("info")
    return info if isinstance(info, dict) else {}


def parse_run(payload: Mapping[str, Any]) -> Run:
    run = payload.get("run", {})
    info = run.get("info", {})
    metrics: dict[str, MetricValue] = {}
    for m in run.get("data", {}).get("metrics", []) or []:
        metrics[str(m.get("key"))] = m.get("value")
    outputs = run.get("outputs", {}) or {}
    model_ids = tuple(str(o["model_id"]) for o in outputs.get("model_outputs", []) or [] if o.get("model_id"))
    tags = {str(t.get("key")): str(t.get("value", "")) for t in run.get("data", {}).get("tags", []) or []
            if isinstance(t, dict)}
    return Run(
        run_id=str(info.get("run_id") or info.get("run_uuid") or ""),
        status=str(info.get("status", "")),
        lifecycle_stage=str(info.get("lifecycle_stage", "active")),
        artifact_uri=str(info.get("artifact_uri", "")),
        metrics=metrics,
        model_ids=model_ids,
        tags=tags,
    )


def parse_version(payload: Any) -> ModelVersion:
    mv = payload if isinstance(payload, dict) else {}
    tags = {str(t.get("key")): str(t.get("value", "")) for t in mv.get("tags") or [] if isinstance(t, dict)}
    return ModelVersion(name=str(mv.get("name", "")), version=str(mv.get("version", "")),
                        run_id=str(mv.get("run_id") or ""), source=str(mv.get("source") or ""), tags=tags)
