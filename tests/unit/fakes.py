"""In-memory gateways for unit tests of the reconcile: an MLflow of dicts, an S3 of bytes, an API
server of dicts that records every request. They keep the contracts the real gateways keep
(``promoter.mlflow_source.MlflowApi``, ``promoter.artifacts.ObjectStore``,
``promoter.kube.KubeApi``): the errors they raise and the merge-patch semantics of writes.
Whether the real servers behave so is what the integration tests on devstack show.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import yaml

from promoter.config import Settings
from promoter.context import Context
from promoter.errors import CredentialsProblem, ModelVersionNotFound, RegistryRefused, RunNotFound, Unavailable
from promoter.gates import Dataset
from promoter.kube import Merge
from promoter.metrics import Metrics
from promoter.mlflow_source import Auth, ModelLocation, ModelVersion, Run
from promoter.ownership import Ownership
from promoter.status import Outcome
from promoter.store import FileEntry, ObjectStore, identity

RUN_A = "a" * 32
RUN_B = "b" * 32
MLFLOW = "http://mlflow.test:5000"
S3 = "http://s3.test:9000"
KEYS = {"AWS_ACCESS_KEY_ID": "test-access", "AWS_SECRET_ACCESS_KEY": "test-secret-value"}
# Saved with what seldonio/mlserver:1.7.1-sklearn has (the operator's default SKLEARN_SERVER v2 image).
MLMODEL = yaml.safe_dump({"flavors": {"python_function": {"loader_module": "mlflow.sklearn",
                                                          "python_version": "3.10.12"},
                                      "sklearn": {"pickled_model": "model.pkl", "sklearn_version": "1.5.2",
                                                  "serialization_format": "cloudpickle"}}})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- MLflow ---------------------------------------------------------------------------------


class FakeMlflow:
    """Runs by id; each run's model at ``s3://mlflow/<run>/artifacts/rf-regressor`` (MLflow 2's
    layout) unless ``models`` says otherwise; a Model Registry of versions, aliases and tags.
    ``down`` makes every call Unavailable, ``writes_down`` every registry write; ``refuse`` makes
    every registry write a 4xx with that error code."""

    def __init__(self, tracking_uri: str = MLFLOW) -> None:
        self.tracking_uri = tracking_uri
        self.runs: dict[str, Run] = {}
        self.datasets: dict[str, dict[str, Dataset]] = {}  # run -> metric -> dataset
        self.versions: dict[str, dict[str, ModelVersion]] = {}  # registered model -> version -> it
        self.aliases: dict[str, dict[str, str]] = {}  # registered model -> alias -> version
        self.version_tags: dict[tuple[str, str], dict[str, str]] = {}
        self.run_tags: dict[str, dict[str, str]] = {}
        self.down = self.writes_down = False
        self.refuse = ""
        self.calls: list[str] = []

    def add_run(self, run_id: str, metrics: Mapping[str, float | str | None], status: str = "FINISHED",
                lifecycle_stage: str = "active", datasets: Mapping[str, Dataset] | None = None) -> Run:
        run = Run(run_id, status, lifecycle_stage, f"s3://mlflow/{run_id}/artifacts", dict(metrics))
        self.runs[run_id] = run
        self.datasets[run_id] = dict(datasets or {})
        return run

    def add_version(self, name: str, run_id: str, alias: str = "") -> str:
        """Register the run's rf-regressor as the next version of ``name``; its number."""
        versions = self.versions.setdefault(name, {})
        number = str(len(versions) + 1)
        versions[number] = ModelVersion(name, number, run_id, f"runs:/{run_id}/rf-regressor")
        if alias:
            self.aliases.setdefault(name, {})[alias] = number
        return number

    def tags_of(self, name: str, version: str) -> dict[str, str]:
        return self.version_tags.get((name, version), {})

    def _check(self, what: str) -> None:
        self.calls.append(what)
        if self.down:
            raise Unavailable("mlflow", f"cannot reach MLflow at {self.tracking_uri}: ConnectionError", 1.0)

    def _write(self, what: str) -> None:
        self._check(what)
        if self.writes_down:
            raise Unavailable("mlflow", f"cannot reach MLflow at {self.tracking_uri}: ConnectionError", 1.0)
        if self.refuse:
            raise RegistryRefused(self.tracking_uri, what, 403, self.refuse)

    def get_run(self, run_id: str) -> Run:
        self._check(f"runs/get {run_id}")
        if run_id not in self.runs:
            raise RunNotFound(run_id, self.tracking_uri)
        run = self.runs[run_id]
        return Run(run.run_id, run.status, run.lifecycle_stage, run.artifact_uri, run.metrics, run.model_ids,
                   run.experiment_id, tags=dict(self.run_tags.get(run_id, {})))

    def model_candidates(self, run: Run, model_name: str) -> list[ModelLocation]:
        self._check(f"model_candidates {run.run_id}")
        return [ModelLocation(f"{run.artifact_uri}/{model_name}", "run-artifacts")]

    def metric_datasets(self, run: Run) -> dict[str, Dataset]:
        self._check(f"logged-models of {run.run_id}")
        return dict(self.datasets.get(run.run_id, {}))

    def _version(self, name: str, version: str, alias: str = "") -> ModelVersion:
        found = self.versions.get(name, {}).get(version)
        if found is None:
            raise ModelVersionNotFound(name, self.tracking_uri, version="" if alias else version, alias=alias,
                                       code="RESOURCE_DOES_NOT_EXIST")
        return ModelVersion(found.name, found.version, found.run_id, found.source, dict(self.tags_of(name, version)))

    def model_version(self, name: str, version: str) -> ModelVersion:
        self._check(f"model-versions/get {name} {version}")
        return self._version(name, version)

    def version_by_alias(self, name: str, alias: str) -> ModelVersion:
        self._check(f"registered-models/alias {name} {alias}")
        return self._version(name, self.aliases.get(name, {}).get(alias, ""), alias)

    def version_candidates(self, version: ModelVersion, run: Run) -> list[ModelLocation]:
        path = version.source.removeprefix(f"runs:/{run.run_id}/")
        return [ModelLocation(f"{run.artifact_uri}/{path}", "run-artifacts")]

    def find_versions(self, name: str, run_id: str = "", tag: tuple[str, str] | None = None) -> list[ModelVersion]:
        self._check(f"model-versions/search {name}")
        return [self._version(name, v.version) for v in self.versions.get(name, {}).values()
                if (not run_id or v.run_id == run_id) and (tag is None or self.tags_of(name, v.version).get(tag[0])
                                                           == tag[1])]

    def register(self, name: str, run: Run, location: ModelLocation) -> ModelVersion:
        self._write(f"register {name} {run.run_id}")
        return self._version(name, self.add_version(name, run.run_id))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._write(f"set alias {name} @{alias}={version}")
        self._version(name, version)
        self.aliases.setdefault(name, {})[alias] = version

    def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._write(f"set tag {name} {version} {key}")
        self._version(name, version)
        self.version_tags.setdefault((name, version), {})[key] = value

    def delete_version_tag(self, name: str, version: str, key: str) -> None:
        self._write(f"delete tag {name} {version} {key}")
        self.version_tags.get((name, version), {}).pop(key, None)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self._write(f"log-batch tags {run_id}")
        self.run_tags.setdefault(run_id, {}).update(tags)

    def delete_run_tag(self, run_id: str, key: str) -> None:
        self._write(f"delete run tag {run_id} {key}")
        self.run_tags.get(run_id, {}).pop(key, None)


# --- S3 ---------------------------------------------------------------------------------------


@dataclass
class FakeS3:
    """One S3 endpoint: buckets of key -> bytes, the key pairs it accepts, and switches."""

    endpoint: str = S3
    buckets: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"mlflow": {}, "models": {}})
    accepted: set[str] = field(default_factory=lambda: {identity(*KEYS.values())})
    down: bool = False
    writes: list[str] = field(default_factory=list)

    def put_model(self, run_id: str, files: Mapping[str, bytes] | None = None, **versions: str) -> None:
        """The run's rf-regressor; ``versions`` (sklearn=..., python=...) replace those in MLmodel."""
        prefix = f"{run_id}/artifacts/rf-regressor"
        if versions:
            mlmodel = yaml.safe_load(MLMODEL)
            mlmodel["flavors"]["sklearn"]["sklearn_version"] = versions.get("sklearn", "1.5.2")
            mlmodel["flavors"]["python_function"]["python_version"] = versions.get("python", "3.10.12")
            files = {"MLmodel": yaml.safe_dump(mlmodel).encode(), "model.pkl": b"pickled " + run_id.encode(),
                     **(files or {})}
        for path, data in (files or {"MLmodel": MLMODEL.encode(), "model.pkl": b"pickled " + run_id.encode()}).items():
            self.buckets["mlflow"][f"{prefix}/{path}"] = data


class FakeStore:
    """:class:`promoter.artifacts.ObjectStore` over a :class:`FakeS3`."""

    def __init__(self, s3: FakeS3, access_key: str, secret_key: str, who: str) -> None:
        self.s3, self.who, self.endpoint, self.retry_delay, self.timeout = s3, who, s3.endpoint, 1.0, 1.0
        self.identity = identity(access_key, secret_key)

    def _check(self, what: str, bucket: str) -> dict[str, bytes]:
        if self.s3.down:
            raise Unavailable("s3", f"cannot reach S3 at {self.endpoint} for {what}: ConnectionError", 1.0)
        if self.identity not in self.s3.accepted:
            raise CredentialsProblem(self.who, f"S3 at {self.endpoint} refused it for {what} (AccessDenied)")
        if bucket not in self.s3.buckets:
            raise Unavailable("s3", f"bucket {bucket!r} does not exist at {self.endpoint} (create it)", 60.0)
        return self.s3.buckets[bucket]

    def same_as(self, other: ObjectStore) -> bool:
        return isinstance(other, FakeStore) and other.s3 is self.s3 and other.identity == self.identity

    def list(self, bucket: str, prefix: str, limit: int | None = None) -> dict[str, FileEntry]:
        prefix = prefix.rstrip("/") + "/"
        objects = self._check(f"listing s3://{bucket}/{prefix}", bucket)
        found = {k[len(prefix):]: FileEntry(k[len(prefix):], len(v), etag=hashlib.md5(v).hexdigest())
                 for k, v in sorted(objects.items()) if k.startswith(prefix)}
        return dict(list(found.items())[: limit + 1]) if limit is not None else found

    def read(self, bucket: str, key: str, limit: int = 4 * 1024 * 1024) -> bytes | None:
        data = self._check(f"reading s3://{bucket}/{key}", bucket).get(key)
        return None if data is None else data[:limit]

    def hash(self, bucket: str, key: str, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
        data = self._check(f"reading s3://{bucket}/{key}", bucket)[key]
        if on_chunk:
            on_chunk(len(data))
        return hashlib.sha256(data).hexdigest(), len(data)

    def copy_within(self, bucket: str, key: str, src_bucket: str, src_key: str, size: int) -> None:
        data = self._check(f"copying {src_key}", src_bucket)[src_key]
        self._check(f"copying {src_key}", bucket)[key] = data
        self.s3.writes.append(f"{bucket}/{key}")

    @contextlib.contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        yield io.BytesIO(self._check(f"reading s3://{bucket}/{key}", bucket)[key])

    def put_stream(self, bucket: str, key: str, data: BinaryIO, size: int) -> None:
        self.put(bucket, key, data.read(size), "application/octet-stream")

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self._check(f"writing s3://{bucket}/{key}", bucket)[key] = bytes(data)
        self.s3.writes.append(f"{bucket}/{key}")


# --- the API server ---------------------------------------------------------------------------

SECRET, SELDON, PROMOTION = "secrets", "seldondeployments", "modelpromotions"
DEPLOYMENTS, PODS, SLICES = "deployments", "pods", "endpointslices"


def _matches(obj: Mapping[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",") if term))


class FakeKube:
    """Objects by (resource, namespace, name); ``requests`` lists (verb, resource, name) of each
    call; ``events`` the Events posted; ``fail`` maps (verb, resource) to an error to raise."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.events: list[dict[str, Any]] = []
        self.fail: dict[tuple[str, str], Exception] = {}
        self._rv = itertools.count(1)

    # set-up and reading back, outside the request log
    def put(self, resource: str, namespace: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update(namespace=namespace, name=name, resourceVersion=str(next(self._rv)))
        if resource == SECRET and "stringData" in obj:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in obj.pop("stringData").items()}
            obj["data"] = {**obj.get("data", {}), **data}
        self.objects[(resource, namespace, name)] = obj
        return obj

    def put_secret(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        self.put(SECRET, namespace, name, {"type": "Opaque", "stringData": dict(data)})

    def obj(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((resource, namespace, name))

    def writes(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] in ("create", "patch")]

    def _request(self, verb: str, resource: str, name: str) -> None:
        self.requests.append((verb, resource, name))
        error = self.fail.get((verb, resource))
        if error is not None:
            raise error

    # KubeApi
    def secret_data(self, namespace: str, name: str, field: str) -> dict[str, str]:
        self._request("get", SECRET, name)
        secret = self.obj(SECRET, namespace, name)
        if secret is None:
            raise CredentialsProblem(f"{namespace}/{name} ({field})", "not found")
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def _ensure(self, resource: str, namespace: str, name: str, merge: Merge) -> str:
        self._request("get", resource, name)
        existing = self.obj(resource, namespace, name)
        body = merge(copy.deepcopy(existing) if existing else None)
        if body is None:
            return "unchanged"
        if existing is None:
            self._request("create", resource, name)
            self.put(resource, namespace, name, body)
            return "created"
        self._request("patch", resource, name)
        patched = dict(body)
        if resource == SECRET and "stringData" in patched:
            data = {k: base64.b64encode(v.encode()).decode() for k, v in patched.pop("stringData").items()}
            patched["data"] = data
        self.put(resource, namespace, name, merge_patch(existing, patched))
        return "patched"

    def ensure_secret(self, namespace: str, name: str, merge: Merge) -> str:
        return self._ensure(SECRET, namespace, name, merge)

    def get_seldon(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._request("get", SELDON, name)
        found = self.obj(SELDON, namespace, name)
        return copy.deepcopy(found) if found else None

    def ensure_seldon(self, namespace: str, name: str, merge: Merge) -> str:
        return self._ensure(SELDON, namespace, name, merge)

    def get_promotion(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._request("get", PROMOTION, name)
        found = self.obj(PROMOTION, namespace, name)
        return copy.deepcopy(found) if found else None

    def iter_promotions(self, namespace: str, selector: str = "", page: int = 100) -> Iterator[dict[str, Any]]:
        self._request("list", PROMOTION, "")
        for (resource, ns, _), obj in sorted(self.objects.items()):
            if resource == PROMOTION and ns == namespace:
                yield copy.deepcopy(obj)

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._request("patch", PROMOTION + "/status", name)
        obj = self.obj(PROMOTION, namespace, name)
        if obj is not None:
            obj["status"] = merge_patch(obj.get("status") or {}, dict(status))

    def list_objects(self, kind: str, namespace: str, selector: str) -> list[dict[str, Any]]:
        self._request("list", kind, "")
        return [copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items())
                if r == kind and ns == namespace and _matches(o, selector)]

    def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   action: str = "Reconcile") -> None:
        self._request("create", "events", "")
        self.events.append({"name": (obj.get("metadata") or {}).get("name"), "type": type_, "reason": reason,
                            "message": message, "action": action})


# --- a cluster of fakes, and kopf's part ------------------------------------------------------


@dataclass
class World:
    """An operator context over the fakes, with a namespace that has the storage Secret."""

    settings: Settings = field(default_factory=lambda: Settings(
        tracking_uri=MLFLOW, storage_endpoint=S3, retry_delay=1.0, run_wait_timeout=60.0))
    kube: FakeKube = field(default_factory=FakeKube)
    mlflow: FakeMlflow = field(default_factory=FakeMlflow)
    s3: FakeS3 = field(default_factory=FakeS3)
    namespace: str = "ns"
    metrics: Metrics = field(default_factory=Metrics)
    ctx: Context = field(init=False)

    def __post_init__(self) -> None:
        self.kube.put_secret(self.namespace, self.settings.storage_secret, KEYS)
        self.restart()

    def restart(self) -> None:
        """A new operator process: nothing kept in memory, the same cluster and servers."""
        stores: dict[str, FakeS3] = {self.s3.endpoint: self.s3}

        def store(endpoint: str, access: str, secret: str, who: str) -> ObjectStore:
            return FakeStore(stores[endpoint.rstrip("/")], access, secret, who)

        def mlflow(uri: str, auth: Auth) -> FakeMlflow:
            assert uri.rstrip("/") == self.mlflow.tracking_uri, uri
            return self.mlflow

        self.ctx = Context(self.settings, self.kube, self.metrics, Ownership(self.kube), mlflow, store)

    def apply(self, name: str, run_id: str | None, deployment: str = "sd", gates: list[dict[str, Any]] | None = None,
              source: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
              **target: Any) -> dict[str, Any]:
        """Create the promotion, or change its spec (a new generation), as kubectl apply does.
        ``source`` replaces the runId source (a registeredModel); ``extra`` adds spec fields
        (registry, compatibility)."""
        spec = {
            "source": source if source is not None else {"runId": run_id},
            "gates": gates if gates is not None else [{"metric": "rmse", "op": "LessThan", "threshold": 1}],
            "target": {"storage": {"bucket": "models", "prefix": "rf"},
                       "seldonDeployment": {"name": deployment, **target}},
            **(extra or {}),
        }
        current = self.kube.obj(PROMOTION, self.namespace, name)
        if current is None:
            body = {"apiVersion": "mlops.dev/v1alpha1", "kind": "ModelPromotion",
                    "metadata": {"generation": 1, "uid": f"uid-{name}"}, "spec": spec}
            return self.kube.put(PROMOTION, self.namespace, name, body)
        current["spec"] = spec
        current["metadata"]["generation"] += 1
        return current

    def body(self, name: str) -> dict[str, Any]:
        found = self.kube.obj(PROMOTION, self.namespace, name)
        assert found is not None, name
        return copy.deepcopy(found)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.body(name).get("status") or {})

    def reconcile(self, name: str, waited: float = 0.0, roll_out: bool = True) -> Outcome:
        """One handler call as kopf makes it: the outcome's status patched, its Events posted;
        the retry or rejection is returned for the test to look at. With ``roll_out``, a
        rollout the handler starts is then rolled out (:meth:`roll_out`) and looked at until it
        has a verdict, as the operator's tracker does; the outcome returned holds every look's
        Events and the last one's status, retry and rejection."""
        outcome = self.look(name, waited)
        events = list(outcome.events)
        for _ in range(10):
            if outcome.watch is None or not roll_out:
                break
            self.roll_out(self.body(name)["spec"]["target"]["seldonDeployment"]["name"])
            outcome = self.look(name)
            events += outcome.events
        return Outcome(outcome.status, events, outcome.retry, outcome.rejected, outcome.watch)

    def look(self, name: str, waited: float = 0.0) -> Outcome:
        """One reconcile of the promotion as stored: status patched, Events posted."""
        from promoter import promotion

        body = self.body(name)
        outcome = promotion.reconcile(self.ctx, body, waited)
        if outcome.status:
            self.kube.patch_status(self.namespace, name, outcome.status)
        for event in outcome.events:
            self.kube.post_event(body, event.type, event.reason, event.message, event.action)
        return outcome

    def roll_out(self, deployment: str = "sd", ready: bool = True, pod: dict[str, Any] | None = None) -> None:
        """What Seldon's controller and Kubernetes' would make of the SeldonDeployment now: its
        predictor's Deployment loading the SeldonDeployment's modelUri, rolled out (``ready``) or
        not, with one Pod (``pod``: its status) per replica; no input example unless the test
        put one, so the smoke test has nothing to send."""
        sd = self.kube.obj(SELDON, self.namespace, deployment)
        assert sd is not None, deployment
        predictor = sd["spec"]["predictors"][0]
        uri, replicas = predictor["graph"]["modelUri"], int(predictor.get("replicas", 1))
        labels = {"seldon-deployment-id": deployment, "seldon-app": f"{deployment}-{predictor['name']}"}
        template = {"initContainers": [{"name": "model-model-initializer", "args": [uri, "/mnt/models"]}],
                    "containers": [{"name": "model"}]}
        name = f"{deployment}-{predictor['name']}-0-model"
        old = self.kube.obj(DEPLOYMENTS, self.namespace, name)
        generation = (old or {}).get("metadata", {}).get("generation", 0) + 1
        counts = ({"updatedReplicas": replicas, "replicas": replicas, "availableReplicas": replicas} if ready
                  else {"updatedReplicas": replicas, "replicas": replicas + 1, "availableReplicas": 1})
        self.kube.put(DEPLOYMENTS, self.namespace, name, {
            "metadata": {"labels": labels, "generation": generation},
            "spec": {"replicas": replicas, "template": {"spec": template}},
            "status": {"observedGeneration": generation, **counts}})
        for i in range(replicas):
            self.kube.put(PODS, self.namespace, f"{name}-{i}", {
                "metadata": {"labels": labels}, "spec": template,
                "status": pod or {"phase": "Running", "containerStatuses": [{"name": "model", "ready": ready,
                                                                              "restartCount": 0}]}})

    def sweep(self) -> int:
        from promoter import drift

        return drift.sweep(self.ctx, self.namespace)

    def served_by(self, deployment: str = "sd") -> str | None:
        sd = self.kube.obj(SELDON, self.namespace, deployment)
        return None if sd is None else sd["metadata"]["annotations"]["mlops.dev/promotion"]

    def events(self, name: str) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.kube.events if e["name"] == name]

    def counter(self, metric: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(metric, labels)
        return float(value or 0.0)


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


__all__ = ["KEYS", "RUN_A", "RUN_B", "FakeKube", "FakeMlflow", "FakeS3", "FakeStore", "World", "condition",
           "merge_patch"]
