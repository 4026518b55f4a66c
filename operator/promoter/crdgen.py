"""Generate the ModelPromotion CRD from the pydantic models in promoter.spec.

    python -m promoter.crdgen > crds/modelpromotions.mlops.dev.yaml    # make crds
    python -m promoter.crdgen --check [PATH]                           # exit 1 when stale

pydantic writes JSON Schema 2020-12; the API server wants a structural OpenAPI v3 schema:
no $ref, no anyOf carrying types, a type on every node, no titles. The conversion below does
only what these models need and fails loudly on anything else, so a model change that the
CRD cannot express is caught by `make crds`, not by the API server.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .spec import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    ModelPromotionSpec,
    PromotionStatus,
)

CRD_NAME = f"{PLURAL}.{API_GROUP}"
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "crds" / f"{CRD_NAME}.yaml"
HEADER = (
    "# Generated from operator/promoter/spec.py by `python -m promoter.crdgen` (make crds). Do not edit.\n"
)

# Keywords that survive into the CRD as they are; anything else pydantic emits is an error.
_KEPT = {
    "type",
    "description",
    "properties",
    "required",
    "items",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "default",
    "x-kubernetes-validations",
}
_DROPPED = {"title", "additionalProperties", "$defs"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    # status.runId: a registeredModel source names its run only once resolved.
    {"name": "Run", "type": "string", "jsonPath": ".status.runId"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Gates", "type": "string", "jsonPath": ".status.gateSummary"},
    {"name": "Deployment", "type": "string", "jsonPath": ".spec.target.seldonDeployment.name"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Model", "type": "string", "jsonPath": ".status.modelUri", "priority": 1},
    {"name": "Version", "type": "string", "jsonPath": ".status.modelVersion.version", "priority": 1},
]


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> dict[str, Any]:
    """Inline $ref and collapse Optional's anyOf-with-null, merging the sibling keywords."""
    merged = dict(node)
    ref = merged.pop("$ref", None)
    if ref is not None:
        merged = {**_resolve(defs[ref.rsplit("/", 1)[-1]], defs), **merged}
    options = merged.pop("anyOf", None)
    if options is not None:
        # Optional[X]: Kubernetes spells "may be absent" by leaving X out of required.
        real = [option for option in options if option != {"type": "null"}]
        if len(real) != 1:
            raise ValueError(f"cannot express anyOf {options!r} in a structural schema")
        merged = {**_resolve(real[0], defs), **merged}
        if merged.get("default", 0) is None:
            del merged["default"]
    return merged


def structural(
    schema: Mapping[str, Any], defs: Mapping[str, Any], *, defaults: bool = True
) -> dict[str, Any]:
    """One JSON-Schema node as a Kubernetes structural schema node."""
    node = _resolve(schema, defs)
    unknown = set(node) - _KEPT - _DROPPED
    if unknown:
        raise ValueError(f"no structural-schema spelling for {sorted(unknown)} in {node!r}")
    out: dict[str, Any] = {key: value for key, value in node.items() if key in _KEPT}
    if "type" not in out:
        raise ValueError(f"structural schemas need a type on every node: {node!r}")
    if not defaults:
        # Defaults in status would make the API server invent status the operator never wrote.
        out.pop("default", None)
    if "properties" in out:
        out["properties"] = {
            name: structural(child, defs, defaults=defaults) for name, child in out["properties"].items()
        }
    if "items" in out:
        out["items"] = structural(out["items"], defs, defaults=defaults)
    if out["type"] == "string" and "maxLength" not in out and "enum" in out:
        # CEL cost estimation bounds strings by maxLength only.
        out["maxLength"] = max(len(value) for value in out["enum"])
    return out


def _schema_of(model: type[ModelPromotionSpec] | type[PromotionStatus], *, defaults: bool) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return structural(schema, schema.get("$defs", {}), defaults=defaults)


def _unbounded_strings(node: Mapping[str, Any], path: str) -> list[str]:
    found = [path] if node.get("type") == "string" and "maxLength" not in node else []
    for name, child in node.get("properties", {}).items():
        found += _unbounded_strings(child, f"{path}.{name}")
    if "items" in node:
        found += _unbounded_strings(node["items"], f"{path}[]")
    return found


def crd_manifest() -> dict[str, Any]:
    """The CustomResourceDefinition as a dict, ready for the API server or yaml.safe_dump."""
    spec = _schema_of(ModelPromotionSpec, defaults=True)
    unbounded = _unbounded_strings(spec, "spec")
    if unbounded:
        raise ValueError(f"spec strings need maxLength for CEL cost estimation: {unbounded}")
    status = _schema_of(PromotionStatus, defaults=False)
    status["properties"]["kopf"] = {
        "type": "object",
        "description": "kopf's own bookkeeping.",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    root = {
        "type": "object",
        "description": "Promote an MLflow run's model to a Seldon Core SeldonDeployment "
        "when the run's metrics pass the gates.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["mp"],
                "categories": ["mlops"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    # `kubectl get mp --field-selector spec.target.seldonDeployment.name=<sd>`: a
                    # deployment's promotions, its history (CRD selectable fields, Kubernetes 1.32+).
                    "selectableFields": [{"jsonPath": ".spec.target.seldonDeployment.name"}],
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    # Shared sub-schemas (SecretRef twice) would otherwise become &id001 anchors.
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml() -> str:
    """The CRD file's text; keys sorted and lines unwrapped so the output is byte-stable."""
    body = yaml.dump(crd_manifest(), Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=4096)
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m promoter.crdgen", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        nargs="?",
        const=str(DEFAULT_PATH),
        metavar="PATH",
        help=f"compare with the committed file (default {DEFAULT_PATH}) and exit 1 if it is stale",
    )
    args = parser.parse_args(argv)
    text = render_yaml()
    if args.check is None:
        sys.stdout.write(text)
        return 0
    path = Path(args.check)
    committed = path.read_text(encoding="utf-8") if path.exists() else ""
    if committed == text:
        return 0
    diff = difflib.unified_diff(
        committed.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "generated"
    )
    sys.stderr.write(f"{path} is stale; run `make crds` to regenerate it.\n")
    sys.stderr.writelines(diff)
    return 1


if __name__ == "__main__":
    sys.exit(main())
