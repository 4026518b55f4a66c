"""Operator settings: defaults, and a bad value named with its variable."""

from __future__ import annotations

import pytest

from promoter import config


def test_defaults_suit_an_in_cluster_install() -> None:
    s = config.load({})
    assert s.tracking_uri == "http://mlflow.mlflow.svc:5000"
    assert s.artifact_s3_endpoint == s.storage_endpoint == "http://minio.minio-system.svc.cluster.local:9000"
    assert (s.retry_delay, s.workers, s.max_files) == (10.0, 8, 1000)


def test_values_are_read_with_their_types() -> None:
    s = config.load({"PROMOTER_WORKERS": "3", "PROMOTER_HTTP_TIMEOUT": "2.5",
                     "PROMOTER_ARTIFACT_S3_ENDPOINT": "http://artifacts:9000/"})
    assert (s.workers, s.http_timeout, s.artifact_s3_endpoint) == (3, 2.5, "http://artifacts:9000")


def test_the_serving_images_and_their_versions_are_settings() -> None:
    s = config.load({"PROMOTER_SERVING_IMAGES": "SKLEARN_SERVER/v2=my/mlserver:2, MLFLOW_SERVER/v2=my/mlflow:2",
                     "PROMOTER_IMAGE_VERSIONS": '{"my/mlserver:2": {"python": "3.12", "scikit-learn": "1.6.1"}}'})
    assert s.serving_images == {"SKLEARN_SERVER/v2": "my/mlserver:2", "MLFLOW_SERVER/v2": "my/mlflow:2"}
    assert s.image_versions == {"my/mlserver:2": {"python": "3.12", "scikit-learn": "1.6.1"}}
    assert (config.load({}).serving_images, config.load({}).image_versions) == ({}, {})


@pytest.mark.parametrize(("env", "message"), [
    ({"PROMOTER_WORKERS": "many"}, "PROMOTER_WORKERS='many': must be a whole number"),
    ({"PROMOTER_WORKERS": "0"}, "PROMOTER_WORKERS=0: must be between 1 and 128"),
    ({"PROMOTER_HTTP_TIMEOUT": "soon"}, "PROMOTER_HTTP_TIMEOUT='soon': must be a number of seconds"),
    ({"PROMOTER_TRACKING_URI": "mlflow:5000"}, "PROMOTER_TRACKING_URI='mlflow:5000': must start with http:// or https://"),
    ({"PROMOTER_SERVING_IMAGES": "SKLEARN=my/mlserver:2"},
     "PROMOTER_SERVING_IMAGES='SKLEARN=my/mlserver:2': each item must be IMPLEMENTATION/protocol=image, with one of "
     "SKLEARN_SERVER/v2, SKLEARN_SERVER/seldon, MLFLOW_SERVER/v2, MLFLOW_SERVER/seldon; got 'SKLEARN=my/mlserver:2'"),
    ({"PROMOTER_IMAGE_VERSIONS": "{not json"},
     'PROMOTER_IMAGE_VERSIONS: must be a JSON object of image -> {library: version} with libraries among '
     'scikit-learn, python, numpy, e.g. {"my/mlserver:1.8": {"python": "3.12", "scikit-learn": "1.6.1"}}; '
     'it is not JSON'),
    ({"PROMOTER_IMAGE_VERSIONS": '{"my/mlserver:2": {"torch": "2.1"}}'},
     'PROMOTER_IMAGE_VERSIONS: must be a JSON object of image -> {library: version} with libraries among '
     'scikit-learn, python, numpy, e.g. {"my/mlserver:1.8": {"python": "3.12", "scikit-learn": "1.6.1"}}; '
     "the entry for 'my/mlserver:2' is {'torch': '2.1'}"),
])
def test_a_bad_setting_is_named_with_its_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(env)
    assert str(err.value) == message
