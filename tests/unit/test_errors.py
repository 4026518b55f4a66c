"""The exception tree: what each error says to a person, and which kind of retry it means."""

from __future__ import annotations

import pytest

from promoter import errors
from promoter.errors import (
    ArtifactTampered,
    CredentialsProblem,
    GatesFailed,
    IncompatibleModel,
    InvalidSpec,
    ModelNotFound,
    ModelVersionNotFound,
    PromoterError,
    RegistryRefused,
    Rejected,
    RunNotFinished,
    RunNotFound,
    RunNotUsable,
    RunTimedOut,
    ServingChanged,
    Unavailable,
    VersionSkew,
    Waiting,
)

RUN = "5f0c2d9e5f0c2d9e5f0c2d9e5f0c2d9e"

PERMANENT = [
    (InvalidSpec("spec.gates[1].threshold", "must be a finite number"), "InvalidSpec"),
    (RunNotFound(RUN, "http://mlflow:5000"), "RunNotFound"),
    (RunNotUsable(RUN, "FAILED"), "RunNotUsable"),
    (RunTimedOut(RUN, 3600), "RunNotFinished"),
    (GatesFailed("gate failed: rmse 0.91 is not <= 0.8"), "GatesFailed"),
    (ModelNotFound(RUN, "rf-regressor", ["s3://mlflow/1/x/artifacts"]), "ModelNotFound"),
    (IncompatibleModel("the model was saved with skops", "log it with cloudpickle"), "IncompatibleModel"),
    (CredentialsProblem("minio-credentials", "has no key AWS_SECRET_ACCESS_KEY"), "CredentialsInvalid"),
    (ArtifactTampered("s3://models/rf/x", "model.pkl: sha256 differs"), "ArtifactTampered"),
    (ModelVersionNotFound("rf", "http://mlflow:5000", version="7"), "ModelVersionNotFound"),
    (VersionSkew("the model was saved with scikit-learn 1.9.1", "log it with 1.5.2"), "VersionSkew"),
    (RegistryRefused("http://mlflow:5000", "tagging run x", 403, "PERMISSION_DENIED"), "RegistryRefused"),
]


@pytest.mark.parametrize(("error", "reason"), PERMANENT, ids=lambda v: type(v).__name__)
def test_permanent_errors_are_rejected_with_their_reason(error: PromoterError, reason: str) -> None:
    assert isinstance(error, Rejected)
    assert not isinstance(error, Waiting)
    assert error.reason == reason
    assert str(error) == error.message


def test_invalid_spec_reads_field_colon_problem() -> None:
    error = InvalidSpec("spec.gates[1].threshold", "must be a finite number")
    assert str(error) == "spec.gates[1].threshold: must be a finite number"
    assert (error.field, error.problem) == ("spec.gates[1].threshold", "must be a finite number")


def test_run_not_found_names_the_run_and_the_server() -> None:
    error = RunNotFound(RUN, "http://mlflow.mlflow.svc:5000")
    assert str(error) == f"run {RUN} not found on MLflow at http://mlflow.mlflow.svc:5000"


def test_run_not_usable_says_the_status_and_detail() -> None:
    assert str(RunNotUsable(RUN, "KILLED")) == f"run {RUN} cannot be promoted: it is KILLED"
    assert (
        str(RunNotUsable(RUN, "deleted", "restore it in MLflow"))
        == f"run {RUN} cannot be promoted: it is deleted (restore it in MLflow)"
    )


def test_run_timed_out_says_how_long_it_waited() -> None:
    assert str(RunTimedOut(RUN, 3600.4)) == (
        f"run {RUN} is still not finished after 3600s; gave up waiting (change the spec to try again)"
    )


def test_model_not_found_lists_where_it_looked() -> None:
    error = ModelNotFound(RUN, "rf-regressor", ["s3://mlflow/1/models/m-1/artifacts", "s3://mlflow/1/r/a"])
    assert str(error) == (
        f"model 'rf-regressor' of run {RUN} not found; looked in: "
        "s3://mlflow/1/models/m-1/artifacts, s3://mlflow/1/r/a"
    )


def test_incompatible_model_gives_problem_and_fix() -> None:
    error = IncompatibleModel("SKLEARN_SERVER cannot load model.skops", "log it with cloudpickle")
    assert str(error) == "SKLEARN_SERVER cannot load model.skops; to fix: log it with cloudpickle"


def test_a_missing_model_version_names_the_model_and_the_version_or_alias() -> None:
    assert str(ModelVersionNotFound("rf", "http://mlflow:5000", version="7", code="RESOURCE_DOES_NOT_EXIST")) == (
        "registered model 'rf' version 7 not found on MLflow at http://mlflow:5000 "
        "(no such model or no such version, RESOURCE_DOES_NOT_EXIST)")
    assert str(ModelVersionNotFound("rf", "http://mlflow:5000", alias="champion")) == (
        "registered model 'rf' alias @champion not found on MLflow at http://mlflow:5000 "
        "(no such model or no such alias)")


def test_a_refused_registry_write_says_the_status_and_error_code_only() -> None:
    error = RegistryRefused("http://mlflow:5000", "setting alias 'champion' on 'rf' version 3", 403,
                            "PERMISSION_DENIED")
    assert str(error) == ("MLflow at http://mlflow:5000 refused setting alias 'champion' on 'rf' version 3: "
                          "403 PERMISSION_DENIED")


def test_a_changed_deployment_is_judged_again_soon() -> None:
    error = ServingChanged("sd", "a" * 32, "b" * 32)
    assert isinstance(error, Waiting) and error.delay == 1.0 and error.reason == "ServingChanged"
    assert str(error) == (f"sd now serves run {'b' * 32}, not run {'a' * 32} the baseline gates were judged "
                          "against; judging again")


def test_credentials_problem_names_the_secret_and_key() -> None:
    error = CredentialsProblem("ml/minio-credentials", "has no key AWS_SECRET_ACCESS_KEY")
    assert str(error) == "Secret ml/minio-credentials: has no key AWS_SECRET_ACCESS_KEY"


def test_run_not_finished_waits_on_mlflow() -> None:
    error = RunNotFinished(RUN, "RUNNING")
    assert isinstance(error, Waiting)
    assert not isinstance(error, Rejected)
    assert (error.reason, error.upstream, error.delay) == ("RunNotFinished", "mlflow", 30.0)
    assert str(error) == f"run {RUN} is RUNNING; waiting for it to finish"


@pytest.mark.parametrize(
    ("upstream", "reason", "message"),
    [
        ("mlflow", "MlflowUnavailable", "MLflow is unavailable: 503 from /api; retrying in 10s"),
        ("s3", "S3Unavailable", "S3 is unavailable: 503 from /api; retrying in 10s"),
        (
            "kubernetes",
            "KubernetesUnavailable",
            "the Kubernetes API is unavailable: 503 from /api; retrying in 10s",
        ),
    ],
)
def test_unavailable_reason_names_the_upstream(upstream: str, reason: str, message: str) -> None:
    error = Unavailable(upstream, "503 from /api")
    assert isinstance(error, Waiting)
    assert (error.reason, error.upstream, error.delay) == (reason, upstream, 10.0)
    assert str(error) == message


def test_unavailable_reason_is_per_instance() -> None:
    assert Unavailable("s3", "x").reason == "S3Unavailable"
    assert Unavailable("mlflow", "x", delay=2.5).reason == "MlflowUnavailable"
    assert Unavailable.reason == "Waiting"


def test_passwords_in_uris_never_reach_a_message() -> None:
    error = RunNotFound(RUN, "https://alice:s3cr3t@mlflow.example.com/")
    assert "s3cr3t" not in str(error)
    assert str(error) == f"run {RUN} not found on MLflow at https://***@mlflow.example.com/"
    assert "s3cr3t" not in str(Unavailable("s3", "GET http://k:s3cr3t@minio:9000/models failed"))


def test_module_docstring_draws_every_error() -> None:
    doc = errors.__doc__ or ""
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, PromoterError)
    ]
    assert len(classes) == 22
    for cls in classes:
        assert cls.__name__ in doc, cls.__name__

