"""One reconcile of a ModelPromotion, for create, update, resume and the drift sweep alike.

A new generation of the spec goes through every step::

    parse spec -> run on MLflow (finished?) -> gates -> find the model, read MLmodel
      -> verified copy under <prefix>/<runId>/ (or reuse one) -> rclone Secret
      -> SeldonDeployment + own status Promoted + the previous one Superseded (ownership.take)

A generation already decided is cheap: Rejected and Failed stay as they are; Promoted and
Superseded are checked against the SeldonDeployment (``ownership`` says who serves it). A
Promoted one also checks that its copy still matches the manifest and its children still say
what it wrote, restoring a deleted or edited child and writing nothing when all is in order. A
problem found there (a Secret gone, S3 refusing) never demotes it: the model keeps serving,
``Ready=False`` (reason Degraded) says what is wrong, and the check is retried.

The outcome is data (status, Events, whether to retry); ``handlers`` applies it. The gateways
come from the :class:`~promoter.context.Context`, so all of this runs over in-memory fakes in
the unit tests.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import candidate, faults, gates, registry, seldon, status
from .artifacts import Copier, CopyResult, ObjectStore
from .config import Settings
from .context import Context
from .errors import (
    ArtifactTampered,
    CredentialsProblem,
    GatesFailed,
    InvalidSpec,
    ModelVersionNotFound,
    Rejected,
    RunNotFinished,
    RunNotUsable,
    RunTimedOut,
    Unavailable,
    Waiting,
)
from .mlflow_source import Auth, MlflowApi, ModelLocation, ModelVersion, Run
from .ownership import PROMOTION_ANNOTATION, RUN_ANNOTATION, Check
from .spec import (
    Artifact,
    ModelPromotionSpec,
    ModelVersionRef,
    Phase,
    Progress,
    model_uri,
    object_prefix,
    parse_spec,
)
from .status import Draft, Event, Outcome

DIGEST_ANNOTATION = "mlops.dev/artifact-digest"
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
PROGRESS_EVERY = 2.0  # seconds between progress patches while copying
DECIDED = (Phase.PROMOTED, Phase.REJECTED, Phase.SUPERSEDED, Phase.FAILED)
CHECKED = (Phase.PROMOTED, Phase.SUPERSEDED)  # settled phases that are checked against the deployment

Keys = tuple[str, str, str]
"""access key, secret key, the Secret they came from (namespace/name)."""


def reconcile(ctx: Context, body: Mapping[str, Any], waited: float) -> Outcome:
    """``waited``: seconds this generation has been retried for (kopf's runtime)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    draft = Draft.of(body)
    settled = draft.settled and draft.model.phase in DECIDED
    try:
        spec = parse_spec(body.get("spec") or {})
    except InvalidSpec as e:
        if settled and draft.model.phase is Phase.PROMOTED:
            return _degraded(draft, e, "it cannot be checked until the spec is fixed", retry=False)
        return _rejected(ctx, draft, e) if not settled else Outcome()
    if settled and draft.model.phase in CHECKED:
        return _check(ctx, namespace, name, spec, draft)
    if settled:
        return Outcome()  # Rejected or Failed: nothing changes until the spec does
    try:
        return _promote(ctx, namespace, name, spec, draft, waited)
    except Rejected as e:
        return _rejected(ctx, draft, e)
    except Waiting as e:
        return _waiting(ctx, draft, e)


# --- outcomes ---------------------------------------------------------------------------


def _rejected(ctx: Context, draft: Draft, e: Rejected) -> Outcome:
    before = (draft.model.phase, draft.model.message)
    phase = status.rejected(draft, e)
    if isinstance(e, GatesFailed):
        draft.condition("GatesPassed", "False", e.reason, e.message)
    ctx.metrics.outcome(phase.value)
    events = [] if before == (phase, e.message) else [Event("Warning", e.reason, e.message)]
    return Outcome(draft.patch(), events, rejected=e)


def _waiting(ctx: Context, draft: Draft, e: Waiting) -> Outcome:
    if isinstance(e, Unavailable):
        ctx.metrics.upstream_error(e.upstream)
    news = status.waiting(draft, e)
    return Outcome(draft.patch(), [Event("Normal", e.reason, e.message)] if news else [], retry=e)


def _degraded(draft: Draft, e: Rejected | Waiting, serving: str, retry: bool = True,
              delay: float = 30.0) -> Outcome:
    problem = f"{e.message}; {serving}"
    news = status.degraded(draft, problem)
    again = e if isinstance(e, Waiting) else Waiting(problem, "check", delay)
    return Outcome(draft.patch(), [Event("Warning", status.DEGRADED, problem, "Check")] if news else [],
                   retry=again if retry else None)


# --- a new generation -------------------------------------------------------------------


def _promote(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, draft: Draft,
             waited: float) -> Outcome:
    s = ctx.settings
    target = spec.target.seldon_deployment
    draft.model.deployment = target.name
    if draft.model.phase in DECIDED:
        draft.model.phase = Phase.PENDING  # a new generation starts over
    draft.unset("supersededBy", "modelVersion")
    draft.drop(status.RECORDED, status.VERSIONS_MATCH)

    mlflow_env = _secret(ctx, namespace, spec.source.credentials_secret_ref, "spec.source.credentialsSecretRef")
    client = ctx.mlflow(spec.source.tracking_uri or s.tracking_uri, _auth(mlflow_env))
    version = registry.resolve(client, spec)
    if version is not None:
        draft.model.model_version = _version_ref(spec, version)
        if not version.run_id:
            raise ModelVersionNotFound(version.name, client.tracking_uri, version=version.version,
                                       code="it names no run: promote its run or a version logged from one")
    run_id = version.run_id if version else str(spec.source.run_id)
    draft.model.run_id = run_id
    run = client.get_run(run_id)
    _usable(run, waited, s)
    judged = ctx.ownership.serving(namespace, target.name) if candidate.has_baseline(spec) else None
    champion = candidate.champion(client, spec, judged, run_id)
    compared = champion is not None and champion.run_id != run_id
    datasets = client.metric_datasets(run) if compared and candidate.same_dataset(spec) else {}
    verdict = gates.evaluate(spec.gates, run.metrics, champion, run_id, datasets)
    draft.model.gates, draft.model.gate_summary = list(verdict.results), verdict.summary
    if not verdict.passed:
        raise GatesFailed(verdict.message)
    draft.condition("GatesPassed", "True", "GatesPassed", verdict.message)
    faults.checkpoint("after-gates")

    keys = _storage_keys(ctx, namespace, spec)
    target_store, source_store = _stores(ctx, namespace, spec, keys, mlflow_env)
    located = candidate.find_model(client, source_store, run, version, spec, s)
    events = candidate.check_versions(draft, spec, located, s)
    copier = Copier(target_store, spec.target.storage.bucket, object_prefix(spec, run_id), s.copy_concurrency)
    result = _copy(ctx, namespace, name, copier, located, spec, run_id)
    draft.model.model_uri = model_uri(spec, run_id)
    draft.model.artifact = Artifact(files=result.files, bytes=result.bytes, digest=result.digest,
                                    manifest=result.manifest_key)
    draft.condition("ArtifactCopied", "True", "Verified" if result.mode != "reused" else "Reused",
                    f"{result.files} files, {result.bytes} bytes at {draft.model.model_uri} ({result.mode})")

    _write_rclone_secret(ctx, namespace, spec, keys)
    faults.checkpoint("after-secret")
    message = (f"promoted: {verdict.message.removeprefix('gates passed: ')}; "
               f"{target.name} now serves run {run_id}")
    if version is not None:
        message += f" ({version.name} version {version.version})"
    final = draft.copy()  # the draft stays as it was should the write fail
    status.promoted(final, message, f"SeldonDeployment {target.name} serves {final.model.model_uri}")
    taken = ctx.ownership.take(namespace, target.name, name,
                               _deployment(namespace, name, spec, run_id, result.digest), final, judged)
    ctx.metrics.outcome(Phase.PROMOTED.value)
    if taken.previous:  # said in the one Event: an Event is an API request too
        message += f" (taken over from ModelPromotion {taken.previous})"
    events.append(Event("Normal", "Promoted", message, "Promote"))
    return _now_promoted(ctx, namespace, name, spec, final, client, events, run, located.location)


def _now_promoted(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, final: Draft,
                  client: MlflowApi, events: list[Event], run: Run, location: ModelLocation | None) -> Outcome:
    """The promotion serves: what follows from that (today, the registry record). It happens
    under the deployment's lock and only while this promotion still serves it, so a later
    takeover's record (the alias, the serving tag) is never overwritten by this one's."""
    if spec.registry is None:
        return Outcome(events=events)
    faults.checkpoint("after-promoted")
    with ctx.ownership.still_serving(namespace, spec.target.seldon_deployment.name, name) as held:
        if held is None:  # taken over already: the promotion serving now records itself
            return Outcome(events=events)
        after = Draft(final.written(), final.generation)
        outcome = _record(ctx, client, namespace, name, spec, after, run, location)
        held.report(name, after)
    return Outcome(events=events + outcome.events, retry=outcome.retry)


def _record(ctx: Context, client: MlflowApi, namespace: str, name: str, spec: ModelPromotionSpec, draft: Draft,
            run: Run | None = None, location: ModelLocation | None = None) -> Outcome:
    """Record the promotion in the registry; a failure is Recorded=False and a retry, never a
    change to serving or to the phase."""
    try:
        done = registry.record(client, spec, namespace, name, str(draft.model.run_id), draft.model.model_version,
                               run, location)
    except (Rejected, Waiting) as e:
        if isinstance(e, Unavailable):
            ctx.metrics.upstream_error(e.upstream)
        news = status.unrecorded(draft, e)
        again = e if isinstance(e, Waiting) else Waiting(e.message, "mlflow", max(ctx.settings.retry_delay, 30.0))
        return Outcome(events=[Event("Warning", "NotRecorded", e.message, "Record")] if news else [], retry=again)
    if draft.model.model_version is None or draft.model.model_version.name != done.version.name:
        draft.model.model_version = done.version
    failed_before = draft.reason_of(status.RECORDED) not in (None, status.RECORDED)
    status.recorded(draft, done.message)
    # the condition says it; an Event (an API request) only when it ends a NotRecorded
    return Outcome(events=[Event("Normal", status.RECORDED, done.message, "Record")] if failed_before else [])


def _version_ref(spec: ModelPromotionSpec, version: ModelVersion) -> ModelVersionRef:
    ref = spec.source.registered_model
    return ModelVersionRef(name=version.name, version=version.version, alias=ref.alias if ref else None)


def _usable(run: Run, waited: float, s: Settings) -> None:
    if run.lifecycle_stage == "deleted":
        raise RunNotUsable(run.run_id, "deleted", "restore it in MLflow or promote another run")
    if run.status in ("FAILED", "KILLED"):
        raise RunNotUsable(run.run_id, run.status)
    if run.status != "FINISHED":
        if waited > s.run_wait_timeout:
            raise RunTimedOut(run.run_id, waited)
        raise RunNotFinished(run.run_id, run.status, delay=min(30.0, s.retry_delay * 3))


def _secret(ctx: Context, namespace: str, ref: Any, field_path: str) -> dict[str, str]:
    if ref is None:
        return {}
    return ctx.kube.secret_data(namespace, ref.name, field_path)


def _auth(env: Mapping[str, str]) -> Auth:
    return Auth(env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", ""),
                env.get("MLFLOW_TRACKING_TOKEN", ""))


def _storage_keys(ctx: Context, namespace: str, spec: ModelPromotionSpec | None) -> Keys:
    """The target storage keys of the spec, or the operator's default ones when spec is None."""
    ref = spec.target.storage.credentials_secret_ref if spec else None
    name = ref.name if ref else ctx.settings.storage_secret
    field_path = "spec.target.storage.credentialsSecretRef" if ref else "operator default PROMOTER_STORAGE_SECRET"
    data = ctx.kube.secret_data(namespace, name, field_path)
    missing = [k for k in S3_KEYS if not data.get(k)]
    if missing:
        raise CredentialsProblem(f"{namespace}/{name} ({field_path})", f"has no key {', '.join(missing)}")
    return data[S3_KEYS[0]], data[S3_KEYS[1]], f"{namespace}/{name}"


def _target_endpoint(ctx: Context, spec: ModelPromotionSpec) -> str:
    return spec.target.storage.endpoint or ctx.settings.storage_endpoint


def _stores(ctx: Context, namespace: str, spec: ModelPromotionSpec, keys: Keys,
            mlflow_env: Mapping[str, str]) -> tuple[ObjectStore, ObjectStore]:
    endpoint = _target_endpoint(ctx, spec)
    target = ctx.store(endpoint, *keys)
    src_endpoint = mlflow_env.get("MLFLOW_S3_ENDPOINT_URL") or ctx.settings.artifact_s3_endpoint
    if all(mlflow_env.get(k) for k in S3_KEYS):
        ref = spec.source.credentials_secret_ref
        source = ctx.store(src_endpoint, mlflow_env[S3_KEYS[0]], mlflow_env[S3_KEYS[1]],
                           f"{namespace}/{ref.name if ref else ''}")
    elif src_endpoint.rstrip("/") == endpoint.rstrip("/"):
        source = ctx.store(src_endpoint, *keys)
    else:  # the default artifact store goes with the operator's default keys
        source = ctx.store(src_endpoint, *_storage_keys(ctx, namespace, None))
    return target, source


def _copy(ctx: Context, namespace: str, name: str, copier: Copier, located: candidate.Located, spec: ModelPromotionSpec,
          run_id: str) -> CopyResult:
    folder, files = located.folder, located.files
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
    result = copier.copy(folder, dict(files), {"runId": run_id, "modelName": spec.source.model_name}, report)
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


def _write_rclone_secret(ctx: Context, namespace: str, spec: ModelPromotionSpec, keys: Keys) -> bool:
    """The Secret Seldon's storage initializer reads; True when it was written."""
    access, secret, _ = keys
    name = spec.target.seldon_deployment.secret_name
    body = seldon.render_rclone_secret(name, namespace, _target_endpoint(ctx, spec), access, secret)
    return ctx.kube.ensure_secret(namespace, name, _rclone_merge(body)) != "unchanged"


def _deployment(namespace: str, name: str, spec: ModelPromotionSpec, run_id: str, digest: str) -> dict[str, Any]:
    annotations = {PROMOTION_ANNOTATION: name, RUN_ANNOTATION: run_id, DIGEST_ANNOTATION: digest}
    return seldon.render_seldon_deployment(spec.target.seldon_deployment, namespace, model_uri(spec, run_id),
                                           annotations)


# --- a generation already decided: Promoted or Superseded ------------------------------------


def _check(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, draft: Draft) -> Outcome:
    target = spec.target.seldon_deployment
    run_id = spec.source.run_id or draft.model.run_id or ""
    with ctx.ownership.check(namespace, target.name) as deployment:
        owner = deployment.owner()
        if draft.model.phase is Phase.SUPERSEDED:
            if owner != name:
                return Outcome()
            message = status.reclaimed(draft, target.name, run_id)
            deployment.report(name, draft)
            return Outcome(events=[Event("Normal", "Reclaimed", message, "Check")])
        if owner is not None and owner != name:
            message = status.superseded(draft, owner, target.name)
            deployment.report(name, draft)
            return Outcome(events=[Event("Normal", "Superseded", message, "Check")])
        try:
            restored = _verify_and_restore(ctx, namespace, name, spec, run_id, deployment)
        except ArtifactTampered as e:  # the copy changed under the deployment: reported, not repointed
            outcome = _rejected(ctx, draft, e)
            deployment.report(name, draft)
            return Outcome(events=outcome.events, rejected=e)
        except (Rejected, Waiting) as e:
            if isinstance(e, Unavailable):
                ctx.metrics.upstream_error(e.upstream)
            outcome = _degraded(draft, e, f"{target.name} keeps serving {model_uri(spec, run_id)}; checking again",
                                delay=max(ctx.settings.retry_delay, 30.0))
            deployment.report(name, draft)
            return Outcome(events=outcome.events, retry=outcome.retry)
        events = []
        if status.recovered(draft):
            events.append(Event("Normal", "Recovered", f"checked: {target.name} serves {model_uri(spec, run_id)} "
                                "from its verified copy", "Check"))
        if restored:
            events.append(Event("Normal", "Restored", f"restored the rclone Secret or SeldonDeployment "
                                f"{target.name} to serve {model_uri(spec, run_id)}", "Check"))
        recorded = _record_again(ctx, namespace, name, spec, draft)
        deployment.report(name, draft)
    return Outcome(events=events + recorded.events, retry=recorded.retry)


def _record_again(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, draft: Draft) -> Outcome:
    """A serving promotion the registry does not record yet (MLflow was down, or the operator
    stopped in between): try again."""
    if spec.registry is None or not status.record_due(draft):
        return Outcome()
    try:
        env = _secret(ctx, namespace, spec.source.credentials_secret_ref, "spec.source.credentialsSecretRef")
    except Rejected as e:
        status.unrecorded(draft, e)
        return Outcome(retry=Waiting(e.message, "check", max(ctx.settings.retry_delay, 30.0)))
    client = ctx.mlflow(spec.source.tracking_uri or ctx.settings.tracking_uri, _auth(env))
    return _record(ctx, client, namespace, name, spec, draft)


def _verify_and_restore(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, run_id: str,
                        deployment: Check) -> bool:
    """The copy still matches its manifest; the children say what this promotion wrote (put
    back when deleted or edited). True when a child was written."""
    if not run_id:
        raise InvalidSpec("status.runId", "is missing: the run this promotion resolved to is not known")
    keys = _storage_keys(ctx, namespace, spec)
    store = ctx.store(_target_endpoint(ctx, spec), *keys)
    copier = Copier(store, spec.target.storage.bucket, object_prefix(spec, run_id), ctx.settings.copy_concurrency)
    result = copier.existing()
    if result is None:
        raise ArtifactTampered(copier.uri, "the manifest is gone")
    wrote_secret = _write_rclone_secret(ctx, namespace, spec, keys)
    wrote_deployment, _ = deployment.restore(name, _deployment(namespace, name, spec, run_id, result.digest))
    return wrote_secret or wrote_deployment


__all__ = ["CHECKED", "DECIDED", "RUN_ANNOTATION", "reconcile"]
