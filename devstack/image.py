"""Container images on a machine with no registry and no Docker: podman with runc, and a base
image made locally with debootstrap.

- ``podman(...)`` runs Debian's podman with a containers.conf of its own (``default_ulimits = []``:
  raising rlimits is not permitted here) and the runc runtime (crun refuses the host's hybrid
  cgroup layout).
- ``ensure_base()`` makes the stand-in for ``python:3.11-slim-bookworm``: a debootstrap
  ``minbase`` of bookworm with Debian's Python 3.11, venv and pip, ``python`` on PATH, imported
  into podman. It is tagged with a hash of its recipe and rebuilt only when that changes.
- ``build()`` builds a Dockerfile with ``--build-arg BASE=<that base>``; the image is tagged with
  a hash of its inputs and the base, and an image with that tag is reused instead of rebuilt
  (images of earlier inputs are removed once a new one is built).
  When the host's pip is configured with a CA bundle (``pip config list``: a TLS-inspecting proxy
  in front of the package index), the bundle goes in as the build secret ``pip-ca`` only: the
  image carries no extra CA.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .binaries import SetupError

Log = Callable[[str], None]

SUITE = "bookworm"
MIRROR = os.environ.get("DEVSTACK_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the official python:3.11-slim-bookworm gives a Dockerfile: python and pip on PATH,
# venv, the Debian CA store.
PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
BASE_NAME = "localhost/devstack-python"
# Bumped when the recipe below changes in a way the hash of its parameters does not show.
BASE_RECIPE = "2"
CONTAINERS_CONF = """\
# devstack's podman settings (devstack/image.py): raising rlimits is not permitted here.
[containers]
default_ulimits = []

[engine]
runtime = "runc"
"""
PIP_CA_SECRET = "pip-ca"


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlflow-seldon-promoter"


def missing_tools() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    absent = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if absent:
        return (f"{', '.join(absent)} not installed (Debian: apt-get install -y podman runc debootstrap); "
                "the image tests build and run the operator image with them")
    if os.geteuid() != 0:
        return "debootstrap and podman with runc need root here (rootless podman cannot use runc on this host)"
    return None


def _env() -> dict[str, str]:
    conf = cache_folder() / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", "--runtime", "runc", *args], env=_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise SetupError(f"podman {' '.join(args[:3])} failed (exit {result.returncode}):\n"
                         + "\n".join("  | " + line for line in (result.stderr or "").splitlines()[-25:]))
    return result


def exists(image: str) -> bool:
    return podman("image", "exists", image, check=False).returncode == 0


def size(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())


# --- the base ----------------------------------------------------------------------------


def base_tag() -> str:
    recipe = "\n".join([BASE_RECIPE, SUITE, MIRROR, *PACKAGES])
    return f"{BASE_NAME}:3.11-{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def ensure_base(log: Log = print) -> str:
    """The local stand-in for python:3.11-slim-bookworm, built once per recipe."""
    tag = base_tag()
    if exists(tag):
        return tag
    log(f"image: making the base {tag} with debootstrap ({SUITE}, {MIRROR}; about a minute)")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=cache_folder()) as tmp:
        root = Path(tmp) / "root"
        out = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR],
            capture_output=True, text=True, timeout=1200)
        if out.returncode != 0:
            raise SetupError(f"debootstrap failed (exit {out.returncode}):\n"
                             + "\n".join("  | " + line for line in (out.stdout + out.stderr).splitlines()[-25:]))
        _slim(root)
        tar = subprocess.Popen(["tar", "-C", str(root), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        imported = subprocess.run(
            ["podman", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
             "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", tag],
            stdin=tar.stdout, env=_env(), capture_output=True, text=True, timeout=600)
        tar.stdout.close()
        if tar.wait() != 0 or imported.returncode != 0:
            raise SetupError(f"importing the debootstrap tree into podman failed:\n  | {imported.stderr.strip()}")
    log(f"image: base {tag} made in {time.monotonic() - t0:.0f}s")
    return tag


def _slim(root: Path) -> None:
    """What the official slim images leave out too: package caches and lists, docs, man pages.
    pip may install into the system Python, as in the official image (Debian marks it
    externally managed)."""
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                "usr/share/info", "usr/share/locale"):
        folder = root / sub
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != "lock":
                    entry.unlink()
    for marker in root.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()


# --- builds ------------------------------------------------------------------------------


def pip_ca_bundle() -> Path | None:
    """The CA bundle the host's pip is configured with (``cert`` in ``pip config list``), if any."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=60)
    for line in out.stdout.splitlines():
        found = re.match(r"^[^=]*\.cert='?(.*?)'?$", line.strip())
        if found and Path(found[1]).is_file():
            return Path(found[1])
    return None


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                          and not p.name.endswith(".pyc"))
        else:
            out.append(path)
    return out


def inputs_hash(context: Path, dockerfile: Path, inputs: Iterable[Path], base: str) -> str:
    digest = hashlib.sha256(base.encode())
    digest.update(podman("image", "inspect", "--format", "{{.Id}}", base).stdout.strip().encode())
    for path in _files([dockerfile, *inputs]):
        digest.update(str(path.relative_to(context)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Built:
    image: str
    seconds: float
    reused: bool


def build(context: Path, name: str, inputs: Iterable[Path], dockerfile: Path | None = None,
          base: str | None = None, log: Log = print, no_cache: bool = False) -> Built:
    """``podman build`` of ``context`` with ``BASE`` set; reuses the image tagged with the hash of
    the Dockerfile, ``inputs`` and the base when there is one (unless ``no_cache``)."""
    dockerfile = dockerfile or context / "Dockerfile"
    base = base or ensure_base(log)
    tag = f"localhost/{name}:{inputs_hash(context, dockerfile, inputs, base)}"
    if exists(tag) and not no_cache:
        return Built(tag, 0.0, True)
    args = ["build", "--network=host", "--build-arg", f"BASE={base}", "-f", str(dockerfile), "-t", tag]
    if no_cache:
        args.append("--no-cache")
    ca = pip_ca_bundle()
    if ca is not None:
        args += ["--secret", f"id={PIP_CA_SECRET},src={ca}"]
    log(f"image: building {tag} from {dockerfile}" + (f" (pip's CA bundle {ca} as a build secret)" if ca else ""))
    t0 = time.monotonic()
    podman(*args, str(context), timeout=1800)
    built = Built(tag, time.monotonic() - t0, False)
    _remove_older(name, tag)
    return built


def _remove_older(name: str, keep: str) -> None:
    """The images of ``name`` built from earlier inputs: each is a full image (the trainer's is
    ~1 GB) that nothing runs again. One still in use by a container stays."""
    listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}", f"localhost/{name}").stdout.split()
    for old in listed:
        if old != keep:
            podman("rmi", old, check=False)
