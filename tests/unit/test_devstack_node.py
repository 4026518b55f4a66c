"""devstack's node, its pure parts: the image table, a container's environment, probe thresholds,
and the V2 request made of a serving input example."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from devstack import predict
from devstack.node import images
from devstack.node.containers import exit_code, resolve_env
from devstack.node.images import ContainerError
from devstack.node.probes import Prober

PROGRAMS = {"rclone": "/usr/bin/rclone", "mlserver": "/opt/mls/bin/mlserver"}


@pytest.mark.parametrize(("reference", "expected"), [
    ("seldonio/mlserver:1.7.1-sklearn", ("seldonio/mlserver", "1.7.1-sklearn")),
    ("docker.io/seldonio/mlserver:1.7.1-sklearn", ("seldonio/mlserver", "1.7.1-sklearn")),
    ("localhost:5000/seldonio/rclone-storage-initializer", ("seldonio/rclone-storage-initializer", "latest")),
    ("docker.io/library/busybox:1", ("busybox", "1")),
])
def test_image_references_are_read_without_registry_host_and_with_latest_by_default(
        reference: str, expected: tuple[str, str]) -> None:
    assert images.split_reference(reference) == expected


def test_the_table_knows_rclone_and_mlserver_and_names_itself_for_anything_else() -> None:
    assert images.find("seldonio/rclone-storage-initializer:1.18.2") is images.IMAGES[0]
    assert images.find("docker.io/seldonio/mlserver:1.3.5-sklearn") is images.IMAGES[1]
    assert images.find("seldonio/sklearnserver:1.18.2") is None
    message = images.unknown_image_message("seldonio/sklearnserver:1.18.2")
    assert message.startswith('Failed to pull image "seldonio/sklearnserver:1.18.2"')
    assert "seldonio/rclone-storage-initializer:*" in message and "seldonio/mlserver:*" in message


def _launch(image: images.Image, container: dict[str, Any], env: dict[str, str] | None = None) -> images.Launch:
    return images.launch(image, container, env or {}, {"/mnt/models": "/pods/u/volumes/models"}, PROGRAMS,
                         "198.18.1.2", "/pods/u/home/c")


def test_the_storage_initializer_is_rclone_copy_with_the_container_args_and_the_mount_path_moved(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_which", lambda name, path: f"/usr/bin/{name}")
    launch = _launch(images.IMAGES[0], {"args": ["s3://models/m/run", "/mnt/models"]},
                     {"RCLONE_CONFIG_S3_TYPE": "s3"})
    assert launch.argv == ["/usr/bin/rclone", "copy", "s3://models/m/run", "/pods/u/volumes/models"]
    assert launch.env["RCLONE_CONFIG"] == "/dev/null" and launch.env["RCLONE_CONFIG_S3_TYPE"] == "s3"
    assert launch.env["PATH"].startswith("/usr/bin:") and launch.env["HOME"] == "/pods/u/home/c"


def test_mlserver_runs_the_images_cmd_binds_the_pod_ip_and_sees_its_models_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_which", lambda name, path: name)
    launch = _launch(images.IMAGES[1], {}, {"MLSERVER_MODEL_URI": "/mnt/models", "MLSERVER_HOST": "0.0.0.0"})
    assert launch.argv == ["/bin/sh", "-c", 'exec mlserver start "$MLSERVER_MODELS_DIR"']
    assert launch.env["MLSERVER_MODELS_DIR"] == "/pods/u/volumes/models"
    assert launch.env["MLSERVER_MODEL_URI"] == "/pods/u/volumes/models"
    assert launch.env["MLSERVER_HOST"] == "198.18.1.2"  # the Pod's own address, whatever the Pod says
    assert launch.env["PATH"].split(":")[0] == "/opt/mls/bin"


def test_command_replaces_the_entrypoint_and_expands_container_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "_which", lambda name, path: f"/bin/{name}")
    launch = _launch(images.IMAGES[0], {"command": ["sleep"], "args": ["$(PAUSE)", "$$(PAUSE)", "$(UNSET)"]},
                     {"PAUSE": "30"})
    assert launch.argv == ["/bin/sleep", "30", "$(PAUSE)", "$(UNSET)"]


def test_a_missing_program_or_executable_is_a_create_container_error() -> None:
    with pytest.raises(ContainerError) as missing:
        images.launch(images.IMAGES[0], {}, {}, {}, {}, "198.18.1.2", "/h")
    assert missing.value.reason == "CreateContainerError" and "rclone not installed" in missing.value.message
    with pytest.raises(ContainerError) as absent:
        _launch(images.IMAGES[0], {"command": ["no-such-program-here"]})
    assert 'exec: "no-such-program-here": executable file not found in $PATH' in absent.value.message


@pytest.mark.parametrize(("value", "expected"), [
    ("/mnt/models", "/v/models"), ("/mnt/models/", "/v/models/"), ("/mnt/models/model.pkl", "/v/models/model.pkl"),
    ("--dir=/mnt/models", "--dir=/v/models"), ("/mnt/modelsx", "/mnt/modelsx"), ("s3://b/mnt/models", "s3://b/mnt/models"),
])
def test_paths_under_a_mount_are_moved_to_the_pods_folder_and_nothing_else(value: str, expected: str) -> None:
    assert images.rewrite_paths(value, {"/mnt/models": "/v/models"}) == expected


def _lookup(objects: dict[tuple[str, str], dict[str, Any]]) -> Any:
    return lambda resource, namespace, name: objects.get((resource, name))


POD = {"metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "a"}},
       "spec": {"nodeName": "devstack"}, "status": {"podIP": "198.18.1.2"}}


def test_env_from_secrets_then_env_entries_with_expansion_and_pod_fields() -> None:
    secret = {"data": {"KEY": base64.b64encode(b"secret").decode(), "bad name": base64.b64encode(b"x").decode()}}
    container = {"envFrom": [{"secretRef": {"name": "s"}, "prefix": "S_"}], "env": [
        {"name": "A", "value": "$(S_KEY)-x"}, {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "FROM", "valueFrom": {"secretKeyRef": {"name": "s", "key": "KEY"}}}]}
    env = resolve_env(POD, container, _lookup({("secrets", "s"): secret}))
    assert env == {"S_KEY": "secret", "A": "secret-x", "IP": "198.18.1.2", "APP": "a", "FROM": "secret"}


def test_a_missing_secret_or_key_is_a_create_container_config_error_unless_optional() -> None:
    with pytest.raises(ContainerError) as gone:
        resolve_env(POD, {"envFrom": [{"secretRef": {"name": "rclone"}}]}, _lookup({}))
    assert (gone.value.reason, gone.value.message) == ("CreateContainerConfigError", 'secret "rclone" not found')
    with pytest.raises(ContainerError) as key:
        resolve_env(POD, {"env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
                    _lookup({("configmaps", "c"): {"data": {}}}))
    assert key.value.message == "couldn't find key k in ConfigMap ns/c"
    assert resolve_env(POD, {"envFrom": [{"secretRef": {"name": "rclone", "optional": True}}]}, _lookup({})) == {}


def test_exit_codes_of_signalled_processes_read_as_128_plus_the_signal() -> None:
    assert (exit_code(0), exit_code(3), exit_code(-9), exit_code(-15)) == (0, 3, 137, 143)


def test_readiness_starts_failed_and_flips_after_the_thresholds() -> None:
    spec = {"initialDelaySeconds": 20, "periodSeconds": 5, "failureThreshold": 3, "successThreshold": 1}
    readiness = Prober.for_container(spec, "readiness", started=100.0)
    assert readiness is not None and not readiness.passed
    assert not readiness.due(119.9) and readiness.due(120.0)
    assert readiness.record(True, "", 120.0) and readiness.passed and readiness.next_at == 125.0
    assert not readiness.record(False, "refused", 125.0) and not readiness.record(False, "refused", 130.0)
    assert readiness.record(False, "refused", 135.0) and not readiness.passed
    liveness = Prober.for_container(spec, "liveness", started=100.0)
    assert liveness is not None and liveness.passed
    assert Prober.for_container(None, "liveness", started=0) is None


def test_a_dataframe_split_example_becomes_one_row_major_fp64_tensor() -> None:
    example = {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2.5], [3, 4]]}}
    assert predict.v2_request(example) == {"inputs": [
        {"name": "input-0", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.5, 3.0, 4.0]}]}
    assert predict.v2_request({"inputs": [[1, 2]]})["inputs"][0]["shape"] == [1, 2]
    with pytest.raises(ValueError, match="expected dataframe_split or inputs"):
        predict.v2_request({"instances": []})
    with pytest.raises(ValueError, match="all of one length"):
        predict.rows({"inputs": [[1, 2], [3]]})


def _slice(*endpoints: tuple[str, dict[str, bool]]) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "svc-abc", "labels": {"kubernetes.io/service-name": "svc"}},
            "ports": [{"name": "http", "port": 9000}],
            "endpoints": [{"addresses": [ip], "conditions": cond} for ip, cond in endpoints]}


def test_the_proxy_picks_ready_endpoints_and_serving_terminating_ones_only_when_none_is_ready() -> None:
    from devstack.node.proxy import ServiceProxy

    proxy = ServiceProxy(None, "127.50.240.0/20", lambda _m: None)  # type: ignore[arg-type]
    terminating = {"ready": False, "serving": True, "terminating": True}
    proxy._slices_listed([_slice(("198.18.0.2", {"ready": True}), ("198.18.0.3", terminating),
                                 ("198.18.0.4", {"ready": False, "serving": False}))])
    assert proxy.endpoints(("ns", "svc"), "http") == [("198.18.0.2", 9000)]
    proxy._slices_listed([_slice(("198.18.0.3", terminating))])
    assert proxy.endpoints(("ns", "svc"), "http") == [("198.18.0.3", 9000)]
    assert proxy.endpoints(("ns", "svc"), "grpc") == []
