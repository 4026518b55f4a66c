"""Bad set-ups get a sentence saying what to do, not a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from devstack import binaries, stack
from devstack.binaries import SetupError


def test_no_go_and_no_cached_binaries_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SetupError) as err:
        binaries.ensure(log=lambda _m: None)
    assert "no Go toolchain on PATH" in str(err.value)
    assert "KUBEBUILDER_ASSETS" in str(err.value)


def test_kubebuilder_assets_missing_a_binary_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("")
    (tmp_path / "etcd").chmod(0o755)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(tmp_path))
    with pytest.raises(SetupError) as err:
        binaries.ensure(log=lambda _m: None)
    assert "lacks kube-apiserver, kubectl" in str(err.value)


def test_cached_build_is_used_without_building(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    folder = binaries.cache_folder()
    folder.mkdir(parents=True)
    for name in binaries.BINARIES:
        (folder / name).write_text("")
        (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # a build would fail: no go
    found = binaries.ensure(log=lambda _m: None)
    assert found.source == "cache" and found.folder == folder
    assert str(folder).endswith(f"kubebuilder-envtest/k8s/{binaries.KUBE_VERSION}-linux-amd64")


def test_a_failing_build_shows_the_command_and_its_last_lines(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n\ngo 1.22\n")
    with pytest.raises(SetupError) as err:
        binaries._run(["go", "build", "./does-not-exist"], tmp_path, lambda _m: None, "go build x")
    text = str(err.value)
    assert "go build x failed" in text and "$ go build ./does-not-exist" in text
    assert "  | " in text


def test_a_port_in_use_is_named_with_the_variable_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("DEVSTACK_S3_PORT", str(port))
        with pytest.raises(SetupError) as err:
            stack._port_from_env("DEVSTACK_S3_PORT", "S3")
    assert f"port {port} (S3, from DEVSTACK_S3_PORT) on 127.0.0.1 is in use" in str(err.value)


def test_staging_replaces_come_from_the_served_go_mod() -> None:
    gomod = """module k8s.io/kubernetes
require (
\tk8s.io/api v0.0.0
\tk8s.io/klog/v2 v2.130.1
)
replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/kubectl => ./staging/src/k8s.io/kubectl
)
"""
    assert binaries.staging_replaces(gomod, "k8s.io/", "v0.36.3") == [
        "replace k8s.io/api => k8s.io/api v0.36.3",
        "replace k8s.io/kubectl => k8s.io/kubectl v0.36.3",
    ]
