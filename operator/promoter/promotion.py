"""One reconcile of a ModelPromotion, for create, update, resume and the drift sweep alike.

A new generation of the spec goes through every step::

    parse spec -> run on MLflow (finished?) -> gates -> find the model, read MLmodel
      -> verified copy under <prefix>/<runId>/ (or reuse one) -> rclone Secret
      -> SeldonDeployment (marks the promotion it took over from Superseded) -> Promoted

A generation already decided is cheap: Rejected and Superseded stay as they are; Promoted
checks that its copy still matches the manifest and its children still say what it wrote,
restoring a deleted or edited child, and writing nothing when all is in order.

The outcome is data (status fields, Events, whether to retry); ``handlers`` applies it.
"""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import faults, gates, seldon
from .artifacts import Copier, CopyResult, FileEntry, ModelFolder, Store, locate
from .config import Settings
from .errors import (
    ArtifactTampered,
    CredentialsProblem,
    GatesFailed,
    ModelTooLarge,
    PromoterError,
    Rejected,
    RunNotFinished,
    RunNotUsable,
    RunTimedOut,
    Waiting,
)
from .kube import Kube
from .metrics import Metrics
from .mlflow_source import Auth, MlflowClient
from .spec import (
    Artifact,
    Condition,
    ModelPromotionSpec,
    Phase,
    Progress,
    PromotionStatus,
    model_uri,
    object_prefix,
    parse_spec,
    set_condition,
)

PROMOTION_ANNOTATION = "mlops.dev/promotion"
RUN_ANNOTATION = "mlops.dev/run-id"
DIGEST_ANNOTATION = "mlops.dev/artifact-digest"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PROGRESS_EVERY = 2.0  # seconds between progress patches while copying


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)  # changed status fields only
    events: list[Event] = field(default_factory=list)
    retry: Waiting | None = None
    rejected: Rejected | None = None


class Owners:
    """Which promotion each SeldonDeployment was last seen naming, as this process wrote or
    read it: the operator runs as one replica, so a promotion that says Promoted while another
    one has since written its deployment is noticed without an API request. Reads and writes of
    one deployment go through :meth:`holding`, so the record follows the order of the writes
    (and this process's own writes of a deployment never conflict with each other)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[tuple[str, str], str] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def holding(self, namespace: str, deployment: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault((namespace, deployment), threading.Lock())

    def saw(self, namespace: str, deployment: str, owner: str | None) -> None:
        if owner:
            with self._lock:
                self._owner[(namespace, deployment)] = owner

    def get(self, namespace: str, deployment: str) -> str | None:
        with self._lock:
            return self._owner.get((namespace, deployment))


@dataclass
class Context:
    settings: Settings
    kube: Kube
    metrics: Metrics
    owners: Owners = field(default_factory=Owners)
    promoted: Callable[[str, str], Mapping[str, Any] | None] = lambda namespace, name: None
    """namespace, name -> the promotion's status when the watch last said Promoted, else None."""


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Status:
    """The status being built: starts from what is stored, diffs against it at the end."""

    def __init__(self, stored: Mapping[str, Any], generation: int) -> None:
        self.stored = {k: v for k, v in stored.items() if k != "kopf"}
        self.model = PromotionStatus.model_validate(self.stored) if self.stored else PromotionStatus()
        self.generation = generation
        self.clear: set[str] = set()

    def condition(self, type_: str, status: str, reason: str, message: str = "") -> None:
        self.model.conditions = set_condition(
            self.model.conditions,
            Condition(type=type_, status=status, reason=reason, message=message,  # type: ignore[arg-type]
                      observed_generation=self.generation),
            now(),
        )

    def changes(self) -> dict[str, Any]:
        new = self.model.model_dump(by_alias=True, exclude_none=True, mode="json")
        out = {k: v for k, v in new.items() if self.stored.get(k) != v}
        for key in self.clear:  # a merge patch null deletes; harmless when absent
            if key not in new:
                out[key] = None
        return out


def reconcile(ctx: Context, body: Mapping[str, Any], waited: float) -> Outcome:
    """``waited``: seconds this generation has been retried for (kopf's runtime)."""
    meta = body.get("metadata", {})
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    generation = int(meta.get("generation") or 0)
    st = _Status(body.get("status") or {}, generation)
    settled = st.model.observed_generation == generation
    try:
        spec = parse_spec(body.get("spec") or {})
        if settled and st.model.phase is Phase.SUPERSEDED:
            return _check_superseded(ctx, namespace, name, spec, st)
        if settled and st.model.phase in (Phase.REJECTED, Phase.FAILED):
            return Outcome()
        if settled and st.model.phase is Phase.PROMOTED:
            return _check_promoted(ctx, namespace, name, spec, st)
        return _promote(ctx, namespace, name, spec, st, waited)
    except Rejected as e:
        return _rejected(ctx, st, e)
    except Waiting as e:
        return _waiting(ctx, st, e)


# --- outcomes ---------------------------------------------------------------------------


def _rejected(ctx: Context, st: _Status, e: Rejected) -> Outcome:
    phase = Phase.FAILED if e.reason == "ArtifactTampered" else Phase.REJECTED
    before = (st.model.phase, st.model.message)
    st.model.phase, st.model.message = phase, e.message
    st.model.observed_generation = st.generation
    st.model.progress = None
    st.clear.add("progress")
    st.condition("Ready", "False", e.reason, e.message)
    st.condition("Reconciling", "False", e.reason)
    st.condition("Stalled", "True", e.reason, e.message)
    if e.reason == "GatesFailed":
        st.condition("GatesPassed", "False", "GatesFailed", e.message)
    ctx.metrics.outcome(phase.value)
    events = [] if before == (phase, e.message) else [Event("Warning", e.reason, e.message)]
    return Outcome(st.changes(), events, rejected=e)


def _waiting(ctx: Context, st: _Status, e: Waiting) -> Outcome:
    ctx.metrics.upstream_error(e.upstream)
    before = next((c.reason for c in st.model.conditions if c.type == "Reconciling"), None)
    st.model.message = e.message
    st.condition("Ready", "False", e.reason, e.message)
    st.condition("Reconciling", "True", e.reason, e.message)
    st.condition("Stalled", "False", e.reason)
    events = [] if before == e.reason else [Event("Normal", e.reason, e.message)]
    return Outcome(st.changes(), events, retry=e)


# --- a new generation -------------------------------------------------------------------


def _promote(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, st: _Status,
             waited: float) -> Outcome:
    s = ctx.settings
    st.model.run_id = spec.source.run_id
    st.model.deployment = spec.target.seldon_deployment.name
    if st.model.phase in (Phase.PROMOTED, Phase.REJECTED, Phase.SUPERSEDED, Phase.FAILED):
        st.model.phase = Phase.PENDING  # a new generation starts over
    st.model.superseded_by = None
    st.clear.add("supersededBy")

    mlflow_env = _secret(ctx, namespace, spec.source.credentials_secret_ref, "spec.source.credentialsSecretRef")
    tracking_uri = spec.source.tracking_uri or s.tracking_uri
    client = MlflowClient(tracking_uri, s.http_timeout, _auth(mlflow_env), s.retry_delay)
    try:
        run = client.get_run(spec.source.run_id)
        if run.lifecycle_stage == "deleted":
            raise RunNotUsable(run.run_id, "deleted", "restore it in MLflow or promote another run")
        if run.status in ("FAILED", "KILLED"):
            raise RunNotUsable(run.run_id, run.status)
        if run.status != "FINISHED":
            if waited > s.run_wait_timeout:
                raise RunTimedOut(run.run_id, waited)
            raise RunNotFinished(run.run_id, run.status, delay=min(30.0, s.retry_delay * 3))

        verdict = gates.evaluate(spec.gates, run.metrics)
        st.model.gates = list(verdict.results)
        st.model.gate_summary = verdict.summary
        if not verdict.passed:
            raise GatesFailed(verdict.message)
        st.condition("GatesPassed", "True", "GatesPassed", verdict.message)
        faults.checkpoint("after-gates")

        keys = _storage_keys(ctx, namespace, spec)
        target, source_store = _stores(ctx, namespace, spec, keys, mlflow_env)
        candidates = [(source_store, loc.uri) for loc in client.model_candidates(run, spec.source.model_name)]
    finally:
        client.close()
    folder, files = locate(candidates, run.run_id, spec.source.model_name)
    check_limits(files, s, f"model {spec.source.model_name!r} of run {run.run_id} (spec.source.modelName)")
    mlmodel = yaml.safe_load(folder.read("MLmodel") or b"") or {}
    seldon.check_model_compatibility(mlmodel if isinstance(mlmodel, dict) else {}, list(files),
                                     spec.target.seldon_deployment.implementation,
                                     spec.target.seldon_deployment.protocol)

    copier = Copier(target, spec.target.storage.bucket, object_prefix(spec), s.copy_concurrency)
    result = _copy(ctx, namespace, name, copier, folder, files, spec)
    st.model.model_uri = model_uri(spec)
    st.model.artifact = Artifact(files=result.files, bytes=result.bytes, digest=result.digest,
                                 manifest=result.manifest_key)
    st.model.progress = None
    st.clear.add("progress")
    st.condition("ArtifactCopied", "True", "Verified" if result.mode != "reused" else "Reused",
                 f"{result.files} files, {result.bytes} bytes at {st.model.model_uri} ({result.mode})")

    _, previous = _deploy(ctx, namespace, name, spec, result.digest, keys)
    # Another promotion of the same deployment may have written it after us (this process did
    # it, so it knows without a request): the later one wins, so say Superseded now.
    now_serving = ctx.owners.get(namespace, spec.target.seldon_deployment.name) or name
    if now_serving != name:
        st.model.observed_generation = st.generation
        message = _superseded(st, now_serving, spec.target.seldon_deployment.name)
        return Outcome(st.changes(), [Event("Normal", "Superseded", message)])
    message = (f"promoted: {verdict.message.removeprefix('gates passed: ')}; "
               f"{spec.target.seldon_deployment.name} now serves run {spec.source.run_id}")
    if previous:  # said in the one Event: an Event is an API request too
        message += f" (taken over from ModelPromotion {previous})"
    st.model.phase = Phase.PROMOTED
    st.model.message = message
    st.model.observed_generation = st.generation
    st.condition("Deployed", "True", "Deployed",
                 f"SeldonDeployment {spec.target.seldon_deployment.name} serves {st.model.model_uri}")
    st.condition("Ready", "True", "Promoted", message)
    st.condition("Reconciling", "False", "Promoted")
    st.condition("Stalled", "False", "Promoted")
    events = [Event("Normal", "Promoted", message)]
    ctx.metrics.outcome(Phase.PROMOTED.value)
    return Outcome(st.changes(), events)


def check_limits(files: Mapping[str, FileEntry], settings: Settings, what: str) -> None:
    """Reject a model folder over the operator's bounds before a byte is copied."""
    if len(files) > settings.max_files:
        raise ModelTooLarge(what, len(files), "files", "PROMOTER_MAX_FILES", settings.max_files)
    total = sum(f.size for f in files.values())
    if total > settings.max_bytes:
        raise ModelTooLarge(what, total, "bytes", "PROMOTER_MAX_BYTES", settings.max_bytes)


def _secret(ctx: Context, namespace: str, ref: Any, field_path: str) -> dict[str, str]:
    if ref is None:
        return {}
    return ctx.kube.secret_data(namespace, ref.name, field_path)


def _auth(env: Mapping[str, str]) -> Auth:
    return Auth(env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", ""),
                env.get("MLFLOW_TRACKING_TOKEN", ""))


def _storage_keys(ctx: Context, namespace: str, spec: ModelPromotionSpec | None) -> tuple[str, str, str]:
    """The target storage keys of the spec, or the operator's default ones when spec is None."""
    ref = spec.target.storage.credentials_secret_ref if spec else None
    name = ref.name if ref else ctx.settings.storage_secret
    field_path = "spec.target.storage.credentialsSecretRef" if ref else "operator default PROMOTER_STORAGE_SECRET"
    data = ctx.kube.secret_data(namespace, name, field_path)
    missing = [k for k in S3_KEYS if not data.get(k)]
    if missing:
        raise CredentialsProblem(f"{namespace}/{name} ({field_path})", f"has no key {', '.join(missing)}")
    return data[S3_KEYS[0]], data[S3_KEYS[1]], f"{namespace}/{name}"


def _stores(ctx: Context, namespace: str, spec: ModelPromotionSpec, keys: tuple[str, str, str],
            mlflow_env: Mapping[str, str]) -> tuple[Store, Store]:
    s = ctx.settings
    access, secret, who = keys
    endpoint = spec.target.storage.endpoint or s.storage_endpoint
    target = Store(endpoint, access, secret, who, s.http_timeout, s.retry_delay)
    src_endpoint = mlflow_env.get("MLFLOW_S3_ENDPOINT_URL") or s.artifact_s3_endpoint
    if all(mlflow_env.get(k) for k in S3_KEYS):
        ref = spec.source.credentials_secret_ref
        source = Store(src_endpoint, mlflow_env[S3_KEYS[0]], mlflow_env[S3_KEYS[1]],
                       f"{namespace}/{ref.name if ref else ''}", s.http_timeout, s.retry_delay)
    elif src_endpoint.rstrip("/") == endpoint.rstrip("/"):
        source = Store(src_endpoint, access, secret, who, s.http_timeout, s.retry_delay)
    else:  # the default artifact store goes with the operator's default keys
        source = Store(src_endpoint, *_storage_keys(ctx, namespace, None), s.http_timeout, s.retry_delay)
    return target, source


def _copy(ctx: Context, namespace: str, name: str, copier: Copier, folder: ModelFolder,
          files: Mapping[str, Any], spec: ModelPromotionSpec) -> CopyResult:
    reused = copier.existing(dict(files))
    if reused is not None:
        return reused
    lock, last = threading.Lock(), [time.monotonic()]

    def report(files_done: int, files_total: int, bytes_done: int, bytes_total: int) -> None:
        # Every PROGRESS_EVERY seconds at most; a copy shorter than that writes no progress at
        # all (the final status says it all, and the write would sit on the critical path).
        with lock:
            if time.monotonic() - last[0] < PROGRESS_EVERY:
                return
            last[0] = time.monotonic()
        ctx.kube.patch_status(namespace, name, {
            "phase": Phase.COPYING.value,
            "message": f"copying {files_total} files ({bytes_total} bytes) to {copier.uri}",
            "progress": Progress(files_done=files_done, files_total=files_total, bytes_done=bytes_done,
                                 bytes_total=bytes_total).model_dump(by_alias=True)})

    started = time.monotonic()
    result = copier.copy(folder, dict(files), {"runId": spec.source.run_id,
                                               "modelName": spec.source.model_name}, report)
    ctx.metrics.copied(result.mode, result.bytes, time.monotonic() - started)
    return result


def _rclone_merge(desired: dict[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any] | None]:
    def merge(existing: dict[str, Any] | None) -> dict[str, Any] | None:
        if existing is None:
            return desired
        have = {k: base64.b64decode(v).decode(errors="replace") for k, v in (existing.get("data") or {}).items()}
        labels = (existing.get("metadata") or {}).get("labels") or {}
        want_labels = desired["metadata"]["labels"]
        if all(have.get(k) == v for k, v in desired["stringData"].items()) and \
                all(labels.get(k) == v for k, v in want_labels.items()):
            return None
        return {"metadata": {"labels": want_labels}, "stringData": desired["stringData"]}

    return merge


def _deploy(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, digest: str,
            keys: tuple[str, str, str]) -> tuple[bool, str | None]:
    """Write the rclone Secret, then the SeldonDeployment; mark the promotion it took the
    deployment from Superseded. Returns whether a child was written, and that promotion."""
    access, secret, _ = keys
    target = spec.target.seldon_deployment
    endpoint = spec.target.storage.endpoint or ctx.settings.storage_endpoint
    secret_body = seldon.render_rclone_secret(target.secret_name, namespace, endpoint, access, secret, {})
    wrote = ctx.kube.ensure_secret(namespace, target.secret_name, _rclone_merge(secret_body)) != "unchanged"
    faults.checkpoint("after-secret")

    annotations = {PROMOTION_ANNOTATION: name, RUN_ANNOTATION: spec.source.run_id, DIGEST_ANNOTATION: digest}
    desired = seldon.render_seldon_deployment(target, namespace, model_uri(spec), {}, annotations)
    taken_from: list[str] = []  # the promotion the deployment named before this write

    def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
        owner = ((have or {}).get("metadata", {}).get("annotations") or {}).get(PROMOTION_ANNOTATION)
        taken_from[:] = [str(owner)] if owner and owner != name else []
        return seldon.merge_owned(have, desired)

    with ctx.owners.holding(namespace, target.name):
        written = ctx.kube.ensure_seldon(namespace, target.name, merge)
        ctx.owners.saw(namespace, target.name, name)  # written, or already naming this promotion
    faults.checkpoint("after-seldon")
    if written == "unchanged":
        return wrote, None
    previous = taken_from[0] if taken_from else None
    if previous is not None:
        _supersede(ctx, namespace, previous, name, target.name)
    return True, previous


def _supersede(ctx: Context, namespace: str, other: str, by: str, deployment: str) -> None:
    """Mark ``other`` Superseded when its last status seen on the watch says Promoted. When it
    does not (yet), it is still being promoted and its own decision reads that ``by`` wrote the
    deployment after it; or its Promoted status lands after this write, and the watch event
    that brings it gets it re-checked (:func:`recheck_owner`)."""
    stored = ctx.promoted(namespace, other)
    if stored is None:
        return
    st = _Status(stored, int(stored.get("observedGeneration") or 0))
    _superseded(st, by, deployment)
    ctx.kube.patch_status(namespace, other, st.changes())


def _superseded(st: _Status, by: str, deployment: str) -> str:
    message = f"superseded by ModelPromotion {by}, which now serves {deployment}"
    st.model.phase, st.model.message, st.model.superseded_by = Phase.SUPERSEDED, message, by
    st.condition("Ready", "False", "Superseded", message)
    st.condition("Deployed", "False", "Superseded", message)
    st.condition("Reconciling", "False", "Superseded")
    st.condition("Stalled", "False", "Superseded")
    return message


# --- a generation already promoted --------------------------------------------------------


def _owner(ctx: Context, namespace: str, deployment: str) -> str | None:
    """The promotion the SeldonDeployment names now (None when it or the annotation is absent)."""
    with ctx.owners.holding(namespace, deployment):
        current = ctx.kube.get_seldon(namespace, deployment)
        owner = ((current or {}).get("metadata", {}).get("annotations") or {}).get(PROMOTION_ANNOTATION)
        ctx.owners.saw(namespace, deployment, owner)
    return str(owner) if owner else None


def recheck_owner(ctx: Context, body: Mapping[str, Any]) -> Outcome:
    """A promotion whose status says Promoted while this process has since written its
    SeldonDeployment for another promotion: say Superseded. Two promotions of one deployment
    finishing together otherwise race: the later one writes the deployment before the earlier
    one's own final status lands, and that status says Promoted. No request is made; a person
    who edits the deployment's annotation is noticed by the drift sweep."""
    meta = body.get("metadata", {})
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    deployment = str((((body.get("spec") or {}).get("target") or {}).get("seldonDeployment") or {}).get("name"))
    owner = ctx.owners.get(namespace, deployment)
    if owner is None or owner == name:
        return Outcome()
    st = _Status(body.get("status") or {}, int(meta.get("generation") or 0))
    _superseded(st, owner, deployment)
    return Outcome(st.changes())


def _check_superseded(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec,
                      st: _Status) -> Outcome:
    """Superseded is read off the SeldonDeployment: when it still names this promotion (two
    promotions finishing within milliseconds can each mark the other), this one serves."""
    target = spec.target.seldon_deployment
    if _owner(ctx, namespace, target.name) != name:
        return Outcome()
    message = (f"{target.name} serves run {spec.source.run_id} of this promotion "
               f"(it had been marked superseded by {st.model.superseded_by})")
    st.model.phase, st.model.message, st.model.superseded_by = Phase.PROMOTED, message, None
    st.clear.add("supersededBy")
    st.condition("Deployed", "True", "Deployed", message)
    st.condition("Ready", "True", "Promoted", message)
    return Outcome(st.changes(), [Event("Normal", "Reclaimed", message)])


def _check_promoted(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec,
                    st: _Status) -> Outcome:
    target = spec.target.seldon_deployment
    owner = _owner(ctx, namespace, target.name)
    if owner and owner != name:
        message = _superseded(st, owner, target.name)
        return Outcome(st.changes(), [Event("Normal", "Superseded", message)])
    keys = _storage_keys(ctx, namespace, spec)
    s = ctx.settings
    store = Store(spec.target.storage.endpoint or s.storage_endpoint, *keys, s.http_timeout, s.retry_delay)
    copier = Copier(store, spec.target.storage.bucket, object_prefix(spec), s.copy_concurrency)
    result = copier.existing()  # ArtifactTampered propagates: reported, serving left alone
    if result is None:
        raise ArtifactTampered(copier.uri, "the manifest is gone")
    restored, _ = _deploy(ctx, namespace, name, spec, result.digest, keys)
    events = []
    if restored:
        events.append(Event("Normal", "Restored", f"restored the rclone Secret or SeldonDeployment "
                            f"{target.name} to serve {model_uri(spec)}"))
    return Outcome(st.changes(), events)


__all__ = ["Context", "Event", "Outcome", "Owners", "PromoterError", "check_limits", "reconcile", "recheck_owner"]
