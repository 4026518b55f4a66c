"""Gates: a run's metrics in, a verdict with its evidence out. Pure.

MLflow's REST API writes non-finite metrics as the strings "NaN", "Infinity" and
"-Infinity", so a metric value may be a string. A metric that is missing, not finite or not a
number fails its gate with a reason; it never raises and never passes.

A baseline gate (``baseline: Serving``) compares with the run the deployment serves now by
MLflow's own rules (``mlflow/models/evaluation/validation.py``, ``MetricThreshold``): the op's
direction is ``greater_is_better``; ``minAbsoluteChange`` requires ``candidate >= baseline +
change`` (greater is better) or ``<= baseline - change``; ``minRelativeChange`` requires
``(candidate - baseline) / |baseline| >= change`` (or ``(baseline - candidate) / |baseline|``),
so a negative baseline compares the right way; a baseline of exactly 0 with a relative change
requires ``candidate >= 1e-10`` (or ``<= -1e-10``): strictly better. A missing candidate metric
fails; a missing baseline metric fails. ``LessThanOrEqual`` and ``GreaterThanOrEqual`` are
MLflow's comparisons exactly; ``LessThan`` and ``GreaterThan`` also fail at exactly the
required value, as they do against a threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .spec import OP_SYMBOLS, Gate, GateOp, GateResult

NOT_LOGGED = "metric not logged on the run"
NO_BASELINE = "NoBaseline"  # nothing serves the deployment yet
ALREADY_SERVING = "AlreadyServing"  # the deployment serves this very run: there is nothing to beat
ZERO_BASELINE_STEP = 1e-10  # MLflow's "strictly better" than a baseline of exactly 0

_COMPARE = {
    GateOp.LESS_THAN: lambda value, threshold: value < threshold,
    GateOp.LESS_THAN_OR_EQUAL: lambda value, threshold: value <= threshold,
    GateOp.GREATER_THAN: lambda value, threshold: value > threshold,
    GateOp.GREATER_THAN_OR_EQUAL: lambda value, threshold: value >= threshold,
}
_STRICT = (GateOp.LESS_THAN, GateOp.GREATER_THAN)

MetricValue = float | str | None


@dataclass(frozen=True)
class Dataset:
    """What a metric was computed on: MLflow 3's dataset name and digest."""

    name: str
    digest: str


@dataclass(frozen=True)
class Champion:
    """The run the deployment serves now, for baseline gates."""

    run_id: str
    metrics: Mapping[str, MetricValue]
    datasets: Mapping[str, Dataset] = field(default_factory=dict)  # metric -> its dataset
    problem: str = ""  # why its metrics could not be read (e.g. the run is gone from MLflow)


@dataclass(frozen=True)
class Verdict:
    """``summary`` fits a printer column ("rmse 0.71<=0.8, r2 0.1!>0.3": "!" marks a failed
    gate); ``message`` is the sentence for status and Events."""

    passed: bool
    results: tuple[GateResult, ...]
    summary: str
    message: str


def number(value: float) -> str:
    """Compact and exact enough to compare by eye: 0.71, 1e-07, 12345.7."""
    return f"{value:.6g}"


def _read(raw: object) -> tuple[float | None, str | None]:
    """The metric as a finite float, or None and why not."""
    if raw is None:
        return None, NOT_LOGGED
    if isinstance(raw, bool):  # bool is an int; a True metric is a bug upstream, not 1.0
        return None, f"value {raw!r} is not a number"
    try:
        value = float(raw)  # type: ignore[arg-type]  # str, int or float; anything else is caught
    except (TypeError, ValueError, OverflowError):
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:37] + "..."
        return None, f"value {shown} is not a number"
    if math.isnan(value):
        return None, "value is NaN"
    if math.isinf(value):
        return None, f"value is {'Infinity' if value > 0 else '-Infinity'}"
    return value, None


def _judge(gate: Gate, metrics: Mapping[str, MetricValue]) -> GateResult:
    value, reason = _read(metrics.get(gate.metric))
    passed = value is not None and bool(_COMPARE[gate.op](value, gate.threshold))
    return GateResult(metric=gate.metric, op=gate.op, threshold=gate.threshold, value=value, passed=passed,
                      reason=reason)


def required_value(gate: Gate, baseline: float) -> float:
    """The value a candidate has to reach against ``baseline`` (MLflow's arithmetic)."""
    greater = not gate.lower_is_better
    if gate.min_absolute_change is not None:
        change = gate.min_absolute_change
    elif baseline == 0:
        change = ZERO_BASELINE_STEP
    else:
        change = (gate.min_relative_change or 0.0) * abs(baseline)
    return baseline + change if greater else baseline - change


def beats(gate: Gate, candidate: float, baseline: float) -> bool:
    """MLflow's comparison of a candidate with its baseline, in the gate's direction; the
    strict ops also fail at exactly the required value."""
    greater, strict = not gate.lower_is_better, gate.op in _STRICT
    if gate.min_relative_change is not None and baseline != 0:
        relative = (candidate - baseline if greater else baseline - candidate) / abs(baseline)
        return relative > gate.min_relative_change if strict else relative >= gate.min_relative_change
    required = required_value(gate, baseline)
    if greater:
        return candidate > required if strict else candidate >= required
    return candidate < required if strict else candidate <= required


def _judge_baseline(gate: Gate, metrics: Mapping[str, MetricValue], champion: Champion | None,
                    candidate_run: str, datasets: Mapping[str, Dataset]) -> GateResult:
    value, reason = _read(metrics.get(gate.metric))
    result = GateResult(metric=gate.metric, op=gate.op, baseline=gate.baseline,
                        min_relative_change=gate.min_relative_change, min_absolute_change=gate.min_absolute_change,
                        value=value, passed=False, reason=reason)
    if champion is None:
        passed = value is not None and not gate.fails_without_baseline
        return result.model_copy(update={"passed": passed, "reason": reason or NO_BASELINE})
    result = result.model_copy(update={"baseline_run_id": champion.run_id})
    if champion.run_id == candidate_run:
        return result.model_copy(update={"passed": value is not None, "reason": reason or ALREADY_SERVING})
    base, why = _read(champion.metrics.get(gate.metric))
    why = champion.problem or why
    if base is None:
        return result.model_copy(update={"reason": reason or f"serving run {champion.run_id}: {why}"})
    result = result.model_copy(update={"baseline_value": base, "required": required_value(gate, base)})
    if value is None:
        return result
    if gate.same_dataset:
        problem = _dataset_problem(gate.metric, candidate_run, datasets.get(gate.metric), champion)
        if problem:
            return result.model_copy(update={"reason": problem})
    return result.model_copy(update={"passed": beats(gate, value, base)})


def _dataset_problem(metric: str, candidate_run: str, mine: Dataset | None, champion: Champion) -> str | None:
    theirs = champion.datasets.get(metric)
    for run, found in ((candidate_run, mine), (champion.run_id, theirs)):
        if found is None:
            return (f"sameDataset: metric {metric} of run {run} names no dataset "
                    "(log it with mlflow.log_metrics(..., dataset=..., model_id=...))")
    assert mine is not None and theirs is not None
    if mine.digest != theirs.digest:
        return (f"sameDataset: {metric} was computed on different data: run {candidate_run} on "
                f"{mine.name!r} (digest {mine.digest}), serving run {champion.run_id} on "
                f"{theirs.name!r} (digest {theirs.digest})")
    return None


def _shown_value(result: GateResult) -> str:
    if result.value is not None:
        return number(result.value)
    if result.reason == NOT_LOGGED:
        return "missing"
    if result.reason and result.reason.startswith("value is "):
        return result.reason.removeprefix("value is ")
    return "?"


def _change(result: GateResult) -> str:
    """The change a baseline gate asks for, signed the way the metric must move: -2%, +0.01."""
    sign = "-" if result.op.value.startswith("Less") else "+"
    if result.min_absolute_change is not None:
        return f"{sign}{number(result.min_absolute_change)}"
    return f"{sign}{number((result.min_relative_change or 0.0) * 100)}%"


def _short(result: GateResult) -> str:
    mark = "" if result.passed else "!"
    head = f"{result.metric} {_shown_value(result)}{mark}{OP_SYMBOLS[result.op]}"
    if result.baseline is None:
        return head + number(result.threshold or 0.0)
    if result.required is not None:
        wanted = number(result.required)
    else:
        wanted = {NO_BASELINE: "none", ALREADY_SERVING: "self"}.get(result.reason or "", "?")
    return f"{head}{wanted}({_change(result)})"


def _what(result: GateResult) -> str:
    reason = result.reason or "has no value"
    if reason == NOT_LOGGED:
        return "was not logged on the run"
    if reason.startswith("value is "):
        return "is " + reason.removeprefix("value is ")
    return reason


def _sentence(result: GateResult) -> str:
    if result.baseline is not None:
        return _baseline_sentence(result)
    wanted = f"{OP_SYMBOLS[result.op]} {number(result.threshold or 0.0)}"
    if result.value is not None:
        return f"{result.metric} {number(result.value)} {'' if result.passed else 'is not '}{wanted}"
    return f"{result.metric} {_what(result)} (needs {wanted})"


def _baseline_sentence(result: GateResult) -> str:
    asked = _change(result).lstrip("+-")
    better = f"{asked} better than serving run {result.baseline_run_id}"
    if result.reason == NO_BASELINE:
        how = "passes" if result.passed else "fails"
        shown = number(result.value) if result.value is not None else _what(result)
        return (f"{result.metric} {shown} {how} with no baseline: no model serves the deployment yet "
                f"(whenNoBaseline: {'Pass' if result.passed else 'Fail'})")
    if result.reason == ALREADY_SERVING:
        return f"{result.metric} {number(result.value or 0.0)}: the deployment already serves this run"
    if result.value is None:
        return f"{result.metric} {_what(result)} (needs {asked} better than the serving run)"
    if result.baseline_value is None or result.required is None:
        return f"{result.metric} {number(result.value)} cannot be compared: {result.reason}"
    evidence = f"{better} at {number(result.baseline_value)}"
    if result.reason:  # refused: a different dataset
        return f"{result.metric} {number(result.value)} cannot be compared with {evidence}: {result.reason}"
    verb = "" if result.passed else "is not "
    wanted = f"{OP_SYMBOLS[result.op]} {number(result.required)}"
    return f"{result.metric} {number(result.value)} {verb}{wanted} ({evidence})"


def evaluate(gates: Sequence[Gate], metrics: Mapping[str, MetricValue], champion: Champion | None = None,
             candidate_run: str = "", datasets: Mapping[str, Dataset] | None = None) -> Verdict:
    """Judge every gate (all must pass), keeping the numbers each decision rests on.
    ``champion``: the run the deployment serves (None: nothing serves it yet); ``datasets``: the
    candidate's metric datasets, for ``sameDataset``."""
    results = tuple(
        _judge(gate, metrics) if gate.baseline is None
        else _judge_baseline(gate, metrics, champion, candidate_run, datasets or {})
        for gate in gates
    )
    passed = all(result.passed for result in results)
    summary = ", ".join(_short(result) for result in results)
    good = [_sentence(result) for result in results if result.passed]
    bad = [_sentence(result) for result in results if not result.passed]
    if not results:
        message = "no gates to check"
    elif passed:
        message = "gates passed: " + ", ".join(good)
    else:
        head = "gate failed: " if len(bad) == 1 else f"{len(bad)} gates failed: "
        message = head + ", ".join(bad) + ("; " + ", ".join(good) + " passed" if good else "")
    return Verdict(passed=passed, results=results, summary=summary, message=message)


__all__ = ["ALREADY_SERVING", "NOT_LOGGED", "NO_BASELINE", "Champion", "Dataset", "Verdict", "beats", "evaluate",
           "number", "required_value"]
