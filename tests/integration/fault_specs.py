"""Malformed and hostile ModelPromotion specs: a table, and a hypothesis strategy of mutations.

Each case says where it must be stopped: ``apply`` (the API server refuses it: the CRD schema,
its CEL rules, strict field validation, object-name rules; the text must appear in the error),
``rejected`` (accepted, then the operator says Rejected with the text in its message) or
``waiting`` (accepted and valid, but what it names is absent: the operator waits with backoff,
the Reconciling condition saying why).

Cross-namespace Secret references cannot be written: a reference is ``{name}`` only (a
``namespace`` key is an unknown field) and a name cannot hold ``/`` (the DNS-1123 pattern), so
every Secret the operator reads or writes is in the promotion's own namespace by construction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from devstack.harness import SCOPE_LABEL

SCOPE = "faults"  # the fault suite's operator handles these promotions, no other one

Path = tuple[str | int, ...]
DELETE = object()
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Case:
    id: str
    changes: tuple[tuple[Path, Any], ...]
    stop: str  # apply | rejected | waiting
    text: str
    run: str = "small-0"  # a kind of fault_runs.py, or a literal run id


def base(name: str, run_id: str, prefix: str = "bad") -> dict[str, Any]:
    """A valid promotion whose gate passes: whatever stops it is the change made to it."""
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "ModelPromotion",
        "metadata": {"name": name, "labels": {SCOPE_LABEL: SCOPE}},
        "spec": {
            "source": {"runId": run_id},
            "gates": [{"metric": "rmse", "op": "LessThan", "threshold": 1}],
            "target": {
                "storage": {"bucket": "models", "prefix": prefix},
                "seldonDeployment": {"name": "bad-input", "implementation": "SKLEARN_SERVER", "protocol": "v2"},
            },
        },
    }


def mutate(obj: dict[str, Any], changes: tuple[tuple[Path, Any], ...]) -> dict[str, Any]:
    """Apply (path, value) changes; a path through a value that is not an object makes one."""
    out = copy.deepcopy(obj)
    for path, value in changes:
        node: Any = out
        for key in path[:-1]:
            child = _child(node, key)
            if not isinstance(child, dict | list):
                child = {}
                _put(node, key, child)
            node = child
        if value is DELETE:
            if _child(node, path[-1]) is not None:
                del node[path[-1]]
        else:
            _put(node, path[-1], copy.deepcopy(value))
    return out


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, list):
        return node[key] if isinstance(key, int) and key < len(node) else None
    return node.get(key)


def _put(node: Any, key: str | int, value: Any) -> None:
    if isinstance(node, list):
        if isinstance(key, int) and key < len(node):
            node[key] = value
        else:
            node.append(value)
    else:
        node[key] = value


def render(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


SRC, GATE, STORE, SD = ("spec", "source"), ("spec", "gates", 0), ("spec", "target", "storage"), \
    ("spec", "target", "seldonDeployment")


def _apply(id_: str, path: Path, value: Any, text: str | None = None) -> Case:
    return Case(id_, ((path, value),), "apply", text if text is not None else render(path))


TABLE: list[Case] = [
    # wrong types
    *[_apply(f"threshold-{i}", (*GATE, "threshold"), v,
             "a gate has either a threshold or a baseline" if v is None else None) for i, v in enumerate(
        ["0.8", True, [1], {"v": 1}, None, "NaN", "Infinity", "1e309", ""])],  # null: no threshold at all
    *[_apply(f"replicas-{i}", (*SD, "replicas"), v) for i, v in enumerate(
        [-1, 101, 2**63, 2**64, 1.5, "1", True])],
    _apply("gates-string", ("spec", "gates"), "rmse<1"),
    _apply("gates-object", ("spec", "gates"), {"metric": "rmse"}),
    _apply("gates-empty", ("spec", "gates"), []),
    _apply("gates-33", ("spec", "gates"), [{"metric": f"m{i}", "op": "LessThan", "threshold": 1} for i in range(33)]),
    _apply("gate-string", ("spec", "gates", 0), "rmse"),
    _apply("source-string", SRC, "abc"),
    _apply("spec-string", ("spec",), "promote everything", "spec"),
    _apply("target-missing", ("spec", "target"), DELETE),
    _apply("runid-missing", (*SRC, "runId"), DELETE, "source needs exactly one of runId or registeredModel"),
    _apply("threshold-missing", (*GATE, "threshold"), DELETE, "a gate has either a threshold or a baseline"),
    # run ids with path characters, and other malformed ones
    *[_apply(f"runid-{i}", (*SRC, "runId"), v) for i, v in enumerate(
        [12345, "", "A" * 32, "../../etc/passwd", "abc/def", "%2e%2e%2f" + "0" * 23, UNKNOWN_RUN + "/x",
         "0" * 33, "a" * 31 + "\u0000", "0" * 31 + "\n", "0" * 16 + "/../" + "0" * 12])],
    *[_apply(f"modelname-{i}", (*SRC, "modelName"), v) for i, v in enumerate(
        ["../secret", "a/b", "..", "x" * 129, "m..n", "", "-lead"])],
    *[_apply(f"tracking-{i}", (*SRC, "trackingUri"), v) for i, v in enumerate(
        ["file:///etc/passwd", "http://user:pass@mlflow:5000", "javascript:alert(1)", "http://" + "a" * 3000,
         "mlflow:5000", "http://a b", "http://127.0.0.1:8080/anything#", "http://mlflow:5000/?a=",
         "http://169.254.169.254/latest/meta-data#"])],
    # Secret references: no namespace field, no '/', length and shape of a DNS name
    _apply("ref-namespace", (*SRC, "credentialsSecretRef"), {"name": "mlflow-auth", "namespace": "kube-system"},
           "unknown field \"spec.source.credentialsSecretRef.namespace\""),
    _apply("ref-slash", (*SRC, "credentialsSecretRef", "name"), "kube-system/mlflow-auth"),
    _apply("ref-string", (*SRC, "credentialsSecretRef"), "mlflow-auth"),
    _apply("ref-empty", (*SRC, "credentialsSecretRef", "name"), ""),
    _apply("ref-long", (*SRC, "credentialsSecretRef", "name"), "a" * 254),
    _apply("storage-ref-slash", (*STORE, "credentialsSecretRef", "name"), "other/minio-credentials"),
    _apply("storage-ref-namespace", (*STORE, "credentialsSecretRef"), {"name": "x", "namespace": "default"},
           "unknown field"),
    _apply("rclone-secret-slash", (*SD, "secretName"), "kube-system/seldon-rclone-secret"),
    _apply("rclone-secret-dots", (*SD, "secretName"), "../x"),
    # unknown operators, bad metrics
    *[_apply(f"op-{i}", (*GATE, "op"), v) for i, v in enumerate(
        ["Roughly", "lessthan", "<=", "", 1, "LessThan "])],
    *[_apply(f"metric-{i}", (*GATE, "metric"), v) for i, v in enumerate(
        ["", "rmse; drop table runs", "x" * 251, "rmse\n", "m\u00e9trique", 3])],
    Case("gates-duplicate", ((("spec", "gates"), [{"metric": "rmse", "op": "LessThan", "threshold": 1},
                                                  {"metric": "rmse", "op": "LessThan", "threshold": 2}]),),
         "apply", "each (metric, op) pair may appear once"),
    Case("gates-contradict", ((("spec", "gates"), [{"metric": "rmse", "op": "LessThan", "threshold": 0.1},
                                                   {"metric": "rmse", "op": "GreaterThan", "threshold": 0.9}]),),
         "apply", "must leave some value that passes"),
    _apply("gate-extra-field", (*GATE, "weight"), 2, "unknown field \"spec.gates[0].weight\""),
    _apply("spec-extra-field", ("spec", "dryRun"), True, "unknown field \"spec.dryRun\""),
    # registered model sources: names MLflow refuses, reserved aliases, versions that are not numbers
    *[_apply(f"registered-{i}", (*SRC, "registeredModel"), v, text) for i, (v, text) in enumerate([
        ({"name": "rf", "alias": "latest"}, "alias 'latest' is reserved by MLflow"),
        ({"name": "rf", "alias": "LATEST"}, "alias 'latest' is reserved by MLflow"),
        ({"name": "rf", "alias": "v3"}, "aliases v<N> are reserved by MLflow"),
        ({"name": "rf", "alias": "prod/1"}, "spec.source.registeredModel.alias"),
        ({"name": "rf", "alias": "a" * 256}, "spec.source.registeredModel.alias"),
        ({"name": "models:/rf", "version": 1}, "spec.source.registeredModel.name"),
        ({"name": "rf'; --", "version": 1}, "spec.source.registeredModel.name"),
        ({"name": "r" * 257, "version": 1}, "spec.source.registeredModel.name"),
        ({"name": "rf", "version": 0}, "spec.source.registeredModel.version"),
        ({"name": "rf", "version": "3"}, "spec.source.registeredModel.version"),
        ({"name": "rf"}, "registeredModel needs exactly one of version or alias"),
        ({"name": "rf", "version": 1, "alias": "champion"}, "registeredModel needs exactly one of version or alias"),
        ({"name": "rf", "version": 1}, "source needs exactly one of runId or registeredModel"),  # with runId
    ])],
    # baseline gates: MLflow's bounds on the changes, one kind of change, nothing that needs a baseline without one
    *[_apply(f"baseline-{i}", GATE, {"metric": "rmse", "op": "LessThan", **v}, text) for i, (v, text) in enumerate([
        ({"baseline": "Serving", "minRelativeChange": 1.5}, "spec.gates[0].minRelativeChange"),
        ({"baseline": "Serving", "minRelativeChange": -0.1}, "spec.gates[0].minRelativeChange"),
        ({"baseline": "Serving", "minAbsoluteChange": 0}, "minAbsoluteChange must be greater than 0"),
        ({"baseline": "Serving"}, "exactly one of minRelativeChange or minAbsoluteChange"),
        ({"baseline": "Serving", "minRelativeChange": 0.1, "minAbsoluteChange": 1},
         "exactly one of minRelativeChange or minAbsoluteChange"),
        ({"baseline": "Serving", "minRelativeChange": 0.1, "threshold": 1}, "either a threshold or a baseline"),
        ({"baseline": "Previous", "minRelativeChange": 0.1}, "spec.gates[0].baseline"),
        ({"baseline": "Serving", "minRelativeChange": 0.1, "whenNoBaseline": "Maybe"}, "spec.gates[0].whenNoBaseline"),
        ({"threshold": 1, "sameDataset": True}, "need baseline"),
        ({"threshold": 1, "minRelativeChange": 0.1}, "need baseline"),
    ])],
    _apply("registry-no-model", ("spec", "registry"), {"alias": "champion"}, "registry.model is required"),
    _apply("registry-latest", ("spec", "registry"), {"model": "rf", "alias": "latest"},
           "alias 'latest' is reserved by MLflow"),
    _apply("compatibility", ("spec", "compatibility"), "Loose"),
    # bucket names S3 rejects, prefixes that climb out
    *[_apply(f"bucket-{i}", (*STORE, "bucket"), v) for i, v in enumerate(
        ["Bad_Bucket", "ab", "a" * 64, "192.168.1.1", "a..b", "a.-b", "b-.a", "-abc", "abc-", "mo dels",
         "models/../mlflow", ""])],
    *[_apply(f"prefix-{i}", (*STORE, "prefix"), v) for i, v in enumerate(
        ["a/../b", "../x", "..", "/abs", "a//b", ".", "a/./b", "x" * 513, "a\\b", "a b", "trailing/"])],
    *[_apply(f"endpoint-{i}", (*STORE, "endpoint"), v, "spec.target.storage") for i, v in enumerate(
        ["http://evil.example:9000", "ftp://x", "http://host/path", "http://u:p@host"])],
    # names over length limits, bad deployment fields
    *[_apply(f"sdname-{i}", (*SD, "name"), v) for i, v in enumerate(["Bad_Name", "a" * 64, "-x", "x-", ""])],
    _apply("predictor-long", (*SD, "predictorName"), "p" * 64),
    _apply("implementation", (*SD, "implementation"), "TENSORFLOW_SERVER"),
    _apply("protocol", (*SD, "protocol"), "grpc"),
    _apply("name-254", ("metadata", "name"), "n" * 254, "metadata.name"),
    _apply("name-upper", ("metadata", "name"), "Bad_Name", "metadata.name"),
    # accepted by the schema, refused by the operator with the field, metric or limit named
    Case("unknown-run", (((*SRC, "runId"), UNKNOWN_RUN),), "rejected", f"run {UNKNOWN_RUN} not found on MLflow"),
    Case("metric-path", (((*GATE, "metric"), "../../x"),), "rejected", "gate failed: ../../x was not logged"),
    Case("threshold-huge-int", (((*GATE, "op"), "GreaterThan"), ((*GATE, "threshold"), 10**30)), "rejected",
         "gate failed: rmse 0.5 is not > 1e+30"),
    Case("threshold-minus-max", (((*GATE, "threshold"), -1.7976931348623157e308),), "rejected",
         "gate failed: rmse 0.5 is not < -1.79769e+308"),
    Case("threshold-tiny", (((*GATE, "op"), "LessThanOrEqual"), ((*GATE, "threshold"), 5e-324)), "rejected",
         "gate failed: rmse 0.5 is not <= 4.94066e-324"),
    Case("model-missing", (((*SRC, "modelName"), "no-such-model"),), "rejected", "model 'no-such-model' of run"),
    Case("mlflow-secret-missing", (((*SRC, "credentialsSecretRef"), {"name": "absent"}),), "rejected",
         "(spec.source.credentialsSecretRef): not found"),
    Case("storage-secret-missing", (((*STORE, "credentialsSecretRef"), {"name": "absent"}),), "rejected",
         "(spec.target.storage.credentialsSecretRef): not found"),
    Case("storage-secret-keyless", (((*STORE, "credentialsSecretRef"), {"name": "keyless"}),), "rejected",
         "(spec.target.storage.credentialsSecretRef): not found, not readable, or without AWS_ACCESS_KEY_ID"),
    Case("too-many-files", (), "rejected", "has more than 30 files, over the operator's limit PROMOTER_MAX_FILES=30",
         "many"),
    Case("too-many-bytes", (), "rejected", "over the operator's limit PROMOTER_MAX_BYTES=33554432", "huge"),
    Case("name-253", ((("metadata", "name"), "n" * 253), ((*GATE, "threshold"), 0.1)), "rejected",
         "gate failed: rmse 0.5 is not < 0.1"),
    Case("registered-unknown", (((*SRC, "runId"), DELETE), ((*SRC, "registeredModel"),
                                                            {"name": "no-such-model", "version": 1})),
         "rejected", "registered model 'no-such-model' version 1 not found on MLflow"),
    # valid, but the bucket is not there: waited for (a person may create it), at most once a minute
    Case("bucket-absent", (((*STORE, "bucket"), "xn--no-such-bucket"),), "waiting",
         "bucket 'xn--no-such-bucket' does not exist"),
]


# --- generated -----------------------------------------------------------------------------

PATHS: list[Path] = [
    SRC, ("spec", "target"), ("spec", "gates"), GATE, ("spec", "extra"),
    (*SRC, "runId"), (*SRC, "modelName"), (*SRC, "trackingUri"), (*SRC, "credentialsSecretRef"),
    (*SRC, "credentialsSecretRef", "name"), (*GATE, "metric"), (*GATE, "op"), (*GATE, "threshold"),
    (*STORE, "bucket"), (*STORE, "prefix"), (*STORE, "endpoint"), (*STORE, "credentialsSecretRef", "name"),
    (*SD, "name"), (*SD, "implementation"), (*SD, "protocol"), (*SD, "replicas"), (*SD, "secretName"),
    (*SD, "predictorName"),
]

HOSTILE_TEXT = [
    "", " ", "..", "/", "../../etc/passwd", "a/../b", "%2e%2e%2f", "\u0000", "\n", "$(rm -rf /)",
    "'; DROP TABLE runs;--", "x" * 300, "kube-system/minio-credentials", "http://user:pw@evil", "file:///etc/shadow",
    "s3://other-bucket/", "\U0001f4a5", "\u202e", "null", "NaN", "-Infinity", "1e309", "true", "LessThan\u200b",
    "models/../mlflow", "A" * 32, "0" * 32 + "/", "\\\\server\\share",
]

values = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=40),
    st.text(min_size=250, max_size=600),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)

# Values of the right shape (the schema's own patterns), so that some generated specs pass the
# schema and reach the operator's parser and reconcile. No URL is generated: a valid one would
# point the operator at a server that is not there, which is a wait, not bad input.
_DNS = r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?"
SHAPED: dict[Path, st.SearchStrategy[Any]] = {
    (*SRC, "runId"): st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    (*SRC, "modelName"): st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True),
    (*SRC, "credentialsSecretRef", "name"): st.from_regex(_DNS, fullmatch=True),
    (*GATE, "metric"): st.from_regex(r"[A-Za-z0-9_./ -]{1,40}", fullmatch=True),
    (*GATE, "op"): st.sampled_from(["LessThan", "LessThanOrEqual", "GreaterThan", "GreaterThanOrEqual"]),
    (*GATE, "threshold"): st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**60), 2**60)),
    (*STORE, "bucket"): st.from_regex(r"[a-z0-9][a-z0-9.-]{1,20}[a-z0-9]", fullmatch=True),
    (*STORE, "prefix"): st.from_regex(r"[A-Za-z0-9._-]{1,12}(/[A-Za-z0-9._-]{1,12}){0,3}", fullmatch=True),
    (*STORE, "credentialsSecretRef", "name"): st.from_regex(_DNS, fullmatch=True),
    (*SD, "name"): st.from_regex(_DNS, fullmatch=True),
    (*SD, "replicas"): st.integers(0, 100),
    (*SD, "secretName"): st.from_regex(_DNS, fullmatch=True),
    (*SD, "predictorName"): st.from_regex(_DNS, fullmatch=True),
    (*SD, "implementation"): st.sampled_from(["SKLEARN_SERVER", "MLFLOW_SERVER"]),
    (*SD, "protocol"): st.sampled_from(["v2", "seldon"]),
}


def _change(path: Path) -> st.SearchStrategy[tuple[Path, Any]]:
    shaped = SHAPED.get(path)
    return st.tuples(st.just(path), st.one_of(shaped, values) if shaped is not None else values)


mutations = st.lists(st.sampled_from(PATHS).flatmap(_change), min_size=1, max_size=3,
                     unique_by=lambda change: change[0])


def names_a_field(message: str, changes: tuple[tuple[Path, Any], ...] | list[tuple[Path, Any]]) -> bool:
    """The message names one of the changed fields, or a field above or below one."""
    for path, _ in changes:
        for n in range(2, len(path) + 1):
            if render(path[:n]) in message:
                return True
    return False
