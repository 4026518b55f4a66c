"""One reconcile of a ModelPromotion, for create, update, resume and the drift sweep alike.

A new generation of the spec goes through every step::

    parse spec -> allowed? (policy) -> a registeredModel resolved to its version and run (registry)
      -> run on MLflow (finished?) -> gates (baseline gates against the run the deployment serves)
      -> find the model, read MLmodel, its library versions against the serving image's
      (candidate) -> verified copy under <root>/<prefix>/<runId>/ (or reuse one that provably
      holds the same model) -> rclone Secret
      -> SeldonDeployment + own status Deploying (ownership.take)
      -> the rollout verified and the smoke test passed (rollout, looked at again and again):
         Promoted + the previous one Superseded, then the Model Registry record (registry);
         or Failed, and the previous model restored

A generation already decided is cheap: Rejected and Failed stay as they are; Promoted and
Superseded are checked (``check``) against the SeldonDeployment, the copy and the children.
A Superseded promotion annotated ``mlops.dev/restore=<new value>`` is rolled out again
(:func:`restore`), with the same rollout verification.

The outcome is data (status, Events, whether to retry); ``handlers`` applies it. The gateways
come from the :class:`~promoter.context.Context`, so all of this runs over in-memory fakes in
the unit tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from . import candidate, check, children, credentials, faults, gates, policy, registry, rollout, status
from .artifacts import Copier, CopyResult, ObjectStore
from .children import Ref
from .config import Settings
from .context import Context
from .errors import (
    GatesFailed,
    InvalidSpec,
    ModelVersionNotFound,
    Rejected,
    RunNotFinished,
    RunNotUsable,
    RunTimedOut,
    Unavailable,
    Waiting,
    clip,
)
from .mlflow_source import ModelVersion, Run
from .spec import (
    Artifact,
    ModelPromotionSpec,
    ModelVersionRef,
    Phase,
    Progress,
    RolloutStatus,
    model_uri,
    object_prefix,
    parse_spec,
)
from .status import Draft, Event, Outcome

PROGRESS_EVERY = 2.0  # seconds between progress patches while copying
SUMMARY_LIMIT = 256  # characters of the GATES column
DECIDED = (Phase.PROMOTED, Phase.REJECTED, Phase.SUPERSEDED, Phase.FAILED)
CHECKED = (Phase.PROMOTED, Phase.SUPERSEDED)  # settled phases that are checked against the deployment
RESTORE_ANNOTATION = "mlops.dev/restore"


def reconcile(ctx: Context, body: Mapping[str, Any], waited: float) -> Outcome:
    """``waited``: seconds this generation has been retried for (kopf's runtime)."""
    ref = Ref.of(body)
    draft = Draft.of(body)
    settled = draft.settled and draft.model.phase in DECIDED
    try:
        spec = parse_spec(body.get("spec") or {})
    except InvalidSpec as e:
        if settled and draft.model.phase is Phase.PROMOTED:
            news = status.degraded(draft, f"{e.message}; it cannot be checked until the spec is fixed")
            return Outcome(draft.patch(), [Event("Warning", status.DEGRADED, e.message, "Check")] if news else [])
        return _rejected(ctx, draft, e) if not settled else Outcome()
    if draft.settled and draft.model.phase is Phase.DEPLOYING:
        try:
            return rollout.advance(ctx, body, spec, draft)
        except Waiting as e:  # the API server or S3 did not answer: look again, the clock runs on
            if isinstance(e, Unavailable):
                ctx.metrics.upstream_error(e.upstream)
            return Outcome(watch=max(1.0, min(e.delay, 10.0)))
    if settled and draft.model.phase in CHECKED:
        return check.check(ctx, ref, spec, draft)
    if settled:
        return Outcome()  # Rejected or Failed: nothing changes until the spec does
    try:
        return _promote(ctx, ref, spec, draft, waited)
    except Rejected as e:
        return _rejected(ctx, draft, e)
    except Waiting as e:
        return _waiting(ctx, draft, e)


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


# --- a new generation -------------------------------------------------------------------


def _promote(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft, waited: float) -> Outcome:
    s = ctx.settings
    target, storage = spec.target.seldon_deployment, spec.target.storage
    draft.model.deployment = target.name
    if draft.model.phase in DECIDED:
        draft.model.phase = Phase.PENDING  # a new generation starts over
    draft.unset("supersededBy", "modelVersion")
    draft.drop(status.RECORDED, status.VERSIONS_MATCH)
    # What the spec names must be allowed before a Secret is read or a request sent.
    tracking = policy.tracking_uri(spec.source.tracking_uri, s)
    endpoint = policy.storage_endpoint(storage.endpoint, getattr(storage.credentials_secret_ref, "name", None), s)
    root = policy.copy_root(ref.namespace, storage.bucket, s)

    mlflow_env = credentials.data(ctx, ref.namespace, spec.source.credentials_secret_ref,
                                  "spec.source.credentialsSecretRef")
    client = ctx.mlflow(tracking, credentials.mlflow_auth(mlflow_env))
    version = registry.resolve(client, spec)
    if version is not None:
        draft.model.model_version = _version_ref(spec, version)
        if not version.run_id:
            raise ModelVersionNotFound(version.name, client.tracking_uri, version=version.version,
                                       code="it names no run: promote a version logged from a run")
    run_id = version.run_id if version else str(spec.source.run_id)
    draft.model.run_id = run_id
    run = client.get_run(run_id)
    _usable(run, waited, s)
    judged = ctx.ownership.serving(ref.namespace, target.name) if candidate.has_baseline(spec) else None
    champion = candidate.champion(client, spec, judged, run_id)
    compared = champion is not None and champion.run_id != run_id
    datasets = client.metric_datasets(run) if compared and candidate.same_dataset(spec) else {}
    verdict = gates.evaluate(spec.gates, run.metrics, champion, run_id, datasets)
    draft.model.gates, draft.model.gate_summary = list(verdict.results), clip(verdict.summary, SUMMARY_LIMIT)
    if not verdict.passed:
        raise GatesFailed(verdict.message)
    draft.condition("GatesPassed", "True", "GatesPassed", verdict.message)
    faults.checkpoint("after-gates")

    keys = credentials.storage_keys(ctx, ref.namespace, spec)
    target_store = ctx.store(endpoint, *keys)
    source_store = _source_store(ctx, ref.namespace, spec, endpoint, keys, mlflow_env)
    located = candidate.find_model(client, source_store, run, version, spec, s)
    events = candidate.check_versions(draft, spec, located, s)
    copier = Copier(target_store, storage.bucket, object_prefix(spec, root, run_id), s.copy_concurrency)
    result = _copy(ctx, ref, copier, located, spec, run_id)
    draft.model.model_uri = model_uri(spec, root, run_id)
    draft.model.artifact = Artifact(files=result.files, bytes=result.bytes, digest=result.digest,
                                    manifest=result.manifest_key)
    draft.condition("ArtifactCopied", "True", "Verified" if result.mode != "reused" else "Reused",
                    f"{result.files} files, {result.bytes} bytes at {draft.model.model_uri} ({result.mode})")

    children.rclone_secret(ctx, ref, spec, endpoint, keys)
    faults.checkpoint("after-secret")
    message = (f"promoted: {verdict.message.removeprefix('gates passed: ')}; "
               f"{target.name} now serves run {run_id}")
    if version is not None:
        message += f" ({version.name} version {version.version})"
    desired = children.deployment(ref, spec, draft.model.model_uri, result.digest, run_id)
    return _deploy(ctx, ref, spec, draft, desired, message, events, judged)


def _deploy(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft, desired: Mapping[str, Any],
            message: str, events: list[Event], judged: Any = None) -> Outcome:
    """Write the SeldonDeployment (ownership.take) and start verifying its rollout."""
    target = spec.target.seldon_deployment
    deploying = draft.copy()  # the draft stays as it was should the write fail
    status.deploying(deploying, f"rolling out {deploying.model.model_uri} to SeldonDeployment {target.name}")
    deploying.model.rollout = RolloutStatus(started_at=status.now(), started=time.time(), promoted_message=message)
    taken = ctx.ownership.take(ref.namespace, target.name, ref.name, desired, deploying, judged)
    what = f"wrote SeldonDeployment {target.name} to serve {deploying.model.model_uri}"
    if taken.previous:
        what += f", replacing ModelPromotion {taken.previous}'s model"
    if taken.fallback:
        what += f"; a failed rollout restores ModelPromotion {taken.fallback}'s"
    events.append(Event("Normal", "Deploying", clip(f"{what}; verifying the rollout (timeout {spec.rollout.timeout})"),
                        "Promote"))
    return Outcome(events=events, watch=rollout.delay(0))


def restore(ctx: Context, body: Mapping[str, Any]) -> Outcome:
    """``mlops.dev/restore=<value>`` on a promotion: a Superseded one is rolled out again (its
    copy re-verified first) with the same verification, and the one it replaces becomes
    Superseded once it is verified. A value is acted on once (``status.restore``)."""
    value = str(((body.get("metadata") or {}).get("annotations") or {}).get(RESTORE_ANNOTATION) or "")
    draft = Draft.of(body)
    if not value or value == draft.model.restore:
        return Outcome()
    draft.model.restore = value
    ref = Ref.of(body)
    phase = draft.model.phase
    if not draft.settled or phase is not Phase.SUPERSEDED or not draft.model.model_uri or draft.model.artifact is None:
        why = ("it serves already" if phase is Phase.PROMOTED and draft.settled else
               f"only a Superseded promotion can be restored; this one is {phase.value}")
        return Outcome(draft.patch(), [Event("Warning" if phase is not Phase.PROMOTED else "Normal",
                                             "RestoreIgnored", f"{RESTORE_ANNOTATION}={value}: {why}", "Restore")])
    try:
        spec = parse_spec(body.get("spec") or {})
        endpoint, keys = check.target(ctx, ref.namespace, spec)
        copy = check.verified_copy(ctx, ctx.store(endpoint, *keys), draft.model.model_uri, draft.model.artifact.digest)
        children.rclone_secret(ctx, ref, spec, endpoint, keys)
    except (Rejected, Waiting) as e:
        message = f"{RESTORE_ANNOTATION}={value}: not restored: {e.message}"
        return Outcome(draft.patch(), [Event("Warning", "RestoreRefused", clip(message), "Restore")])
    run_id = str(draft.model.run_id or "")
    desired = children.deployment(ref, spec, draft.model.model_uri, copy.digest, run_id)
    message = (f"restored on request ({RESTORE_ANNOTATION}={value}): {spec.target.seldon_deployment.name} serves "
               f"run {run_id} again")
    return _deploy(ctx, ref, spec, draft, desired, message, [])


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


def _source_store(ctx: Context, namespace: str, spec: ModelPromotionSpec, target_endpoint: str,
                  keys: credentials.Keys, mlflow_env: Mapping[str, str]) -> ObjectStore:
    """Where MLflow's s3:// artifacts are read: the MLflow Secret's endpoint and keys when it
    brings them, else the operator's artifact endpoint with the target's keys (same endpoint) or
    the default storage keys. Nothing is read there before ``policy.artifact_source`` allows it."""
    endpoint = mlflow_env.get("MLFLOW_S3_ENDPOINT_URL") or ctx.settings.artifact_s3_endpoint
    own = credentials.artifact_keys(mlflow_env)
    if own is not None:
        ref = spec.source.credentials_secret_ref
        return ctx.store(endpoint, *own, f"{namespace}/{ref.name if ref else ''}")
    if endpoint.rstrip("/") == target_endpoint.rstrip("/"):
        return ctx.store(endpoint, *keys)
    return ctx.store(endpoint, *credentials.storage_keys(ctx, namespace, None))


def _copy(ctx: Context, ref: Ref, copier: Copier, located: candidate.Located, spec: ModelPromotionSpec,
          run_id: str) -> CopyResult:
    folder, files = located.folder, located.files
    reused = copier.existing(dict(files), folder, run_id)
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
        ctx.kube.patch_status(ref.namespace, ref.name, {
            "phase": Phase.COPYING.value,
            "message": f"copying {files_total} files ({bytes_total} bytes) to {copier.uri}",
            "progress": Progress(files_done=files_done, files_total=files_total, bytes_done=bytes_done,
                                 bytes_total=bytes_total).model_dump(by_alias=True)})

    started = time.monotonic()
    result = copier.copy(folder, dict(files), {"runId": run_id, "modelName": spec.source.model_name}, report)
    ctx.metrics.copied(result.mode, result.bytes, time.monotonic() - started)
    return result


__all__ = ["CHECKED", "DECIDED", "RESTORE_ANNOTATION", "reconcile", "restore"]
