"""The Argo CD health check of ModelPromotion (deploy/argocd/resource_customizations), run by a
Lua 5.1 interpreter through Argo CD's contract, on its own health_test.yaml cases and on every
phase the operator writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from promoter.spec import API_GROUP, Phase

from .argocd_lua import CUSTOMIZATIONS, LUA, MISSING, REPO, health

pytestmark = pytest.mark.skipif(LUA is None, reason=MISSING)

FOLDER = CUSTOMIZATIONS / API_GROUP / "ModelPromotion"
SCRIPT = FOLDER / "health.lua"
CASES = yaml.safe_load((FOLDER / "health_test.yaml").read_text())["tests"]
CRD = yaml.safe_load((REPO / "crds" / "modelpromotions.mlops.dev.yaml").read_text())
EXPECTED = {
    Phase.PENDING: "Progressing", Phase.COPYING: "Progressing",
    Phase.DEPLOYING: "Progressing", Phase.PROMOTED: "Healthy", Phase.REJECTED: "Degraded",
    Phase.FAILED: "Degraded", Phase.SUPERSEDED: "Suspended",
}


def load(case: dict[str, Any]) -> dict[str, Any]:
    return dict(yaml.safe_load((FOLDER / case["inputPath"]).read_text()))


def test_the_check_sits_where_argo_cd_looks_for_the_crds_group_and_kind() -> None:
    names = CRD["spec"]["names"]
    assert FOLDER == CUSTOMIZATIONS / CRD["spec"]["group"] / names["kind"]
    assert SCRIPT.is_file()


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"].split("/")[-1] for c in CASES])
def test_health_test_yaml_case(case: dict[str, Any]) -> None:
    assert health(SCRIPT, load(case)) == case["healthStatus"]


@pytest.mark.parametrize("case", CASES, ids=[c["inputPath"].split("/")[-1] for c in CASES])
def test_the_test_objects_are_valid_modelpromotions(case: dict[str, Any]) -> None:
    """The cases hold statuses the CRD accepts: the check is tested on the shape the operator writes."""
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    jsonschema.validate(load(case), schema)


def test_every_phase_the_operator_writes_is_covered_by_a_case() -> None:
    phases = {(load(c).get("status") or {}).get("phase") for c in CASES}
    assert set(Phase) <= phases


@pytest.mark.parametrize("phase", list(Phase))
def test_each_phase_of_the_current_generation_maps_to_its_health(phase: Phase) -> None:
    obj = {"metadata": {"name": "p", "generation": 3},
           "status": {"phase": phase.value, "observedGeneration": 3, "message": f"{phase.value} message"}}
    assert health(SCRIPT, obj) == {"status": EXPECTED[phase], "message": f"{phase.value} message"}


@pytest.mark.parametrize("phase", list(Phase))
def test_a_decision_about_an_older_generation_is_progressing(phase: Phase) -> None:
    obj = {"metadata": {"name": "p", "generation": 4}, "status": {"phase": phase.value, "observedGeneration": 3}}
    assert health(SCRIPT, obj) == {
        "status": "Progressing",
        "message": "Waiting for the operator to decide generation 4 (status describes generation 3)"}


def test_a_phase_without_a_message_still_says_what_it_is() -> None:
    obj = {"metadata": {"generation": 1}, "status": {"phase": "Rejected", "observedGeneration": 1}}
    assert health(SCRIPT, obj) == {"status": "Degraded", "message": "Phase Rejected"}


def test_the_script_uses_only_what_argo_cd_gives_it(tmp_path: Path) -> None:
    """The harness opens what Argo CD opens: a script calling os.getenv fails as it would there."""
    bad = tmp_path / "health.lua"
    bad.write_text('return {status = os.getenv("HOME"), message = ""}\n')
    with pytest.raises(RuntimeError, match="os"):
        health(bad, {"metadata": {}})
