"""What Seldon Core v1 is given: the rclone Secret, the SeldonDeployment, and whether the
chosen server can load the model at all. Pure renderers returning plain dicts.

The SeldonDeployment body holds only the fields the operator owns; :func:`merge_owned` turns it
into a merge patch that leaves the rest (the traffic Seldon defaults, componentSpecs someone
added, other predictors) alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from typing import Any

from .errors import IncompatibleModel, NotManaged
from .spec import Implementation, Protocol, SeldonTarget

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "mlflow-seldon-promoter"
# On every child the operator makes: <namespace>/<name>/<uid> of the promotion that last wrote
# it. With the label, it is how the operator knows a child is its own to change.
OWNER_ANNOTATION = "mlops.dev/owner"
# On a SeldonDeployment: the promotion that serves it (promoter.ownership owns that fact).
PROMOTION_ANNOTATION = "mlops.dev/promotion"
# Set by someone who may write the object: hands an existing Secret or SeldonDeployment to the
# operator, which otherwise never changes what it did not make.
ADOPT_ANNOTATION = "mlops.dev/adopt"
ADOPT = f"annotate it {ADOPT_ANNOTATION}=true to hand it to the operator"
Merge = Callable[[dict[str, Any] | None], dict[str, Any] | None]
"""existing object (None when absent) -> the object to write, or None when nothing changes."""

SELDON_API_VERSION = "machinelearning.seldon.io/v1"
GRAPH_NODE_NAME = "model"

# The keys Seldon's rclone storage initializer reads for the remote named "s3" in s3:// URIs.
RCLONE_KEYS = (
    "RCLONE_CONFIG_S3_TYPE",
    "RCLONE_CONFIG_S3_PROVIDER",
    "RCLONE_CONFIG_S3_ENV_AUTH",
    "RCLONE_CONFIG_S3_ACCESS_KEY_ID",
    "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY",
    "RCLONE_CONFIG_S3_ENDPOINT",
)

# The file names each server looks for at the top of the model folder.
MLSERVER_SKLEARN_FILES = ("model.joblib", "model.pickle", "model.pkl")
SELDON_SKLEARN_FILES = ("model.joblib",)

CLOUDPICKLE_FIX = (
    'log it with mlflow.sklearn.log_model(..., serialization_format="cloudpickle"), which writes model.pkl'
)


def _labels() -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY}


def owner(namespace: str, name: str, uid: str) -> str:
    """The OWNER_ANNOTATION value for promotion namespace/name with that uid."""
    return f"{namespace}/{name}/{uid}"


def managed(obj: Mapping[str, Any]) -> bool:
    """The operator made ``obj`` (its label, and an owner annotation from its own namespace), or
    whoever may write it marked it for adoption. A child made before owner annotations existed
    is recognised by the label and what only the operator puts there (a SeldonDeployment's
    promotion annotation, an rclone Secret's keys); its next write adds the annotation."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if str(annotations.get(ADOPT_ANNOTATION, "")).lower() == "true":
        return True
    if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return False
    if OWNER_ANNOTATION in annotations:
        return str(annotations[OWNER_ANNOTATION]).split("/")[0] == meta.get("namespace")
    return PROMOTION_ANNOTATION in annotations or set(RCLONE_KEYS) <= set(obj.get("data") or {})


def guarded(what: str, field: str, merge: Merge, secret: bool = False) -> Merge:
    """``merge``, refusing an existing object the operator may not change.

    The operator changes only what it made: a child carries the managed-by label and an owner
    annotation naming the promotion that last wrote it, or whoever may write it marked it for
    adoption (``mlops.dev/adopt: "true"``). An existing Secret or SeldonDeployment without that,
    or a Secret that is not ``Opaque``, is ``NotManaged``: left as it is, so no credential lands
    in a Secret of a tenant's choosing and no platform-owned deployment is repointed."""

    def guard(existing: dict[str, Any] | None) -> dict[str, Any] | None:
        if existing is not None:
            kind = existing.get("type") or "Opaque"
            if secret and kind != "Opaque":
                raise NotManaged(what, field, f"is of type {kind}", "the operator writes only Opaque Secrets; "
                                 "name another one")
            if not managed(existing):
                raise NotManaged(what, field, "exists and was not made by the operator",
                                 f"name another one, or {ADOPT}")
        return merge(existing)

    return guard


def render_rclone_secret(name: str, namespace: str, endpoint: str, access_key: str, secret_key: str,
                         owned_by: str) -> dict[str, Any]:
    """The Secret named by the graph's envSecretRefName; stringData, so it patches cleanly."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(),
                     "annotations": {OWNER_ANNOTATION: owned_by}},
        "type": "Opaque",
        "stringData": {
            "RCLONE_CONFIG_S3_TYPE": "s3",
            "RCLONE_CONFIG_S3_PROVIDER": "minio",
            "RCLONE_CONFIG_S3_ENV_AUTH": "false",
            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": access_key,
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": secret_key,
            "RCLONE_CONFIG_S3_ENDPOINT": endpoint,
        },
    }


def render_seldon_deployment(
    target: SeldonTarget, namespace: str, model_uri: str, annotations: Mapping[str, str], owned_by: str
) -> dict[str, Any]:
    """A one-predictor, one-node SeldonDeployment serving model_uri."""
    graph = {
        "name": GRAPH_NODE_NAME,
        "type": "MODEL",
        "implementation": target.implementation.value,
        "modelUri": model_uri,
        "envSecretRefName": target.secret_name,
    }
    return {
        "apiVersion": SELDON_API_VERSION,
        "kind": "SeldonDeployment",
        "metadata": {
            "name": target.name,
            "namespace": namespace,
            "labels": _labels(),
            "annotations": {**annotations, OWNER_ANNOTATION: owned_by},
        },
        "spec": {
            "protocol": target.protocol.value,
            "predictors": [{"name": target.predictor_name, "replicas": target.replicas, "graph": graph}],
        },
    }


def _overlay(have: Any, want: Any) -> Any:
    """want laid over have: maps merge key by key, lists of named items merge by name (so
    Seldon's defaults and other predictors survive), anything else is replaced by want."""
    if isinstance(have, Mapping) and isinstance(want, Mapping):
        merged = dict(have)
        for key, value in want.items():
            merged[key] = _overlay(have.get(key), value)
        return merged
    if isinstance(have, list) and isinstance(want, list) and _named(have) and _named(want):
        result = list(have)
        for item in want:
            index = next((i for i, old in enumerate(result) if old["name"] == item["name"]), None)
            if index is None:
                result.append(copy.deepcopy(item))
            else:
                result[index] = _overlay(result[index], item)
        return result
    return copy.deepcopy(want)


def _named(items: list[Any]) -> bool:
    return all(isinstance(item, Mapping) and "name" in item for item in items)


def _restrict(merged: Any, want: Any) -> Any:
    # A JSON merge patch merges maps but replaces lists: send maps pruned to our keys, lists whole.
    if isinstance(merged, Mapping) and isinstance(want, Mapping):
        return {key: _restrict(merged[key], value) for key, value in want.items()}
    return merged


def merge_owned(existing: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """What to write so that existing carries every field of desired.

    None when it already does (no write, so reconciling twice changes nothing); desired itself
    when there is nothing yet; otherwise a JSON merge patch holding the owned fields, with each
    list sent whole but keeping the items and fields someone else put there.
    """
    if existing is None:
        return copy.deepcopy(dict(desired))
    merged = _overlay(existing, desired)
    if merged == existing:
        return None
    patch: dict[str, Any] = _restrict(merged, desired)
    return patch


def _top_level(files: Collection[str]) -> set[str]:
    return {name.strip("/") for name in files if "/" not in name.strip("/")}


def _sklearn_flavor(mlmodel: Mapping[str, Any]) -> Mapping[str, Any]:
    flavors = mlmodel.get("flavors")
    flavor = flavors.get("sklearn") if isinstance(flavors, Mapping) else None
    return flavor if isinstance(flavor, Mapping) else {}


def _is_skops(mlmodel: Mapping[str, Any], top: set[str]) -> bool:
    flavor = _sklearn_flavor(mlmodel)
    return (
        flavor.get("serialization_format") == "skops"
        or str(flavor.get("pickled_model", "")).endswith(".skops")
        or ("model.skops" in top and not top & set(MLSERVER_SKLEARN_FILES))
    )


def _listing(top: set[str]) -> str:
    return ", ".join(sorted(top)) if top else "nothing"


def check_model_compatibility(
    mlmodel: Mapping[str, Any] | None,
    files: Collection[str],
    implementation: Implementation,
    protocol: Protocol,
) -> None:
    """Raise IncompatibleModel, with the fix, when the chosen server cannot load the model.

    mlmodel is the parsed MLmodel file (None or empty when there is none); files are paths
    relative to the model folder.
    """
    top = _top_level(files)
    if not mlmodel:
        problem = (
            "the model folder has an MLmodel file that is empty or not a mapping"
            if "MLmodel" in top
            else f"no MLmodel file in the model folder (it holds: {_listing(top)})"
        )
        raise IncompatibleModel(problem, "point modelName at a model logged with mlflow.<flavor>.log_model")

    if _is_skops(mlmodel, top):
        server = (
            "MLFLOW_SERVER's image ships MLflow 2, which cannot read it"
            if implementation is Implementation.MLFLOW_SERVER
            else "SKLEARN_SERVER cannot load it"
        )
        raise IncompatibleModel(
            f"the model was saved with skops (model.skops), and {server}", CLOUDPICKLE_FIX
        )

    if implementation is Implementation.MLFLOW_SERVER:
        flavors = mlmodel.get("flavors")
        if not isinstance(flavors, Mapping) or "python_function" not in flavors:
            names = ", ".join(sorted(flavors)) if isinstance(flavors, Mapping) and flavors else "none"
            raise IncompatibleModel(
                f"MLFLOW_SERVER needs a python_function flavor in MLmodel, and it has: {names}",
                "log the model with an MLflow flavor that adds python_function "
                "(mlflow.sklearn.log_model does), or use implementation SKLEARN_SERVER",
            )
        return

    if protocol is Protocol.V2:
        if not top & set(MLSERVER_SKLEARN_FILES):
            raise IncompatibleModel(
                "SKLEARN_SERVER with protocol v2 loads model.joblib, model.pickle or model.pkl, "
                f"and the model folder holds: {_listing(top)}",
                f"{CLOUDPICKLE_FIX}, or use implementation MLFLOW_SERVER",
            )
        return

    if not top & set(SELDON_SKLEARN_FILES):
        pickled = sorted(top & set(MLSERVER_SKLEARN_FILES))
        if pickled:
            raise IncompatibleModel(
                f"SKLEARN_SERVER with protocol seldon loads only model.joblib, "
                f"and this model has {pickled[0]}",
                f"set protocol: v2 (MLServer loads {pickled[0]})",
            )
        raise IncompatibleModel(
            "SKLEARN_SERVER with protocol seldon loads only model.joblib, "
            f"and the model folder holds: {_listing(top)}",
            f"set protocol: v2 and {CLOUDPICKLE_FIX}",
        )


__all__ = [
    "ADOPT_ANNOTATION",
    "CLOUDPICKLE_FIX",
    "OWNER_ANNOTATION",
    "PROMOTION_ANNOTATION",
    "managed",
    "owner",
    "GRAPH_NODE_NAME",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MLSERVER_SKLEARN_FILES",
    "RCLONE_KEYS",
    "SELDON_API_VERSION",
    "SELDON_SKLEARN_FILES",
    "check_model_compatibility",
    "guarded",
    "merge_owned",
    "render_rclone_secret",
    "render_seldon_deployment",
]
