"""Who serves a SeldonDeployment: the one owner of that fact.

Invariant: the SeldonDeployment's ``mlops.dev/promotion`` annotation names the promotion that
serves it. That is the truth, and the phases follow it: the promotion it names is ``Promoted``;
one that served it before is ``Superseded``.

The operator runs as one replica, and every write that can change the answer, or a phase that
depends on it, happens in this module, under a lock per deployment:

* :meth:`Ownership.take` (a new generation is promoted): write the deployment, then patch the
  promotion's own final status, then mark the promotion the annotation named before Superseded.
  Statuses therefore follow the order of the deployment's writes: of two promotions finishing
  together, the later writer ends Promoted and the earlier Superseded, with no watch, index or
  re-check in between.
* :meth:`Ownership.serving` reads which run the deployment serves (its ``mlops.dev/run-id``
  annotation) for baseline gates; ``take`` is then told that run, and refuses with
  ``ServingChanged`` when another promotion moved the deployment in between, so a challenger is
  never promoted over a champion it was not judged against.
* :meth:`Ownership.still_serving` holds the deployment for what follows a takeover (the
  registry record) only while the promotion still serves it, so a record and its status never
  land after a later takeover's.
* :meth:`Ownership.check` (resume and the drift sweep): read the annotation, and move a settled
  promotion between Promoted and Superseded when it disagrees (someone edited the annotation, or
  the operator died between the write and the status patches); restore a deleted or edited
  deployment only while it still names that promotion.

To mark a promotion Superseded without reading it, the status this process last wrote for the
promotion each deployment names is kept (one per deployment); when there is none (after a
restart), the previous promotion is read once.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import faults, seldon, status
from .errors import PromoterError, ServingChanged
from .spec import Phase
from .status import Draft

if TYPE_CHECKING:
    from .kube import KubeApi

PROMOTION_ANNOTATION = seldon.PROMOTION_ANNOTATION
RUN_ANNOTATION = "mlops.dev/run-id"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("promoter.ownership")


def _annotation(deployment: Mapping[str, Any] | None, key: str) -> str | None:
    value = (((deployment or {}).get("metadata") or {}).get("annotations") or {}).get(key)
    return str(value) if value else None


def named_by(deployment: Mapping[str, Any] | None) -> str | None:
    """The promotion a SeldonDeployment object names (None: absent, or no annotation)."""
    return _annotation(deployment, PROMOTION_ANNOTATION)


def run_of(deployment: Mapping[str, Any] | None) -> str | None:
    """The run a SeldonDeployment object serves (None: absent, not one of ours, or an annotation
    that is not a run id: it is sent to MLflow and shown in status, so it must be one)."""
    run = _annotation(deployment, RUN_ANNOTATION)
    return run if run is not None and _RUN_ID.fullmatch(run) else None


@dataclass(frozen=True)
class Serving:
    """What a deployment served when it was read: the run (None: nothing of ours)."""

    run_id: str | None


@dataclass(frozen=True)
class Taken:
    written: bool  # the deployment was created or patched
    previous: str | None  # the promotion it named before, when another one


@dataclass
class _Served:
    name: str
    status: dict[str, Any]
    generation: int


class Ownership:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._served: dict[tuple[str, str], _Served] = {}
        self._takers: dict[tuple[str, str], int] = {}  # takes waiting for each deployment's lock

    @contextlib.contextmanager
    def _holding(self, namespace: str, deployment: str, taking: bool = False) -> Iterator[None]:
        key = (namespace, deployment)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
            self._takers[key] = self._takers.get(key, 0) + taking
        try:
            lock.acquire()
        finally:
            with self._guard:
                self._takers[key] -= taking
        try:
            yield
        finally:
            lock.release()

    def serving(self, namespace: str, deployment: str) -> Serving:
        """The run ``deployment`` serves now (None: it does not exist, or serves no run of ours)."""
        return Serving(run_of(self.kube.get_seldon(namespace, deployment)))

    def take(self, namespace: str, deployment: str, name: str, desired: Mapping[str, Any],
             final: Draft, judged: Serving | None = None) -> Taken:
        """Make ``deployment`` serve promotion ``name``: ``desired`` is the deployment as rendered
        (its annotation naming ``name``), ``final`` the promotion's status once it serves.
        ``judged``: what :meth:`serving` said when baseline gates were judged against it;
        ServingChanged if the deployment serves another run now (this promotion's own run is
        fine: that is a take resumed after a crash)."""
        mine = run_of(desired)
        with self._holding(namespace, deployment, taking=True):
            before: list[str | None] = [None]

            def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
                before[0] = named_by(have)
                now = run_of(have)
                if judged is not None and now not in (judged.run_id, mine):
                    raise ServingChanged(deployment, judged.run_id, now)
                return seldon.merge_owned(have, desired)

            guarded = seldon.guarded(f"SeldonDeployment {namespace}/{deployment}",
                                     "spec.target.seldonDeployment.name", merge)
            written = self.kube.ensure_seldon(namespace, deployment, guarded) != "unchanged"
            faults.checkpoint("after-seldon")
            served = self._served.get((namespace, deployment))
            self._report(namespace, deployment, name, final)
            previous = before[0] if before[0] != name else None
            if previous is not None:
                try:
                    self._supersede(namespace, deployment, previous, name, served)
                except PromoterError as e:  # its own check (resume, the sweep) reads the annotation
                    log.warning("could not mark ModelPromotion %s/%s superseded by %s: %s",
                                namespace, previous, name, e)
            return Taken(written, previous)

    @contextlib.contextmanager
    def check(self, namespace: str, deployment: str) -> Iterator[Check]:
        """Hold ``deployment`` while a settled promotion of it is checked (see :class:`Check`)."""
        with self._holding(namespace, deployment):
            yield Check(self, namespace, deployment)

    @contextlib.contextmanager
    def still_serving(self, namespace: str, deployment: str, name: str) -> Iterator[Check | None]:
        """Hold ``deployment`` and yield a :class:`Check` if promotion ``name`` is what this process
        last made it serve, and no other takeover is waiting for it (None otherwise: the one that
        serves last records; should a waiting takeover fail, the check of this one does): what
        follows a takeover (the registry record, its status) happens in the order of the
        takeovers, and promotions racing for one deployment record once, not each in turn."""
        with self._holding(namespace, deployment):
            served = self._served.get((namespace, deployment))
            mine = served is not None and served.name == name and not self._takers.get((namespace, deployment))
            yield Check(self, namespace, deployment) if mine else None

    def _report(self, namespace: str, deployment: str, name: str, draft: Draft) -> None:
        patch = draft.patch()
        if patch:
            self.kube.patch_status(namespace, name, patch)
        if draft.model.phase is Phase.PROMOTED:
            self._served[(namespace, deployment)] = _Served(name, draft.written(), draft.generation)

    def _supersede(self, namespace: str, deployment: str, previous: str, by: str,
                   served: _Served | None) -> None:
        if served is not None and served.name == previous:
            draft = Draft(served.status, served.generation)
        else:
            body = self.kube.get_promotion(namespace, previous)
            if body is None:
                return  # deleted: nothing to mark
            draft = Draft.of(body)
            if not draft.settled or draft.model.phase is not Phase.PROMOTED:
                return  # a generation in flight decides for itself when it gets here
        status.superseded(draft, by, deployment)
        patch = draft.patch()
        if patch:
            self.kube.patch_status(namespace, previous, patch)


class Check:
    """A deployment held for the check of one settled promotion: who it names, a guarded
    restore, and status patches made under the same lock as every takeover."""

    def __init__(self, ownership: Ownership, namespace: str, deployment: str) -> None:
        self._ownership, self.namespace, self.deployment = ownership, namespace, deployment

    def owner(self) -> str | None:
        return named_by(self._ownership.kube.get_seldon(self.namespace, self.deployment))

    def restore(self, name: str, desired: Mapping[str, Any]) -> tuple[bool, str | None]:
        """Write ``desired`` back when the deployment is gone or still names ``name``; never over
        another promotion's. Returns whether it wrote, and who the deployment names now."""
        owner: list[str | None] = [name]

        def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
            owner[0] = named_by(have) or name if have is not None else name
            return seldon.merge_owned(have, desired) if owner[0] == name else None

        guarded = seldon.guarded(f"SeldonDeployment {self.namespace}/{self.deployment}",
                                 "spec.target.seldonDeployment.name", merge)
        written = self._ownership.kube.ensure_seldon(self.namespace, self.deployment, guarded) != "unchanged"
        return written, owner[0]

    def report(self, name: str, draft: Draft) -> None:
        self._ownership._report(self.namespace, self.deployment, name, draft)


__all__ = ["PROMOTION_ANNOTATION", "RUN_ANNOTATION", "Check", "Ownership", "Serving", "Taken", "named_by",
           "run_of"]
