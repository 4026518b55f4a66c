"""kopf wiring: decorators, unpacking, one call into :mod:`promoter.promotion`.

Run with ``kopf run -m promoter.handlers`` (``--all-namespaces`` or ``-n NS``).

- kopf keeps its bookkeeping (the last handled spec, retry progress) in ``status.kopf``: a
  handled promotion costs one status patch of kopf's, beside the one the reconcile writes.
- The drift check is one sweep over the namespaces that have settled promotions every
  ``PROMOTER_DRIFT_INTERVAL`` (a paged list, then the checks one after another), not a kopf
  timer per object: a timer makes kopf put a finalizer on every promotion (two more writes each,
  and ``kubectl delete`` hangs while the operator is down) and keeps a task per object.
- Reconciles run in a pool of ``PROMOTER_WORKERS`` threads, at most ``PROMOTER_NAMESPACE_WORKERS``
  of one namespace at once (waiting for that is an ``await``, not a thread), so one namespace's
  slow upstream cannot stall the others.
- Once a promotion's SeldonDeployment is written, its rollout is verified outside kopf's
  handlers (``tracker.Rollouts``: one task, looking again at each Deploying promotion when due),
  so waiting for a rollout holds no worker and writes no retry bookkeeping.
- ``kubectl annotate mp <name> mlops.dev/restore=<new value>`` rolls a Superseded promotion out
  again (its own handler: an annotation is not the spec).
- ``PROMOTER_SCOPE`` shares a cluster between operators: this one handles the promotions
  labelled ``mlops.dev/scope=<scope>`` (unset: those without the label).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from . import drift, promotion
from .config import SCOPE_LABEL, load
from .context import Context, Lanes
from .kube import Api, Kube, connection
from .metrics import Metrics
from .spec import API_GROUP, API_VERSION, PLURAL
from .status import Outcome
from .tracker import Rollouts

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
MAX_DELAY = 300.0  # the longest wait between two retries of one promotion
_settings = load()
SCOPE = {SCOPE_LABEL: _settings.scope or kopf.ABSENT}
log = logging.getLogger("promoter.drift")


# kopf passes its indexes to every handler by their ids; its ActivityFn protocol lists no such
# keyword, hence the ignore.
@kopf.on.startup(id="startup")  # type: ignore[arg-type]
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger,
                  decided: kopf.Index[str | None, str], **_: Any) -> None:
    settings.execution.max_workers = _settings.workers
    # One known CRD and namespaces named on the command line: no CRD or namespace watching,
    # so the operator needs no cluster-wide grant for them.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 60
    # An idle watch can go silent without an error (kopf#698): ask the server to end it, and
    # give up on it a little later ourselves; kopf then lists and watches again.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
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
    memo.ctx = Context.create(_settings, Kube(api, _settings.retry_delay), metrics)
    # Reconciles run in these threads, at most lane-width of one namespace at a time.
    memo.pool = ThreadPoolExecutor(max_workers=_settings.workers, thread_name_prefix="reconcile")
    memo.lanes = Lanes(_settings.lane_width)
    memo.sweeper = asyncio.create_task(_sweep_forever(memo.ctx, decided), name="drift sweep")
    memo.rollouts = Rollouts(memo.ctx, memo.pool, memo.lanes)
    memo.watcher = asyncio.create_task(memo.rollouts.run(), name="rollouts")
    logger.info("settings: tracking %s, storage %s, artifact store %s, metrics port %d, drift check every %gs%s",
                _settings.tracking_uri, _settings.storage_endpoint, _settings.artifact_s3_endpoint,
                _settings.metrics_port, _settings.drift_interval,
                f", scope {_settings.scope}" if _settings.scope else "")


@kopf.on.cleanup(id="cleanup")
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for task in (getattr(memo, "sweeper", None), getattr(memo, "watcher", None)):
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    pool = getattr(memo, "pool", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


@kopf.index(*RESOURCE, id="decided", labels=SCOPE)
def decided(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[str | None, str] | None:
    """namespace -> its promotions the drift sweep checks (from the watch stream kopf already
    has: which namespaces to list costs no request)."""
    return {namespace: name} if drift.checked(body) else None


@kopf.on.resume(*RESOURCE, id="reconcile", labels=SCOPE)
@kopf.on.create(*RESOURCE, id="reconcile", labels=SCOPE)
@kopf.on.update(*RESOURCE, id="reconcile", field="spec", labels=SCOPE)
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, runtime: dt.timedelta, retry: int,
                    namespace: str | None, **_: Any) -> None:
    ctx: Context = memo.ctx
    async with memo.lanes.lane(namespace or ""):
        loop = asyncio.get_running_loop()
        outcome = await loop.run_in_executor(memo.pool, _reconcile, ctx, body, runtime.total_seconds())
    _apply(memo, body, patch, retry, outcome)


@kopf.on.update(*RESOURCE, id="restore", field=("metadata", "annotations", promotion.RESTORE_ANNOTATION),
                labels=SCOPE)
async def restore(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, namespace: str | None, **_: Any) -> None:
    """``mlops.dev/restore`` set or changed: a Superseded promotion serves again, once verified."""
    ctx: Context = memo.ctx
    async with memo.lanes.lane(namespace or ""):
        outcome = await asyncio.get_running_loop().run_in_executor(memo.pool, _restore, ctx, body)
    _apply(memo, body, patch, 0, outcome)


def _apply(memo: kopf.Memo, body: kopf.Body, patch: kopf.Patch, retry: int, outcome: Outcome) -> None:
    """A handler's outcome: kopf's patch, its rollout watched, and a retry or a permanent error."""
    if outcome.watch is not None:
        meta = body.get("metadata") or {}
        memo.rollouts.watch(str(meta.get("namespace")), str(meta.get("name")), outcome.watch)
    if outcome.status:
        patch.status.update(outcome.status)
    if outcome.retry is not None:
        delay = min(MAX_DELAY, outcome.retry.delay * (2 ** min(retry, 5)))
        raise kopf.TemporaryError(outcome.retry.message, delay=delay)
    if outcome.rejected is not None:
        raise kopf.PermanentError(outcome.rejected.message)


def _restore(ctx: Context, body: Mapping[str, Any]) -> Outcome:
    """In a worker thread: a restore request, and its Events."""
    return drift.posted(ctx, body, promotion.restore(ctx, body))


def _reconcile(ctx: Context, body: Mapping[str, Any], waited: float) -> Outcome:
    """In a worker thread: the reconcile, and its Events."""
    with ctx.metrics.reconcile_seconds.time():
        outcome = promotion.reconcile(ctx, body, waited)
    return drift.posted(ctx, body, outcome)


async def _sweep_forever(ctx: Context, decided: kopf.Index[str | None, str]) -> None:
    selector = f"{SCOPE_LABEL}={_settings.scope}" if _settings.scope else f"!{SCOPE_LABEL}"
    while True:
        await asyncio.sleep(ctx.settings.drift_interval)
        for namespace, names in sorted((ns, len(store)) for ns, store in decided.items() if ns):
            try:
                checked = await asyncio.to_thread(drift.sweep, ctx, namespace, selector)
                log.debug("drift check of namespace %s: %d of %d promotions", namespace, checked, names)
            except Exception as e:  # noqa: BLE001 - one namespace's failure must not end the sweeps
                log.warning("drift check of namespace %s stopped early: %s", namespace, e)
