"""The MLflow gateway's edge, over canned responses: what reaches a message from MLflow's
answers (its error_code, never its body), and where a registered version's files are."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from promoter.errors import ModelVersionNotFound, RegistryRefused, Unavailable
from promoter.mlflow_source import MlflowClient, ModelVersion, Run, error_code

URI = "http://mlflow.test:5000"
RUN = Run("r" * 32, "FINISHED", "active", "s3://mlflow/1/" + "r" * 32 + "/artifacts", {})


def answer(status: int, body: Any) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if not isinstance(body, bytes) else body
    response._content_consumed = True  # iter_content serves _content
    return response


@pytest.fixture
def client() -> MlflowClient:
    return MlflowClient(URI, timeout=1.0, retry_delay=1.0)


def canned(client: MlflowClient, *responses: requests.Response) -> list[tuple[str, str, Any]]:
    sent: list[tuple[str, str, Any]] = []
    queue = list(responses)

    def request(method: str, url: str, params: Any = None, json: Any = None, **_: Any) -> requests.Response:
        sent.append((method, url.removeprefix(URI), params or json))
        return queue.pop(0)

    client.session.request = request  # type: ignore[method-assign,assignment]
    return sent


SECRET_ECHO = {"error_code": "PERMISSION_DENIED", "message": "user alice (token hunter2) may not edit"}


def test_a_refused_registry_write_says_the_error_code_and_nothing_of_the_body(client: MlflowClient) -> None:
    canned(client, answer(403, SECRET_ECHO))
    with pytest.raises(Unavailable) as refused:  # 401/403: the credentials, waited on like an outage
        client.set_alias("rf", "champion", "3")
    assert "hunter2" not in str(refused.value)
    canned(client, answer(400, SECRET_ECHO))
    with pytest.raises(RegistryRefused) as e:
        client.set_version_tag("rf", "3", "mlops.dev/serving", "ns/sd")
    assert str(e.value) == f"MLflow at {URI} refused tagging 'rf' version 3: 400 PERMISSION_DENIED"


def test_an_unexpected_answer_to_a_read_says_the_status_and_error_code_only(client: MlflowClient) -> None:
    canned(client, answer(409, SECRET_ECHO))
    with pytest.raises(Unavailable) as e:
        client.get_run("r" * 32)
    assert "answered 409 to /api/2.0/mlflow/runs/get (PERMISSION_DENIED)" in str(e.value)
    assert "alice" not in str(e.value)


def test_error_code_is_a_word_of_capitals_or_a_dash() -> None:
    assert error_code({"error_code": "RESOURCE_DOES_NOT_EXIST"}) == "RESOURCE_DOES_NOT_EXIST"
    assert error_code({"error_code": "<script>alert(1)</script>"}) == "-"
    assert error_code(None) == "-"  # an answer that was not JSON


def test_an_unknown_version_is_rejected_naming_it(client: MlflowClient) -> None:
    canned(client, answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"}))
    with pytest.raises(ModelVersionNotFound, match="registered model 'rf' version 9 not found"):
        client.model_version("rf", "9")


def test_a_version_is_read_with_its_run_source_and_tags(client: MlflowClient) -> None:
    sent = canned(client, answer(200, {"model_version": {
        "name": "rf", "version": "2", "run_id": RUN.run_id, "source": "models:/m-abc",
        "tags": [{"key": "mlops.dev/serving", "value": "ns/sd"}]}}))
    version = client.version_by_alias("rf", "champion")
    assert sent == [("GET", "/api/2.0/mlflow/registered-models/alias", {"name": "rf", "alias": "champion"})]
    assert (version.run_id, version.model_id, version.tags) == (RUN.run_id, "m-abc", {"mlops.dev/serving": "ns/sd"})


@pytest.mark.parametrize(("source", "uri"), [
    (f"runs:/{RUN.run_id}/rf-regressor", f"{RUN.artifact_uri}/rf-regressor"),
    ("s3://mlflow/1/elsewhere/rf-regressor/", "s3://mlflow/1/elsewhere/rf-regressor"),
])
def test_an_mlflow_2_version_is_found_where_its_source_says(client: MlflowClient, source: str, uri: str) -> None:
    located = client.version_candidates(ModelVersion("rf", "1", RUN.run_id, source), RUN)
    assert [loc.uri for loc in located] == [uri]


def test_an_mlflow_3_version_is_found_at_its_logged_model(client: MlflowClient) -> None:
    canned(client, answer(200, {"model": {"info": {"model_id": "m-abc", "artifact_uri": "s3://mlflow/1/models/m-abc/artifacts/"}}}))
    (located,) = client.version_candidates(ModelVersion("rf", "1", RUN.run_id, "models:/m-abc"), RUN)
    assert (located.uri, located.model_id, located.layout) == ("s3://mlflow/1/models/m-abc/artifacts", "m-abc",
                                                               "logged-model")


def test_the_datasets_of_a_runs_metrics_come_from_its_logged_models(client: MlflowClient) -> None:
    run = Run(RUN.run_id, "FINISHED", "active", RUN.artifact_uri, {}, ("m-abc",))
    canned(client, answer(200, {"model": {"info": {}, "data": {"metrics": [
        {"key": "rmse", "value": 54.0, "dataset_name": "diabetes-test", "dataset_digest": "bd98d379"},
        {"key": "r2", "value": 0.4}]}}}))
    datasets = client.metric_datasets(run)
    assert {k: (d.name, d.digest) for k, d in datasets.items()} == {"rmse": ("diabetes-test", "bd98d379")}


def test_registering_a_run_reuses_the_registered_model(client: MlflowClient) -> None:
    from promoter.mlflow_source import ModelLocation

    sent = canned(client, answer(400, {"error_code": "RESOURCE_ALREADY_EXISTS"}),
                  answer(200, {"model_version": {"name": "rf", "version": "4", "run_id": RUN.run_id,
                                                 "source": "models:/m-abc"}}))
    version = client.register("rf", RUN, ModelLocation("s3://mlflow/1/models/m-abc/artifacts", "logged-model", "m-abc"))
    assert version.version == "4"
    assert sent[1] == ("POST", "/api/2.0/mlflow/model-versions/create",
                       {"name": "rf", "run_id": RUN.run_id, "source": "models:/m-abc", "model_id": "m-abc"})
