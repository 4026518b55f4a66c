"""Gate evaluation: every op at its boundary, and the metrics MLflow can hand back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promoter.gates import evaluate
from promoter.spec import Gate, GateOp

RMSE_AT_MOST = Gate(metric="rmse", op=GateOp.LESS_THAN_OR_EQUAL, threshold=0.8)
R2_ABOVE = Gate(metric="r2", op=GateOp.GREATER_THAN, threshold=0.3)


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [
        (GateOp.LESS_THAN, 0.79, True),
        (GateOp.LESS_THAN, 0.8, False),
        (GateOp.LESS_THAN, 0.81, False),
        (GateOp.LESS_THAN_OR_EQUAL, 0.79, True),
        (GateOp.LESS_THAN_OR_EQUAL, 0.8, True),
        (GateOp.LESS_THAN_OR_EQUAL, 0.81, False),
        (GateOp.GREATER_THAN, 0.81, True),
        (GateOp.GREATER_THAN, 0.8, False),
        (GateOp.GREATER_THAN, 0.79, False),
        (GateOp.GREATER_THAN_OR_EQUAL, 0.81, True),
        (GateOp.GREATER_THAN_OR_EQUAL, 0.8, True),
        (GateOp.GREATER_THAN_OR_EQUAL, 0.79, False),
    ],
)
def test_each_op_decides_at_its_boundary(op: GateOp, value: float, passed: bool) -> None:
    verdict = evaluate([Gate(metric="m", op=op, threshold=0.8)], {"m": value})
    assert verdict.passed is passed
    assert verdict.results[0].passed is passed
    assert verdict.results[0].value == value
    assert verdict.results[0].reason is None


def test_passing_gates_report_the_numbers() -> None:
    verdict = evaluate([RMSE_AT_MOST, R2_ABOVE], {"rmse": 0.71, "r2": 0.52, "mae": 0.4})
    assert verdict.passed
    assert verdict.summary == "rmse 0.71<=0.8, r2 0.52>0.3"
    assert verdict.message == "gates passed: rmse 0.71 <= 0.8, r2 0.52 > 0.3"


def test_a_failed_gate_is_marked_and_the_passed_ones_still_shown() -> None:
    verdict = evaluate([RMSE_AT_MOST, R2_ABOVE], {"rmse": 0.91, "r2": 0.52})
    assert not verdict.passed
    assert verdict.summary == "rmse 0.91!<=0.8, r2 0.52>0.3"
    assert verdict.message == "gate failed: rmse 0.91 is not <= 0.8; r2 0.52 > 0.3 passed"


def test_every_failure_is_counted() -> None:
    verdict = evaluate([RMSE_AT_MOST, R2_ABOVE], {"rmse": 0.91, "r2": 0.1})
    assert verdict.message == "2 gates failed: rmse 0.91 is not <= 0.8, r2 0.1 is not > 0.3"


def test_a_missing_metric_fails_its_gate_with_reason() -> None:
    verdict = evaluate([RMSE_AT_MOST, R2_ABOVE], {"rmse": 0.5})
    result = verdict.results[1]
    assert (result.passed, result.value, result.reason) == (False, None, "metric not logged on the run")
    assert verdict.summary == "rmse 0.5<=0.8, r2 missing!>0.3"
    assert (
        verdict.message == "gate failed: r2 was not logged on the run (needs > 0.3); rmse 0.5 <= 0.8 passed"
    )


def test_a_none_metric_counts_as_not_logged() -> None:
    assert evaluate([R2_ABOVE], {"r2": None}).results[0].reason == "metric not logged on the run"


def test_nan_metric_fails_its_gate_with_reason() -> None:
    verdict = evaluate([RMSE_AT_MOST], {"rmse": "NaN"})
    result = verdict.results[0]
    assert (result.passed, result.value, result.reason) == (False, None, "value is NaN")
    assert verdict.summary == "rmse NaN!<=0.8"
    assert verdict.message == "gate failed: rmse is NaN (needs <= 0.8)"


def test_a_float_nan_fails_like_the_string() -> None:
    assert evaluate([RMSE_AT_MOST], {"rmse": float("nan")}).results[0].reason == "value is NaN"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Infinity", "value is Infinity"),
        ("-Infinity", "value is -Infinity"),
        (float("-inf"), "value is -Infinity"),
    ],
)
def test_infinite_metrics_fail_even_when_the_comparison_would_hold(raw: str | float, reason: str) -> None:
    # -Infinity <= 0.8 is true, but a diverged metric is not evidence of a good model.
    verdict = evaluate([RMSE_AT_MOST], {"rmse": raw})
    assert not verdict.passed
    assert verdict.results[0].reason == reason


def test_a_metric_that_is_not_a_number_fails_with_what_it_was() -> None:
    verdict = evaluate([RMSE_AT_MOST], {"rmse": "n/a"})
    assert verdict.results[0].reason == "value 'n/a' is not a number"
    assert verdict.summary == "rmse ?!<=0.8"
    assert verdict.message == "gate failed: rmse value 'n/a' is not a number (needs <= 0.8)"


def test_numeric_strings_from_the_api_are_read_as_numbers() -> None:
    assert evaluate([RMSE_AT_MOST], {"rmse": "0.5"}).passed


def test_numbers_are_shown_compactly() -> None:
    gate = Gate(metric="loss", op=GateOp.LESS_THAN, threshold=1e-6)
    verdict = evaluate([gate], {"loss": 1.0 / 3.0 * 1e-7})
    assert verdict.summary == "loss 3.33333e-08<1e-06"


def test_results_keep_gate_order_and_thresholds() -> None:
    verdict = evaluate([R2_ABOVE, RMSE_AT_MOST], {"rmse": 0.7, "r2": 0.9})
    assert [(r.metric, r.op, r.threshold) for r in verdict.results] == [
        ("r2", GateOp.GREATER_THAN, 0.3),
        ("rmse", GateOp.LESS_THAN_OR_EQUAL, 0.8),
    ]


metric_values = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.text(max_size=60),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "0x10", " 1 "]),
    st.booleans(),
)
gates = st.lists(
    st.builds(
        Gate,
        metric=st.sampled_from(["rmse", "r2", "mae", "loss/val"]),
        op=st.sampled_from(list(GateOp)),
        threshold=st.floats(allow_nan=False, allow_infinity=False),
    ),
    max_size=6,
)


@given(gates, st.dictionaries(st.sampled_from(["rmse", "r2", "mae", "other"]), metric_values))
def test_evaluate_never_raises_and_passes_only_on_finite_values(
    gate_list: list[Gate], metrics: dict[str, object]
) -> None:
    verdict = evaluate(gate_list, metrics)  # type: ignore[arg-type]
    assert len(verdict.results) == len(gate_list)
    assert verdict.passed == all(result.passed for result in verdict.results)
    for result in verdict.results:
        if result.passed:
            assert result.value is not None and math.isfinite(result.value) and result.reason is None
        elif result.value is None:
            assert result.reason
    assert "\n" not in verdict.summary
