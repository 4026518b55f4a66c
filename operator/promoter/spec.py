"""The ModelPromotion resource as typed, frozen models, and its status.

The CRD's OpenAPI schema is generated from these models (``promoter.crdgen``), so the API
server's checks and :func:`parse_spec` agree. Rules a regular expression cannot state are
validators here and CEL rules (``x-kubernetes-validations``) in the schema, side by side.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from .errors import InvalidSpec

API_GROUP = "mlops.dev"
API_VERSION = "v1alpha1"
KIND = "ModelPromotion"
PLURAL = "modelpromotions"

RUN_ID_PATTERN = r"^[0-9a-f]{32}$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# No user:password@ in the authority (credentials belong in a Secret, never in the spec), and no
# query or fragment: they would change which API path the operator calls.
TRACKING_URI_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
# An S3 endpoint is scheme://host[:port]; a path there is a mistake the S3 client would hide.
ENDPOINT_PATTERN = r"^https?://[^\s/?#@]+/?$"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
METRIC_PATTERN = r"^[A-Za-z0-9_./ -]{1,250}$"
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
# MLflow refuses '/' and ':' in a registered model name; quotes would break its search filters.
REGISTERED_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,255}$"
# MLflow's own alias rule (letters, digits, '_' and '-'), in ASCII.
ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"
PREFIX_PATTERN = r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$"
DURATION_PATTERN = r"^([0-9]{1,5}h)?([0-9]{1,5}m)?([0-9]{1,5}s)?$"

# What a failed pattern means, in words; the parser says this instead of echoing the regex.
_PATTERN_MEANING = {
    RUN_ID_PATTERN: f"must match {RUN_ID_PATTERN} (an MLflow run id)",
    DNS_LABEL_PATTERN: "must be a DNS-1123 label (lowercase letters, digits and '-', "
    "starting and ending with a letter or digit)",
    DNS_SUBDOMAIN_PATTERN: "must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit)",
    TRACKING_URI_PATTERN: "must be an http:// or https:// URL with no user:password@, query or fragment "
    "(put credentials in the Secret named by credentialsSecretRef)",
    ENDPOINT_PATTERN: "must be http(s)://host[:port] with no path and no user:password@",
    MODEL_NAME_PATTERN: f"must match {MODEL_NAME_PATTERN}",
    METRIC_PATTERN: "must be an MLflow metric key: 1-250 of letters, digits, '_', '-', '.', ' ', '/'",
    BUCKET_PATTERN: "must be an S3 bucket name: lowercase letters, digits, '.' and '-', "
    "starting and ending with a letter or digit",
    PREFIX_PATTERN: "must be a relative path: segments of letters, digits, '.', '_' and '-' joined "
    "by single '/', with no leading or trailing '/'",
    REGISTERED_MODEL_PATTERN: "must be an MLflow registered model name: 1-256 of letters, digits, '.', '_', "
    "'-' and ' ', starting with a letter or digit",
    ALIAS_PATTERN: "must be an MLflow alias: 1-255 of letters, digits, '_' and '-'",
    DURATION_PATTERN: "must be a duration such as 90s, 10m or 1h30m (hours, minutes, seconds)",
}


def _rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the generated CRD, kept next to the field they guard."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


def _no_double_dot(value: str) -> str:
    if ".." in value:
        raise ValueError(f"must not contain '..', got {_show(value)}")
    return value


# minio-go's test, and the same as the CEL rule: leading zeros still look like an address.
_IP_LIKE = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$")


def _no_dot_segments(value: str) -> str:
    # "." and ".." mean nothing to S3 but everything to rclone and to a person reading the key.
    if {".", ".."} & set(value.split("/")):
        raise ValueError(f"must not have a '.' or '..' segment, got {_show(value)}")
    return value


def _bucket_rules(value: str) -> str:
    # The rules MinIO applies beyond the pattern (minio-go CheckValidBucketNameStrict).
    for bad in ("..", ".-", "-."):
        if bad in value:
            raise ValueError(f"must not contain '{bad}' (S3 bucket rules), got {_show(value)}")
    if _IP_LIKE.fullmatch(value):
        raise ValueError(f"must not be an IP address (S3 bucket rules), got {_show(value)}")
    return value


def _not_reserved_alias(value: str) -> str:
    # MLflow reserves "latest" (it moves with every new version) and "v<N>" (version N).
    if value.lower() == "latest":
        raise ValueError("'latest' is reserved by MLflow and moves with every new version: "
                         "pin a version (version: N) or an alias you set (alias: champion)")
    if re.fullmatch(r"[vV][0-9]+", value):
        raise ValueError(f"{value!r} is reserved by MLflow for version {value[1:]}: write version: {value[1:]}")
    return value


_ALIAS_RULES = _rules(
    ("self.lowerAscii() != 'latest'",
     "alias 'latest' is reserved by MLflow and moves with every new version: pin a version or an alias"),
    ("!self.matches('^[vV][0-9]+$')", "aliases v<N> are reserved by MLflow for version N: write version: N"),
)
Alias = Annotated[str, Field(max_length=255, pattern=ALIAS_PATTERN, json_schema_extra=_ALIAS_RULES),
                  AfterValidator(_not_reserved_alias)]
RegisteredModelName = Annotated[str, Field(min_length=1, max_length=256, pattern=REGISTERED_MODEL_PATTERN)]

SecretName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]


class SecretRef(_Spec):
    """A Secret in the promotion's namespace."""

    name: SecretName


class RegisteredModel(_Spec):
    """A version of an MLflow registered model, by number or by alias."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("has(self.version) != has(self.alias)", "registeredModel needs exactly one of version or alias"),
        )
    )

    name: RegisteredModelName
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, strict=True)
    alias: Alias | None = Field(
        default=None, description="Resolved once per spec generation; status.modelVersion says to which version."
    )

    @model_validator(mode="after")
    def _version_or_alias(self) -> RegisteredModel:
        _one_of(("version", self.version), ("alias", self.alias), "is required, or alias instead",
                "cannot be given with version: pin one or the other")
        return self


class Source(_Spec):
    """The MLflow run whose model is promoted, or a registered model version."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("has(self.runId) != has(self.registeredModel)", "source needs exactly one of runId or registeredModel"),
        )
    )

    tracking_uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=TRACKING_URI_PATTERN,
        description="MLflow tracking server; the operator's default when omitted.",
    )
    run_id: str | None = Field(default=None, max_length=32, pattern=RUN_ID_PATTERN, description="The MLflow run id.")
    registered_model: RegisteredModel | None = Field(
        default=None, description="A registered model version instead of runId: its run and model files."
    )
    model_name: Annotated[str, AfterValidator(_no_double_dot)] = Field(
        default="rf-regressor",
        max_length=128,
        pattern=MODEL_NAME_PATTERN,
        description="Logged model name (MLflow 3) or artifact path (MLflow 2) of runId; "
        "a registeredModel version says where its model is.",
        json_schema_extra=_rules(("!self.contains('..')", "modelName must not contain '..'")),
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN.",
    )

    @model_validator(mode="after")
    def _run_or_registered_model(self) -> Source:
        _one_of(("runId", self.run_id), ("registeredModel", self.registered_model),
                "is required, or registeredModel instead",
                "cannot be given with runId: name the run or the version, not both")
        return self


class GateOp(StrEnum):
    LESS_THAN = "LessThan"
    LESS_THAN_OR_EQUAL = "LessThanOrEqual"
    GREATER_THAN = "GreaterThan"
    GREATER_THAN_OR_EQUAL = "GreaterThanOrEqual"


class Baseline(StrEnum):
    SERVING = "Serving"  # the run the SeldonDeployment serves now (its mlops.dev/run-id annotation)


class WhenNoBaseline(StrEnum):
    PASS = "Pass"
    FAIL = "Fail"


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0 (MLflow's min_absolute_change), got {value!r}")
    return value


class Gate(_Spec):
    """The run's metric against a threshold, or against the serving run's value (baseline)."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("has(self.threshold) != has(self.baseline)", "a gate has either a threshold or a baseline"),
            ("!has(self.baseline) || has(self.minRelativeChange) != has(self.minAbsoluteChange)",
             "a baseline gate needs exactly one of minRelativeChange or minAbsoluteChange"),
            ("has(self.baseline) || !(has(self.minRelativeChange) || has(self.minAbsoluteChange) "
             "|| has(self.whenNoBaseline) || has(self.sameDataset))",
             "minRelativeChange, minAbsoluteChange, whenNoBaseline and sameDataset need baseline"),
        )
    )

    metric: str = Field(max_length=250, pattern=METRIC_PATTERN)
    op: GateOp
    threshold: float | None = Field(default=None, strict=True, allow_inf_nan=False)
    baseline: Baseline | None = Field(default=None, description="Compare with the run the deployment serves now.")
    min_relative_change: float | None = Field(
        default=None, ge=0, le=1, strict=True, allow_inf_nan=False,
        description="Better than the baseline by this fraction of its magnitude (MLflow's min_relative_change).",
    )
    min_absolute_change: Annotated[float, AfterValidator(_positive)] | None = Field(
        default=None, strict=True, allow_inf_nan=False,
        description="Better than the baseline by this much (MLflow's min_absolute_change).",
        json_schema_extra=_rules(("self > 0.0", "minAbsoluteChange must be greater than 0")),
    )
    when_no_baseline: WhenNoBaseline | None = Field(
        default=None, description="When nothing serves yet: Pass (the default) or Fail."
    )
    same_dataset: bool | None = Field(
        default=None, strict=True,
        description="Refuse the comparison when the two runs' metric was computed on different datasets.",
    )

    @model_validator(mode="after")
    def _threshold_or_baseline(self) -> Gate:
        extras = {"minRelativeChange": self.min_relative_change, "minAbsoluteChange": self.min_absolute_change,
                  "whenNoBaseline": self.when_no_baseline, "sameDataset": self.same_dataset}
        if self.baseline is None:
            if self.threshold is None:
                raise _FieldError("threshold", "is required, or baseline: Serving instead")
            given = next((key for key, value in extras.items() if value is not None), None)
            if given:
                raise _FieldError(given, "needs baseline: Serving (it compares with the serving run)")
            return self
        if self.threshold is not None:
            raise _FieldError("threshold", "cannot be given with baseline: a gate compares with one or the other")
        _one_of(("minRelativeChange", self.min_relative_change), ("minAbsoluteChange", self.min_absolute_change),
                "is required with baseline (0 to 1), or minAbsoluteChange (> 0)",
                "cannot be given with minRelativeChange: a baseline gate requires one kind of change")
        return self

    @property
    def lower_is_better(self) -> bool:
        return self.op.value.startswith("Less")

    @property
    def fails_without_baseline(self) -> bool:
        return self.when_no_baseline is WhenNoBaseline.FAIL


class Storage(_Spec):
    """Where the model is copied: s3://bucket/prefix/<runId>/."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            (
                "!has(self.endpoint) || has(self.credentialsSecretRef)",
                "storage.credentialsSecretRef is required when storage.endpoint is set",
            )
        )
    )

    endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=ENDPOINT_PATTERN,
        description="S3 endpoint; the operator's default when omitted.",
    )
    bucket: Annotated[str, AfterValidator(_bucket_rules)] = Field(
        min_length=3,
        max_length=63,
        pattern=BUCKET_PATTERN,
        json_schema_extra=_rules(
            (
                "!self.contains('..') && !self.contains('.-') && !self.contains('-.')",
                "bucket must not contain '..', '.-' or '-.'",
            ),
            (
                "!self.matches('^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$')",
                "bucket must not be an IP address",
            ),
        ),
    )
    prefix: Annotated[str, AfterValidator(_no_dot_segments)] = Field(
        default="",
        max_length=512,
        pattern=PREFIX_PATTERN,
        description="Folder in the bucket; the copy lands in <prefix>/<runId>/.",
        json_schema_extra=_rules(
            (
                "!('/' + self + '/').contains('/./') && !('/' + self + '/').contains('/../')",
                "prefix must not have a '.' or '..' segment",
            )
        ),
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
        "the operator's default when omitted, which only goes with the default endpoint.",
    )

    @model_validator(mode="after")
    def _own_endpoint_brings_own_credentials(self) -> Storage:
        # The operator's default keys end up in the rclone Secret and in signed requests;
        # sending them to an endpoint a user picked would hand them to whoever runs it.
        if self.endpoint is not None and self.credentials_secret_ref is None:
            raise _FieldError(
                "credentialsSecretRef",
                "is required when endpoint is set: the operator's default credentials "
                "are only used with its default endpoint",
            )
        return self


class Implementation(StrEnum):
    SKLEARN_SERVER = "SKLEARN_SERVER"
    MLFLOW_SERVER = "MLFLOW_SERVER"


class Protocol(StrEnum):
    V2 = "v2"
    SELDON = "seldon"


class SeldonTarget(_Spec):
    """The SeldonDeployment that serves the promoted model."""

    name: DnsLabel
    implementation: Implementation = Implementation.SKLEARN_SERVER
    protocol: Protocol = Field(
        default=Protocol.V2, description="v2 is MLServer; seldon is the Seldon protocol."
    )
    replicas: int = Field(default=1, ge=0, le=100, strict=True)
    secret_name: SecretName = Field(
        default="seldon-rclone-secret", description="The rclone Secret the operator writes for Seldon."
    )
    predictor_name: DnsLabel = "default"


class Target(_Spec):
    storage: Storage
    seldon_deployment: SeldonTarget


class Registry(_Spec):
    """Record the promotion in the MLflow Model Registry once it is Promoted."""

    alias: Alias | None = Field(default=None, description="Set on the promoted version, e.g. champion.")
    model: RegisteredModelName | None = Field(
        default=None,
        description="With a runId source: register the run's model under this name (once) and record it there.",
    )


MIN_ROLLOUT_SECONDS, MAX_ROLLOUT_SECONDS = 10, 24 * 3600


def seconds(duration: str) -> int:
    """A DURATION_PATTERN duration in seconds ("1h30m" -> 5400)."""
    total, number = 0, ""
    for ch in duration:
        if ch.isdigit():
            number += ch
        else:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[ch]
            number = ""
    return total


def _rollout_timeout(value: str) -> str:
    if not value or not MIN_ROLLOUT_SECONDS <= seconds(value) <= MAX_ROLLOUT_SECONDS:
        raise ValueError(f"must be between {MIN_ROLLOUT_SECONDS}s and {MAX_ROLLOUT_SECONDS // 3600}h, got {value!r}")
    return value



class SmokeTest(StrEnum):
    AUTO = "Auto"  # the model's serving_input_example.json (else input_example.json), if it has one
    SKIP = "Skip"


class Rollback(StrEnum):
    AUTOMATIC = "Automatic"  # on failure, the deployment serves what it served before again
    NONE = "None"


class Rollout(_Spec):
    """How a promotion is verified once the SeldonDeployment is written: it is Promoted only when
    the predictor's Deployment has rolled out this model and the model answers its own example."""

    timeout: Annotated[str, AfterValidator(_rollout_timeout)] = Field(
        default="10m", max_length=20, pattern=DURATION_PATTERN,
        description="From the SeldonDeployment write to a verified model (10s to 24h), e.g. 10m.",
        json_schema_extra=_rules((
            f"self != '' && duration(self) >= duration('{MIN_ROLLOUT_SECONDS}s') "
            f"&& duration(self) <= duration('{MAX_ROLLOUT_SECONDS // 3600}h')",
            f"rollout.timeout must be between {MIN_ROLLOUT_SECONDS}s and {MAX_ROLLOUT_SECONDS // 3600}h")),
    )
    smoke_test: SmokeTest = Field(
        default=SmokeTest.AUTO,
        description="Auto: send the model's serving_input_example.json (else input_example.json) to the new Pods; "
        "Skip: judge on the rollout alone.",
    )
    rollback: Rollback = Field(
        default=Rollback.AUTOMATIC,
        description="Automatic: on failure, restore what served before; None: leave the deployment as it is.",
    )

    @property
    def timeout_seconds(self) -> int:
        return seconds(self.timeout)


class Compatibility(StrEnum):
    WARN = "Warn"  # a condition and a Warning Event name both versions; the promotion goes on
    STRICT = "Strict"  # Rejected with the same message
    IGNORE = "Ignore"


class ModelPromotionSpec(_Spec):
    """Promote a run's model to a SeldonDeployment when every gate passes."""

    model_config = ConfigDict(
        json_schema_extra=_rules(
            ("!has(self.registry) || has(self.source.registeredModel) || has(self.registry.model)",
             "registry.model is required with a runId source: the run's model is registered under that name"),
            ("!has(self.registry) || !has(self.registry.model) || !has(self.source.registeredModel)",
             "registry.model goes with a runId source; a registeredModel source is recorded on its own version"),
        )
    )

    source: Source
    gates: tuple[Gate, ...] = Field(
        min_length=1,
        max_length=32,
        description="All must pass.",
        json_schema_extra=_rules(
            (
                "self.all(g, self.exists_one(h, h.metric == g.metric && h.op == g.op "
                "&& has(h.baseline) == has(g.baseline)))",
                "gates: each (metric, op) pair may appear once, and once more with a baseline",
            ),
            (
                "self.all(g, self.all(h, !has(g.threshold) || !has(h.threshold) || "
                "!(g.metric == h.metric && g.op.startsWith('Less') "
                "&& h.op.startsWith('Greater')) || h.threshold < g.threshold || "
                "(h.threshold == g.threshold && g.op == 'LessThanOrEqual' "
                "&& h.op == 'GreaterThanOrEqual')))",
                "gates: a metric's lower and upper bounds must leave some value that passes",
            ),
        ),
    )
    target: Target
    registry: Registry | None = Field(
        default=None, description="Set an alias and tags on the registered model version once Promoted."
    )
    compatibility: Compatibility = Field(
        default=Compatibility.WARN,
        description="The model's scikit-learn and Python against the serving image's: Warn, Strict or Ignore.",
    )
    rollout: Rollout = Field(
        default_factory=Rollout, description="Wait for the rollout, smoke-test the model, roll back on failure."
    )

    @field_validator("gates")
    @classmethod
    def _gates_agree(cls, gates: tuple[Gate, ...]) -> tuple[Gate, ...]:
        for i, gate in enumerate(gates):
            for j, other in enumerate(gates[:i]):
                if (other.metric, other.op, other.baseline) == (gate.metric, gate.op, gate.baseline):
                    what = " with a baseline" if gate.baseline else ""
                    raise _IndexedError(
                        i,
                        f"repeats gates[{j}] ({gate.metric} {gate.op.value}{what}); "
                        "each (metric, op) pair may appear once, and once more with a baseline",
                    )
                if other.metric == gate.metric and _contradict(other, gate):
                    raise _IndexedError(
                        i, f"{_phrase(gate)} contradicts gates[{j}] {_phrase(other)}: no value can pass both"
                    )
        return gates

    @model_validator(mode="after")
    def _registry_names_a_model(self) -> ModelPromotionSpec:
        if self.registry is None:
            return self
        if self.source.registered_model is None and self.registry.model is None:
            raise _FieldError("registry.model", "is required with a runId source: the run's model is "
                              "registered under that name")
        if self.source.registered_model is not None and self.registry.model is not None:
            raise _FieldError("registry.model", "goes with a runId source; a registeredModel source is "
                              "recorded on its own version")
        return self

    @property
    def registered_name(self) -> str | None:
        """The registered model the promotion is recorded in, if any."""
        if self.registry is None:
            return None
        return self.source.registered_model.name if self.source.registered_model else self.registry.model


def _one_of(first: tuple[str, object], second: tuple[str, object], missing: str, both: str) -> None:
    """Exactly one of two fields: ``missing`` is said of the first, ``both`` of the second."""
    (name, value), (other, other_value) = first, second
    if value is None and other_value is None:
        raise _FieldError(name, missing)
    if value is not None and other_value is not None:
        raise _FieldError(other, both)


class _IndexedError(ValueError):
    """A list validator's complaint about one item; the parser adds [index] to the path."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index


class _FieldError(ValueError):
    """A model validator's complaint about one of its fields."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


# How gates read in messages and the printer column.
OP_SYMBOLS = {
    GateOp.LESS_THAN: "<",
    GateOp.LESS_THAN_OR_EQUAL: "<=",
    GateOp.GREATER_THAN: ">",
    GateOp.GREATER_THAN_OR_EQUAL: ">=",
}


def _phrase(gate: Gate) -> str:
    return f"{gate.metric} {OP_SYMBOLS[gate.op]} {gate.threshold:.6g}"


def _contradict(a: Gate, b: Gate) -> bool:
    if a.threshold is None or b.threshold is None:  # a baseline moves: no contradiction to find here
        return False
    upper, lower = (a, b) if a.op.value.startswith("Less") else (b, a)
    if not upper.op.value.startswith("Less") or not lower.op.value.startswith("Greater"):
        return False
    if lower.threshold != upper.threshold:
        return bool(lower.threshold > upper.threshold)  # type: ignore[operator]  # both set, checked above
    both_inclusive = upper.op is GateOp.LESS_THAN_OR_EQUAL and lower.op is GateOp.GREATER_THAN_OR_EQUAL
    return not both_inclusive


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_KNOWN_FIELDS = sorted(
    {
        field.alias or name
        for model in (SecretRef, RegisteredModel, Source, Gate, Storage, SeldonTarget, Target, Registry,
                      ModelPromotionSpec)
        for name, field in model.model_fields.items()
    }
)


def _problem(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    got = f", got {_show(value)}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        near = difflib.get_close_matches(key, _KNOWN_FIELDS, n=1)
        return "is not a known field" + (f" (did you mean {near[0]!r}?)" if near else "")
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        return _PATTERN_MEANING.get(pattern, f"must match {pattern}") + got
    if kind == "string_too_short":
        return f"must be at least {ctx['min_length']} characters" + got
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters, got {len(str(value))}"
    if kind == "too_short":
        least = ctx["min_length"]
        return f"must have at least {least} item{'s' if least != 1 else ''}, got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items, got {ctx.get('actual_length')}"
    if kind == "enum":
        return f"must be one of {ctx['expected'].replace(chr(39), '')}" + got
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ">=" if kind == "greater_than_equal" else "<="
        return f"must be {bound} {ctx.get('ge', ctx.get('le'))}" + got
    if kind in ("float_type", "float_parsing", "int_type", "int_parsing", "int_from_float"):
        what = "a whole number" if kind.startswith("int") else "a number"
        return f"must be {what}" + got
    if kind == "string_type":
        return "must be a string" + got
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object" + got
    if kind in ("tuple_type", "list_type"):
        return "must be a list" + got
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message = str(error["msg"])
    return message[:1].lower() + message[1:] + got


def _path(error: Mapping[str, Any]) -> str:
    path = "spec"
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, _IndexedError):
        path += f"[{cause.index}]"
    elif isinstance(cause, _FieldError):
        path += f".{cause.field}"
    return path


def parse_spec(raw: Mapping[str, Any]) -> ModelPromotionSpec:
    """Validate a ModelPromotion spec; the first problem becomes :class:`InvalidSpec`."""
    if not isinstance(raw, Mapping):
        raise InvalidSpec("spec", f"must be an object, got {_show(raw)}")
    try:
        return ModelPromotionSpec.model_validate(dict(raw))
    except ValidationError as exc:
        found = exc.errors(include_url=False)
        # A misspelt key also shows up as a missing one; the spelling is the news.
        first = next((e for e in found if e["type"] == "extra_forbidden"), found[0])
        raise InvalidSpec(_path(first), _problem(first)) from None


def model_uri(spec: ModelPromotionSpec, root: str = "", run_id: str | None = None) -> str:
    """Where Seldon loads the model from: s3://bucket/root/prefix/runId (no trailing slash).
    ``run_id``: the run a registeredModel source resolved to (a runId source names its own)."""
    return f"s3://{spec.target.storage.bucket}/{object_prefix(spec, root, run_id).rstrip('/')}"


def object_prefix(spec: ModelPromotionSpec, root: str = "", run_id: str | None = None) -> str:
    """The object key prefix of the copy, ending in "/": under ``root`` (the namespace's part of
    the bucket, ``policy.copy_root``), named by the run so copies never mix."""
    run = run_id or spec.source.run_id
    if not run:
        raise ValueError("a registeredModel source has no run until it is resolved: pass run_id")
    parts = [p for p in (root.strip("/"), spec.target.storage.prefix, run) if p]
    return "/".join(parts) + "/"


# -- status ----------------------------------------------------------------------------------


class _StatusModel(BaseModel):
    # Status read back from the cluster carries kopf's bookkeeping next to ours: ignore it.
    model_config = ConfigDict(populate_by_name=True, alias_generator=to_camel, extra="ignore")


class Condition(_StatusModel):
    """One of Ready, GatesPassed, ArtifactCopied, Deployed (kstatus conventions)."""

    # Set through set_condition, which keeps lastTransitionTime when the status is unchanged.

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str = Field(default="", description="RFC 3339 time the status last changed.")
    observed_generation: int | None = None


class GateResult(_StatusModel):
    """One gate's decision, with the baseline run and the required value for a baseline gate."""

    # value is absent when the metric is missing or not finite; reason then says why.

    metric: str
    op: GateOp
    threshold: float | None = None
    baseline: Baseline | None = None
    min_relative_change: float | None = None
    min_absolute_change: float | None = None
    baseline_run_id: str | None = Field(default=None, description="The run the deployment served.")
    baseline_value: float | None = None
    required: float | None = Field(default=None, description="What the candidate had to reach (op says which way).")
    value: float | None = None
    passed: bool
    reason: str | None = None


class Artifact(_StatusModel):
    """The verified copy: totals, and the manifest that lists each file's size and sha256."""

    files: int
    bytes: int
    digest: str = Field(description="sha256:<hex> of the manifest file.")
    manifest: str = Field(description="Object key of the manifest.")


class Progress(_StatusModel):
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int


class ModelVersionRef(_StatusModel):
    """The registered model version served: the one the source resolved to, or the one registered."""

    name: str
    version: str
    alias: str | None = Field(default=None, description="The alias the source named, when it named one.")


class Evidence(_StatusModel):
    """What a failed rollout or smoke test showed (a container's state, or the HTTP answer)."""

    pod: str | None = None
    container: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    restarts: int | None = None
    message: str | None = None
    http_status: int | None = None


class Verification(_StatusModel):
    """The smoke test: the model's own example sent to a new Pod."""

    endpoint: str
    example: str = Field(description="The example file sent, relative to modelUri.")
    rows: int
    latency_seconds: float
    predictions: list[float] = Field(default_factory=list, description="The first predictions (at most 5).")


class RolloutState(StrEnum):
    DEPLOYING = "Deploying"  # waiting for the predictor's Deployment and the smoke test
    ROLLING_BACK = "RollingBack"  # failed: waiting for the previous model to serve again
    DONE = "Done"


class RolloutStatus(_StatusModel):
    """The rollout of this promotion's model, from the SeldonDeployment write to the verdict."""

    state: RolloutState = RolloutState.DEPLOYING
    started_at: str = Field(description="When the SeldonDeployment was written (RFC 3339).")
    started: float = Field(description="The same, in seconds since the epoch.")
    previous: str | None = Field(default=None, description="The promotion that served before: a rollback restores it.")
    deployment: str | None = Field(default=None, description="The predictor's Deployment.")
    failure: str | None = Field(default=None, description="Why it failed (reason).")
    failure_message: str | None = None
    evidence: Evidence | None = None
    rollback_started: float | None = None
    rolled_back_to: str | None = None
    promoted_message: str | None = Field(default=None, description="The message once verified.")
    finished_at: str | None = None
    seconds: float | None = Field(default=None, description="Write to verdict.")


class Phase(StrEnum):
    PENDING = "Pending"
    COPYING = "Copying"
    DEPLOYING = "Deploying"
    PROMOTED = "Promoted"
    REJECTED = "Rejected"
    FAILED = "Failed"
    SUPERSEDED = "Superseded"


class PromotionStatus(_StatusModel):
    """What the operator decided about this promotion, with the evidence."""

    # The status patch is model_dump(by_alias=True, exclude_none=True, mode="json"): fields
    # left None stay out of the patch, so what another handler wrote is not cleared.

    phase: Phase = Phase.PENDING
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    gates: list[GateResult] = Field(default_factory=list)
    gate_summary: str | None = None
    run_id: str | None = None
    model_version: ModelVersionRef | None = None
    model_uri: str | None = None
    deployment: str | None = None
    artifact: Artifact | None = None
    progress: Progress | None = None
    message: str = ""
    superseded_by: str | None = None
    rollout: RolloutStatus | None = None
    verification: Verification | None = None
    restore: str | None = Field(
        default=None, description="The last mlops.dev/restore annotation value acted on.")


def set_condition(conditions: list[Condition], new: Condition, now: str) -> list[Condition]:
    """Return conditions with new in place of its type; the transition time moves only when
    the status value changes, so it says when the condition last flipped."""
    result: list[Condition] = []
    placed = False
    for old in conditions:
        if old.type != new.type:
            result.append(old)
            continue
        if placed:  # a duplicate written by someone else: one condition per type
            continue
        kept = old.status == new.status and old.last_transition_time
        when = old.last_transition_time if kept else now
        result.append(new.model_copy(update={"last_transition_time": when}))
        placed = True
    if not placed:
        result.append(new.model_copy(update={"last_transition_time": now}))
    return result


__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "OP_SYMBOLS",
    "PLURAL",
    "Artifact",
    "Baseline",
    "Compatibility",
    "Condition",
    "Evidence",
    "Gate",
    "GateOp",
    "GateResult",
    "Implementation",
    "ModelPromotionSpec",
    "ModelVersionRef",
    "Phase",
    "Progress",
    "PromotionStatus",
    "Protocol",
    "RegisteredModel",
    "Registry",
    "Rollback",
    "Rollout",
    "RolloutState",
    "RolloutStatus",
    "SecretRef",
    "SeldonTarget",
    "SmokeTest",
    "Source",
    "Storage",
    "Target",
    "Verification",
    "WhenNoBaseline",
    "model_uri",
    "object_prefix",
    "parse_spec",
    "seconds",
    "set_condition",
]
