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
PREFIX_PATTERN = r"^([A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*)?$"

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


SecretName = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]


class SecretRef(_Spec):
    """A Secret in the promotion's namespace."""

    name: SecretName


class Source(_Spec):
    """The MLflow run whose model is promoted."""

    tracking_uri: str | None = Field(
        default=None,
        max_length=2048,
        pattern=TRACKING_URI_PATTERN,
        description="MLflow tracking server; the operator's default when omitted.",
    )
    run_id: str = Field(max_length=32, pattern=RUN_ID_PATTERN, description="The MLflow run id.")
    model_name: Annotated[str, AfterValidator(_no_double_dot)] = Field(
        default="rf-regressor",
        max_length=128,
        pattern=MODEL_NAME_PATTERN,
        description="Logged model name (MLflow 3) or artifact path (MLflow 2).",
        json_schema_extra=_rules(("!self.contains('..')", "modelName must not contain '..'")),
    )
    credentials_secret_ref: SecretRef | None = Field(
        default=None,
        description="Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN.",
    )


class GateOp(StrEnum):
    LESS_THAN = "LessThan"
    LESS_THAN_OR_EQUAL = "LessThanOrEqual"
    GREATER_THAN = "GreaterThan"
    GREATER_THAN_OR_EQUAL = "GreaterThanOrEqual"


class Gate(_Spec):
    """The run's metric must compare to the threshold as op says."""

    metric: str = Field(max_length=250, pattern=METRIC_PATTERN)
    op: GateOp
    threshold: float = Field(strict=True, allow_inf_nan=False)


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


class ModelPromotionSpec(_Spec):
    """Promote a run's model to a SeldonDeployment when every gate passes."""

    source: Source
    gates: tuple[Gate, ...] = Field(
        min_length=1,
        max_length=32,
        description="All must pass.",
        json_schema_extra=_rules(
            (
                "self.all(g, self.exists_one(h, h.metric == g.metric && h.op == g.op))",
                "gates: each (metric, op) pair may appear once",
            ),
            (
                "self.all(g, self.all(h, !(g.metric == h.metric && g.op.startsWith('Less') "
                "&& h.op.startsWith('Greater')) || h.threshold < g.threshold || "
                "(h.threshold == g.threshold && g.op == 'LessThanOrEqual' "
                "&& h.op == 'GreaterThanOrEqual')))",
                "gates: a metric's lower and upper bounds must leave some value that passes",
            ),
        ),
    )
    target: Target

    @field_validator("gates")
    @classmethod
    def _gates_agree(cls, gates: tuple[Gate, ...]) -> tuple[Gate, ...]:
        for i, gate in enumerate(gates):
            for j, other in enumerate(gates[:i]):
                if (other.metric, other.op) == (gate.metric, gate.op):
                    raise _IndexedError(
                        i,
                        f"repeats gates[{j}] ({gate.metric} {gate.op.value}); "
                        "each (metric, op) pair may appear once",
                    )
                if other.metric == gate.metric and _contradict(other, gate):
                    raise _IndexedError(
                        i, f"{_phrase(gate)} contradicts gates[{j}] {_phrase(other)}: no value can pass both"
                    )
        return gates


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
    upper, lower = (a, b) if a.op.value.startswith("Less") else (b, a)
    if not upper.op.value.startswith("Less") or not lower.op.value.startswith("Greater"):
        return False
    if lower.threshold != upper.threshold:
        return lower.threshold > upper.threshold
    both_inclusive = upper.op is GateOp.LESS_THAN_OR_EQUAL and lower.op is GateOp.GREATER_THAN_OR_EQUAL
    return not both_inclusive


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_KNOWN_FIELDS = sorted(
    {
        field.alias or name
        for model in (SecretRef, Source, Gate, Storage, SeldonTarget, Target, ModelPromotionSpec)
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


def model_uri(spec: ModelPromotionSpec, root: str = "") -> str:
    """Where Seldon loads the model from: s3://bucket/root/prefix/runId (no trailing slash)."""
    return f"s3://{spec.target.storage.bucket}/{object_prefix(spec, root).rstrip('/')}"


def object_prefix(spec: ModelPromotionSpec, root: str = "") -> str:
    """The object key prefix of the copy, ending in "/": under ``root`` (the namespace's part of
    the bucket, ``policy.copy_root``), named by the run so copies never mix."""
    parts = [p for p in (root.strip("/"), spec.target.storage.prefix, spec.source.run_id) if p]
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
    """One gate's decision; value is absent when the metric is missing or not finite."""

    metric: str
    op: GateOp
    threshold: float
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
    model_uri: str | None = None
    deployment: str | None = None
    artifact: Artifact | None = None
    progress: Progress | None = None
    message: str = ""
    superseded_by: str | None = None


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
    "Condition",
    "Gate",
    "GateOp",
    "GateResult",
    "Implementation",
    "ModelPromotionSpec",
    "Phase",
    "Progress",
    "PromotionStatus",
    "Protocol",
    "SecretRef",
    "SeldonTarget",
    "Source",
    "Storage",
    "Target",
    "model_uri",
    "object_prefix",
    "parse_spec",
    "set_condition",
]
