"""The S3 side's pure parts: URIs, the manifest, where a model may be."""

from __future__ import annotations

from typing import Any

import pytest

from promoter import artifacts
from promoter.artifacts import FileEntry, locate, parse_s3_uri, render_manifest
from promoter.errors import ModelNotFound

MIB = 1024 * 1024

RUN = "a" * 32


def test_an_s3_uri_splits_into_bucket_and_key() -> None:
    assert parse_s3_uri("s3://mlflow/1/models/m-1/artifacts") == ("mlflow", "1/models/m-1/artifacts")
    with pytest.raises(ValueError):
        parse_s3_uri("mlflow-artifacts:/1/abc")


def test_the_manifest_is_the_same_bytes_for_the_same_files_in_any_order() -> None:
    a = FileEntry("model.pkl", 10, "00" * 32, "e1")
    b = FileEntry("MLmodel", 3, "11" * 32, "e2")
    meta = {"runId": RUN, "modelName": "rf-regressor", "source": "s3://mlflow/x"}
    assert render_manifest([a, b], meta) == render_manifest([b, a], dict(reversed(meta.items())))
    assert b'"path": "MLmodel"' in render_manifest([a, b], meta)


def test_a_model_in_a_proxied_artifact_store_is_named_with_the_way_out() -> None:
    store: Any = object()
    with pytest.raises(ModelNotFound) as err:
        locate([(store, "mlflow-artifacts:/1/abc/artifacts/rf-regressor")], RUN, "rf-regressor")
    assert str(err.value) == (
        f"model 'rf-regressor' of run {RUN} not found; looked in: mlflow-artifacts:/1/abc/artifacts/rf-regressor "
        "(not an s3:// artifact store: run MLflow with --default-artifact-root s3://...)")


@pytest.mark.parametrize("size", [1, 8 * MIB, 100 * MIB, 78 * 1024 * MIB, 80 * 1024 * MIB, 5 * 1024**4])
def test_a_streamed_file_fits_in_s3s_10000_parts_with_parts_of_whole_mib(size: int) -> None:
    part = artifacts.part_size(size)
    assert part >= artifacts.PART_SIZE and part % MIB == 0
    assert -(-size // part) <= artifacts.MAX_PARTS
    if size <= artifacts.PART_SIZE * artifacts.MAX_PARTS:
        assert part == artifacts.PART_SIZE  # the memory bound holds for every model below 78 GiB
