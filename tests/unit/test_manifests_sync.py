"""The kustomize RBAC files are the chart's rules file as `make manifests` writes it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sync_manifests", REPO / "charts" / "sync_manifests.py")
assert _spec and _spec.loader
sync = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync)


def test_the_kustomize_rbac_files_are_up_to_date_with_the_charts_rules() -> None:
    stale = [str(p.relative_to(REPO)) for p, text in sync.outputs().items() if p.read_text() != text]
    assert stale == [], "run `make manifests`"


def test_each_generated_role_holds_exactly_the_rules_file() -> None:
    rules = yaml.safe_load(sync.RULES.read_text())
    for path, text in sync.outputs().items():
        roles = [d for d in yaml.safe_load_all(text) if d["kind"] in ("Role", "ClusterRole")]
        assert [r["rules"] for r in roles] == [rules], path
