"""Find or build the Kubernetes binaries devstack runs: etcd, kube-apiserver, kubectl,
kube-controller-manager and kube-scheduler.

Each binary is looked up in order:

1. ``KUBEBUILDER_ASSETS`` (setup-envtest's layout: one folder holding etcd, kube-apiserver and
   kubectl; setup-envtest ships no controller-manager or scheduler, so those two may come from
   the next places);
2. a cached build under setup-envtest's data folder,
   ``${XDG_DATA_HOME:-~/.local/share}/kubebuilder-envtest/k8s/<version>-linux-amd64/``;
3. a build with ``go build`` through the Go module proxy, of the binaries still missing only:
   a cache holding etcd, kube-apiserver and kubectl gains the controller-manager and scheduler
   without the others being rebuilt. Each binary lands in the cache as soon as it is built, and
   a lock file makes a second devstack wait for a build under way instead of starting its own.

``k8s.io/kubernetes`` requires its staging modules at ``v0.0.0`` and replaces them with
``./staging/...``; those replaces are ignored when it is a dependency, so the wrapper module
replaces each one with its published ``v0.<minor>.<patch>`` release. The list is read from the
served go.mod, not hard-coded. etcd's server module has relative replaces of its own, handled
the same way in a second wrapper. All Kubernetes commands come from the one wrapper module, so
they share one dependency graph and Go's build cache.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

KUBE_VERSION = os.environ.get("DEVSTACK_KUBE_VERSION", "1.36.3")
ETCD_VERSION = os.environ.get("DEVSTACK_ETCD_VERSION", "3.6.16")
# What setup-envtest ships (KUBEBUILDER_ASSETS must hold these), then what a cluster runs beside.
ENVTEST_BINARIES = ("etcd", "kube-apiserver", "kubectl")
BINARIES = (*ENVTEST_BINARIES, "kube-controller-manager", "kube-scheduler")
KUBE_COMMANDS = ("kube-apiserver", "kubectl", "kube-controller-manager", "kube-scheduler")


Log = Callable[[str], None]


class SetupError(RuntimeError):
    """A set-up problem a person must fix; the message says what to do."""


@dataclass(frozen=True)
class Binaries:
    folder: Path  # where etcd, kube-apiserver and kubectl are
    source: str  # "KUBEBUILDER_ASSETS", "cache" or "built"
    paths: dict[str, Path] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.paths.get(name, self.folder / name)


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def cache_folder(version: str = KUBE_VERSION) -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "kubebuilder-envtest" / "k8s" / f"{version}-linux-{_arch()}"


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def ensure(log: Log = print, need: tuple[str, ...] = BINARIES) -> Binaries:
    """Paths of the binaries in ``need``, building into the cache those found nowhere."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    cache = cache_folder()
    paths: dict[str, Path] = {}
    if assets:
        folder = Path(assets)
        missing = [n for n in ENVTEST_BINARIES if not _executable(folder / n)]
        if missing:
            raise SetupError(
                f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}; point it at a folder "
                "holding etcd, kube-apiserver and kubectl, or unset it to use devstack's build"
            )
        source = "KUBEBUILDER_ASSETS"
        for name in need:
            paths[name] = folder / name if _executable(folder / name) else cache / name
    else:
        folder, source = cache, "cache"
        paths = {name: cache / name for name in need}
    absent = [name for name, path in paths.items() if not _executable(path)]
    if absent:
        build(cache, absent, log=log)
        if source == "cache":
            source = "built"
    return Binaries(folder, source, paths)


# --- building -------------------------------------------------------------------------


def _go(names: list[str] | tuple[str, ...] = BINARIES) -> str:
    go = shutil.which("go")
    if go is None:
        raise SetupError(
            f"no Go toolchain on PATH and no cached Kubernetes binaries ({', '.join(names)}) in "
            f"{cache_folder()}: install Go (https://go.dev/doc/install; Debian: apt-get install "
            "golang) or set KUBEBUILDER_ASSETS to a folder holding etcd, kube-apiserver and "
            "kubectl (for example from setup-envtest), and kube-controller-manager and "
            "kube-scheduler if you have them"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-mod=mod")
    return env


def _run(cmd: list[str], cwd: Path, log: Log, what: str, progress: str = "",
         env: dict[str, str] | None = None) -> str:
    """Run a build command (go by default env); on failure raise SetupError with the command and
    its last lines. With progress, log every 15 s how many output lines ("<n> <progress>") came."""
    tail: deque[str] = deque(maxlen=25)
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env or _go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out: list[str] = []
    n = 0
    last = start
    for line in proc.stdout:
        tail.append(line.rstrip())
        out.append(line)
        n += 1
        now = time.monotonic()
        if progress and now - last >= 15:
            log(f"  {what}: {n} {progress}, {now - start:.0f}s")
            last = now
    rc = proc.wait()
    if rc != 0:
        raise SetupError(
            f"{what} failed (exit {rc}) in {cwd}:\n  $ {' '.join(cmd)}\n"
            + "\n".join("  | " + t for t in tail)
        )
    return "".join(out)


def _served_gomod(go: str, module: str, version: str, cwd: Path, log: Log) -> str:
    out = _run([go, "mod", "download", "-json", f"{module}@{version}"], cwd, log, f"download {module}")
    return Path(json.loads(out)["GoMod"]).read_text()


def staging_replaces(gomod: str, prefix: str, version: str) -> list[str]:
    """Modules under ``prefix`` the served go.mod requires at v0.0.0 or replaces with a path."""
    names: set[str] = set()
    for m in re.finditer(rf"^\s*(?:replace\s+)?({re.escape(prefix)}\S*)\s+=>\s+\.\.?/", gomod, re.M):
        names.add(m.group(1))
    for m in re.finditer(rf"^\s*(?:require\s+)?({re.escape(prefix)}\S*)\s+v0\.0\.0\s*$", gomod, re.M):
        names.add(m.group(1))
    return [f"replace {n} => {n} {version}" for n in sorted(names)]


def _godebug(gomod: str) -> str:
    m = re.search(r"^godebug\s+.*$", gomod, re.M)
    return m.group(0) if m else ""


def _go_line(gomod: str) -> str:
    m = re.search(r"^go\s+(\S+)", gomod, re.M)
    return m.group(1) if m else "1.22"


def _write_wrapper(folder: Path, module: str, gomod: str, replaces: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"module devstack/{module}", "", f"go {_go_line(gomod)}", _godebug(gomod), ""]
    lines += replaces
    (folder / "go.mod").write_text("\n".join(lines) + "\n")


def _stamp(version: str) -> str:
    major, minor = version.split(".")[:2]
    date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={date}",
        ]
    return " ".join(flags)


def build(dest: Path, names: list[str] | tuple[str, ...] = BINARIES, log: Log = print) -> None:
    """Build the named binaries into dest, each moved there as soon as it is built.

    Holds a lock file beside dest for the whole build: a second caller waits, then builds only
    what the first one did not.
    """
    go = _go(names)
    with build_lock(dest.parent / f".build-{dest.name}.lock", f"into {dest}", log):
        todo = [n for n in names if not _executable(dest / n)]
        if todo:
            _build_locked(go, dest, todo, log)


@contextlib.contextmanager
def build_lock(path: Path, what: str, log: Log) -> Iterator[None]:
    """A lock file held for a whole build: a second caller waits for the first one's build."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"devstack: another process is building {what}; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_locked(go: str, dest: Path, names: list[str], log: Log) -> None:
    work = dest.parent / f".build-{dest.name}"
    kube = [n for n in KUBE_COMMANDS if n in names]
    what = [f"Kubernetes v{KUBE_VERSION} ({', '.join(kube)})"] if kube else []
    what += [f"etcd v{ETCD_VERSION}"] if "etcd" in names else []
    log(f"devstack: building {' and '.join(what)} with {go}")
    log("  (once: a few minutes per binary the first time; the result is cached in " + str(dest) + ")")
    t0 = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bin-", dir=dest.parent))
    try:
        if kube:
            kdir = work / "kubernetes"
            kdir.mkdir(parents=True, exist_ok=True)
            gomod = _served_gomod(go, "k8s.io/kubernetes", f"v{KUBE_VERSION}", kdir, log)
            minor_patch = KUBE_VERSION.split(".", 1)[1]
            replaces = staging_replaces(gomod, "k8s.io/", f"v0.{minor_patch}")
            log(f"  wrapper module replaces {len(replaces)} k8s.io staging modules with v0.{minor_patch}")
            _write_wrapper(kdir, "kubebuild", gomod, replaces)
            cmds = [f"k8s.io/kubernetes/cmd/{name}" for name in kube]
            _run([go, "get", *(f"{c}@v{KUBE_VERSION}" for c in cmds)], kdir, log, "go get k8s.io/kubernetes")
            for i, (name, cmd) in enumerate(zip(kube, cmds, strict=True), 1):
                log(f"  compiling {name} ({i}/{len(kube)}) ...")
                _run(
                    [go, "build", "-v", "-trimpath", "-ldflags", _stamp(KUBE_VERSION),
                     "-o", str(staging / name), cmd],
                    kdir, log, f"go build {name}", progress="packages compiled",
                )
                os.replace(staging / name, dest / name)
        if "etcd" in names:
            edir = work / "etcd"
            edir.mkdir(parents=True, exist_ok=True)
            egomod = _served_gomod(go, "go.etcd.io/etcd/server/v3", f"v{ETCD_VERSION}", edir, log)
            _write_wrapper(edir, "etcdbuild", egomod,
                           staging_replaces(egomod, "go.etcd.io/etcd/", f"v{ETCD_VERSION}"))
            _run([go, "get", f"go.etcd.io/etcd/server/v3@v{ETCD_VERSION}"], edir, log, "go get etcd")
            log("  compiling etcd ...")
            _run(
                [go, "build", "-v", "-trimpath", "-ldflags", "-s -w", "-o", str(staging / "etcd"),
                 "go.etcd.io/etcd/server/v3"],
                edir, log, "go build etcd", progress="packages compiled",
            )
            os.replace(staging / "etcd", dest / "etcd")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"devstack: built {', '.join(names)} in {time.monotonic() - t0:.0f}s -> {dest}")


if __name__ == "__main__":  # pragma: no cover - manual use: python -m devstack.binaries
    try:
        b = ensure()
    except SetupError as e:
        print(f"devstack: {e}", file=sys.stderr)
        sys.exit(1)
    print(b.folder)
