"""The promotions whose rollout is being verified, looked at again until each has a verdict.

A rollout takes from seconds to many minutes (an image pull, a slow model load, a readiness
probe's initial delay). Waiting for it in kopf's handler, or as a kopf retry, would hold a worker
or write kopf's retry bookkeeping into the promotion on every look; so once the SeldonDeployment
is written the handler is done, and this one task looks again when each promotion is due
(``rollout.delay``: every 0.5 s for a minute, then up to every 5 s). A look is a reconcile of
the promotion as it is read then, in the reconcile pool and its namespace's lane, like a handler's; its outcome is
patched and its Events posted (``drift.report``). A restarted operator finds its Deploying
promotions again through kopf's resume handler.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor

from . import drift, promotion
from .context import Context, Lanes
from .spec import Phase
from .status import Draft, Outcome

log = logging.getLogger("promoter.rollout")
ON_ERROR = 5.0  # seconds before looking again after a look that raised


class Rollouts:
    def __init__(self, ctx: Context, pool: Executor, lanes: Lanes) -> None:
        self.ctx, self.pool, self.lanes = ctx, pool, lanes
        self._due: dict[tuple[str, str], float] = {}
        self._busy: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()

    def watch(self, namespace: str, name: str, delay: float) -> None:
        """Look at promotion ``namespace/name`` again in ``delay`` seconds (sooner if already due)."""
        when = asyncio.get_running_loop().time() + delay
        key = (namespace, name)
        self._due[key] = min(when, self._due.get(key, when))
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            for key in [k for k, when in self._due.items() if when <= now and k not in self._busy]:
                del self._due[key]
                self._busy.add(key)
                asyncio.create_task(self._one(key), name=f"rollout {key[0]}/{key[1]}")
            upcoming = [when for k, when in self._due.items() if k not in self._busy]
            self._wake.clear()
            timeout = max(0.0, min(upcoming) - loop.time()) if upcoming else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _one(self, key: tuple[str, str]) -> None:
        namespace, name = key
        again: float | None = None
        try:
            async with self.lanes.lane(namespace):
                outcome = await asyncio.get_running_loop().run_in_executor(self.pool, _look, self.ctx,
                                                                           namespace, name)
            if outcome is not None:
                again = outcome.watch if outcome.watch is not None else (
                    outcome.retry.delay if outcome.retry is not None else None)
        except Exception as e:  # noqa: BLE001 - one promotion's failure must not end the others' looks
            log.warning("looking at the rollout of ModelPromotion %s/%s failed: %s", namespace, name, e)
            again = ON_ERROR
        finally:
            self._busy.discard(key)
        if again is not None:
            self.watch(namespace, name, again)


def _look(ctx: Context, namespace: str, name: str) -> Outcome | None:
    """In a worker thread: one look at a Deploying promotion as it is now (None: it is not
    Deploying any more, or is gone; kopf has a new generation, or another look ended it)."""
    body = ctx.kube.get_promotion(namespace, name)
    if body is None:
        return None
    draft = Draft.of(body)
    if not draft.settled or draft.model.phase is not Phase.DEPLOYING:
        return None
    with ctx.metrics.reconcile_seconds.time():
        outcome = promotion.reconcile(ctx, body, 0.0)
    drift.report(ctx, body, outcome)
    return outcome


__all__ = ["Rollouts"]
