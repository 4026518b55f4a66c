"""The rclone Secret and the SeldonDeployment a promotion makes, as it wants them.

Both are written only when the operator made them or was handed them (``seldon.guarded``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import seldon
from .context import Context
from .credentials import Keys
from .ownership import PROMOTION_ANNOTATION, RUN_ANNOTATION
from .spec import ModelPromotionSpec

DIGEST_ANNOTATION = "mlops.dev/artifact-digest"


@dataclass(frozen=True)
class Ref:
    """The promotion a reconcile is about."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Ref:
        meta = body.get("metadata") or {}
        return cls(str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid") or ""))

    @property
    def owner(self) -> str:
        return seldon.owner(self.namespace, self.name, self.uid)


def rclone_secret(ctx: Context, ref: Ref, spec: ModelPromotionSpec, endpoint: str, keys: Keys) -> bool:
    """The Secret Seldon's storage initializer reads; True when it was written."""
    access, secret, _ = keys
    name = spec.target.seldon_deployment.secret_name
    desired = seldon.render_rclone_secret(name, ref.namespace, endpoint, access, secret, ref.owner)

    def merge(existing: dict[str, Any] | None) -> dict[str, Any] | None:
        if existing is None:
            return desired
        meta = existing.get("metadata") or {}
        have = {k: base64.b64decode(v).decode(errors="replace") for k, v in (existing.get("data") or {}).items()}
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        want_labels, want_annotations = desired["metadata"]["labels"], desired["metadata"]["annotations"]
        if all(have.get(k) == v for k, v in desired["stringData"].items()) and \
                all(labels.get(k) == v for k, v in want_labels.items()) and \
                annotations.get(seldon.OWNER_ANNOTATION, "").split("/")[0] == ref.namespace:
            return None
        return {"metadata": {"labels": want_labels, "annotations": want_annotations},
                "stringData": desired["stringData"]}

    what = f"Secret {ref.namespace}/{name}"
    return ctx.kube.ensure_secret(ref.namespace, name, seldon.guarded(
        what, "spec.target.seldonDeployment.secretName", merge, secret=True)) != "unchanged"


def deployment(ref: Ref, spec: ModelPromotionSpec, model_uri: str, digest: str, run_id: str) -> dict[str, Any]:
    """The SeldonDeployment serving ``model_uri``, the model of run ``run_id``, for this promotion."""
    annotations = {PROMOTION_ANNOTATION: ref.name, RUN_ANNOTATION: run_id, DIGEST_ANNOTATION: digest}
    return seldon.render_seldon_deployment(spec.target.seldon_deployment, ref.namespace, model_uri, annotations,
                                           ref.owner)


__all__ = ["DIGEST_ANNOTATION", "RUN_ANNOTATION", "Ref", "deployment", "rclone_secret"]
