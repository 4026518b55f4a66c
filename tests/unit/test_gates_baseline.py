"""Baseline gates (``baseline: Serving``) decide as MLflow's own ``validate_evaluation_results``
does on the same numbers: table-driven, both directions, both kinds of change, negative and zero
baselines, missing metrics. ``LessThanOrEqual``/``GreaterThanOrEqual`` are MLflow's comparisons
exactly; the strict ops differ only at exactly the required value, where they fail."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow.models import MetricThreshold
from mlflow.models.evaluation import EvaluationResult
from mlflow.models.evaluation.validation import ModelValidationFailedException, validate_evaluation_results

from promoter.gates import ALREADY_SERVING, NO_BASELINE, Champion, Dataset, evaluate
from promoter.spec import Baseline, Gate, GateOp, WhenNoBaseline

CHAMPION_RUN = "c" * 32
CANDIDATE_RUN = "d" * 32
LE, LT, GE, GT = GateOp.LESS_THAN_OR_EQUAL, GateOp.LESS_THAN, GateOp.GREATER_THAN_OR_EQUAL, GateOp.GREATER_THAN


def gate(op: GateOp, rel: float | None = None, absolute: float | None = None, **extra: object) -> Gate:
    return Gate(metric="m", op=op, baseline=Baseline.SERVING, min_relative_change=rel, min_absolute_change=absolute,
                **extra)


def ours(g: Gate, candidate: float | None, baseline: float | None) -> bool:
    metrics = {} if candidate is None else {"m": candidate}
    champion = Champion(CHAMPION_RUN, {} if baseline is None else {"m": baseline})
    return evaluate([g], metrics, champion, CANDIDATE_RUN).passed


def mlflows(g: Gate, candidate: float | None, baseline: float | None) -> bool:
    threshold = MetricThreshold(min_relative_change=g.min_relative_change, min_absolute_change=g.min_absolute_change,
                                greater_is_better=not g.lower_is_better)
    try:
        validate_evaluation_results(
            {"m": threshold},
            EvaluationResult({} if candidate is None else {"m": candidate}, {}),
            EvaluationResult({} if baseline is None else {"m": baseline}, {}),
        )
    except ModelValidationFailedException:
        return False
    return True


# (op, minRelativeChange, minAbsoluteChange, candidate, baseline, passes)
TABLE = [
    # lower is better, relative: 2 % below 100 is 98
    (LE, 0.02, None, 97.0, 100.0, True),
    (LE, 0.02, None, 98.0, 100.0, True),
    (LE, 0.02, None, 98.5, 100.0, False),
    (LE, 0.02, None, 101.0, 100.0, False),
    # greater is better, relative: 10 % above 0.5 is 0.55
    (GE, 0.1, None, 0.6, 0.5, True),
    (GE, 0.1, None, 0.52, 0.5, False),
    (GE, 0.1, None, 0.4, 0.5, False),
    # negative baselines: the change applies to the magnitude, so better still means better
    (GE, 0.5, None, -0.4, -1.0, True),  # r2 from -1 to -0.4: 60 % better
    (GE, 0.5, None, -0.6, -1.0, False),  # only 40 % better
    (GE, 0.5, None, -1.5, -1.0, False),  # worse
    (LE, 0.5, None, -3.0, -2.0, True),  # a loss from -2 to -3: 50 % lower
    (LE, 0.5, None, -2.5, -2.0, False),
    # a baseline of exactly 0 with a relative change: strictly better (by MLflow's 1e-10)
    (GE, 0.3, None, 0.001, 0.0, True),
    (GE, 0.3, None, 0.0, 0.0, False),
    (GE, 0.3, None, -0.001, 0.0, False),
    (LE, 0.3, None, -0.001, 0.0, True),
    (LE, 0.3, None, 0.0, 0.0, False),
    (GE, 0.0, None, 0.0, 0.0, False),  # even with a zero change
    # a zero relative change: not worse
    (LE, 0.0, None, 100.0, 100.0, True),
    (LE, 0.0, None, 100.5, 100.0, False),
    # absolute changes, both directions, with negative values
    (GE, None, 0.01, 0.46, 0.44, True),
    (GE, None, 0.01, 0.445, 0.44, False),
    (LE, None, 2.0, 51.0, 54.0, True),
    (LE, None, 2.0, 53.0, 54.0, False),
    (GE, None, 0.5, -0.5, -1.0, True),
    (GE, None, 0.5, -0.75, -1.0, False),
    (LE, None, 1.0, -3.0, -2.0, True),
    (LE, None, 1.0, 0.0, 0.0, False),
    # missing metrics fail: the candidate's, and the baseline's when a change is required
    (LE, 0.02, None, None, 100.0, False),
    (GE, None, 0.01, None, 0.5, False),
    (LE, 0.02, None, 97.0, None, False),
    (GE, None, 0.01, 0.6, None, False),
]


@pytest.mark.parametrize(("op", "rel", "absolute", "candidate", "baseline", "passes"), TABLE)
def test_baseline_gates_decide_as_mlflows_validate_evaluation_results(
        op: GateOp, rel: float | None, absolute: float | None, candidate: float | None, baseline: float | None,
        passes: bool) -> None:
    g = gate(op, rel, absolute)
    assert mlflows(g, candidate, baseline) is passes  # the table is MLflow's, not ours
    assert ours(g, candidate, baseline) is passes


@pytest.mark.parametrize(("op", "rel", "absolute", "candidate", "baseline"), [
    (LE, 0.02, None, 98.0, 100.0),  # exactly 2 % better
    (GE, None, 0.25, 0.75, 0.5),  # exactly 0.25 better
    (GE, 0.5, None, -0.5, -1.0),  # exactly 50 % better than a negative baseline
    (LE, 0.0, None, 100.0, 100.0),  # exactly as good
])
def test_the_strict_ops_fail_exactly_at_the_required_value_where_mlflow_passes(
        op: GateOp, rel: float | None, absolute: float | None, candidate: float, baseline: float) -> None:
    strict = LT if op is LE else GT
    assert mlflows(gate(op, rel, absolute), candidate, baseline)
    assert ours(gate(op, rel, absolute), candidate, baseline)
    assert not ours(gate(strict, rel, absolute), candidate, baseline)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(op=st.sampled_from([LE, GE]), rel=st.one_of(st.none(), st.floats(0, 1)), absolute=st.floats(1e-6, 1e3),
       candidate=finite, baseline=finite)
def test_any_finite_numbers_decide_as_mlflow_does(op: GateOp, rel: float | None, absolute: float,
                                                  candidate: float, baseline: float) -> None:
    g = gate(op, rel, None if rel is not None else absolute)
    assert ours(g, candidate, baseline) is mlflows(g, candidate, baseline)


@given(op=st.sampled_from([LT, GT]), rel=st.floats(0, 1), candidate=finite, baseline=finite)
def test_the_strict_ops_pass_only_where_mlflow_does(op: GateOp, rel: float, candidate: float,
                                                    baseline: float) -> None:
    inclusive = LE if op is LT else GE
    if ours(gate(op, rel), candidate, baseline):
        assert mlflows(gate(inclusive, rel), candidate, baseline)


def test_the_evidence_names_the_champion_both_values_and_the_required_one() -> None:
    verdict = evaluate([gate(LT, 0.02)], {"m": 54.0}, Champion(CHAMPION_RUN, {"m": 54.8}), CANDIDATE_RUN)
    (result,) = verdict.results
    assert (result.baseline_run_id, result.baseline_value, result.value) == (CHAMPION_RUN, 54.8, 54.0)
    assert result.required == pytest.approx(53.704)
    assert not result.passed and result.threshold is None
    assert verdict.summary == "m 54!<53.704(-2%)"
    assert verdict.message == f"gate failed: m 54 is not < 53.704 (2% better than serving run {CHAMPION_RUN} at 54.8)"


def test_a_passing_baseline_gate_reads_in_the_summary_with_its_change() -> None:
    verdict = evaluate([gate(GT, absolute=0.01), Gate(metric="m", op=LE, threshold=60)], {"m": 0.5},
                       Champion(CHAMPION_RUN, {"m": 0.45}), CANDIDATE_RUN)
    assert verdict.passed and verdict.summary == "m 0.5>0.46(+0.01), m 0.5<=60"


@pytest.mark.parametrize(("when", "passes"), [(None, True), (WhenNoBaseline.PASS, True), (WhenNoBaseline.FAIL, False)])
def test_with_nothing_serving_when_no_baseline_decides(when: WhenNoBaseline | None, passes: bool) -> None:
    verdict = evaluate([gate(LT, 0.02, when_no_baseline=when)], {"m": 51.2}, None, CANDIDATE_RUN)
    (result,) = verdict.results
    assert (result.passed, result.reason, result.baseline_run_id) == (passes, NO_BASELINE, None)
    assert verdict.summary == f"m 51.2{'' if passes else '!'}<none(-2%)"


def test_no_baseline_never_passes_a_missing_candidate_metric() -> None:
    assert not evaluate([gate(LT, 0.02)], {}, None, CANDIDATE_RUN).passed


def test_the_run_the_deployment_already_serves_has_nothing_to_beat() -> None:
    # a promotion resumed after its deployment write, or re-applied: judging it against itself
    # would reject the model that serves
    verdict = evaluate([gate(LT, 0.02)], {"m": 51.2}, Champion(CANDIDATE_RUN, {"m": 51.2}), CANDIDATE_RUN)
    assert verdict.passed and verdict.results[0].reason == ALREADY_SERVING
    assert verdict.summary == "m 51.2<self(-2%)"


def test_a_serving_run_without_the_metric_fails_naming_it() -> None:
    verdict = evaluate([gate(LT, 0.02)], {"m": 51.2}, Champion(CHAMPION_RUN, {}), CANDIDATE_RUN)
    assert not verdict.passed
    assert verdict.message == (f"gate failed: m 51.2 cannot be compared: serving run {CHAMPION_RUN}: "
                               "metric not logged on the run")


SAME = Dataset("diabetes-test", "bd98d379")
OTHER = Dataset("diabetes-test", "0badf00d")


def test_same_dataset_refuses_a_comparison_on_different_data_naming_both_digests() -> None:
    champion = Champion(CHAMPION_RUN, {"m": 60.0}, {"m": OTHER})
    verdict = evaluate([gate(LT, 0.02, same_dataset=True)], {"m": 50.0}, champion, CANDIDATE_RUN, {"m": SAME})
    assert not verdict.passed
    assert "digest bd98d379" in verdict.message and "digest 0badf00d" in verdict.message
    assert evaluate([gate(LT, 0.02, same_dataset=True)], {"m": 50.0}, Champion(CHAMPION_RUN, {"m": 60.0}, {"m": SAME}),
                    CANDIDATE_RUN, {"m": SAME}).passed
    assert evaluate([gate(LT, 0.02)], {"m": 50.0}, champion, CANDIDATE_RUN, {"m": SAME}).passed  # not asked


def test_same_dataset_fails_a_metric_logged_without_its_dataset() -> None:
    champion = Champion(CHAMPION_RUN, {"m": 60.0}, {"m": SAME})
    verdict = evaluate([gate(LT, 0.02, same_dataset=True)], {"m": 50.0}, champion, CANDIDATE_RUN, {})
    assert not verdict.passed and f"metric m of run {CANDIDATE_RUN} names no dataset" in verdict.message
