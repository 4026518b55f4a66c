"""Gates: a run's metrics in, a verdict with its evidence out. Pure.

MLflow's REST API writes non-finite metrics as the strings "NaN", "Infinity" and
"-Infinity", so a metric value may be a string. A metric that is missing, not finite or not a
number fails its gate with a reason; it never raises and never passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .spec import OP_SYMBOLS, Gate, GateOp, GateResult

NOT_LOGGED = "metric not logged on the run"

_COMPARE = {
    GateOp.LESS_THAN: lambda value, threshold: value < threshold,
    GateOp.LESS_THAN_OR_EQUAL: lambda value, threshold: value <= threshold,
    GateOp.GREATER_THAN: lambda value, threshold: value > threshold,
    GateOp.GREATER_THAN_OR_EQUAL: lambda value, threshold: value >= threshold,
}


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


def _judge(gate: Gate, metrics: Mapping[str, float | str | None]) -> GateResult:
    value, reason = _read(metrics.get(gate.metric))
    passed = value is not None and bool(_COMPARE[gate.op](value, gate.threshold))
    return GateResult(
        metric=gate.metric,
        op=gate.op,
        threshold=gate.threshold,
        value=value,
        passed=passed,
        reason=reason,
    )


def _shown_value(result: GateResult) -> str:
    if result.value is not None:
        return number(result.value)
    if result.reason == NOT_LOGGED:
        return "missing"
    if result.reason and result.reason.startswith("value is "):
        return result.reason.removeprefix("value is ")
    return "?"


def _short(result: GateResult) -> str:
    mark = "" if result.passed else "!"
    return f"{result.metric} {_shown_value(result)}{mark}{OP_SYMBOLS[result.op]}{number(result.threshold)}"


def _sentence(result: GateResult) -> str:
    wanted = f"{OP_SYMBOLS[result.op]} {number(result.threshold)}"
    if result.value is not None:
        return f"{result.metric} {number(result.value)} {'' if result.passed else 'is not '}{wanted}"
    reason = result.reason or "has no value"
    if reason == NOT_LOGGED:
        what = "was not logged on the run"
    elif reason.startswith("value is "):
        what = "is " + reason.removeprefix("value is ")
    else:
        what = reason
    return f"{result.metric} {what} (needs {wanted})"


def evaluate(gates: Sequence[Gate], metrics: Mapping[str, float | str | None]) -> Verdict:
    """Judge every gate (all must pass), keeping the numbers each decision rests on."""
    results = tuple(_judge(gate, metrics) for gate in gates)
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


__all__ = ["NOT_LOGGED", "Verdict", "evaluate", "number"]
