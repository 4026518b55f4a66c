"""kopf wiring: decorators, unpacking, one call into :mod:`promoter.promotion`.

Run with ``kopf run -m promoter.handlers`` (``--all-namespaces`` or ``-n NS``).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from kubernetes import client, config

from . import promotion
from .config import load
from .kube import Kube
from .metrics import Metrics
from .spec import API_GROUP, API_VERSION, PLURAL

RESOURCE = (API_GROUP, API_VERSION, PLURAL)
MAX_DELAY = 300.0  # the longest wait between two retries of one promotion
_settings = load()


@kopf.on.startup(id="startup")
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    settings.execution.max_workers = _settings.workers
    # One known CRD and namespaces named on the command line: no CRD or namespace watching,
    # so the operator needs no cluster-wide grant for them.
    settings.scanning.disabled = True
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = 60
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    metrics = Metrics()
    metrics.serve(_settings.metrics_port)
    memo.ctx = promotion.Context(_settings, Kube(client.ApiClient(), _settings.retry_delay), metrics)
    logger.info("settings: tracking %s, storage %s, artifact store %s, metrics port %d",
                _settings.tracking_uri, _settings.storage_endpoint, _settings.artifact_s3_endpoint,
                _settings.metrics_port)


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


@kopf.timer(*RESOURCE, id="drift", interval=_settings.drift_interval, initial_delay=_settings.drift_interval,
            idle=_settings.drift_interval / 2)
def drift(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Notice a deleted or edited child, or a tampered copy, between spec changes; and a
    promotion marked Superseded that its SeldonDeployment still names."""
    ctx: promotion.Context = memo.ctx
    if (body.get("status") or {}).get("phase") not in ("Promoted", "Superseded"):
        return
    outcome = promotion.reconcile(ctx, body, 0.0)
    if outcome.status:
        patch.status.update(outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
