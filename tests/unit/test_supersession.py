"""Who serves a SeldonDeployment, decided in the process without API requests (promotion.Owners,
recheck_owner, the takeover mark). The API is a recording stand-in here; the integration and
fault tests show the same on devstack (two promotions at once, 1,000 at once in bench/scale.py)."""

from __future__ import annotations

import threading
from typing import Any

from promoter import promotion
from promoter.config import load
from promoter.metrics import Metrics


class RecordingKube:
    def __init__(self) -> None:
        self.status_patches: list[tuple[str, str, dict[str, Any]]] = []

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append((namespace, name, dict(status)))


PROMOTED = {"phase": "Promoted", "observedGeneration": 1, "message": "promoted",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Promoted", "message": "m",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1},
                           {"type": "GatesPassed", "status": "True", "reason": "GatesPassed", "message": "g",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}


def body(name: str, status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "generation": 1},
            "spec": {"target": {"seldonDeployment": {"name": "sd"}}}, "status": status}


def context(promoted: dict[str, dict[str, Any]] | None = None) -> tuple[promotion.Context, RecordingKube]:
    kube = RecordingKube()
    ctx = promotion.Context(load({}), kube, Metrics(),  # type: ignore[arg-type]
                            promoted=lambda ns, name: (promoted or {}).get(name))
    return ctx, kube


def test_a_promoted_promotion_whose_deployment_this_process_wrote_for_another_is_superseded() -> None:
    ctx, _ = context()
    ctx.owners.saw("ns", "sd", "later")
    outcome = promotion.recheck_owner(ctx, body("earlier", PROMOTED))
    assert outcome.status["phase"] == "Superseded"
    assert outcome.status["supersededBy"] == "later"
    conditions = {c["type"]: c for c in outcome.status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "Superseded"
    assert conditions["GatesPassed"]["status"] == "True"  # the evidence it had stays


def test_the_promotion_the_deployment_names_and_an_unknown_deployment_are_left_alone() -> None:
    ctx, _ = context()
    assert promotion.recheck_owner(ctx, body("p", PROMOTED)).status == {}  # nothing seen yet
    ctx.owners.saw("ns", "sd", "p")
    assert promotion.recheck_owner(ctx, body("p", PROMOTED)).status == {}


def test_the_takeover_marks_the_previous_promotion_only_when_the_watch_says_it_is_promoted() -> None:
    ctx, kube = context(promoted={"a": PROMOTED})
    promotion._supersede(ctx, "ns", "a", "b", "sd")
    promotion._supersede(ctx, "ns", "still-copying", "b", "sd")
    assert [(name, patch["phase"], patch["supersededBy"]) for _, name, patch in kube.status_patches] == \
        [("a", "Superseded", "b")]


def test_the_record_follows_the_order_of_the_writes_of_one_deployment() -> None:
    owners = promotion.Owners()
    order: list[str] = []

    def write(name: str) -> None:
        with owners.holding("ns", "sd"):
            order.append(name)
            owners.saw("ns", "sd", name)

    threads = [threading.Thread(target=write, args=(f"p{i}",)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert owners.get("ns", "sd") == order[-1]
    assert owners.holding("ns", "sd") is owners.holding("ns", "sd")
    assert owners.holding("ns", "sd") is not owners.holding("ns", "other")
