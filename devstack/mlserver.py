"""The MLServer devstack's node runs for ``seldonio/mlserver`` images: a venv of its own.

It cannot share ``.venv``: MLServer 1.7.1 pins fastapi and protobuf below what the project's
constraints hold. Its packages are pinned in ``mlserver-constraints.txt`` beside this file
(uvloop at 0.21.0: 0.23 breaks every model load, MLServer#2286; scikit-learn, numpy and mlflow
at the project's versions, so a served model predicts what ``model.predict`` predicts here).

Like the Kubernetes binaries, it is built once and cached outside the repository, under
``${XDG_DATA_HOME:-~/.local/share}/devstack/``, in a folder named by MLServer's version, the
Python version and a hash of the constraints file: changing a pin builds a new venv, and every
worktree of the project shares one. A ``.complete`` file is written last; a lock file makes a
second devstack wait for a build under way.

To change a pin: install the four requirements (and the changed pin) into an empty venv, then
``pip freeze`` into ``mlserver-constraints.txt`` above its header.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .binaries import SetupError, _run, build_lock

VERSION = "1.7.1"
REQUIREMENTS = (f"mlserver=={VERSION}", f"mlserver-sklearn=={VERSION}", f"mlserver-mlflow=={VERSION}",
                "uvloop==0.21.0")
CONSTRAINTS = Path(__file__).with_name("mlserver-constraints.txt")
IMPORTS = "import mlserver, mlserver_sklearn, mlserver_mlflow, uvloop, sklearn"

Log = Callable[[str], None]


def folder() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:12]
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return Path(data_home) / "devstack" / f"mlserver-{VERSION}-{python}-{digest}"


def ensure(log: Log = print) -> Path:
    """The venv's ``bin`` folder (holding ``mlserver``), building the venv the first time."""
    venv = folder()
    if (venv / ".complete").exists():
        return venv / "bin"
    with build_lock(venv.parent / f".{venv.name}.lock", str(venv), log):
        if not (venv / ".complete").exists():
            _build(venv, log)
    return venv / "bin"


def _build(venv: Path, log: Log) -> None:
    log(f"devstack: installing MLServer {VERSION} into its own venv {venv}")
    log("  (once: about a minute with a warm pip cache; later runs reuse it)")
    t0 = time.monotonic()
    shutil.rmtree(venv, ignore_errors=True)  # a half-built venv from an interrupted run
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_CONSTRAINT"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([sys.executable, "-m", "venv", str(venv)], venv.parent, log, "python -m venv", env=env)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "--progress-bar", "off", "-c", str(CONSTRAINTS), *REQUIREMENTS],
         venv.parent, log, "pip install mlserver", progress="lines of pip output", env=env)
    check = subprocess.run([python, "-c", IMPORTS], capture_output=True, text=True, env=env, timeout=300)
    if check.returncode != 0:
        raise SetupError(f"the MLServer venv {venv} was installed but `{IMPORTS}` fails:\n"
                         + "\n".join("  | " + line for line in check.stderr.strip().splitlines()[-15:]))
    (venv / ".complete").write_text(f"{' '.join(REQUIREMENTS)}\n")
    log(f"devstack: MLServer venv ready in {time.monotonic() - t0:.0f}s")
