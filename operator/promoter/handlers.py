"""kopf wiring: decorators, unpacking, one call into :mod:`promoter.promotion`.

Run with ``kopf run -m promoter.handlers`` (``--all-namespaces`` or ``-n NS``).

Two choices keep the API traffic per promotion low:

- kopf keeps its bookkeeping (the last handled spec, retry progress) in ``status.kopf``, so a
  handled promotion costs one status patch, not a status patch plus an annotations patch.
- The drift check is one sweep over the operator's namespaces every ``PROMOTER_DRIFT_INTERVAL``
  (a paged list, then the checks one after another), not a kopf timer per object: a timer makes
  kopf put a finalizer on every promotion (two more writes each, and ``kubectl delete`` hangs
  while the operator is down) and keeps a task per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from . import promotion
from .config import load
from .kube import Api, Kube, connection
from .metrics import Metrics
from .spec import API_GROUP, API_VERSION, PLURAL, Phase

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
MAX_DELAY = 300.0  # the longest wait between two retries of one promotion
CHECKED = (Phase.PROMOTED.value, Phase.SUPERSEDED.value)  # the phases the drift sweep looks at
_settings = load()
log = logging.getLogger("promoter.drift")


@kopf.on.startup(id="startup")
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any) -> None:
    settings.execution.max_workers = _settings.workers
    # One known CRD and namespaces named on the command line: no CRD or namespace watching,
    # so the operator needs no cluster-wide grant for them.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 60
    settings.persistence.progress_storage = kopf.StatusProgressStorage()
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage()
    # After its own status patch, kopf waits this long for the watch to bring that version back
    # before it trusts an older event; a loaded API server can lag more than the default 5 s, and
    # an older event without status.kopf would run a promotion's handler a second time.
    settings.persistence.consistency_timeout = 60
    api = Api(functools.partial(connection, settings), timeout=settings.networking.request_timeout,
              pool_size=_settings.workers + 2)
    metrics = Metrics()
    metrics.serve(_settings.metrics_port)
    memo.ctx = promotion.Context(_settings, Kube(api, _settings.retry_delay), metrics,
                                 promoted=_lookup(kwargs["promoted"]))
    memo.sweeper = asyncio.create_task(_sweep_forever(memo.ctx, kwargs["decided"]), name="drift sweep")
    logger.info("settings: tracking %s, storage %s, artifact store %s, metrics port %d, drift check every %gs",
                _settings.tracking_uri, _settings.storage_endpoint, _settings.artifact_s3_endpoint,
                _settings.metrics_port, _settings.drift_interval)


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    sweeper = getattr(memo, "sweeper", None)
    if sweeper is not None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper


@kopf.index(*RESOURCE, id="decided")
def decided(namespace: str | None, name: str, status: kopf.Status, **_: Any) -> dict[str | None, str] | None:
    """namespace -> names of its promotions in a phase the drift sweep checks (from the watch
    stream kopf already has: no API requests)."""
    return {namespace: name} if status.get("phase") in CHECKED else None


def _decided_as(phases: tuple[str, ...], status: Mapping[str, Any], meta: Mapping[str, Any]) -> bool:
    """The promotion's current generation ended in one of ``phases`` (not a new one in flight)."""
    return status.get("phase") in phases and status.get("observedGeneration") == meta.get("generation")


def _promoted(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    return _decided_as((Phase.PROMOTED.value,), status, meta)


@kopf.index(*RESOURCE, id="promoted")
def promoted(namespace: str | None, name: str, status: kopf.Status, meta: kopf.Meta,
             **_: Any) -> dict[tuple[str | None, str], dict[str, Any]] | None:
    """(namespace, name) -> status, for the promotions the watch last showed Promoted: the one
    a new promotion takes a deployment from is marked Superseded without reading it first."""
    if not _promoted(status, meta):
        return None
    return {(namespace, name): {k: v for k, v in status.items() if k != "kopf"}}


def _lookup(index: kopf.Index[tuple[str, str], dict[str, Any]]) -> Callable[[str, str], dict[str, Any] | None]:
    def promoted_status(namespace: str, name: str) -> dict[str, Any] | None:
        for _attempt in range(3):  # read from a worker thread while the event loop may update it
            try:
                return next(iter(index.get((namespace, name), ())), None)
            except RuntimeError:
                continue
        return None
    return promoted_status


def _apply(outcome: promotion.Outcome, body: kopf.Body, patch: kopf.Patch, retry: int) -> None:
    if outcome.status:
        patch.status.update(outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    if outcome.retry is not None:
        delay = min(MAX_DELAY, outcome.retry.delay * (2 ** min(retry, 5)))
        raise kopf.TemporaryError(outcome.retry.message, delay=delay)
    if outcome.rejected is not None:
        raise kopf.PermanentError(outcome.rejected.message)


@kopf.on.resume(*RESOURCE, id="reconcile")
@kopf.on.create(*RESOURCE, id="reconcile")
@kopf.on.update(*RESOURCE, id="reconcile", field="spec")
def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, runtime: Any, retry: int,
              **_: Any) -> None:
    ctx: promotion.Context = memo.ctx
    with ctx.metrics.reconcile_seconds.time():
        outcome = promotion.reconcile(ctx, body, runtime.total_seconds())
    _apply(outcome, body, patch, retry)


@kopf.on.event(*RESOURCE, id="owner", when=_promoted)
def owner(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every watch event of a Promoted promotion: Superseded when this process has since
    written its deployment for another one (a status patch then; no request otherwise)."""
    ctx: promotion.Context = memo.ctx
    _report(ctx, body, promotion.recheck_owner(ctx, body))


async def _sweep_forever(ctx: promotion.Context, decided: kopf.Index[str, str]) -> None:
    while True:
        await asyncio.sleep(ctx.settings.drift_interval)
        for namespace in sorted(decided):
            try:
                await asyncio.to_thread(sweep, ctx, namespace)
            except Exception as e:  # noqa: BLE001 - one namespace's failure must not end the sweeps
                log.warning("drift check of namespace %s stopped early: %s", namespace, e)


def sweep(ctx: promotion.Context, namespace: str) -> int:
    """Drift-check every settled Promoted or Superseded promotion of ``namespace``: notice a
    deleted or edited child, or a tampered copy, between spec changes; and a promotion marked
    Superseded that its SeldonDeployment still names. Returns how many were checked."""
    checked = 0
    for body in ctx.kube.iter_promotions(namespace):
        meta = body.get("metadata") or {}
        if not _decided_as(CHECKED, body.get("status") or {}, meta) or meta.get("deletionTimestamp"):
            continue  # a new generation is kopf's to handle
        checked += 1
        try:
            _report(ctx, body, promotion.reconcile(ctx, body, 0.0))
        except Exception as e:  # noqa: BLE001 - one promotion's failure must not skip the others
            log.warning("drift check of ModelPromotion %s/%s failed: %s", namespace, meta.get("name"), e)
    return checked


def _report(ctx: promotion.Context, body: Mapping[str, Any], outcome: promotion.Outcome) -> None:
    """An outcome reached outside kopf's handler cycle: the status through a patch of its own,
    then the Events (auxiliary: a failed one is logged, never raised)."""
    meta = body.get("metadata") or {}
    if outcome.status:
        ctx.kube.patch_status(str(meta.get("namespace")), str(meta.get("name")), outcome.status)
    for event in outcome.events:
        ctx.kube.post_event(body, event.type, event.reason, event.message)
