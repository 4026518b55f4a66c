"""Setting up devstack's cluster part: only missing binaries are built, bad settings are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import binaries, cluster
from devstack.binaries import SetupError


def _executables(folder: Path, names: tuple[str, ...]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("")
        (folder / name).chmod(0o755)


def test_a_cache_holding_the_envtest_binaries_builds_only_the_controller_manager_and_scheduler(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    _executables(binaries.cache_folder(), binaries.ENVTEST_BINARIES)
    built: list[list[str]] = []
    monkeypatch.setattr(binaries, "build", lambda dest, names, log: built.append(list(names)))
    found = binaries.ensure(log=lambda _m: None)
    assert built == [["kube-controller-manager", "kube-scheduler"]]
    assert found.path("kube-scheduler") == binaries.cache_folder() / "kube-scheduler"


def test_kubebuilder_assets_serve_what_they_hold_and_the_cache_the_rest(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    _executables(assets, binaries.ENVTEST_BINARIES)
    monkeypatch.setenv("KUBEBUILDER_ASSETS", str(assets))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    _executables(binaries.cache_folder(), ("kube-controller-manager", "kube-scheduler"))
    monkeypatch.setattr(binaries, "build", lambda *a, **k: pytest.fail("nothing is missing: no build"))
    found = binaries.ensure(log=lambda _m: None)
    assert found.source == "KUBEBUILDER_ASSETS" and found.path("kubectl") == assets / "kubectl"
    assert found.path("kube-controller-manager") == binaries.cache_folder() / "kube-controller-manager"


def test_without_go_the_message_names_the_binaries_still_missing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBEBUILDER_ASSETS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _executables(binaries.cache_folder(), binaries.ENVTEST_BINARIES)
    with pytest.raises(SetupError, match=r"no Go toolchain on PATH .*\(kube-controller-manager, kube-scheduler\)"):
        binaries.ensure(log=lambda _m: None)


@pytest.mark.parametrize("value", ["0", "four", "-1"])
def test_a_bad_node_capacity_is_named_with_its_value(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DEVSTACK_NODE_PODS", value)
    with pytest.raises(SetupError, match=f"DEVSTACK_NODE_PODS={value!r}: give the node's Pod capacity"):
        cluster.node_pods()


def test_without_the_ip_command_pods_fall_back_to_loopback_addresses_with_a_warning(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    said: list[str] = []
    pod_cidr, service_cidr, route = cluster.network(said.append)
    assert pod_cidr.startswith("127.") and service_cidr.startswith("127.") and route == ""
    assert "could not route a Pod network" in said[0] and "no `ip` command" in said[0]


def test_without_rclone_up_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    with pytest.raises(SetupError, match="apt-get install -y rclone"):
        cluster.programs(lambda _m: None)
