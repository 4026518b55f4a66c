"""What a promotion may name, and where its copy may go: the platform admin's settings. Pure.

Creating a ModelPromotion must not let a user reach what they could not reach themselves:

* MLflow is one of ``PROMOTER_ALLOWED_TRACKING_URIS`` (default: the operator's own tracking
  URI), so the MLflow Secret's credentials are sent nowhere else;
* the target S3 endpoint is one of ``PROMOTER_ALLOWED_STORAGE_ENDPOINTS`` (default: the
  operator's own), and one other than the default brings a Secret of its own, never the
  default storage Secret (whose keys would otherwise sign requests to it);
* a run's model is read only at an allowed artifact endpoint and under an allowed ``s3://``
  root (``PROMOTER_ALLOWED_ARTIFACT_ENDPOINTS``, ``PROMOTER_ALLOWED_ARTIFACT_ROOTS``; default
  the artifact store's endpoint and ``s3://mlflow/``), so a run cannot point at another
  tenant's copy;
* a promotion's copy lands under its namespace's root, ``<bucket>/<namespace>/<prefix>/<runId>/``,
  or where ``PROMOTER_STORAGE_ROOTS`` maps the namespace (``team-a=models-a/serving``).
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import Settings
from .errors import InvalidSpec, NotAllowed


def _norm(url: str) -> str:
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}".rstrip("/")


def _under(url: str, allowed: Sequence[str]) -> bool:
    u = _norm(url)
    return any(u == a or u.startswith(a + "/") for a in map(_norm, allowed))


def tracking_uri(requested: str | None, settings: Settings) -> str:
    uri = requested or settings.tracking_uri
    if not _under(uri, settings.tracking_allowlist):
        raise NotAllowed("spec.source.trackingUri", uri, "PROMOTER_ALLOWED_TRACKING_URIS", settings.tracking_allowlist)
    return uri


def storage_endpoint(requested: str | None, secret: str | None, settings: Settings) -> str:
    """The target endpoint; ``secret`` is the one spec.target.storage.credentialsSecretRef names."""
    endpoint = requested or settings.storage_endpoint
    if _norm(endpoint) not in map(_norm, settings.storage_allowlist):
        raise NotAllowed("spec.target.storage.endpoint", endpoint, "PROMOTER_ALLOWED_STORAGE_ENDPOINTS",
                         settings.storage_allowlist)
    if _norm(endpoint) != _norm(settings.storage_endpoint) and secret == settings.storage_secret:
        raise InvalidSpec("spec.target.storage.credentialsSecretRef",
                          f"must name a Secret of its own for endpoint {endpoint}: {secret!r} holds the "
                          "operator's default storage keys, which go only to the default endpoint")
    return endpoint


def artifact_source(endpoint: str, uri: str, settings: Settings) -> None:
    """The model at ``uri`` may be read at ``endpoint``."""
    if _norm(endpoint) not in map(_norm, settings.artifact_allowlist):
        raise NotAllowed("the MLflow artifact endpoint", endpoint, "PROMOTER_ALLOWED_ARTIFACT_ENDPOINTS",
                         settings.artifact_allowlist)
    if not any(uri.rstrip("/") + "/" == root or uri.startswith(root) for root in settings.allowed_artifact_roots):
        raise NotAllowed("the run's model location", uri, "PROMOTER_ALLOWED_ARTIFACT_ROOTS",
                         settings.allowed_artifact_roots)


def copy_root(namespace: str, bucket: str, settings: Settings) -> str:
    """The part of the bucket the namespace's copies go under ('' for the whole bucket)."""
    for mapped, mapped_bucket, prefix in settings.storage_roots:
        if mapped == namespace:
            if bucket != mapped_bucket:
                raise NotAllowed("spec.target.storage.bucket", bucket, "PROMOTER_STORAGE_ROOTS",
                                 [f"{mapped}={mapped_bucket}/{prefix}".rstrip("/")])
            return prefix
    return namespace


__all__ = ["artifact_source", "copy_root", "storage_endpoint", "tracking_uri"]
