"""The generated CRD: committed and current, structural, and as strict as parse_spec."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from promoter import crdgen
from promoter.errors import InvalidSpec
from promoter.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / "modelpromotions.mlops.dev.yaml"
RUN = "5f0c2d9e5f0c2d9e5f0c2d9e5f0c2d9e"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return crdgen.crd_manifest()


@pytest.fixture(scope="module")
def schema(crd: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for name, child in node.get("properties", {}).items():
            yield from nodes(child, f"{path}.{name}")
        if "items" in node:
            yield from nodes(node["items"], f"{path}[]")


def test_committed_crd_is_current() -> None:
    assert COMMITTED.read_text(encoding="utf-8") == crdgen.render_yaml(), (
        f"{COMMITTED.relative_to(ROOT)} is stale: run `make crds`"
    )


def test_generation_is_deterministic() -> None:
    assert crdgen.render_yaml() == crdgen.render_yaml()


def test_check_passes_on_the_committed_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main(["--check", str(COMMITTED)]) == 0
    assert capsys.readouterr().err == ""


def test_check_fails_on_a_stale_file_and_says_what_to_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crdgen.render_yaml().replace("shortNames:\n    - mp", "shortNames:\n    - mpx"))
    assert crdgen.main(["--check", str(stale)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{stale} is stale; run `make crds` to regenerate it.\n")
    assert "-    - mpx\n" in err and "+    - mp\n" in err


def test_names_scope_and_version(crd: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "modelpromotions.mlops.dev"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == ("mlops.dev", "Namespaced")
    assert spec["names"] == {
        "kind": "ModelPromotion",
        "listKind": "ModelPromotionList",
        "plural": "modelpromotions",
        "singular": "modelpromotion",
        "shortNames": ["mp"],
        "categories": ["mlops"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_show_the_evidence(crd: dict[str, Any]) -> None:
    columns = crd["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"], c["type"], c.get("priority", 0)) for c in columns] == [
        ("Run", ".status.runId", "string", 0),
        ("Phase", ".status.phase", "string", 0),
        ("Gates", ".status.gateSummary", "string", 0),
        ("Deployment", ".spec.target.seldonDeployment.name", "string", 0),
        ("Age", ".metadata.creationTimestamp", "date", 0),
        ("Model", ".status.modelUri", "string", 1),
        ("Version", ".status.modelVersion.version", "string", 1),
    ]


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    text = json.dumps(schema)
    for forbidden in ('"$ref"', '"anyOf"', '"allOf"', '"oneOf"', '"const"', '"title"', '"$defs"', "null"):
        assert forbidden not in text
    for path, node in nodes(schema):
        assert "type" in node, path
        assert "additionalProperties" not in node, path


def test_only_status_kopf_keeps_unknown_fields(schema: dict[str, Any]) -> None:
    keeping = [path for path, node in nodes(schema) if node.get("x-kubernetes-preserve-unknown-fields")]
    assert keeping == [".status.kopf"]


def test_every_spec_string_is_bounded_for_cel(schema: dict[str, Any]) -> None:
    unbounded = [
        path
        for path, node in nodes(schema["properties"]["spec"], ".spec")
        if node["type"] == "string" and "maxLength" not in node
    ]
    assert unbounded == []
    assert schema["properties"]["spec"]["properties"]["gates"]["maxItems"] == 32


def test_required_fields_enums_patterns_and_defaults(schema: dict[str, Any]) -> None:
    spec = schema["properties"]["spec"]
    assert schema["required"] == ["spec"]
    assert spec["required"] == ["source", "gates", "target"]
    source = spec["properties"]["source"]
    assert "required" not in source  # runId or registeredModel: a CEL rule
    assert source["properties"]["runId"]["pattern"] == "^[0-9a-f]{32}$"
    assert source["properties"]["modelName"]["default"] == "rf-regressor"
    registered = source["properties"]["registeredModel"]
    assert registered["required"] == ["name"]
    assert registered["properties"]["version"]["type"] == "integer"
    assert registered["properties"]["alias"]["pattern"] == "^[A-Za-z0-9_-]{1,255}$"
    gate = spec["properties"]["gates"]["items"]
    assert gate["required"] == ["metric", "op"]
    assert gate["properties"]["baseline"]["enum"] == ["Serving"]
    assert gate["properties"]["whenNoBaseline"]["enum"] == ["Pass", "Fail"]
    assert (gate["properties"]["minRelativeChange"]["minimum"], gate["properties"]["minRelativeChange"]["maximum"]) \
        == (0, 1)
    assert spec["properties"]["compatibility"]["enum"] == ["Warn", "Strict", "Ignore"]
    assert spec["properties"]["compatibility"]["default"] == "Warn"
    assert gate["properties"]["op"]["enum"] == [
        "LessThan",
        "LessThanOrEqual",
        "GreaterThan",
        "GreaterThanOrEqual",
    ]
    assert gate["properties"]["threshold"]["type"] == "number"
    target = spec["properties"]["target"]
    assert target["required"] == ["storage", "seldonDeployment"]
    storage = target["properties"]["storage"]
    assert storage["required"] == ["bucket"]
    assert (storage["properties"]["bucket"]["minLength"], storage["properties"]["bucket"]["maxLength"]) == (
        3,
        63,
    )
    seldon = target["properties"]["seldonDeployment"]
    assert seldon["required"] == ["name"]
    assert seldon["properties"]["implementation"] == {
        "type": "string",
        "enum": ["SKLEARN_SERVER", "MLFLOW_SERVER"],
        "default": "SKLEARN_SERVER",
        "maxLength": 14,
    }
    assert seldon["properties"]["protocol"]["enum"] == ["v2", "seldon"]
    assert (seldon["properties"]["replicas"]["minimum"], seldon["properties"]["replicas"]["maximum"]) == (
        0,
        100,
    )


def test_optional_fields_are_simply_not_required(schema: dict[str, Any]) -> None:
    source = schema["properties"]["spec"]["properties"]["source"]["properties"]
    assert source["trackingUri"]["type"] == "string"
    assert "default" not in source["trackingUri"]
    assert source["credentialsSecretRef"]["type"] == "object"


def test_status_has_no_defaults_to_invent(schema: dict[str, Any]) -> None:
    status = schema["properties"]["status"]
    assert [path for path, node in nodes(status) if "default" in node] == []
    assert status["properties"]["phase"]["enum"][-1] == "Superseded"
    assert status["properties"]["conditions"]["items"]["required"] == ["type", "status", "reason"]


def test_cel_rules_guard_what_spans_fields(schema: dict[str, Any]) -> None:
    rules = {
        path: [rule["message"] for rule in node["x-kubernetes-validations"]]
        for path, node in nodes(schema)
        if "x-kubernetes-validations" in node
    }
    reserved = ["alias 'latest' is reserved by MLflow and moves with every new version: pin a version or an alias",
                "aliases v<N> are reserved by MLflow for version N: write version: N"]
    assert rules == {
        ".spec": [
            "registry.model is required with a runId source: the run's model is registered under that name",
            "registry.model goes with a runId source; a registeredModel source is recorded on its own version",
        ],
        ".spec.gates": [
            "gates: each (metric, op) pair may appear once, and once more with a baseline",
            "gates: a metric's lower and upper bounds must leave some value that passes",
        ],
        ".spec.gates[]": [
            "a gate has either a threshold or a baseline",
            "a baseline gate needs exactly one of minRelativeChange or minAbsoluteChange",
            "minRelativeChange, minAbsoluteChange, whenNoBaseline and sameDataset need baseline",
        ],
        ".spec.gates[].minAbsoluteChange": ["minAbsoluteChange must be greater than 0"],
        ".spec.registry.alias": reserved,
        ".spec.rollout.timeout": ["rollout.timeout must be between 10s and 24h"],
        ".spec.source": ["source needs exactly one of runId or registeredModel"],
        ".spec.source.registeredModel": ["registeredModel needs exactly one of version or alias"],
        ".spec.source.registeredModel.alias": reserved,
        ".spec.source.modelName": ["modelName must not contain '..'"],
        ".spec.target.storage": ["storage.credentialsSecretRef is required when storage.endpoint is set"],
        ".spec.target.storage.bucket": [
            "bucket must not contain '..', '.-' or '-.'",
            "bucket must not be an IP address",
        ],
        ".spec.target.storage.prefix": ["prefix must not have a '.' or '..' segment"],
    }


# The schema's own checks (CEL aside) reject what parse_spec rejects, so kubectl apply fails first.


def good() -> dict[str, Any]:
    return {
        "source": {"runId": RUN},
        "gates": [{"metric": "rmse", "op": "LessThanOrEqual", "threshold": 0.8}],
        "target": {"storage": {"bucket": "models"}, "seldonDeployment": {"name": "sd"}},
    }


@pytest.mark.parametrize(
    "edit",
    [
        "spec['source']['runId'] = 'abc/../x'",
        "spec['source']['trackingUri'] = 'http://u:p@mlflow:5000'",
        "spec['source']['modelName'] = '-rf'",
        "spec['gates'] = []",
        "spec['gates'][0]['op'] = 'Lt'",
        "spec['gates'][0]['threshold'] = '0.8'",
        "spec['gates'][0]['metric'] = 'a;b'",
        "spec['target']['storage']['bucket'] = 'Models'",
        "spec['target']['storage']['prefix'] = 'a//b'",
        "spec['target']['storage']['endpoint'] = 'http://minio:9000/models'",
        "spec['target']['seldonDeployment']['replicas'] = 101",
        "spec['target']['seldonDeployment']['protocol'] = 'kfserving'",
        "del spec['target']['seldonDeployment']['name']",
        "spec['source']['registeredModel'] = {'name': 'rf/x', 'version': 1}",
        "spec['source']['registeredModel'] = {'name': 'rf', 'version': 0}",
        "spec['source']['registeredModel'] = {'name': 'rf', 'alias': 'a b'}",
        "spec['gates'][0]['minRelativeChange'] = 1.5",
        "spec['gates'][0]['baseline'] = 'Previous'",
        "spec['registry'] = {'alias': 'x' * 256}",
        "spec['compatibility'] = 'Loose'",
    ],
)
def test_schema_and_parser_reject_the_same_mistakes(schema: dict[str, Any], edit: str) -> None:
    spec = copy.deepcopy(good())
    exec(edit, {"spec": spec})
    with pytest.raises(InvalidSpec):
        parse_spec(spec)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(spec, schema["properties"]["spec"])


def test_schema_accepts_the_sample(schema: dict[str, Any]) -> None:
    jsonschema.validate(good(), schema["properties"]["spec"])
    parse_spec(good())


def test_committed_file_is_plain_yaml() -> None:
    text = COMMITTED.read_text(encoding="utf-8")
    assert "&id" not in text and "*id" not in text
    assert yaml.safe_load(text) == crdgen.crd_manifest()
