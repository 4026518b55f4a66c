"""The check of a settled Promoted or Superseded promotion, at start-up and in the drift sweep.

Who serves the deployment is read off it (``ownership``): a Promoted promotion it no longer
names becomes Superseded, a Superseded one it names again is reclaimed. A Promoted one also
checks that its copy still matches the manifest and its children still say what it wrote,
restoring a deleted or edited child and writing nothing when all is in order. The check looks
at what the promotion deployed (``status.modelUri``), not at where the spec would put a copy
today, so a promotion made before a change of layout keeps being checked where its model is.

A serving promotion the Model Registry does not record yet (``spec.registry``, ``Recorded``
not True) is recorded again here (``registry.record_again``).

A problem found here (a Secret gone, S3 refusing, a child no longer the operator's) never
demotes a serving promotion: the model keeps serving, ``Ready=False`` (reason Degraded) says what
is wrong, and the check is retried. Only a copy that no longer matches its manifest is Failed.
"""

from __future__ import annotations

from . import children, credentials, policy, registry, status
from .artifacts import Copier, CopyResult, ObjectStore, parse_s3_uri
from .children import Ref
from .context import Context
from .errors import ArtifactTampered, Rejected, Unavailable, Waiting
from .ownership import Check
from .spec import ModelPromotionSpec, Phase, model_uri
from .status import Draft, Event, Outcome


def check(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft) -> Outcome:
    target = spec.target.seldon_deployment
    run_id = draft.model.run_id or spec.source.run_id or ""  # a registeredModel's, as it was resolved
    with ctx.ownership.check(ref.namespace, target.name) as deployment:
        owner, fallback = deployment.owner()
        if owner != ref.name and fallback == ref.name and draft.model.phase is Phase.PROMOTED:
            return Outcome()  # another promotion's rollout is being verified: this one serves until then
        if draft.model.phase is Phase.SUPERSEDED:
            if owner != ref.name:
                return Outcome()
            message = status.reclaimed(draft, target.name, run_id)
            deployment.report(ref.name, draft)
            return Outcome(events=[Event("Normal", "Reclaimed", message, "Check")])
        if owner is not None and owner != ref.name:
            message = status.superseded(draft, owner, target.name)
            deployment.report(ref.name, draft)
            return Outcome(events=[Event("Normal", "Superseded", message, "Check")])
        serving = draft.model.model_uri or model_uri(spec, run_id=run_id or None)
        try:
            restored = _verify_and_restore(ctx, ref, spec, serving, run_id, deployment)
        except ArtifactTampered as e:  # the copy changed under the deployment: reported, not repointed
            ctx.metrics.outcome(status.rejected(draft, e).value)
            deployment.report(ref.name, draft)
            return Outcome(events=[Event("Warning", e.reason, e.message, "Check")], rejected=e)
        except (Rejected, Waiting) as e:
            if isinstance(e, Unavailable):
                ctx.metrics.upstream_error(e.upstream)
            problem = f"{e.message}; {target.name} keeps serving {serving}; checking again"
            news = status.degraded(draft, problem)
            deployment.report(ref.name, draft)
            again = e if isinstance(e, Waiting) else Waiting(problem, "check", max(ctx.settings.retry_delay, 30.0))
            return Outcome(events=[Event("Warning", status.DEGRADED, problem, "Check")] if news else [],
                           retry=again)
        events = []
        if status.recovered(draft):
            events.append(Event("Normal", "Recovered", f"checked: {target.name} serves {serving} "
                                "from its verified copy", "Check"))
        if restored:
            events.append(Event("Normal", "Restored", f"restored the rclone Secret or SeldonDeployment "
                                f"{target.name} to serve {serving}", "Check"))
        recorded = registry.record_again(ctx, ref.namespace, ref.name, spec, draft)
        deployment.report(ref.name, draft)
    return Outcome(events=events + recorded.events, retry=recorded.retry)


def _verify_and_restore(ctx: Context, ref: Ref, spec: ModelPromotionSpec, serving: str, run_id: str,
                        deployment: Check) -> bool:
    """The copy still matches its manifest; the children say what this promotion wrote (put
    back when deleted or edited). True when a child was written."""
    endpoint, keys = target(ctx, ref.namespace, spec)
    result = verified_copy(ctx, ctx.store(endpoint, *keys), serving)
    wrote_secret = children.rclone_secret(ctx, ref, spec, endpoint, keys)
    wrote_deployment, _ = deployment.restore(ref.name, children.deployment(ref, spec, serving, result.digest, run_id))
    return wrote_secret or wrote_deployment


def target(ctx: Context, namespace: str, spec: ModelPromotionSpec) -> tuple[str, credentials.Keys]:
    """The spec's storage endpoint (after the allowlist check) and its keys."""
    storage = spec.target.storage
    endpoint = policy.storage_endpoint(storage.endpoint, getattr(storage.credentials_secret_ref, "name", None),
                                       ctx.settings)
    return endpoint, credentials.storage_keys(ctx, namespace, spec)


def target_store(ctx: Context, namespace: str, spec: ModelPromotionSpec) -> ObjectStore:
    """The store the spec's copies are in, with the spec's keys (after the allowlist check)."""
    endpoint, keys = target(ctx, namespace, spec)
    return ctx.store(endpoint, *keys)


def verified_copy(ctx: Context, store: ObjectStore, uri: str, digest: str | None = None) -> CopyResult:
    """The copy at ``uri`` in ``store`` still matches its manifest (and the manifest is
    ``digest``, when given); ArtifactTampered otherwise."""
    bucket, prefix = parse_s3_uri(uri)
    copier = Copier(store, bucket, prefix, ctx.settings.copy_concurrency)
    result = copier.existing()
    if result is None:
        raise ArtifactTampered(copier.uri, "the manifest is gone")
    if digest is not None and result.digest != digest:
        raise ArtifactTampered(copier.uri, f"its manifest is {result.digest}, not the {digest} promoted")
    return result


__all__ = ["check", "target", "target_store", "verified_copy"]
