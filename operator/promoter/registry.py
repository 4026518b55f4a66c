"""The MLflow Model Registry, as a promotion's source and as its record.

As source, ``source.registeredModel {name, version | alias}`` is resolved once per spec
generation to a version, its run and its files; status keeps what it resolved to
(``status.modelVersion``), so an alias that moves later changes nothing until the spec does.

As record, :func:`record` runs once a promotion is Promoted (the one call, at that point of the
reconcile, and again from the check while it has not succeeded): it registers the run's model
under ``spec.registry.model`` when the source was a run id (once: a version of that run is
reused), sets ``spec.registry.alias`` on the version, tags the version and its run
``mlops.dev/promoted-by=<namespace>/<promotion>`` and ``mlops.dev/serving=<namespace>/<deployment>``,
and takes ``mlops.dev/serving`` off the version that carried it for the deployment before (and off
its run, when the run's tag still names this deployment: a run may serve another one). Every step
is idempotent. A failure never touches serving: :func:`record_outcome` turns it into
``Recorded=False`` and a retry, and the check (``record_again``) tries again until it succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import credentials, policy, status
from .context import Context
from .errors import Rejected, RunNotFound, Unavailable, Waiting
from .mlflow_source import MlflowApi, ModelLocation, ModelVersion, Run
from .spec import ModelPromotionSpec, ModelVersionRef
from .status import Draft, Event, Outcome

PROMOTED_BY_TAG = "mlops.dev/promoted-by"
SERVING_TAG = "mlops.dev/serving"


def resolve(client: MlflowApi, spec: ModelPromotionSpec) -> ModelVersion | None:
    """The version a registeredModel source names (None for a runId source);
    ModelVersionNotFound names what is missing."""
    ref = spec.source.registered_model
    if ref is None:
        return None
    if ref.version is not None:
        return client.model_version(ref.name, str(ref.version))
    assert ref.alias is not None  # the parser wants exactly one of the two
    return client.version_by_alias(ref.name, ref.alias)


@dataclass(frozen=True)
class Recorded:
    version: ModelVersionRef
    message: str


def record(client: MlflowApi, spec: ModelPromotionSpec, namespace: str, name: str, run_id: str,
           known: ModelVersionRef | None, run: Run | None = None, location: ModelLocation | None = None) -> Recorded:
    """Write the promotion into the registry (see the module docstring). ``known``: the version
    status already names (the resolved source, or an earlier registration); ``run`` and
    ``location``: the run and where its model was found, when the caller has them (spares two
    reads when a run must be registered)."""
    model = spec.registered_name
    assert model is not None and spec.registry is not None  # the caller checks spec.registry
    deployment = f"{namespace}/{spec.target.seldon_deployment.name}"
    registered = ""
    if known is not None and known.name == model:
        version = known.version
    else:
        version, registered = _registered(client, model, spec.source.model_name, run_id, run, location)
    done = []
    if spec.registry.alias:
        client.set_alias(model, spec.registry.alias, version)
        done.append(f"@{spec.registry.alias}")
    tags = {PROMOTED_BY_TAG: f"{namespace}/{name}", SERVING_TAG: deployment}
    for key, value in tags.items():
        client.set_version_tag(model, version, key, value)
    client.set_run_tags(run_id, tags)
    done.append(f"tags {PROMOTED_BY_TAG} and {SERVING_TAG}={deployment} on the version and run {run_id}")
    untagged = []
    for old in client.find_versions(model, tag=(SERVING_TAG, deployment)):
        if old.version == version:
            continue
        client.delete_version_tag(model, old.version, SERVING_TAG)
        if old.run_id and old.run_id != run_id and _tag_of(client, old.run_id) == deployment:
            client.delete_run_tag(old.run_id, SERVING_TAG)
        untagged.append(old.version)
    message = f"registered model {model!r} version {version}{registered}: " + ", ".join(done)
    if untagged:
        message += f"; {SERVING_TAG} taken off version {', '.join(untagged)}"
    return Recorded(ModelVersionRef(name=model, version=version), message)


def _tag_of(client: MlflowApi, run_id: str) -> str | None:
    try:
        return client.get_run(run_id).tags.get(SERVING_TAG)
    except RunNotFound:
        return None


def _registered(client: MlflowApi, model: str, model_name: str, run_id: str, run: Run | None,
                location: ModelLocation | None) -> tuple[str, str]:
    """The version of ``model`` registered from ``run_id``, registering it the first time;
    returns it and a note for the message."""
    existing = client.find_versions(model, run_id=run_id)
    if existing:  # the latest registration of the run, should there be several
        return max(existing, key=lambda v: int(v.version) if v.version.isdigit() else 0).version, ""
    if run is None:
        run = client.get_run(run_id)
    if location is None:
        location = client.model_candidates(run, model_name)[0]
    return client.register(model, run, location).version, f" (registered from run {run_id})"


def record_outcome(ctx: Context, client: MlflowApi, namespace: str, name: str, spec: ModelPromotionSpec,
                   draft: Draft, run: Run | None = None, location: ModelLocation | None = None) -> Outcome:
    """:func:`record`, its outcome in ``draft`` (Recorded=True, or False with the problem and a
    retry: never a change to serving or to the phase) and the Events it is worth."""
    try:
        done = record(client, spec, namespace, name, str(draft.model.run_id), draft.model.model_version, run,
                      location)
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


def record_again(ctx: Context, namespace: str, name: str, spec: ModelPromotionSpec, draft: Draft) -> Outcome:
    """From the check of a serving promotion the registry does not record yet (MLflow was down,
    the operator stopped in between, or a takeover it waited behind failed): try again."""
    if spec.registry is None or not status.record_due(draft):
        return Outcome()
    try:
        tracking = policy.tracking_uri(spec.source.tracking_uri, ctx.settings)
        env = credentials.data(ctx, namespace, spec.source.credentials_secret_ref, "spec.source.credentialsSecretRef")
    except Rejected as e:
        news = status.unrecorded(draft, e)
        return Outcome(events=[Event("Warning", "NotRecorded", e.message, "Check")] if news else [],
                       retry=Waiting(e.message, "check", max(ctx.settings.retry_delay, 30.0)))
    return record_outcome(ctx, ctx.mlflow(tracking, credentials.mlflow_auth(env)), namespace, name, spec, draft)


__all__ = ["PROMOTED_BY_TAG", "SERVING_TAG", "Recorded", "record", "record_again", "record_outcome", "resolve"]
