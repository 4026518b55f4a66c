"""Who serves a SeldonDeployment: the one owner of that fact.

Invariant: the SeldonDeployment's ``mlops.dev/promotion`` annotation names the promotion whose
model it is set to serve. That is the truth, and the phases follow it: the promotion it names is
``Deploying`` (its rollout not yet verified) or ``Promoted``; one that served it before is
``Superseded``. While a rollout is being verified, ``mlops.dev/rollback-to`` names the promotion
that served before (still ``Promoted``: it is never demoted while the new model is only being
tried), and what a failed rollout restores; it is empty once the rollout is verified.

The operator runs as one replica, and every write that can change the answer, or a phase that
depends on it, happens in this module, under a lock per deployment:

* :meth:`Ownership.take` (a new generation, or a restore, is rolled out): write the deployment
  naming the promotion, with ``rollback-to`` naming what served before, then patch the
  promotion's own status (Deploying). Nothing is marked Superseded yet.
* :meth:`Ownership.verified` (the rollout and the smoke test passed): while the deployment still
  names the promotion, clear ``rollback-to``, patch the promotion Promoted, then mark the one it
  replaced Superseded. Statuses therefore follow the order of the deployment's writes: of two
  promotions finishing together, the later writer ends Promoted and the earlier Superseded.
* :meth:`Ownership.roll_back` (the rollout failed): while the deployment still names the failed
  promotion, write back what the ``rollback-to`` promotion serves.
* :meth:`Ownership.serving` reads which run the deployment serves (its ``mlops.dev/run-id``
  annotation) for baseline gates; ``take`` is then told that run, and refuses with
  ``ServingChanged`` when another promotion moved the deployment in between, so a challenger is
  never promoted over a champion it was not judged against.
* :meth:`Ownership.still_serving` holds the deployment for what follows a takeover (the
  registry record) only while the promotion still serves it, so a record and its status never
  land after a later takeover's.
* :meth:`Ownership.check` (resume and the drift sweep): read the annotations, and move a settled
  promotion between Promoted and Superseded when they disagree (someone edited the annotation, or
  the operator died between the write and the status patches); a Promoted promotion that
  ``rollback-to`` names stays Promoted; restore a deleted or edited deployment only while it
  still names that promotion.

To mark a promotion Superseded without reading it, the status this process last wrote for the
promotion each deployment names is kept (one per deployment); when there is none (after a
restart), the previous promotion is read once.
"""

from __future__ import annotations

import contextlib
import copy
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
ROLLBACK_ANNOTATION = "mlops.dev/rollback-to"
RUN_ANNOTATION = "mlops.dev/run-id"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
log = logging.getLogger("promoter.ownership")


def _annotation(deployment: Mapping[str, Any] | None, key: str) -> str | None:
    value = (((deployment or {}).get("metadata") or {}).get("annotations") or {}).get(key)
    return str(value) if value else None


def named_by(deployment: Mapping[str, Any] | None) -> str | None:
    """The promotion a SeldonDeployment object names (None: absent, or no annotation)."""
    return _annotation(deployment, PROMOTION_ANNOTATION)


def fallback_of(deployment: Mapping[str, Any] | None) -> str | None:
    """The promotion a SeldonDeployment rolls back to while its rollout is verified (None: none)."""
    return _annotation(deployment, ROLLBACK_ANNOTATION)


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
    fallback: str | None  # what a failed rollout restores: the last verified promotion


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
             deploying: Draft, judged: Serving | None = None) -> Taken:
        """Make ``deployment`` serve promotion ``name``'s model: ``desired`` is the deployment as
        rendered (its annotation naming ``name``), ``deploying`` the promotion's status while its
        rollout is verified (its ``rollout.previous`` is set here: the fallback).
        ``judged``: what :meth:`serving` said when baseline gates were judged against it;
        ServingChanged if the deployment serves another run now (this promotion's own run is
        fine: that is a take resumed after a crash)."""
        mine = run_of(desired)
        with self._holding(namespace, deployment, taking=True):
            before: list[str | None] = [None, None]

            def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
                named, fallback = named_by(have), fallback_of(have)
                # What served before: the promotion named, once verified; while it is still
                # being verified (rollback-to set), what it would itself roll back to.
                previous = fallback if fallback or named == name else named
                before[0], before[1] = named, previous if previous != name else None
                now = run_of(have)
                if judged is not None and now not in (judged.run_id, mine):
                    raise ServingChanged(deployment, judged.run_id, now)
                want = copy.deepcopy(dict(desired))
                want["metadata"]["annotations"][ROLLBACK_ANNOTATION] = before[1] or ""
                return seldon.merge_owned(have, want)

            guarded = seldon.guarded(f"SeldonDeployment {namespace}/{deployment}",
                                     "spec.target.seldonDeployment.name", merge)
            written = self.kube.ensure_seldon(namespace, deployment, guarded) != "unchanged"
            faults.checkpoint("after-seldon")
            if deploying.model.rollout is not None:
                deploying.model.rollout.previous = before[1]
            self._report(namespace, deployment, name, deploying)
            previous = before[0] if before[0] != name else None
            return Taken(written, previous, before[1])

    def verified(self, namespace: str, deployment: str, name: str, desired: Mapping[str, Any],
                 final: Draft) -> str | None:
        """The rollout of promotion ``name`` is verified: while the deployment still names it,
        clear ``rollback-to`` (``desired`` is the deployment as rendered for ``name``), patch
        ``final`` (Promoted), mark what served before Superseded. Returns the deployment's owner
        (``name`` when this promotion serves it now)."""
        with self._holding(namespace, deployment):
            owner, fallback = self._write_while_named(namespace, deployment, name, desired)
            if owner != name:
                return owner
            served = self._served.get((namespace, deployment))
            self._report(namespace, deployment, name, final)
            previous = fallback or (final.model.rollout.previous if final.model.rollout else None)
            if previous and previous != name:
                try:
                    self._supersede(namespace, deployment, previous, name, served)
                except PromoterError as e:  # its own check (resume, the sweep) reads the annotation
                    log.warning("could not mark ModelPromotion %s/%s superseded by %s: %s",
                                namespace, previous, name, e)
            return name

    def roll_back(self, namespace: str, deployment: str, name: str, desired: Mapping[str, Any]) -> str | None:
        """Promotion ``name``'s rollout failed: while the deployment still names it, write
        ``desired`` (the deployment as rendered for the promotion it rolls back to). Returns the
        deployment's owner before the write."""
        with self._holding(namespace, deployment):
            return self._write_while_named(namespace, deployment, name, desired)[0]

    def _write_while_named(self, namespace: str, deployment: str, name: str,
                           desired: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """With the lock held: write ``desired`` with ``rollback-to`` cleared, only while the
        deployment names ``name``. Returns who it named and rolled back to, as read."""
        found: list[str | None] = [None, None]

        def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
            found[0], found[1] = named_by(have), fallback_of(have)
            if found[0] != name:
                return None
            want = copy.deepcopy(dict(desired))
            want["metadata"]["annotations"][ROLLBACK_ANNOTATION] = ""
            return seldon.merge_owned(have, want)

        guarded = seldon.guarded(f"SeldonDeployment {namespace}/{deployment}", "spec.target.seldonDeployment.name",
                                 merge)
        self.kube.ensure_seldon(namespace, deployment, guarded)
        return found[0], found[1]

    def report(self, namespace: str, deployment: str, name: str, draft: Draft) -> None:
        """Patch a promotion's status under the deployment's lock (a rollout's progress)."""
        with self._holding(namespace, deployment):
            self._report(namespace, deployment, name, draft)

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

    def owner(self) -> tuple[str | None, str | None]:
        """Who the deployment names, and who it rolls back to while a rollout is verified."""
        found = self._ownership.kube.get_seldon(self.namespace, self.deployment)
        return named_by(found), fallback_of(found)

    def restore(self, name: str, desired: Mapping[str, Any]) -> tuple[bool, str | None]:
        """Write ``desired`` back when the deployment is gone or still names ``name``; never over
        another promotion's. Returns whether it wrote, and who the deployment names now."""
        owner: list[str | None] = [name]

        def merge(have: dict[str, Any] | None) -> dict[str, Any] | None:
            owner[0] = named_by(have) or name if have is not None else name
            if owner[0] != name:
                return None
            want = copy.deepcopy(dict(desired))
            want["metadata"]["annotations"].setdefault(ROLLBACK_ANNOTATION, "")
            return seldon.merge_owned(have, want)

        guarded = seldon.guarded(f"SeldonDeployment {self.namespace}/{self.deployment}",
                                 "spec.target.seldonDeployment.name", merge)
        written = self._ownership.kube.ensure_seldon(self.namespace, self.deployment, guarded) != "unchanged"
        return written, owner[0]

    def report(self, name: str, draft: Draft) -> None:
        self._ownership._report(self.namespace, self.deployment, name, draft)


__all__ = ["PROMOTION_ANNOTATION", "ROLLBACK_ANNOTATION", "RUN_ANNOTATION", "Check", "Ownership", "Serving", "Taken",
           "fallback_of", "named_by", "run_of"]
