"""Operator settings, read once from the environment at start-up.

Every setting has a default that suits an in-cluster install next to the seed's MLflow and
MinIO; the README's configuration reference lists them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from . import runtimes

SCOPE_LABEL = "mlops.dev/scope"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


class ConfigError(ValueError):
    """A setting has a value the operator cannot use; the message names the variable."""


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N, low: N, high: N, what: str) -> N:
    """A bounded number from the environment; ``type(default)`` parses it (int or float)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = type(default)(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: must be {what}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value}: must be between {low} and {high}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    return _number(env, name, default, low, high, "a whole number")


def _float(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    return _number(env, name, default, low, high, "a number of seconds")


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name) or default
    if not value.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={value!r}: must start with http:// or https://")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    tracking_uri: str = "http://mlflow.mlflow.svc:5000"
    storage_endpoint: str = "http://minio.minio-system.svc.cluster.local:9000"
    storage_secret: str = "minio-credentials"
    # Where MLflow's s3:// artifacts live; the target storage endpoint unless set.
    artifact_endpoint: str = ""
    http_timeout: float = 10.0
    run_wait_timeout: float = 3600.0
    retry_delay: float = 10.0
    copy_concurrency: int = 4
    workers: int = 8
    drift_interval: float = 300.0
    metrics_port: int = 8080
    # A model folder beyond these is Rejected before anything is copied: a folder of thousands of
    # files is a dataset logged as the model, and the manifest of each file must stay small.
    max_files: int = 1000
    max_bytes: int = 10 * 1024**3
    # Operators sharing a cluster: this one handles promotions labelled mlops.dev/scope=<scope>,
    # or, when empty, those without the label.
    scope: str = ""
    # The image that serves "IMPLEMENTATION/protocol", over runtimes.SERVING_IMAGES, and what an
    # image has ({"python": "3.10", "scikit-learn": "1.5.2"}), over runtimes.IMAGE_VERSIONS.
    serving_images: Mapping[str, str] = field(default_factory=dict)
    image_versions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    @property
    def artifact_s3_endpoint(self) -> str:
        return self.artifact_endpoint or self.storage_endpoint


def _serving_images(env: Mapping[str, str]) -> dict[str, str]:
    name, raw = "PROMOTER_SERVING_IMAGES", env.get("PROMOTER_SERVING_IMAGES", "")
    images: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, _, image = item.partition("=")
        if key.strip() not in runtimes.SERVING_IMAGES or not image.strip():
            raise ConfigError(f"{name}={raw!r}: each item must be IMPLEMENTATION/protocol=image, with one of "
                              f"{', '.join(runtimes.SERVING_IMAGES)}; got {item!r}")
        images[key.strip()] = image.strip()
    return images


def _image_versions(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    name, raw = "PROMOTER_IMAGE_VERSIONS", env.get("PROMOTER_IMAGE_VERSIONS", "")
    if not raw.strip():
        return {}
    shape = (f"must be a JSON object of image -> {{library: version}} with libraries among "
             f"{', '.join(runtimes.LIBRARIES)}, e.g. "
             '{"my/mlserver:1.8": {"python": "3.12", "scikit-learn": "1.6.1"}}')
    try:
        table = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{name}: {shape}; it is not JSON") from None
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: {shape}")
    for image, versions in table.items():
        if not isinstance(versions, dict) or not all(
                lib in runtimes.LIBRARIES and isinstance(v, str) and re.fullmatch(r"[0-9][0-9A-Za-z.+-]*", v)
                for lib, v in versions.items()):
            raise ConfigError(f"{name}: {shape}; the entry for {image!r} is {versions!r}")
    return table


def load(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    storage = _url(env, "PROMOTER_STORAGE_ENDPOINT", Settings.storage_endpoint)
    artifact = env.get("PROMOTER_ARTIFACT_S3_ENDPOINT", "")
    if artifact:
        artifact = _url(env, "PROMOTER_ARTIFACT_S3_ENDPOINT", artifact)
    scope = env.get("PROMOTER_SCOPE", "")
    if scope and not _LABEL_VALUE.fullmatch(scope):
        raise ConfigError(f"PROMOTER_SCOPE={scope!r}: must be a label value (1-63 letters, digits, "
                          "'-', '_' or '.', starting and ending with a letter or digit)")
    return Settings(
        tracking_uri=_url(env, "PROMOTER_TRACKING_URI", Settings.tracking_uri),
        storage_endpoint=storage,
        storage_secret=env.get("PROMOTER_STORAGE_SECRET") or Settings.storage_secret,
        artifact_endpoint=artifact,
        http_timeout=_float(env, "PROMOTER_HTTP_TIMEOUT", Settings.http_timeout, 0.5, 300),
        run_wait_timeout=_float(env, "PROMOTER_RUN_WAIT_TIMEOUT", Settings.run_wait_timeout, 1, 7 * 86400),
        retry_delay=_float(env, "PROMOTER_RETRY_DELAY", Settings.retry_delay, 0.1, 3600),
        copy_concurrency=_int(env, "PROMOTER_COPY_CONCURRENCY", Settings.copy_concurrency, 1, 64),
        workers=_int(env, "PROMOTER_WORKERS", Settings.workers, 1, 128),
        drift_interval=_float(env, "PROMOTER_DRIFT_INTERVAL", Settings.drift_interval, 5, 86400),
        metrics_port=_int(env, "PROMOTER_METRICS_PORT", Settings.metrics_port, 0, 65535),
        max_files=_int(env, "PROMOTER_MAX_FILES", Settings.max_files, 1, 10_000),
        max_bytes=_int(env, "PROMOTER_MAX_BYTES", Settings.max_bytes, 1, 5 * 1024**4),
        scope=scope,
        serving_images=_serving_images(env),
        image_versions=_image_versions(env),
    )
