"""A promotion's status as a draft, and the outcomes a reconcile reaches. Pure: no I/O.

A :class:`Draft` starts from the stored status and ends as the merge patch of what changed
(``changes``). The functions below put a draft into one of the states of the status table in
the README; each sets the phase, the message and the conditions together, so the conditions
always agree with the phase::

    rejected    Rejected (or Failed for a tampered copy), Stalled=True: no retry until the spec changes
    waiting     phase kept, Reconciling=True: retried after a delay (an upstream, a running run)
    deploying   Deploying, Reconciling=True: the deployment is written, its rollout is verified
    promoted    Promoted, Ready=True, Deployed=True, Verified (True, or Unknown with the reason)
    failed      Failed, Stalled=True: the rollout or the smoke test failed (rolled back or not)
    superseded  Superseded, Ready=False: a later promotion serves the deployment
    reclaimed   Promoted again: the deployment still names this promotion
    degraded    Promoted kept, Ready=False reason Degraded: a check of a serving promotion failed
    recovered   Promoted, Ready=True again after degraded
    recorded    Recorded=True: the registry says which version serves (alias, tags)
    unrecorded  Recorded=False: the registry write failed; serving is untouched, it is retried

Beside them, ``VersionsMatch`` says how the model's library versions compare with the serving
image's (True, False with reason VersionSkew, Unknown when the image's are not known).

An :class:`Outcome` is the data a reconcile returns; ``handlers`` applies it (status patch,
Events, retry or not).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ArtifactTampered, PromoterError, Rejected, Waiting, clip
from .spec import Condition, Phase, PromotionStatus, set_condition

DEGRADED = "Degraded"
RECORDED = "Recorded"
VERSIONS_MATCH = "VersionsMatch"


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    action: str = "Reconcile"  # what the operator was doing: Reconcile, Promote, Check


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)  # changed status fields only
    events: list[Event] = field(default_factory=list)
    retry: Waiting | None = None
    rejected: Rejected | None = None
    watch: float | None = None  # a rollout is being verified: look again in this many seconds


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Draft:
    """The status being built: starts from what is stored, diffs against it at the end."""

    def __init__(self, stored: Mapping[str, Any], generation: int) -> None:
        self.stored = {k: v for k, v in stored.items() if k != "kopf"}
        self.model = PromotionStatus.model_validate(self.stored) if self.stored else PromotionStatus()
        self.generation = generation
        self.clear: set[str] = set()

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Draft:
        """The draft of a promotion object's current status and generation."""
        meta = body.get("metadata") or {}
        return cls(body.get("status") or {}, int(meta.get("generation") or 0))

    def copy(self) -> Draft:
        twin = Draft(self.stored, self.generation)
        twin.model, twin.clear = self.model.model_copy(deep=True), set(self.clear)
        return twin

    @property
    def settled(self) -> bool:
        """The stored status describes the current generation."""
        return self.model.observed_generation == self.generation

    def condition(self, type_: str, status: Literal["True", "False", "Unknown"], reason: str,
                  message: str = "") -> None:
        self.model.conditions = set_condition(
            self.model.conditions,
            Condition(type=type_, status=status, reason=reason, message=clip(message),
                      observed_generation=self.generation),
            now(),
        )

    def drop(self, *types: str) -> None:
        """Remove conditions (of an earlier generation that this one may not reach)."""
        self.model.conditions = [c for c in self.model.conditions if c.type not in types]

    def reason_of(self, type_: str) -> str | None:
        return next((c.reason for c in self.model.conditions if c.type == type_), None)

    def unset(self, *keys: str) -> None:
        """Remove status fields (a merge patch null; harmless when absent)."""
        for key in keys:
            setattr(self.model, _attribute(key), None)
            self.clear.add(key)

    def changes(self) -> dict[str, Any]:
        new = self.model.model_dump(by_alias=True, exclude_none=True, mode="json")
        out = {k: v for k, v in new.items() if self.stored.get(k) != v}
        for key in self.clear:
            if key not in new:
                out[key] = None
        return out

    def say(self, message: str) -> None:
        """The status message, at most errors.MESSAGE_LIMIT characters."""
        self.model.message = clip(message)

    def patch(self) -> dict[str, Any]:
        """The merge patch writing this status whole, or ``{}`` when nothing changed. Whole, so
        that a field another writer patched since the status was read cannot stay behind."""
        if not self.changes():
            return {}
        new = self.written()
        whole = {k: _whole(self.stored.get(k), v) for k, v in new.items()}
        return {**whole, **{k: None for k in self.clear if k not in new}}

    def written(self) -> dict[str, Any]:
        """The status as this draft has it (what :meth:`patch` writes, without the nulls)."""
        return self.model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _whole(stored: Any, new: Any) -> Any:
    """``new``, with a null for each key of a stored object that ``new`` no longer has (a merge
    patch keeps what it does not mention)."""
    if not isinstance(stored, Mapping) or not isinstance(new, Mapping):
        return new
    return {**{k: None for k in stored if k not in new}, **{k: _whole(stored.get(k), v) for k, v in new.items()}}


def _attribute(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


# --- the states -----------------------------------------------------------------------------


def rejected(draft: Draft, e: Rejected) -> Phase:
    """Rejected (Failed for a copy that no longer matches its manifest); returns the phase."""
    phase = Phase.FAILED if isinstance(e, ArtifactTampered) else Phase.REJECTED
    _stalled(draft, phase, e.reason, e.message)
    return phase


def _stalled(draft: Draft, phase: Phase, reason: str, message: str) -> None:
    """A decided generation that is not retried: Ready=False, Stalled=True with the reason."""
    draft.model.phase = phase
    draft.say(message)
    draft.model.observed_generation = draft.generation
    draft.unset("progress")
    draft.condition("Ready", "False", reason, message)
    draft.condition("Reconciling", "False", reason)
    draft.condition("Stalled", "True", reason, message)


def waiting(draft: Draft, e: Waiting) -> bool:
    """Reconciling=True with what is waited for; True when that is news (an Event is due)."""
    news = not any(c.type == "Reconciling" and c.status == "True" and c.reason == e.reason
                   for c in draft.model.conditions)
    draft.say(e.message)
    draft.condition("Ready", "False", e.reason, e.message)
    draft.condition("Reconciling", "True", e.reason, e.message)
    draft.condition("Stalled", "False", e.reason)
    return news


def deploying(draft: Draft, message: str) -> None:
    """The SeldonDeployment is (about to be) written: the rollout and smoke test are pending."""
    draft.model.phase = Phase.DEPLOYING
    draft.say(message)
    draft.model.observed_generation = draft.generation
    draft.unset("progress", "supersededBy", "verification")
    draft.condition("Deployed", "Unknown", "RollingOut", message)
    draft.condition("Verified", "Unknown", "Pending", "the smoke test runs once the rollout is done")
    draft.condition("Ready", "False", "Deploying", message)
    draft.condition("Reconciling", "True", "Deploying", message)
    draft.condition("Stalled", "False", "Deploying")


def promoted(draft: Draft, message: str, deployed: str) -> None:
    draft.model.phase = Phase.PROMOTED
    draft.say(message)
    draft.model.observed_generation = draft.generation
    draft.unset("progress", "supersededBy")
    draft.condition("Deployed", "True", "RolledOut", deployed)
    draft.condition("Ready", "True", "Promoted", message)
    draft.condition("Reconciling", "False", "Promoted")
    draft.condition("Stalled", "False", "Promoted")


def failed(draft: Draft, reason: str, message: str) -> None:
    """The rollout or the smoke test failed; ``message`` says what the deployment serves now."""
    _stalled(draft, Phase.FAILED, reason, message)


def rolling_back(draft: Draft, reason: str, message: str) -> None:
    draft.say(message)
    draft.condition("Ready", "False", reason, message)
    draft.condition("Reconciling", "True", "RollingBack", message)


def superseded(draft: Draft, by: str, deployment: str) -> str:
    message = f"superseded by ModelPromotion {by}, which now serves {deployment}"
    draft.model.phase, draft.model.superseded_by = Phase.SUPERSEDED, by
    draft.say(message)
    draft.condition("Ready", "False", "Superseded", message)
    draft.condition("Deployed", "False", "Superseded", message)
    draft.condition("Reconciling", "False", "Superseded")
    draft.condition("Stalled", "False", "Superseded")
    return message


def reclaimed(draft: Draft, deployment: str, run_id: str) -> str:
    message = (f"{deployment} serves run {run_id} of this promotion "
               f"(it had been marked superseded by {draft.model.superseded_by})")
    draft.model.phase = Phase.PROMOTED
    draft.say(message)
    draft.unset("supersededBy")
    draft.condition("Deployed", "True", "Deployed", message)
    draft.condition("Ready", "True", "Promoted", message)
    return message


def degraded(draft: Draft, problem: str) -> bool:
    """A serving promotion whose check failed: phase and serving stay, Ready=False says why.
    True when that is news (an Event is due)."""
    news = draft.reason_of("Ready") != DEGRADED or _ready_message(draft) != problem
    draft.condition("Ready", "False", DEGRADED, problem)
    return news


def recovered(draft: Draft) -> bool:
    """Ready=True again after :func:`degraded`; True when it was degraded (an Event is due)."""
    if draft.reason_of("Ready") != DEGRADED:
        return False
    draft.condition("Ready", "True", "Promoted", draft.model.message)
    return True


def record_due(draft: Draft) -> bool:
    """This generation is not yet recorded in the registry."""
    return not any(c.type == RECORDED and c.status == "True" and c.observed_generation == draft.generation
                   for c in draft.model.conditions)


def recorded(draft: Draft, message: str) -> None:
    draft.condition(RECORDED, "True", RECORDED, message)


def unrecorded(draft: Draft, e: PromoterError) -> bool:
    """Recorded=False naming the problem; phase, Ready and serving stay. True when that is news."""
    news = not any(c.type == RECORDED and c.status == "False" and c.message == e.message
                   for c in draft.model.conditions)
    draft.condition(RECORDED, "False", e.reason, e.message)
    return news


def _ready_message(draft: Draft) -> str:
    return next((c.message for c in draft.model.conditions if c.type == "Ready"), "")


__all__ = ["DEGRADED", "RECORDED", "VERSIONS_MATCH", "Draft", "Event", "Outcome", "degraded", "deploying", "failed",
           "now", "promoted", "rolling_back",
           "reclaimed", "record_due", "recorded", "recovered", "rejected", "superseded", "unrecorded", "waiting"]
