"""What each Seldon server image runs, and the model's library versions held against it. Pure.

A model pickled by a scikit-learn other than the server's loads with ``InconsistentVersionWarning``
("might lead to breaking code or invalid results"); one pickled under another Python or a
numpy of another major version may not load at all. All of that is in the model folder
(``MLmodel``, ``python_env.yaml``, ``requirements.txt``) before a byte is copied.

Which image serves ``(implementation, protocol)`` is Seldon's ``predictor_servers`` setting, so
it is the operator's ``PROMOTER_SERVING_IMAGES`` too; the defaults are the images this project's
manifests and end-to-end tests install. What each image has is :data:`IMAGE_VERSIONS`, each
number with where it comes from; ``PROMOTER_IMAGE_VERSIONS`` adds or replaces entries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from .spec import Implementation, Protocol

PYTHON, SKLEARN, NUMPY = "python", "scikit-learn", "numpy"
LIBRARIES = (SKLEARN, PYTHON, NUMPY)  # in the order messages name them
SHOWN = {PYTHON: "Python", SKLEARN: "scikit-learn", NUMPY: "numpy"}

# Seldon Core v1's predictor_servers, as tests/e2e/run_kind.sh installs it (SKLEARN_SERVER v2 is
# set to MLServer 1.7.1; Seldon 1.18.2's chart default there is seldonio/mlserver:1.3.5-sklearn).
SERVING_IMAGES: dict[str, str] = {
    "SKLEARN_SERVER/v2": "seldonio/mlserver:1.7.1-sklearn",
    "SKLEARN_SERVER/seldon": "seldonio/sklearnserver:1.18.2",
    "MLFLOW_SERVER/v2": "seldonio/mlserver:1.3.5-mlflow",
    "MLFLOW_SERVER/seldon": "seldonio/mlflowserver:1.18.2",
}

# What each image has. A library left out is not known from the image's sources (installed
# unpinned at build time), and is not checked.
IMAGE_VERSIONS: dict[str, dict[str, str]] = {
    # MLServer 1.7.1's Dockerfile (ARG PYTHON_VERSION=3.10.12) and its poetry.lock, exported as the
    # constraints.txt the image installs the runtimes with (scikit-learn 1.5.2, numpy 1.26.4).
    "seldonio/mlserver:1.7.1-sklearn": {PYTHON: "3.10", SKLEARN: "1.5.2", NUMPY: "1.26.4"},
    # MLServer 1.3.5's Dockerfile (ARG PYTHON_VERSION=3.8.16); it installs scikit-learn unpinned.
    "seldonio/mlserver:1.3.5-sklearn": {PYTHON: "3.8"},
    # Seldon Core 1.18.2: servers/sklearnserver/sklearnserver/requirements.txt pins
    # scikit-learn == 0.24.2, on the s2i Python wrapper built with PYTHON_VERSION 3.8.10.
    "seldonio/sklearnserver:1.18.2": {PYTHON: "3.8", SKLEARN: "0.24.2"},
    # seldonio/mlflowserver builds a conda environment from the model's own conda.yaml when it
    # starts, and mlserver:1.3.5-mlflow's libraries are unpinned: neither has an entry.
}


def image_for(implementation: Implementation, protocol: Protocol, images: Mapping[str, str]) -> str:
    """The image that serves ``implementation`` with ``protocol`` (``images`` over the defaults)."""
    key = f"{implementation.value}/{protocol.value}"
    return images.get(key) or SERVING_IMAGES[key]


def versions_of(image: str, table: Mapping[str, Mapping[str, str]]) -> Mapping[str, str]:
    """What ``image`` has (``table`` over :data:`IMAGE_VERSIONS`); empty when unknown."""
    return table.get(image) or IMAGE_VERSIONS.get(image) or {}


def model_versions(mlmodel: Mapping[str, object], python_env: bytes | None, requirements: bytes | None
                   ) -> dict[str, str]:
    """The versions a model was saved with: scikit-learn from MLmodel's sklearn flavor, Python
    from python_env.yaml (else MLmodel's python_function flavor), numpy from requirements.txt."""
    found = _model_versions(mlmodel, python_env, requirements)
    # read from the model folder, shown in status: a version number, or nothing
    return {lib: version for lib, version in found.items() if _VERSION.fullmatch(version)}


_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]{0,31}")


def _model_versions(mlmodel: Mapping[str, object], python_env: bytes | None, requirements: bytes | None
                    ) -> dict[str, str]:
    found: dict[str, str] = {}
    flavors = mlmodel.get("flavors")
    flavors = flavors if isinstance(flavors, Mapping) else {}
    sklearn = flavors.get("sklearn")
    if isinstance(sklearn, Mapping) and sklearn.get("sklearn_version"):
        found[SKLEARN] = str(sklearn["sklearn_version"])
    python = _python_of(python_env)
    pyfunc = flavors.get("python_function")
    if not python and isinstance(pyfunc, Mapping) and pyfunc.get("python_version"):
        python = str(pyfunc["python_version"])
    if python:
        found[PYTHON] = python
    pinned = re.search(r"^\s*numpy\s*==\s*([0-9][0-9A-Za-z.+-]*)", (requirements or b"").decode(errors="replace"),
                       re.M)
    if pinned:
        found[NUMPY] = pinned.group(1)
    return found


def _python_of(python_env: bytes | None) -> str:
    try:
        env = yaml.safe_load(python_env or b"") or {}
    except yaml.YAMLError:
        return ""
    return str(env.get("python") or "") if isinstance(env, Mapping) else ""


def _release(version: str, parts: int) -> tuple[str, ...]:
    return tuple(version.split(".")[:parts])


# How much of a version must agree: scikit-learn warns on any other version; pickles cross Python
# patch releases but not always minor ones; numpy 2 pickles name numpy._core, which numpy 1 lacks.
_AGREE = {SKLEARN: 3, PYTHON: 2, NUMPY: 1}


@dataclass(frozen=True)
class Skew:
    """The libraries whose versions differ: name -> (the model's, the image's)."""

    image: str
    differ: Mapping[str, tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(self.differ)

    def detail(self, implementation: Implementation, protocol: Protocol) -> str:
        mine = listing({lib: model for lib, (model, _) in self.differ.items()})
        theirs = listing({lib: image for lib, (_, image) in self.differ.items()})
        return (f"the model was saved with {mine}; {self.image} ({implementation.value}, protocol "
                f"{protocol.value}) has {theirs}")

    def fix(self) -> str:
        wanted = listing({lib: image for lib, (_, image) in self.differ.items()})
        return (f"log the model with {wanted}, or serve it from an image with its versions "
                "(PROMOTER_SERVING_IMAGES, PROMOTER_IMAGE_VERSIONS)")


def listing(versions: Mapping[str, str]) -> str:
    """scikit-learn 1.9.1, Python 3.11 and numpy 2.4.6"""
    items = [f"{SHOWN.get(lib, lib)} {version}" for lib, version in versions.items()]
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def compare(model: Mapping[str, str], image: str, has: Mapping[str, str]) -> Skew:
    """The libraries both sides name whose versions disagree (see ``_AGREE``)."""
    differ = {lib: (model[lib], has[lib]) for lib in LIBRARIES
              if lib in model and lib in has and _release(model[lib], _AGREE[lib]) != _release(has[lib], _AGREE[lib])}
    return Skew(image, differ)


__all__ = ["IMAGE_VERSIONS", "LIBRARIES", "SERVING_IMAGES", "Skew", "compare", "image_for", "listing",
           "model_versions", "versions_of"]
