"""The Secrets a promotion references, read for the reconcile.

Secrets are read by name from the promotion's namespace. A problem with one is told the same
way whether the Secret is missing, unreadable or lacks a key, so that a promotion cannot be
used to learn which Secrets exist; the operator's log says which it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .context import Context
from .errors import CredentialsProblem
from .mlflow_source import Auth
from .spec import ModelPromotionSpec

S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
DEFAULT_FIELD = "operator default PROMOTER_STORAGE_SECRET"
log = logging.getLogger("promoter.credentials")

Keys = tuple[str, str, str]
"""access key, secret key, the Secret they came from (namespace/name)."""


def _unusable(namespace: str, name: str, field: str, needs: str, why: str) -> CredentialsProblem:
    log.info("Secret %s/%s (%s) cannot be used: %s", namespace, name, field, why)
    return CredentialsProblem(f"{namespace}/{name} ({field})", f"not found, not readable, or {needs}")


def data(ctx: Context, namespace: str, ref: Any, field: str, needs: str = "empty") -> dict[str, str]:
    """The decoded data of the Secret ``ref`` names ({} when there is no reference)."""
    if ref is None:
        return {}
    try:
        return ctx.kube.secret_data(namespace, ref.name, field)
    except CredentialsProblem as e:
        raise _unusable(namespace, ref.name, field, needs, e.problem) from None


def storage_keys(ctx: Context, namespace: str, spec: ModelPromotionSpec | None) -> Keys:
    """The target storage keys of the spec, or the operator's default ones when spec is None."""
    ref = spec.target.storage.credentials_secret_ref if spec else None
    name = ref.name if ref else ctx.settings.storage_secret
    field = "spec.target.storage.credentialsSecretRef" if ref else DEFAULT_FIELD
    needs = f"without {' and '.join(S3_KEYS)}"
    try:
        found = ctx.kube.secret_data(namespace, name, field)
    except CredentialsProblem as e:
        raise _unusable(namespace, name, field, needs, e.problem) from None
    missing = [k for k in S3_KEYS if not found.get(k)]
    if missing:
        raise _unusable(namespace, name, field, needs, f"has no key {', '.join(missing)}")
    return found[S3_KEYS[0]], found[S3_KEYS[1]], f"{namespace}/{name}"


def mlflow_auth(env: Mapping[str, str]) -> Auth:
    return Auth(env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", ""),
                env.get("MLFLOW_TRACKING_TOKEN", ""))


def artifact_keys(env: Mapping[str, str]) -> tuple[str, str] | None:
    """The artifact store's own S3 keys from the MLflow Secret, when it brings both."""
    if all(env.get(k) for k in S3_KEYS):
        return env[S3_KEYS[0]], env[S3_KEYS[1]]
    return None


__all__ = ["S3_KEYS", "Keys", "artifact_keys", "data", "mlflow_auth", "storage_keys"]
