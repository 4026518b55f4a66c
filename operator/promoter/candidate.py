"""What a new generation is held against before anything is copied: the run the deployment
serves (for baseline gates), the model's files and the serving server's loaders, the operator's
size bounds, and the serving image's library versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from . import gates, policy, runtimes, seldon, status
from .artifacts import FileEntry, ModelFolder, ObjectStore, locate
from .config import Settings
from .errors import IncompatibleModel, ModelTooLarge, RunNotFound, VersionSkew
from .mlflow_source import MlflowApi, ModelLocation, ModelVersion, Run
from .ownership import Serving
from .spec import Compatibility, ModelPromotionSpec
from .status import Draft, Event

MLMODEL_LIMIT = 256 * 1024  # bytes of an MLmodel file; a real one is a few hundred
SIDE_FILE_LIMIT = 64 * 1024  # bytes of python_env.yaml or requirements.txt read for their versions


def has_baseline(spec: ModelPromotionSpec) -> bool:
    return any(gate.baseline is not None for gate in spec.gates)


def same_dataset(spec: ModelPromotionSpec) -> bool:
    return any(gate.same_dataset for gate in spec.gates)


def champion(client: MlflowApi, spec: ModelPromotionSpec, judged: Serving | None, run_id: str
              ) -> gates.Champion | None:
    """The run the deployment serves, with its metrics (and their datasets when a gate asks)."""
    if judged is None or judged.run_id is None:
        return None
    if judged.run_id == run_id:
        return gates.Champion(run_id, {})
    try:
        served = client.get_run(judged.run_id)
    except RunNotFound as e:
        return gates.Champion(judged.run_id, {}, problem=e.message)
    datasets = client.metric_datasets(served) if same_dataset(spec) else {}
    return gates.Champion(served.run_id or judged.run_id, served.metrics, datasets)


@dataclass(frozen=True)
class Located:
    """The model's folder and files, its MLmodel, and the location it was found at."""

    folder: ModelFolder
    files: dict[str, FileEntry]
    mlmodel: dict[str, Any]
    location: ModelLocation | None


def check_versions(draft: Draft, spec: ModelPromotionSpec, located: Located, settings: Settings) -> list[Event]:
    """The model's library versions against the serving image's (VersionsMatch); Strict
    rejects a skew, Warn reports it in a Warning Event."""
    if spec.compatibility is Compatibility.IGNORE:
        return []
    target = spec.target.seldon_deployment
    image = runtimes.image_for(target.implementation, target.protocol, settings.serving_images)
    has = runtimes.versions_of(image, settings.image_versions)
    if not has:
        draft.condition(status.VERSIONS_MATCH, "Unknown", "NoVersionTable",
                        f"the versions of {image} are not known (PROMOTER_IMAGE_VERSIONS adds them)")
        return []
    folder = located.folder
    model = runtimes.model_versions(
        located.mlmodel,
        folder.read("python_env.yaml", SIDE_FILE_LIMIT) if runtimes.PYTHON in has else None,
        folder.read("requirements.txt", SIDE_FILE_LIMIT) if runtimes.NUMPY in has else None)
    skew = runtimes.compare(model, image, has)
    if not skew:
        same = runtimes.listing({lib: model[lib] for lib in runtimes.LIBRARIES if lib in model and lib in has})
        if same:
            draft.condition(status.VERSIONS_MATCH, "True", "VersionsMatch", f"{same}, as {image} has")
        else:
            draft.condition(status.VERSIONS_MATCH, "Unknown", "NoVersions", "the model folder names none of "
                            f"{', '.join(has)} (MLmodel, python_env.yaml, requirements.txt) to hold against {image}")
        return []
    detail = skew.detail(target.implementation, target.protocol)
    if spec.compatibility is Compatibility.STRICT:
        raise VersionSkew(detail, skew.fix())
    draft.condition(status.VERSIONS_MATCH, "False", VersionSkew.reason, f"{detail}; to fix: {skew.fix()}")
    return [Event("Warning", VersionSkew.reason, f"{detail}; the promotion goes on (compatibility: Warn)",
                  "Promote")]


def find_model(client: MlflowApi, source: ObjectStore, run: Run, version: ModelVersion | None,
                spec: ModelPromotionSpec, settings: Settings) -> Located:
    """The model's folder and files (a registered version's, or the run's ``modelName``): at an
    allowed place, within the operator's bounds, and loadable by the chosen server."""
    if version is not None:
        name, candidates = f"{version.name} version {version.version}", client.version_candidates(version, run)
        where = "spec.source.registeredModel"
    else:
        name, candidates = spec.source.model_name, client.model_candidates(run, spec.source.model_name)
        where = "spec.source.modelName"
    for loc in candidates:  # before a byte is read from it
        if loc.uri.startswith("s3://"):
            policy.artifact_source(source.endpoint, loc.uri, settings)
    what = f"model {name!r} of run {run.run_id} ({where})"
    folder, files = locate([(source, loc.uri) for loc in candidates], run.run_id, name, limit=settings.max_files)
    check_limits(files, settings, what)
    raw = folder.read("MLmodel", MLMODEL_LIMIT + 1) or b""
    if len(raw) > MLMODEL_LIMIT:
        raise IncompatibleModel(f"the model's MLmodel file is over {MLMODEL_LIMIT} bytes",
                                "log the model with mlflow.<flavor>.log_model")
    try:
        mlmodel = yaml.safe_load(raw) or {}
    except yaml.YAMLError:
        mlmodel = {}
    mlmodel = mlmodel if isinstance(mlmodel, dict) else {}
    seldon.check_model_compatibility(mlmodel, list(files), spec.target.seldon_deployment.implementation,
                                     spec.target.seldon_deployment.protocol)
    location = next((loc for loc in candidates if loc.uri.rstrip("/") == folder.uri.rstrip("/")), None)
    return Located(folder, files, mlmodel, location)


def check_limits(files: Mapping[str, FileEntry], settings: Settings, what: str) -> None:
    """Reject a model folder over the operator's bounds before a byte is copied."""
    if len(files) > settings.max_files:  # listings stop one file past the limit
        raise ModelTooLarge(what, len(files), "files", "PROMOTER_MAX_FILES", settings.max_files, more=True)
    total = sum(f.size for f in files.values())
    if total > settings.max_bytes:
        raise ModelTooLarge(what, total, "bytes", "PROMOTER_MAX_BYTES", settings.max_bytes)


__all__ = ["Located", "champion", "check_limits", "check_versions", "find_model", "has_baseline", "same_dataset"]
