"""What Seldon is given, and which models its servers are refused."""

from __future__ import annotations

import re
from typing import Any

import pytest

from promoter.errors import IncompatibleModel
from promoter.seldon import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RCLONE_KEYS,
    check_model_compatibility,
    merge_owned,
    render_rclone_secret,
    render_seldon_deployment,
)
from promoter.spec import Implementation, Protocol, SeldonTarget

URI = "s3://models/rf-regressor/5f0c2d9e5f0c2d9e5f0c2d9e5f0c2d9e"


def test_rclone_secret_holds_exactly_the_keys_seldon_reads() -> None:
    secret = render_rclone_secret("seldon-rclone-secret", "ml", "http://minio:9000", "AKIA-ID", "shh", "ml/p1/uid-1")
    assert secret == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "seldon-rclone-secret",
            "namespace": "ml",
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"mlops.dev/owner": "ml/p1/uid-1"},
        },
        "type": "Opaque",
        "stringData": {
            "RCLONE_CONFIG_S3_TYPE": "s3",
            "RCLONE_CONFIG_S3_PROVIDER": "minio",
            "RCLONE_CONFIG_S3_ENV_AUTH": "false",
            "RCLONE_CONFIG_S3_ACCESS_KEY_ID": "AKIA-ID",
            "RCLONE_CONFIG_S3_SECRET_ACCESS_KEY": "shh",
            "RCLONE_CONFIG_S3_ENDPOINT": "http://minio:9000",
        },
    }
    assert tuple(secret["stringData"]) == RCLONE_KEYS


def test_seldon_deployment_carries_only_the_fields_the_operator_owns() -> None:
    target = SeldonTarget(name="minio-sklearn", replicas=2)
    body = render_seldon_deployment(target, "ml", URI, {"mlops.dev/promotion": "p1"}, "ml/p1/uid-1")
    assert body == {
        "apiVersion": "machinelearning.seldon.io/v1",
        "kind": "SeldonDeployment",
        "metadata": {
            "name": "minio-sklearn",
            "namespace": "ml",
            "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            "annotations": {"mlops.dev/promotion": "p1", "mlops.dev/owner": "ml/p1/uid-1"},
        },
        "spec": {
            "protocol": "v2",
            "predictors": [
                {
                    "name": "default",
                    "replicas": 2,
                    "graph": {
                        "name": "model",
                        "type": "MODEL",
                        "implementation": "SKLEARN_SERVER",
                        "modelUri": URI,
                        "envSecretRefName": "seldon-rclone-secret",
                    },
                }
            ],
        },
    }


def test_seldon_deployment_follows_the_target() -> None:
    target = SeldonTarget(
        name="serve",
        implementation=Implementation.MLFLOW_SERVER,
        protocol=Protocol.SELDON,
        secret_name="rclone",
        predictor_name="main",
    )
    body = render_seldon_deployment(target, "ml", URI, {}, "ml/p/u")
    assert body["spec"]["protocol"] == "seldon"
    predictor = body["spec"]["predictors"][0]
    assert predictor["name"] == "main"
    assert predictor["graph"]["implementation"] == "MLFLOW_SERVER"
    assert predictor["graph"]["envSecretRefName"] == "rclone"


# -- merge_owned ------------------------------------------------------------------------------


def desired() -> dict[str, Any]:
    return render_seldon_deployment(SeldonTarget(name="sd"), "ml", URI, {"mlops.dev/promotion": "p1"}, "ml/p1/u")


def as_served(body: dict[str, Any]) -> dict[str, Any]:
    """body as the API server returns it after Seldon's webhook and a person had their say."""
    served = merge_owned(None, body)
    assert served is not None
    served["metadata"]["resourceVersion"] = "7"
    served["metadata"]["labels"]["team"] = "a"
    predictor = served["spec"]["predictors"][0]
    predictor["traffic"] = 100
    predictor["componentSpecs"] = [{"spec": {"containers": [{"name": "model", "resources": {}}]}}]
    predictor["graph"]["children"] = []
    served["status"] = {"state": "Available"}
    return served


def test_nothing_there_yet_means_create_the_whole_body() -> None:
    assert merge_owned(None, desired()) == desired()


def test_an_up_to_date_deployment_needs_no_write() -> None:
    assert merge_owned(as_served(desired()), desired()) is None


def test_a_new_model_uri_patches_only_owned_fields_and_keeps_the_rest() -> None:
    want = desired()
    want["spec"]["predictors"][0]["graph"]["modelUri"] = "s3://models/other"
    patch = merge_owned(as_served(desired()), want)
    assert patch is not None
    assert "status" not in patch
    assert patch["metadata"]["labels"] == {MANAGED_BY_LABEL: MANAGED_BY}
    (predictor,) = patch["spec"]["predictors"]
    assert predictor["traffic"] == 100
    assert predictor["componentSpecs"][0]["spec"]["containers"][0]["name"] == "model"
    assert predictor["graph"]["children"] == []
    assert predictor["graph"]["modelUri"] == "s3://models/other"


def test_predictors_the_operator_does_not_own_survive_a_patch() -> None:
    served = as_served(desired())
    served["spec"]["predictors"].append({"name": "canary", "replicas": 1, "graph": {"name": "c"}})
    want = desired()
    want["spec"]["predictors"][0]["replicas"] = 3
    patch = merge_owned(served, want)
    assert patch is not None
    assert [(p["name"], p["replicas"]) for p in patch["spec"]["predictors"]] == [
        ("default", 3),
        ("canary", 1),
    ]


# -- check_model_compatibility ----------------------------------------------------------------

PICKLE_MLMODEL = {
    "artifact_path": "rf-regressor",
    "flavors": {
        "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.pkl"},
        "sklearn": {"pickled_model": "model.pkl", "serialization_format": "cloudpickle"},
    },
}
SKOPS_MLMODEL = {
    "flavors": {
        "python_function": {"loader_module": "mlflow.sklearn", "model_path": "model.skops"},
        "sklearn": {"pickled_model": "model.skops", "serialization_format": "skops"},
    },
}
PICKLE_FILES = ["MLmodel", "model.pkl", "conda.yaml", "python_env.yaml", "requirements.txt"]
SKOPS_FILES = ["MLmodel", "model.skops", "conda.yaml", "requirements.txt"]

SK = Implementation.SKLEARN_SERVER
MLF = Implementation.MLFLOW_SERVER


def refusal(mlmodel: dict[str, Any] | None, files: list[str], impl: Implementation, proto: Protocol) -> str:
    with pytest.raises(IncompatibleModel) as caught:
        check_model_compatibility(mlmodel, files, impl, proto)
    return str(caught.value)


@pytest.mark.parametrize(
    ("files", "impl", "proto"),
    [
        (PICKLE_FILES, SK, Protocol.V2),
        (["MLmodel", "model.joblib"], SK, Protocol.V2),
        (["MLmodel", "model.pickle"], SK, Protocol.V2),
        (["MLmodel", "model.joblib"], SK, Protocol.SELDON),
        (PICKLE_FILES, MLF, Protocol.V2),
        (PICKLE_FILES, MLF, Protocol.SELDON),
    ],
)
def test_models_the_server_can_load_pass(files: list[str], impl: Implementation, proto: Protocol) -> None:
    check_model_compatibility(PICKLE_MLMODEL, files, impl, proto)


@pytest.mark.parametrize("impl", [SK, MLF])
def test_a_skops_model_is_refused_with_the_cloudpickle_fix(impl: Implementation) -> None:
    message = refusal(SKOPS_MLMODEL, SKOPS_FILES, impl, Protocol.V2)
    assert message.startswith("the model was saved with skops (model.skops), and ")
    assert message.endswith(
        '; to fix: log it with mlflow.sklearn.log_model(..., serialization_format="cloudpickle"), '
        "which writes model.pkl"
    )


def test_mlflow_server_refusal_of_skops_says_its_mlflow_is_too_old() -> None:
    assert "MLFLOW_SERVER's image ships MLflow 2" in refusal(SKOPS_MLMODEL, SKOPS_FILES, MLF, Protocol.V2)


def test_seldon_protocol_refuses_model_pkl_and_points_at_v2() -> None:
    assert refusal(PICKLE_MLMODEL, PICKLE_FILES, SK, Protocol.SELDON) == (
        "SKLEARN_SERVER with protocol seldon loads only model.joblib, and this model has model.pkl; "
        "to fix: set protocol: v2 (MLServer loads model.pkl)"
    )


def test_v2_refuses_a_folder_without_a_pickle() -> None:
    message = refusal({"flavors": {"xgboost": {}}}, ["MLmodel", "model.xgb"], SK, Protocol.V2)
    assert message.startswith(
        "SKLEARN_SERVER with protocol v2 loads model.joblib, model.pickle or model.pkl, "
        "and the model folder holds: MLmodel, model.xgb; to fix: "
    )


def test_a_pickle_in_a_subfolder_does_not_count() -> None:
    refusal({"flavors": {"sklearn": {}}}, ["MLmodel", "data/model.pkl"], SK, Protocol.V2)


def test_mlflow_server_needs_a_python_function_flavor() -> None:
    message = refusal(
        {"flavors": {"sklearn": {"pickled_model": "model.pkl"}}}, PICKLE_FILES, MLF, Protocol.V2
    )
    assert message.startswith("MLFLOW_SERVER needs a python_function flavor in MLmodel, and it has: sklearn;")


@pytest.mark.parametrize("impl", [SK, MLF])
def test_a_folder_without_mlmodel_is_refused(impl: Implementation) -> None:
    message = refusal(None, ["model.pkl"], impl, Protocol.V2)
    assert message.startswith("no MLmodel file in the model folder (it holds: model.pkl); to fix: ")


def test_an_empty_mlmodel_is_refused() -> None:
    message = refusal({}, ["MLmodel", "model.pkl"], SK, Protocol.V2)
    assert message.startswith("the model folder has an MLmodel file that is empty or not a mapping")


def test_refusals_never_carry_a_newline() -> None:
    message = refusal(SKOPS_MLMODEL, SKOPS_FILES, SK, Protocol.SELDON)
    assert not re.search(r"\s{2,}|\n", message)
