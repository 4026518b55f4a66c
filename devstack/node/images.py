"""The images devstack's node runs, and how it runs each here: the one table.

There is no registry and no container runtime: a container of a known image is a local program
started the way the image would start it. Each row names the image's repository, its ENTRYPOINT,
CMD and ENV (what Kubernetes' ``command`` and ``args`` override, and what ``env`` sits on top
of), and the local programs it needs. An image not in the table cannot run: its container waits
with reason ``ErrImagePull`` and a message listing the table, as a real node waits for an image it
cannot pull.

Mount paths (``/mnt/models``) are not real paths here: the node rewrites every argument and
environment value that is a volume's mount path, or lies under one, to the Pod's folder for that
volume (see :func:`rewrite_paths`). Both images take every path they use from their arguments and
environment, so this is all they need; a per-Pod mount namespace would need root and would create
the mount points on the host. A program that hard-codes a path would not see its volume.

Pure: no processes, no API calls.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Image:
    repository: str  # without registry host: "seldonio/mlserver"
    tags: str  # a glob over the tag
    what: str  # what runs, for messages and the README
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)  # the image's ENV; the container's env wins
    needs: tuple[str, ...] = ()  # local programs, found in Programs; their folders go first on PATH
    # Set by the node over whatever the container says: each Pod has its own address here, not
    # its own network namespace, so a server must bind the Pod IP ({pod_ip}) instead of 0.0.0.0.
    network_env: Mapping[str, str] = field(default_factory=dict)

    def matches(self, reference: str) -> bool:
        repository, tag = split_reference(reference)
        return repository == self.repository and fnmatch.fnmatchcase(tag, self.tags)


IMAGES: tuple[Image, ...] = (
    Image(
        repository="seldonio/rclone-storage-initializer", tags="*",
        what="Debian's rclone (`rclone copy <args>`), as the image's ENTRYPOINT [rclone, copy]",
        entrypoint=("rclone", "copy"),
        # the image's ENV, and no rclone.conf: remotes come from RCLONE_CONFIG_* variables (envFrom)
        env={"RCLONE_CONFIG_GS_TYPE": "google cloud storage", "RCLONE_CONFIG_GS_ANONYMOUS": "true",
             "RCLONE_VERBOSE": "1", "RCLONE_CONFIG": "/dev/null"},
        needs=("rclone",),
    ),
    Image(
        repository="seldonio/mlserver", tags="*",
        what="`mlserver start $MLSERVER_MODELS_DIR` from devstack's MLServer venv (devstack/mlserver.py)",
        # the image's CMD, without its first step: unpacking $MLSERVER_ENV_TARBALL when present
        cmd=("/bin/sh", "-c", 'exec mlserver start "$MLSERVER_MODELS_DIR"'),
        env={"MLSERVER_MODELS_DIR": "/mnt/models", "MLSERVER_ENV_TARBALL": "/mnt/models/environment.tar.gz"},
        needs=("mlserver",),
        network_env={"MLSERVER_HOST": "{pod_ip}"},
    ),
)

BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def split_reference(reference: str) -> tuple[str, str]:
    """("seldonio/mlserver", "1.7.1-sklearn") from "docker.io/seldonio/mlserver:1.7.1-sklearn"."""
    name, _, digest = reference.partition("@")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):  # a registry host
        name = rest
    if name.startswith("library/"):
        name = name.removeprefix("library/")
    repository, _, tag = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "")
    return repository, tag or (digest or "latest")


def find(reference: str, images: Sequence[Image] = IMAGES) -> Image | None:
    return next((image for image in images if image.matches(reference)), None)


def unknown_image_message(reference: str, images: Sequence[Image] = IMAGES) -> str:
    known = ", ".join(f"{i.repository}:{i.tags}" for i in images)
    return (f'Failed to pull image "{reference}": devstack\'s node runs only the images of its table '
            f"(devstack/node/images.py: {known}); this one is not there")


class ContainerError(Exception):
    """The container cannot start; reason is the kubelet's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _REF.sub(sub, value)


def rewrite_paths(value: str, mounts: Mapping[str, str]) -> str:
    """value with a mount path at its start (or after a leading ``--flag=``) moved to its folder."""
    prefix, eq, rest = value.partition("=")
    if eq and rest.startswith("/") and not prefix.startswith("/"):
        return prefix + eq + rewrite_paths(rest, mounts)
    for mount in sorted(mounts, key=len, reverse=True):
        mount_path = mount.rstrip("/") or "/"
        if value == mount_path or value.startswith(mount_path + "/"):
            return mounts[mount] + value[len(mount_path):]
    return value


def _which(name: str, path: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    for folder in path.split(":"):
        candidate = os.path.join(folder, name)
        if folder and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def launch(image: Image, container: Mapping[str, object], env: Mapping[str, str], mounts: Mapping[str, str],
           programs: Mapping[str, str], pod_ip: str, home: str) -> Launch:
    """The argv and environment of one start of a container of image.

    env is the container's own environment as the API gives it (envFrom, then env), already
    resolved; mounts maps mount paths to the Pod's folders; programs maps the names in
    image.needs to executables. Kubernetes' rules: command replaces ENTRYPOINT and drops CMD,
    args replaces CMD; $(VAR) in command and args expands from the container's environment.
    """
    missing = [name for name in image.needs if not programs.get(name)]
    if missing:
        raise ContainerError("CreateContainerError",
                             f"{', '.join(missing)} not installed on this machine (needed by {image.what})")
    path = ":".join([*dict.fromkeys(os.path.dirname(programs[n]) for n in image.needs), BASE_PATH])
    full: dict[str, str] = {"PATH": path, "HOME": home, **image.env}
    full.update(env)
    full.update({k: v.format(pod_ip=pod_ip) for k, v in image.network_env.items()})
    full = {k: rewrite_paths(v, mounts) for k, v in full.items()}
    command = [str(c) for c in container.get("command") or []]  # type: ignore[attr-defined]
    args = [str(a) for a in container.get("args") or []]  # type: ignore[attr-defined]
    if command:
        argv = command + args
    else:
        argv = list(image.entrypoint) + (args if container.get("args") else list(image.cmd))
    argv = [rewrite_paths(expand(a, full), mounts) for a in argv]
    if not argv:
        raise ContainerError("CreateContainerError", f"no command: {image.repository} has no ENTRYPOINT or CMD")
    found = _which(argv[0], full["PATH"])
    if found is None:
        raise ContainerError("CreateContainerError",
                             f'exec: "{argv[0]}": executable file not found in $PATH ({full["PATH"]})')
    return Launch([found, *argv[1:]], full)
