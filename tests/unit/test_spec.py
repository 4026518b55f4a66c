"""parse_spec as a user meets it: what a valid spec becomes, and what each mistake is called."""

from __future__ import annotations

import copy
import re
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from promoter.errors import InvalidSpec
from promoter.spec import (
    Condition,
    GateOp,
    Implementation,
    Phase,
    PromotionStatus,
    Protocol,
    model_uri,
    object_prefix,
    parse_spec,
    set_condition,
)

RUN = "5f0c2d9e5f0c2d9e5f0c2d9e5f0c2d9e"


def sample() -> dict[str, Any]:
    return {
        "source": {"trackingUri": "http://mlflow.mlflow.svc:5000", "runId": RUN},
        "gates": [
            {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8},
            {"metric": "r2", "op": "GreaterThan", "threshold": 0.3},
        ],
        "target": {
            "storage": {
                "endpoint": "http://minio.minio-system.svc.cluster.local:9000",
                "bucket": "models",
                "prefix": "rf-regressor",
                "credentialsSecretRef": {"name": "minio-credentials"},
            },
            "seldonDeployment": {"name": "minio-sklearn"},
        },
    }


def rejection(edit: str) -> str:
    """The message parse_spec gives for sample() after `edit` (a statement on `spec`)."""
    spec = sample()
    exec(edit, {"spec": spec})
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(spec)
    return str(caught.value)


def test_a_valid_spec_parses_with_defaults_filled_in() -> None:
    spec = parse_spec(sample())
    assert spec.source.run_id == RUN
    assert spec.source.model_name == "rf-regressor"
    assert spec.source.credentials_secret_ref is None
    assert spec.gates[0].op is GateOp.LESS_THAN_OR_EQUAL
    assert spec.gates[1].threshold == 0.3
    target = spec.target.seldon_deployment
    assert target.implementation is Implementation.SKLEARN_SERVER
    assert target.protocol is Protocol.V2
    assert (target.replicas, target.secret_name, target.predictor_name) == (
        1,
        "seldon-rclone-secret",
        "default",
    )


def test_the_parsed_spec_is_frozen() -> None:
    spec = parse_spec(sample())
    with pytest.raises(pydantic.ValidationError):
        spec.source.run_id = "0" * 32


def test_integer_thresholds_are_numbers() -> None:
    raw = sample()
    raw["gates"][0]["threshold"] = 1
    assert parse_spec(raw).gates[0].threshold == 1.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "spec['gates'][1]['threshold'] = float('nan')",
            "spec.gates[1].threshold: must be a finite number",
        ),
        (
            "spec['gates'][0]['threshold'] = float('inf')",
            "spec.gates[0].threshold: must be a finite number",
        ),
        (
            "spec['gates'][1]['threshold'] = '0.3'",
            "spec.gates[1].threshold: must be a number, got '0.3'",
        ),
        (
            "spec['gates'][0]['op'] = 'Lt'",
            "spec.gates[0].op: must be one of LessThan, LessThanOrEqual, GreaterThan or "
            "GreaterThanOrEqual, got 'Lt'",
        ),
        ("spec['gates'] = []", "spec.gates: must have at least 1 item, got 0"),
        ("spec['gates'] = 'rmse <= 0.8'", "spec.gates: must be a list, got 'rmse <= 0.8'"),
        (
            "spec['gates'].append({'metric': 'rmse', 'op': 'LessThanOrEqual', 'threshold': 0.5})",
            "spec.gates[2]: repeats gates[0] (rmse LessThanOrEqual); each (metric, op) pair may appear once, "
            "and once more with a baseline",
        ),
        (
            "spec['gates'].append({'metric': 'r2', 'op': 'LessThan', 'threshold': 0.2})",
            "spec.gates[2]: r2 < 0.2 contradicts gates[1] r2 > 0.3: no value can pass both",
        ),
        (
            "spec['gates'][0]['metric'] = 'rmse;drop'",
            "spec.gates[0].metric: must be an MLflow metric key: 1-250 of letters, digits, "
            "'_', '-', '.', ' ', '/', got 'rmse;drop'",
        ),
        (
            "spec['source']['runId'] = 'abc/../x'",
            "spec.source.runId: must match ^[0-9a-f]{32}$ (an MLflow run id), got 'abc/../x'",
        ),
        ("del spec['source']['runId']", "spec.source.runId: is required, or registeredModel instead"),
        (
            "spec['source']['runID'] = spec['source'].pop('runId')",
            "spec.source.runID: is not a known field (did you mean 'runId'?)",
        ),
        (
            "spec['source']['trackingUri'] = 'mlflow:5000'",
            "spec.source.trackingUri: must be an http:// or https:// URL with no user:password@, query or "
            "fragment (put credentials in the Secret named by credentialsSecretRef), got 'mlflow:5000'",
        ),
        (
            "spec['source']['modelName'] = 'rf..regressor'",
            "spec.source.modelName: must not contain '..', got 'rf..regressor'",
        ),
        (
            "spec['target']['storage']['bucket'] = 'Models'",
            "spec.target.storage.bucket: must be an S3 bucket name: lowercase letters, digits, "
            "'.' and '-', starting and ending with a letter or digit, got 'Models'",
        ),
        (
            "spec['target']['storage']['bucket'] = 'my..models'",
            "spec.target.storage.bucket: must not contain '..' (S3 bucket rules), got 'my..models'",
        ),
        (
            "spec['target']['storage']['bucket'] = '10.0.0.1'",
            "spec.target.storage.bucket: must not be an IP address (S3 bucket rules), got '10.0.0.1'",
        ),
        (
            "spec['target']['storage']['bucket'] = 'ab'",
            "spec.target.storage.bucket: must be at least 3 characters, got 'ab'",
        ),
        (
            "spec['target']['storage']['prefix'] = 'rf/../other-team'",
            "spec.target.storage.prefix: must not have a '.' or '..' segment, got 'rf/../other-team'",
        ),
        (
            "spec['target']['storage']['prefix'] = '/rf'",
            "spec.target.storage.prefix: must be a relative path: segments of letters, digits, '.', "
            "'_' and '-' joined by single '/', with no leading or trailing '/', got '/rf'",
        ),
        (
            "del spec['target']['storage']['credentialsSecretRef']",
            "spec.target.storage.credentialsSecretRef: is required when endpoint is set: "
            "the operator's default credentials are only used with its default endpoint",
        ),
        (
            "spec['target']['seldonDeployment']['name'] = 'Minio.Sklearn'",
            "spec.target.seldonDeployment.name: must be a DNS-1123 label (lowercase letters, digits "
            "and '-', starting and ending with a letter or digit), got 'Minio.Sklearn'",
        ),
        (
            "spec['target']['seldonDeployment']['replicas'] = 101",
            "spec.target.seldonDeployment.replicas: must be <= 100, got 101",
        ),
        (
            "spec['target']['seldonDeployment']['replicas'] = 1.5",
            "spec.target.seldonDeployment.replicas: must be a whole number, got 1.5",
        ),
        (
            "spec['target']['seldonDeployment']['implementation'] = 'TRITON_SERVER'",
            "spec.target.seldonDeployment.implementation: must be one of SKLEARN_SERVER or "
            "MLFLOW_SERVER, got 'TRITON_SERVER'",
        ),
        ("spec['target'] = None", "spec.target: must be an object, got None"),
        ("spec['dryRun'] = True", "spec.dryRun: is not a known field"),
    ],
)
def test_each_mistake_is_named_by_its_field_path(edit: str, message: str) -> None:
    assert rejection(edit) == message


def test_a_spec_that_is_not_a_mapping_is_rejected() -> None:
    with pytest.raises(InvalidSpec, match=r"^spec: must be an object, got \['a'\]$"):
        parse_spec(["a"])  # type: ignore[arg-type]


def test_passwords_in_the_tracking_uri_are_rejected_without_being_echoed() -> None:
    message = rejection("spec['source']['trackingUri'] = 'http://alice:s3cr3t@mlflow:5000'")
    assert message.startswith("spec.source.trackingUri: must be an http:// or https:// URL with no")
    assert "s3cr3t" not in message


def test_echoed_values_are_cut_to_80_characters() -> None:
    message = rejection("spec['source']['runId'] = 'x' * 30")
    assert message.endswith("got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'")
    message = rejection("spec['target']['storage']['prefix'] = '/' + 'a' * 300")
    echoed = message.split(", got ")[-1]
    assert len(echoed) == 80
    assert echoed.endswith("...")


def test_gates_bounding_a_metric_from_both_sides_are_fine() -> None:
    raw = sample()
    raw["gates"] = [
        {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8},
        {"metric": "rmse", "op": "GreaterThanOrEqual", "threshold": 0.8},
        {"metric": "r2", "op": "GreaterThan", "threshold": 0.3},
        {"metric": "r2", "op": "LessThan", "threshold": 1},
    ]
    assert len(parse_spec(raw).gates) == 4


def test_a_point_range_needs_both_bounds_inclusive() -> None:
    raw = sample()
    raw["gates"] = [
        {"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8},
        {"metric": "rmse", "op": "GreaterThan", "threshold": 0.8},
    ]
    with pytest.raises(InvalidSpec, match=r"^spec.gates\[1\]: rmse > 0.8 contradicts gates\[0\] rmse <= 0.8"):
        parse_spec(raw)


def test_model_uri_and_object_prefix_are_named_by_the_run_under_the_namespace_root() -> None:
    spec = parse_spec(sample())
    assert model_uri(spec) == f"s3://models/rf-regressor/{RUN}"
    assert object_prefix(spec) == f"rf-regressor/{RUN}/"
    assert model_uri(spec, "team-a") == f"s3://models/team-a/rf-regressor/{RUN}"
    assert object_prefix(spec, "teams/a/") == f"teams/a/rf-regressor/{RUN}/"


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1:8080/anything#", "http://mlflow:5000/?a=", "http://mlflow:5000/x?run_id=1",
    "http://169.254.169.254/latest/meta-data#", "http://u:p@mlflow:5000", "http://mlflow:5000#frag",
])
def test_a_tracking_uri_with_a_query_fragment_or_credentials_is_refused(uri: str) -> None:
    raw = sample()
    raw["source"]["trackingUri"] = uri
    with pytest.raises(InvalidSpec) as err:
        parse_spec(raw)
    assert err.value.field == "spec.source.trackingUri"


def test_an_empty_prefix_leaves_no_double_slash() -> None:
    raw = sample()
    del raw["target"]["storage"]["prefix"]
    spec = parse_spec(raw)
    assert model_uri(spec) == f"s3://models/{RUN}"
    assert object_prefix(spec) == f"{RUN}/"


# -- status -----------------------------------------------------------------------------------


def ready(status: str, reason: str = "Promoted") -> Condition:
    return Condition(type="Ready", status=status, reason=reason, message="m")  # type: ignore[arg-type]


def test_a_new_condition_is_stamped_now() -> None:
    conditions = set_condition([], ready("True"), "2025-01-01T00:00:00Z")
    assert [(c.type, c.status, c.last_transition_time) for c in conditions] == [
        ("Ready", "True", "2025-01-01T00:00:00Z")
    ]


def test_an_unchanged_status_keeps_its_transition_time() -> None:
    first = set_condition([], ready("False", "GatesFailed"), "2025-01-01T00:00:00Z")
    second = set_condition(first, ready("False", "RunNotFinished"), "2025-01-02T00:00:00Z")
    assert len(second) == 1
    assert second[0].reason == "RunNotFinished"
    assert second[0].last_transition_time == "2025-01-01T00:00:00Z"


def test_a_flipped_status_moves_the_transition_time() -> None:
    first = set_condition([], ready("False"), "2025-01-01T00:00:00Z")
    second = set_condition(first, ready("True"), "2025-01-02T00:00:00Z")
    assert second[0].last_transition_time == "2025-01-02T00:00:00Z"


def test_other_condition_types_are_kept_in_place() -> None:
    gates = Condition(type="GatesPassed", status="True", reason="GatesPassed", last_transition_time="t0")
    conditions = set_condition([ready("False"), gates], ready("True"), "t1")
    assert [(c.type, c.last_transition_time) for c in conditions] == [("Ready", "t1"), ("GatesPassed", "t0")]


def test_duplicate_conditions_collapse_to_one() -> None:
    conditions = set_condition([ready("False"), ready("False")], ready("False"), "t1")
    assert len(conditions) == 1


def test_status_dumps_in_camel_case_without_unset_fields() -> None:
    status = PromotionStatus(
        phase=Phase.PROMOTED,
        observed_generation=2,
        gate_summary="rmse 0.71<=0.8",
        model_uri=f"s3://models/{RUN}",
        conditions=set_condition([], ready("True"), "t"),
        message="promoted",
    )
    assert status.model_dump(by_alias=True, exclude_none=True, mode="json") == {
        "phase": "Promoted",
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Promoted",
                "message": "m",
                "lastTransitionTime": "t",
            }
        ],
        "gates": [],
        "gateSummary": "rmse 0.71<=0.8",
        "modelUri": f"s3://models/{RUN}",
        "message": "promoted",
    }


def test_status_read_back_from_the_cluster_ignores_kopfs_fields() -> None:
    status = PromotionStatus.model_validate(
        {"phase": "Copying", "kopf": {"progress": {}}, "gateSummary": "s"}
    )
    assert (status.phase, status.gate_summary) == (Phase.COPYING, "s")


# -- properties -------------------------------------------------------------------------------

BUCKET_RULES = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@given(st.text(alphabet="abz09.-", min_size=0, max_size=70))
def test_any_accepted_bucket_satisfies_the_s3_rules(bucket: str) -> None:
    raw = sample()
    raw["target"]["storage"]["bucket"] = bucket
    try:
        parse_spec(raw)
    except InvalidSpec as error:
        assert error.field == "spec.target.storage.bucket"
        return
    assert BUCKET_RULES.match(bucket)
    assert ".." not in bucket and ".-" not in bucket and "-." not in bucket
    assert not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", bucket)


@given(st.text(alphabet="a./-_", max_size=20))
def test_any_accepted_prefix_is_a_clean_relative_path(prefix: str) -> None:
    raw = sample()
    raw["target"]["storage"]["prefix"] = prefix
    try:
        spec = parse_spec(raw)
    except InvalidSpec as error:
        assert error.field == "spec.target.storage.prefix"
        return
    if prefix:
        segments = prefix.split("/")
        assert all(segment not in ("", ".", "..") for segment in segments)
    assert "//" not in model_uri(spec).removeprefix("s3://")


@given(st.text(max_size=40))
def test_any_accepted_run_id_is_32_lowercase_hex(run_id: str) -> None:
    raw = copy.deepcopy(sample())
    raw["source"]["runId"] = run_id
    try:
        parse_spec(raw)
    except InvalidSpec as error:
        assert error.field == "spec.source.runId"
        return
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
