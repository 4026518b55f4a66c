"""The pure side of the fault suite: the operator's size bounds, and the spec parser (the second
check after the CRD schema) against the same hostile specs the integration suite applies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from promoter.artifacts import FileEntry
from promoter.candidate import check_limits
from promoter.config import ConfigError, Settings, load
from promoter.errors import InvalidSpec, ModelTooLarge
from promoter.spec import object_prefix, parse_spec
from tests.integration.fault_specs import TABLE, UNKNOWN_RUN, base, mutate, mutations

GIB = 1024**3
WHAT = "model 'rf-regressor' of run abc (spec.source.modelName)"


def _files(sizes: list[int]) -> dict[str, FileEntry]:
    return {f"f{i}": FileEntry(f"f{i}", size) for i, size in enumerate(sizes)}


def test_a_folder_of_ten_thousand_files_is_rejected_by_default_naming_the_limit() -> None:
    with pytest.raises(ModelTooLarge) as e:
        check_limits(_files([10] * 10_000), Settings(), WHAT)
    assert e.value.message == (f"{WHAT} has more than 1000 files, over the operator's limit PROMOTER_MAX_FILES=1000; "
                               "nothing was copied (log a smaller model folder or raise the limit)")
    assert e.value.reason == "ModelTooLarge"


def test_a_two_gib_file_is_copied_by_default_and_rejected_under_a_smaller_bound() -> None:
    check_limits(_files([2 * GIB, 100]), Settings(), WHAT)
    with pytest.raises(ModelTooLarge, match=r"has 2147483748 bytes, over the operator's limit "
                                            r"PROMOTER_MAX_BYTES=1073741824"):
        check_limits(_files([2 * GIB, 100]), Settings(max_bytes=GIB), WHAT)


def test_a_folder_exactly_at_the_bounds_passes() -> None:
    check_limits(_files([5, 5, 5]), Settings(max_files=3, max_bytes=15), WHAT)


@pytest.mark.parametrize(("env", "problem"), [
    ({"PROMOTER_MAX_FILES": "0"}, "PROMOTER_MAX_FILES=0: must be between 1 and 10000"),
    ({"PROMOTER_MAX_FILES": "10001"}, "PROMOTER_MAX_FILES=10001: must be between 1 and 10000"),
    ({"PROMOTER_MAX_BYTES": "2GiB"}, "PROMOTER_MAX_BYTES='2GiB': must be a whole number"),
])
def test_the_bounds_are_settings_checked_at_start(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load(env)
    assert load({"PROMOTER_MAX_FILES": "30", "PROMOTER_MAX_BYTES": "100"}).max_files == 30


SPEC_CASES = [c for c in TABLE if not any(path[0] == "metadata" for path, _ in c.changes)]


@pytest.mark.parametrize("case", [c for c in SPEC_CASES if c.stop == "apply"], ids=lambda c: c.id)
def test_every_spec_the_schema_refuses_the_parser_refuses_too(case: Any) -> None:
    with pytest.raises(InvalidSpec) as e:
        parse_spec(mutate(base("x", UNKNOWN_RUN), case.changes)["spec"])
    assert e.value.field.startswith("spec"), e.value.field


@pytest.mark.parametrize("case", [c for c in SPEC_CASES if c.stop != "apply"], ids=lambda c: c.id)
def test_every_spec_the_schema_accepts_in_the_table_parses(case: Any) -> None:
    parse_spec(mutate(base("x", UNKNOWN_RUN), case.changes)["spec"])


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations)
def test_a_mutated_spec_parses_or_fails_naming_a_field_and_never_leaves_its_prefix(
        changes: list[tuple[Any, Any]]) -> None:
    raw = mutate(base("x", UNKNOWN_RUN), tuple(changes))["spec"]
    try:
        spec = parse_spec(raw)
    except InvalidSpec as e:
        assert e.field.startswith("spec") and e.message.startswith(e.field + ": ")
        return
    key = object_prefix(spec)
    assert key.endswith(f"/{spec.source.run_id}/") or key == f"{spec.source.run_id}/"
    assert not key.startswith("/") and ".." not in key.split("/") and "." not in key.split("/")
