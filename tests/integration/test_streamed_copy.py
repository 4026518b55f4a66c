"""A target on another S3 endpoint: the model is streamed through the operator, part by part,
and the result is the same verified copy as a server-side one."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from minio import Minio

from devstack import stack

from .conftest import Operator
from .helpers import RMSE_BELOW_1, apply, get, phase_in, promotion, read_object, wait_for

pytestmark = pytest.mark.integration

ACCESS, SECRET = "other-s3", "other-s3-secret-key"
SCOPE = "streaming"


@pytest.fixture(scope="module")
def other_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second S3 server with its own keys, as a MinIO next to MLflow's artifact store would be."""
    folder = tmp_path_factory.mktemp("other-s3")
    port = stack.free_port()
    weed = str(Path(sys.executable).parent / "weed")
    proc = subprocess.Popen(
        [weed, "mini", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={stack.free_port()}", f"-volume.port={stack.free_port()}",
         f"-filer.port={stack.free_port()}", f"-s3.port={port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
         "-webdav=false", "-admin.ui=false"],
        env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET},
        stdout=open(folder / "weed.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    client = Minio(f"127.0.0.1:{port}", access_key=ACCESS, secret_key=SECRET, secure=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.make_bucket("served-models")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def streaming(devstack: stack.State, crd: None, other_s3: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[Operator]:
    """An operator whose admin allowed the second endpoint (PROMOTER_ALLOWED_STORAGE_ENDPOINTS)."""
    op = Operator(devstack, tmp_path_factory.mktemp("streaming") / "operator.log",
                  {"PROMOTER_ALLOWED_STORAGE_ENDPOINTS": f"{devstack.s3_endpoint},{other_s3}"}, scope=SCOPE)
    op.start()
    try:
        yield op
    finally:
        op.stop()


def test_a_model_is_streamed_to_another_endpoint_and_verified(
        devstack: stack.State, streaming: Operator, namespace: str, runs: dict[str, str],
        other_s3: str) -> None:
    devstack.kubectl("-n", namespace, "create", "secret", "generic", "served-models-keys",
                     f"--from-literal=AWS_ACCESS_KEY_ID={ACCESS}", f"--from-literal=AWS_SECRET_ACCESS_KEY={SECRET}")
    name, run_id = f"mp-{uuid.uuid4().hex[:6]}", runs["mlflow2"]
    obj = promotion(name, run_id, RMSE_BELOW_1, deployment="elsewhere", scope=SCOPE)
    obj["spec"]["target"]["storage"] = {"endpoint": other_s3, "bucket": "served-models", "prefix": "rf",
                                        "credentialsSecretRef": {"name": "served-models-keys"}}
    apply(devstack, namespace, obj)
    mp = wait_for(devstack, namespace, name, phase_in("Promoted", "Rejected", "Failed"))
    assert mp["status"]["phase"] == "Promoted", mp["status"]
    copied = next(c for c in mp["status"]["conditions"] if c["type"] == "ArtifactCopied")
    assert copied["message"].endswith("(streamed)")

    target = Minio(other_s3.removeprefix("http://"), access_key=ACCESS, secret_key=SECRET, secure=False)
    response = target.get_object("served-models", f"{namespace}/rf/{run_id}/promotion-manifest.json")
    manifest = json.loads(response.read())
    response.close()
    source_prefix = manifest["source"].removeprefix("s3://mlflow/")
    for entry in manifest["files"]:
        original = read_object(devstack, "mlflow", f"{source_prefix}/{entry['path']}")
        assert entry["sha256"] == hashlib.sha256(original).hexdigest()
        got = target.get_object("served-models", f"{namespace}/rf/{run_id}/{entry['path']}")
        assert hashlib.sha256(got.read()).hexdigest() == entry["sha256"]
        got.close()
    rclone = get(devstack, namespace, "secret", "seldon-rclone-secret")
    assert rclone is not None
    sdep = get(devstack, namespace, "seldondeployment", "elsewhere")
    assert sdep is not None and sdep["spec"]["predictors"][0]["graph"]["modelUri"] == f"s3://served-models/{namespace}/rf/{run_id}"
