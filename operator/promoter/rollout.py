"""A promotion's rollout, from the SeldonDeployment write to the verdict.

Seldon Core v1's own status cannot say that the new model answers: it never writes
``observedGeneration``, stays ``Available`` while a new Pod crash-loops beside an old one
(seldon#4269) and can read ``Failed`` for a moment while still serving (seldon#2044). So the
verdict is read off the predictor's Deployment and Pods (found by Seldon's
``seldon-deployment-id`` and ``seldon-app`` labels), the way ``kubectl rollout status`` reads a
Deployment, and then the model is asked::

    Deploying   the Deployment observed its generation, every replica updated and available,
                no old one left, its template's storage initializer loads this modelUri; no new
                Pod crash-looping, failing its init container or its image  -> the smoke test
    smoke test  the model's input example (``smoke``) sent to a new Pod's address, from the
                predictor Service's EndpointSlices (status.serviceStatus when there are none)
    Promoted    both passed (``ownership.verified``: the previous promotion becomes Superseded)
    Failed      either failed, or ``rollout.timeout`` passed: with ``rollback: Automatic`` and a
                verified promotion before it, RollingBack first (its copy re-verified, the
                deployment written back by ``ownership.roll_back``), Failed once it serves again

Each step is one look (a handful of reads); :class:`promoter.tracker.Rollouts` looks again after
:func:`delay`, holding no worker in between. The state lives in ``status.rollout``, so a restarted
operator resumes where it was: no second rollback, no repeated Events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

from . import check, children, faults, registry, seldon, smoke, status
from .artifacts import parse_s3_uri
from .children import Ref
from .context import Context
from .errors import PromoterError, Rejected, clip
from .ownership import fallback_of, named_by
from .spec import (
    Evidence,
    ModelPromotionSpec,
    Phase,
    Rollback,
    RolloutState,
    RolloutStatus,
    SmokeTest,
    Verification,
    parse_spec,
)
from .status import Draft, Event, Outcome

ROLLOUT_FAILED, SMOKE_TEST_FAILED = "RolloutFailed", "SmokeTestFailed"
# A container waiting for one of these will not start by itself.
STUCK = frozenset({"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                   "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
RESTARTS = 3  # restarts of one container that fail a rollout even before a back-off shows
SMOKE_TIMEOUT = 10.0  # seconds the model has to answer its example
_pool = urllib3.PoolManager(num_pools=16, maxsize=4)


def delay(elapsed: float) -> float:
    """Seconds until the next look at a rollout ``elapsed`` seconds old: every 0.5 s for the first
    minute (a rollout of a model is seconds to a minute: seen within half a second of its end),
    then less and less often, every 5 s from six minutes on (a stuck one costs little)."""
    return 0.5 if elapsed < 60 else min(5.0, 0.5 + (elapsed - 60) / 60)


def selector(deployment: str, predictor: str) -> str:
    return f"seldon-deployment-id={deployment},seldon-app={deployment}-{predictor}"


# --- what the cluster shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    done: bool
    detail: str  # what is waited for, what was found, or why it failed
    deployment: str | None = None
    failed: bool = False
    evidence: Evidence | None = None  # why it failed; while under way, the first new container not ready
    replicas: int = 0
    pods: tuple[str, ...] = ()  # the new Pods (their storage initializer loads model_uri)


def _loads(pod_spec: Mapping[str, Any], model_uri: str) -> bool:
    """The Pod spec's storage initializer copies ``model_uri`` (Seldon: args [modelUri, /mnt/models])."""
    return any((c.get("args") or [None])[0] == model_uri for c in pod_spec.get("initContainers") or [])


def _evidence(pod: str, container: Mapping[str, Any]) -> Evidence:
    state, last = container.get("state") or {}, container.get("lastState") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    message = terminated.get("message") or waiting.get("message") or ""
    return Evidence(pod=pod, container=str(container.get("name", "")),
                    reason=waiting.get("reason") or terminated.get("reason"),
                    exit_code=terminated.get("exitCode"), restarts=container.get("restartCount"),
                    message=clip(str(message), 512) or None)


def describe(e: Evidence) -> str:
    parts = [f"Pod {e.pod}: container {e.container} {e.reason or 'failing'}"]
    facts = [f"exit code {e.exit_code}"] if e.exit_code is not None else []
    facts += [f"{e.restarts} restarts"] if e.restarts else []
    if facts:
        parts.append(f" ({', '.join(facts)})")
    if e.message:
        parts.append(f": {e.message}")
    return "".join(parts)


def _stuck(pods: Sequence[Mapping[str, Any]], model_uri: str) -> Evidence | None:
    """The first container of a new Pod that will not come up by itself, if any."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp") or not _loads(pod.get("spec") or {}, model_uri):
            continue
        name = str(pod["metadata"].get("name"))
        st = pod.get("status") or {}
        for c in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            waiting = ((c.get("state") or {}).get("waiting") or {}).get("reason")
            if waiting in STUCK or int(c.get("restartCount") or 0) >= RESTARTS:
                return _evidence(name, c)
    return None


def _any_evidence(pods: Sequence[Mapping[str, Any]], model_uri: str) -> Evidence | None:
    """For a rollout that ran out of time: the first new container not ready, if any."""
    for pod in pods:
        if not _loads(pod.get("spec") or {}, model_uri):
            continue
        st = pod.get("status") or {}
        name = str(pod["metadata"].get("name"))
        for c in [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]:
            finished = ((c.get("state") or {}).get("terminated") or {}).get("exitCode") == 0  # an init container
            if not c.get("ready") and not finished:
                return _evidence(name, c)
        if st.get("phase") == "Pending" and not st.get("containerStatuses"):
            why = next((c.get("message") or c.get("reason") for c in st.get("conditions") or []
                        if c.get("type") == "PodScheduled" and c.get("status") == "False"), None)
            return Evidence(pod=name, reason="Pending", message=clip(str(why or "not scheduled"), 512))
    return None


def observe(deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], model_uri: str,
            sdep: str) -> Observed:
    """Where the rollout of ``model_uri`` stands, as ``kubectl rollout status`` would say."""
    if not deployments:
        return Observed(False, f"no Deployment labelled seldon-deployment-id={sdep} yet (Seldon's controller "
                        "makes it from the SeldonDeployment)")
    mine = [d for d in deployments if _loads(((d.get("spec") or {}).get("template") or {}).get("spec") or {},
                                             model_uri)]
    if not mine:
        names = ", ".join(sorted(str(d["metadata"]["name"]) for d in deployments))
        return Observed(False, f"Deployment {names} does not load {model_uri} yet (Seldon's controller "
                        "updates it from the SeldonDeployment)")
    dep = mine[0]
    name, spec, st = str(dep["metadata"]["name"]), dep.get("spec") or {}, dep.get("status") or {}
    new = tuple(str(p["metadata"]["name"]) for p in pods if _loads(p.get("spec") or {}, model_uri)
                and not p["metadata"].get("deletionTimestamp"))
    replicas = int(spec.get("replicas", 1))

    def seen(done: bool, detail: str, **more: Any) -> Observed:
        if not done and "evidence" not in more:  # what a rollout that runs out of time reports
            more["evidence"] = _any_evidence(pods, model_uri)
        return Observed(done, detail, name, replicas=replicas, pods=new, **more)

    if int(st.get("observedGeneration") or 0) < int(dep["metadata"].get("generation") or 0):
        return seen(False, f"waiting for Deployment {name}'s spec update to be observed")
    stuck = _stuck(pods, model_uri)
    if stuck is not None:
        return seen(False, describe(stuck), failed=True, evidence=stuck)
    progressing: Mapping[str, Any] = next((c for c in st.get("conditions") or [] if c.get("type") == "Progressing"), {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return seen(False, f"Deployment {name} exceeded its progress deadline", failed=True,
                    evidence=_any_evidence(pods, model_uri) or Evidence(reason="ProgressDeadlineExceeded"))
    updated, total = int(st.get("updatedReplicas") or 0), int(st.get("replicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    if updated < replicas:
        return seen(False, f"Deployment {name}: {updated} of {replicas} new replicas updated")
    if total > updated:
        return seen(False, f"Deployment {name}: {total - updated} old replicas pending termination")
    if available < updated:
        return seen(False, f"Deployment {name}: {available} of {updated} updated replicas available")
    return seen(True, f"Deployment {name}: {replicas} of {replicas} replicas of {model_uri} available")


def endpoint(slices: Sequence[Mapping[str, Any]], pods: Sequence[str], sdep: Mapping[str, Any] | None,
             service: str) -> str | None:
    """host:port of a ready new Pod behind the predictor Service (its EndpointSlices' HTTP port),
    else the Service's own status.serviceStatus httpEndpoint."""
    for piece in slices:
        port = next((p.get("port") for p in piece.get("ports") or [] if p.get("name") == "http"), None)
        for ep in piece.get("endpoints") or []:
            conditions = ep.get("conditions") or {}
            target = (ep.get("targetRef") or {}).get("name")
            if port and conditions.get("ready") is not False and not conditions.get("terminating") \
                    and target in pods and ep.get("addresses"):
                host = ep["addresses"][0]
                return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    found = (((sdep or {}).get("status") or {}).get("serviceStatus") or {}).get(service) or {}
    return str(found["httpEndpoint"]) if found.get("httpEndpoint") else None


# --- one step -------------------------------------------------------------------------------------


def advance(ctx: Context, body: Mapping[str, Any], spec: ModelPromotionSpec, draft: Draft) -> Outcome:
    """One look at a Deploying promotion; the outcome says what changed and when to look again."""
    ref = Ref.of(body)
    r = draft.model.rollout
    if r is None:  # written by an operator before rollouts were verified: start the clock now
        r = draft.model.rollout = RolloutStatus(started_at=status.now(), started=time.time())
    target = spec.target.seldon_deployment
    found = ctx.kube.get_seldon(ref.namespace, target.name)
    if r.state is RolloutState.ROLLING_BACK:
        return _rolling_back(ctx, ref, spec, draft, r, found)
    owner = named_by(found)
    if owner != ref.name:
        return _overtaken(ctx, ref, draft, r, owner, target.name)
    uri = str(draft.model.model_uri)
    observed = _observe(ctx, ref.namespace, target.name, target.predictor_name, uri)
    elapsed = time.time() - r.started
    r.deployment = observed.deployment or r.deployment
    if observed.failed:
        return _fail(ctx, body, spec, draft, r, ROLLOUT_FAILED, f"rollout failed: {observed.detail}",
                     observed.evidence)
    if not observed.done:
        if elapsed > spec.rollout.timeout_seconds:
            return _fail(ctx, body, spec, draft, r, ROLLOUT_FAILED,
                         f"not rolled out within rollout.timeout {spec.rollout.timeout}: {observed.detail}",
                         observed.evidence)
        draft.condition("Deployed", "Unknown", "RollingOut", observed.detail)
        return Outcome(draft.patch(), watch=delay(elapsed))
    draft.condition("Deployed", "True", "RolledOut", observed.detail)
    try:
        verdict = _smoke_test(ctx, ref, spec, draft, found, observed)
    except smoke.BadAnswer as e:
        return _fail(ctx, body, spec, draft, r, SMOKE_TEST_FAILED, f"smoke test failed: {e}",
                     Evidence(reason=SMOKE_TEST_FAILED, http_status=e.http_status, message=clip(str(e), 512)))
    return _verified(ctx, ref, spec, draft, r, verdict)


def _observe(ctx: Context, namespace: str, sdep: str, predictor: str, model_uri: str) -> Observed:
    labels = selector(sdep, predictor)
    deployments = ctx.kube.list_objects("deployments", namespace, labels)
    pods = ctx.kube.list_objects("pods", namespace, labels) if deployments else []
    return observe(deployments, pods, model_uri, sdep)


def _smoke_test(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft, found: Mapping[str, Any] | None,
                observed: Observed) -> tuple[str, str]:
    """Verified's (reason, message) once it passed or could not run; BadAnswer when it failed."""
    if spec.rollout.smoke_test is SmokeTest.SKIP:
        return "Skipped", "rollout.smokeTest is Skip: judged on the rollout alone"
    if observed.replicas == 0:
        return "NoReplicas", "0 replicas: nothing to send the example to; judged on the rollout alone"
    uri = str(draft.model.model_uri)
    bucket, prefix = parse_s3_uri(uri)
    example, name = None, ""
    try:
        store = check.target_store(ctx, ref.namespace, spec)
        for name in smoke.EXAMPLES:
            example = store.read(bucket, f"{prefix.rstrip('/')}/{name}", 1024 * 1024)
            if example is not None:
                break
    except Rejected as e:  # the storage Secret went away, or the endpoint is no longer allowed
        raise smoke.BadAnswer(f"cannot read the input example: {e.message}") from None
    if example is None:
        return "NoInputExample", (f"the model has no {' or '.join(smoke.EXAMPLES)}: judged on the rollout "
                                  "alone (log it with an input_example)")
    try:
        request = smoke.request_of(json.loads(example))
    except (ValueError, TypeError) as e:
        raise smoke.BadAnswer(f"{name} is not an example a V2 request can carry: {e}") from None
    target = spec.target.seldon_deployment
    service = f"{target.name}-{target.predictor_name}"
    slices = ctx.kube.list_objects("endpointslices", ref.namespace, f"kubernetes.io/service-name={service}")
    where = endpoint(slices, observed.pods, found, service)
    if where is None:
        raise smoke.BadAnswer(f"no ready endpoint of Service {service} and no serviceStatus.{service}")
    url = f"http://{where}/v2/models/{seldon.GRAPH_NODE_NAME}/infer"
    code, answer, seconds = smoke.send(_pool, url, request, SMOKE_TIMEOUT)
    first = smoke.predictions(code, answer, request.rows)
    ctx.metrics.smoke_test_seconds.observe(seconds)
    draft.model.verification = Verification(endpoint=url, example=name, rows=request.rows,
                                            latency_seconds=round(seconds, 4), predictions=first)
    return "SmokeTestPassed", (f"{name}: {request.rows} rows answered in {seconds * 1000:.0f} ms by {where}, "
                               f"first predictions {', '.join(f'{v:.6g}' for v in first)}")


def _finish(ctx: Context, r: RolloutStatus, result: str) -> None:
    r.state, r.finished_at, r.promoted_message = RolloutState.DONE, status.now(), None
    r.seconds = round(time.time() - r.started, 3)
    ctx.metrics.rollout_seconds.labels(result=result).observe(r.seconds)


def _verified(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft, r: RolloutStatus,
              verdict: tuple[str, str]) -> Outcome:
    reason, said = verdict
    draft.condition("Verified", "True" if reason == "SmokeTestPassed" else "Unknown", reason, said)
    final = draft.copy()
    message = r.promoted_message or f"{spec.target.seldon_deployment.name} serves {draft.model.model_uri}"
    final_r = final.model.rollout
    assert final_r is not None
    _finish(ctx, final_r, "Verified")
    status.promoted(final, message, next(c.message for c in draft.model.conditions if c.type == "Deployed"))
    desired = _desired(ref, spec, final)
    target = spec.target.seldon_deployment.name
    owner = ctx.ownership.verified(ref.namespace, target, ref.name, desired, final)
    if owner != ref.name:
        return _overtaken(ctx, ref, draft, r, owner, target)
    ctx.metrics.outcome(Phase.PROMOTED.value)
    if r.previous:
        message += f" (taken over from ModelPromotion {r.previous})"
    # One Event (an Event is an API request too): what serves, and how it was verified.
    events = [Event("Normal", "Promoted", clip(f"{message}; verified: {said}"), "Promote")]
    faults.checkpoint("after-promoted")
    after = _record(ctx, ref, spec, final)
    return Outcome(events=events + after.events, retry=after.retry)


def _record(ctx: Context, ref: Ref, spec: ModelPromotionSpec, final: Draft) -> Outcome:
    """The registry record of a verified promotion, under the deployment's lock and only while
    it still serves it (a later takeover's record is never overwritten by this one's)."""
    if spec.registry is None:
        return Outcome()
    with ctx.ownership.still_serving(ref.namespace, spec.target.seldon_deployment.name, ref.name) as held:
        if held is None:
            return Outcome()
        after = Draft(final.written(), final.generation)
        outcome = registry.record_again(ctx, ref.namespace, ref.name, spec, after)
        held.report(ref.name, after)
    return outcome


def _desired(ref: Ref, spec: ModelPromotionSpec, draft: Draft) -> dict[str, Any]:
    artifact = draft.model.artifact
    return children.deployment(ref, spec, str(draft.model.model_uri), artifact.digest if artifact else "",
                               str(draft.model.run_id or ""))


def _overtaken(ctx: Context, ref: Ref, draft: Draft, r: RolloutStatus, owner: str | None, target: str) -> Outcome:
    """Another promotion wrote the deployment (or it was deleted) before this rollout was verified."""
    _finish(ctx, r, "Overtaken")
    if owner is None:
        message = (f"SeldonDeployment {target} was deleted (or lost its {seldon.PROMOTION_ANNOTATION} annotation) "
                   "before this rollout was verified")
        status.failed(draft, ROLLOUT_FAILED, message)
        ctx.metrics.outcome(Phase.FAILED.value)
        return Outcome(draft.patch(), [Event("Warning", ROLLOUT_FAILED, message, "Verify")])
    message = status.superseded(draft, owner, target) + " (before this promotion's rollout was verified)"
    draft.say(message)
    draft.model.observed_generation = draft.generation
    return Outcome(draft.patch(), [Event("Normal", "Superseded", message, "Verify")])


def _fail(ctx: Context, body: Mapping[str, Any], spec: ModelPromotionSpec, draft: Draft, r: RolloutStatus,
          reason: str, message: str, evidence: Evidence | None) -> Outcome:
    ref = Ref.of(body)
    target = spec.target.seldon_deployment.name
    r.failure, r.failure_message, r.evidence = reason, clip(message, 768), evidence
    draft.condition("Verified" if reason == SMOKE_TEST_FAILED else "Deployed", "False", reason, message)
    if spec.rollout.rollback is Rollback.NONE:
        return _failed(ctx, draft, r, f"{message}; rollout.rollback is None: SeldonDeployment {target} is left as it "
                       "is, set to this model")
    if not r.previous:
        return _failed(ctx, draft, r, f"{message}; no verified promotion served {target} before this one: it is "
                       "left as it is")
    try:
        previous = _previous(ctx, ref.namespace, r.previous)
    except PromoterError as e:
        return _failed(ctx, draft, r, f"{message}; cannot roll back to ModelPromotion {r.previous}: {e.message}; "
                       f"{target} is left as it is")
    r.state, r.rollback_started = RolloutState.ROLLING_BACK, time.time()
    status.rolling_back(draft, reason, f"{message}; rolling back to ModelPromotion {r.previous} "
                        f"({previous.model_uri})")
    # The status first: an operator stopped from here on resumes the rollback, not the failure.
    ctx.ownership.report(ref.namespace, target, ref.name, draft)
    ctx.kube.post_event(body, "Warning", "RollingBack", clip(draft.model.message), "Verify")
    ctx.ownership.roll_back(ref.namespace, target, ref.name, previous.desired)
    return Outcome(watch=delay(0))


@dataclass(frozen=True)
class _Previous:
    name: str
    model_uri: str
    desired: dict[str, Any]


def _previous(ctx: Context, namespace: str, name: str) -> _Previous:
    """The promotion a rollback restores: still Promoted, its copy still matching its manifest."""
    body = ctx.kube.get_promotion(namespace, name)
    if body is None:
        raise _Refused("it was deleted")
    prev = Draft.of(body)
    if prev.model.phase is not Phase.PROMOTED or not prev.model.model_uri or prev.model.artifact is None:
        raise _Refused(f"it is {prev.model.phase.value}, not Promoted")
    spec = parse_spec(body.get("spec") or {})
    check.verified_copy(ctx, check.target_store(ctx, namespace, spec), prev.model.model_uri,
                        prev.model.artifact.digest)
    return _Previous(name, prev.model.model_uri, _desired(Ref.of(body), spec, prev))


class _Refused(PromoterError):
    reason = "RollbackRefused"

    def __init__(self, why: str) -> None:
        super().__init__(why)


def _rolling_back(ctx: Context, ref: Ref, spec: ModelPromotionSpec, draft: Draft, r: RolloutStatus,
                  found: Mapping[str, Any] | None) -> Outcome:
    target = spec.target.seldon_deployment
    owner, previous = named_by(found), str(r.previous)
    failure = r.failure_message or "rollout failed"
    if owner == ref.name:  # stopped between the status and the write: write it now
        try:
            desired = _previous(ctx, ref.namespace, previous).desired
            ctx.ownership.roll_back(ref.namespace, target.name, ref.name, desired)
        except PromoterError as e:
            return _failed(ctx, draft, r, f"{failure}; cannot roll back to ModelPromotion {previous}: {e.message}; "
                           f"{target.name} is left as it is")
        return Outcome(watch=delay(0))
    if owner != previous or fallback_of(found):
        return _failed(ctx, draft, r, f"{failure}; ModelPromotion {owner} took {target.name} over during the "
                       "rollback")
    body = ctx.kube.get_promotion(ref.namespace, previous)
    uri = str(((body or {}).get("status") or {}).get("modelUri") or "")
    observed = _observe(ctx, ref.namespace, target.name, target.predictor_name, uri)
    waited = time.time() - (r.rollback_started or r.started)
    if observed.done:
        ctx.metrics.rollbacks.labels(reason=str(r.failure)).inc()
        r.rolled_back_to = previous
        return _failed(ctx, draft, r, f"{failure}; rolled back: {target.name} serves {uri} of ModelPromotion "
                       f"{previous} again")
    if observed.failed or waited > spec.rollout.timeout_seconds:
        return _failed(ctx, draft, r, f"{failure}; rolled back to ModelPromotion {previous}, which has not rolled "
                       f"out again: {observed.detail}")
    return Outcome(watch=delay(waited))


def _failed(ctx: Context, draft: Draft, r: RolloutStatus, message: str) -> Outcome:
    reason = r.failure or ROLLOUT_FAILED
    _finish(ctx, r, "Failed")
    status.failed(draft, reason, message)
    ctx.metrics.outcome(Phase.FAILED.value)
    return Outcome(draft.patch(), [Event("Warning", reason, clip(draft.model.message), "Verify")])


__all__ = ["ROLLOUT_FAILED", "SMOKE_TEST_FAILED", "Observed", "advance", "delay", "describe", "endpoint", "observe",
           "selector"]
