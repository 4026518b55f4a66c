"""The kustomize files that carry rules (RBAC, egress, the admission policy) are the chart's rules
files as `make manifests` writes them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_manifests", REPO / "charts" / "sync_manifests.py")
assert _spec and _spec.loader
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)


def test_the_kustomize_files_are_up_to_date_with_the_charts_rules() -> None:
    stale = [str(p.relative_to(REPO)) for p, text in sync.outputs().items() if p.read_text() != text]
    assert stale == [], "run `make manifests`"


def test_each_generated_object_holds_exactly_its_rules_file() -> None:
    rules = yaml.safe_load(sync.RULES.read_text())
    egress = yaml.safe_load(sync.EGRESS.read_text())
    validations = yaml.safe_load(sync.VALIDATIONS.read_text())
    for path, text in sync.outputs().items():
        docs = list(yaml.safe_load_all(text))
        roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
        policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
        admission = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
        assert [r["rules"] for r in roles] in ([rules], []), path
        assert [p["spec"]["egress"] for p in policies] in ([egress], []), path
        assert [a["spec"]["validations"] for a in admission] in ([validations], []), path
        assert roles or policies or admission, path
