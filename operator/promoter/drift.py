"""The drift sweep: every settled Promoted or Superseded promotion of a namespace, checked in
turn between spec changes (a deleted or edited child is restored, a tampered copy reported, a
serving promotion whose Secret or store fails is marked degraded, a promotion the deployment
names again is reclaimed), and the outcome of a check made outside kopf's handler cycle.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from . import promotion
from .context import Context
from .status import Draft, Outcome

log = logging.getLogger("promoter.drift")


def checked(body: Mapping[str, Any]) -> bool:
    """The promotion's current generation ended in a phase the sweep checks, and it is not
    being deleted (a new generation in flight is kopf's to handle)."""
    draft = Draft.of(body)
    return draft.settled and draft.model.phase in promotion.CHECKED \
        and not (body.get("metadata") or {}).get("deletionTimestamp")


def sweep(ctx: Context, namespace: str, selector: str = "") -> int:
    """Check every settled Promoted or Superseded promotion of ``namespace`` (one paged list,
    then the checks one after another). Returns how many were checked."""
    count = 0
    for body in ctx.kube.iter_promotions(namespace, selector):
        if not checked(body):
            continue
        count += 1
        try:
            report(ctx, body, promotion.reconcile(ctx, body, 0.0))
        except Exception as e:  # noqa: BLE001 - one promotion's failure must not skip the others
            meta = body.get("metadata") or {}
            log.warning("drift check of ModelPromotion %s/%s failed: %s", namespace, meta.get("name"), e)
    return count


def report(ctx: Context, body: Mapping[str, Any], outcome: Outcome) -> None:
    """An outcome reached outside kopf's handler cycle: the status through a patch of its own,
    then the Events (auxiliary: a failed one is logged, never raised). A retry it asks for is
    the next sweep."""
    meta = body.get("metadata") or {}
    if outcome.status:
        ctx.kube.patch_status(str(meta.get("namespace")), str(meta.get("name")), outcome.status)
    posted(ctx, body, outcome)


def posted(ctx: Context, body: Mapping[str, Any], outcome: Outcome) -> Outcome:
    """Post the outcome's Events about the promotion ``body`` (a failed one is logged, never
    raised: kube.post_event); returns the outcome."""
    for event in outcome.events:
        ctx.kube.post_event(body, event.type, event.reason, event.message, event.action)
    return outcome


__all__ = ["checked", "posted", "report", "sweep"]
