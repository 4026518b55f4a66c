"""The operator's exceptions: what went wrong, and whether waiting can fix it.

::

    PromoterError                 base; .message, .reason
    ├── Rejected                  permanent: nothing changes until the spec (or the run) does
    │   ├── InvalidSpec           a spec field is malformed           reason InvalidSpec
    │   ├── RunNotFound           no such run on the tracking server   reason RunNotFound
    │   ├── ModelVersionNotFound  no such registered model/version/alias reason ModelVersionNotFound
    │   ├── RunNotUsable          FAILED, KILLED or deleted run        reason RunNotUsable
    │   ├── RunTimedOut           still running after the bound        reason RunNotFinished
    │   ├── GatesFailed           a metric missed its gate             reason GatesFailed
    │   ├── ModelNotFound         the run has no such model            reason ModelNotFound
    │   ├── IncompatibleModel     the server cannot load the model     reason IncompatibleModel
    │   ├── VersionSkew           model libraries differ from the image's reason VersionSkew
    │   ├── ModelTooLarge         over PROMOTER_MAX_FILES / _BYTES     reason ModelTooLarge
    │   ├── CredentialsProblem    Secret missing or lacks a key        reason CredentialsInvalid
    │   ├── NotAllowed            outside the admin's allowlists       reason NotAllowed
    │   ├── NotManaged            a child the operator did not make    reason NotManaged
    │   ├── CopyConflict          another copy is at the target prefix reason CopyConflict
    │   ├── ArtifactTampered      copy does not match its manifest     reason ArtifactTampered
    │   └── RegistryRefused       MLflow refused a registry write      reason RegistryRefused
    └── Waiting                   temporary: retry after .delay seconds; .upstream names whom
        ├── RunNotFinished        the run is still running             reason RunNotFinished
        ├── ServingChanged        the deployment changed its run while judged reason ServingChanged
        └── Unavailable           MLflow, S3 or the API server is down reason <Upstream>Unavailable

A ``RegistryRefused`` (or ``Unavailable``) while recording a Promoted promotion in the registry
never rejects it: it becomes the condition ``Recorded=False`` and is retried.

The handlers turn ``Rejected`` into ``kopf.PermanentError`` and ``Waiting`` into
``kopf.TemporaryError(delay=...)``; ``.reason`` is the CamelCase word used for conditions and
Events. Constructors take names and numbers, never secret values, and every message passes
through :func:`redact` so a URI with ``user:password@`` in it cannot leak into status or logs,
then :func:`clip`, so no message is longer than ``MESSAGE_LIMIT``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MESSAGE_LIMIT = 1024  # characters of a message in status, conditions and Events
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_AUTHORITY = re.compile(r"[^/\s]*")  # from just after "://" to the path or a space: linear

_UPSTREAM_NAMES = {"mlflow": "MLflow", "s3": "S3", "kubernetes": "the Kubernetes API"}


def redact(text: str) -> str:
    """Replace the userinfo of every ``scheme://user:pass@host`` URI in text with ``***``.

    One pass over the text (a regular expression anchored on the scheme was quadratic on long
    text without a match, and a message can hold whatever an upstream answered)."""
    out: list[str] = []
    start = 0
    while True:
        sep = text.find("://", start)
        if sep < 0:
            out.append(text[start:])
            return "".join(out)
        host = sep + 3
        match = _AUTHORITY.match(text, host)
        end = match.end() if match else host
        at = text.rfind("@", host, end)
        if at >= 0 and sep > 0 and text[sep - 1] in _SCHEME_CHARS:
            out.append(text[start:host])
            out.append("***@")
            start = at + 1
        else:
            out.append(text[start:end])
            start = end


def clip(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """At most ``limit`` characters; a longer text says how long it was."""
    if len(text) <= limit:
        return text
    tail = f"... ({len(text)} characters)"
    return text[: max(0, limit - len(tail))] + tail


class PromoterError(Exception):
    """Base of every error the operator reports to a user."""

    reason: str = "Error"

    def __init__(self, message: str) -> None:
        self.message = clip(redact(message))
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class Rejected(PromoterError):
    """Permanent: retrying cannot help until the spec or the run changes."""

    reason = "Rejected"


class InvalidSpec(Rejected):
    """A spec field failed validation; ``field`` is the path in the user's spelling."""

    reason = "InvalidSpec"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class RunNotFound(Rejected):
    reason = "RunNotFound"

    def __init__(self, run_id: str, tracking_uri: str) -> None:
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        super().__init__(f"run {run_id} not found on MLflow at {tracking_uri}")


class ModelVersionNotFound(Rejected):
    """The registered model, its version or its alias is not on the tracking server."""

    reason = "ModelVersionNotFound"

    def __init__(self, name: str, tracking_uri: str, version: str = "", alias: str = "", code: str = "") -> None:
        self.name, self.version, self.alias, self.code = name, version, alias, code
        which = f"version {version}" if version else f"alias @{alias}"
        said = f", {code}" if code and code != "-" else ""
        super().__init__(f"registered model {name!r} {which} not found on MLflow at {tracking_uri} "
                         f"(no such model or no such {'version' if version else 'alias'}{said})")


class RunNotUsable(Rejected):
    """The run ended badly (FAILED, KILLED) or was deleted; its model is not promotable."""

    reason = "RunNotUsable"

    def __init__(self, run_id: str, status: str, detail: str = "") -> None:
        self.run_id = run_id
        self.status = status
        self.detail = detail
        message = f"run {run_id} cannot be promoted: it is {status}"
        super().__init__(f"{message} ({detail})" if detail else message)


class RunTimedOut(Rejected):
    """Still running after the operator's bound; shares the reason of the waiting it ends."""

    reason = "RunNotFinished"

    def __init__(self, run_id: str, waited_seconds: float) -> None:
        self.run_id = run_id
        self.waited_seconds = waited_seconds
        super().__init__(
            f"run {run_id} is still not finished after {waited_seconds:.0f}s; "
            "gave up waiting (change the spec to try again)"
        )


class GatesFailed(Rejected):
    """``summary`` is the verdict's sentence, e.g. ``gate failed: rmse 0.91 is not <= 0.8``."""

    reason = "GatesFailed"

    def __init__(self, summary: str) -> None:
        self.summary = summary
        super().__init__(summary)


class ModelNotFound(Rejected):
    reason = "ModelNotFound"

    def __init__(self, run_id: str, model_name: str, looked_in: Sequence[str]) -> None:
        self.run_id = run_id
        self.model_name = model_name
        self.looked_in = list(looked_in)
        where = ", ".join(self.looked_in) if self.looked_in else "nowhere"
        super().__init__(f"model {model_name!r} of run {run_id} not found; looked in: {where}")


class IncompatibleModel(Rejected):
    """The chosen Seldon server cannot load the model; ``fix`` says what to change."""

    reason = "IncompatibleModel"

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; to fix: {fix}")


class VersionSkew(Rejected):
    """The model was saved with library versions the serving image does not have."""

    reason = "VersionSkew"

    def __init__(self, detail: str, fix: str) -> None:
        self.detail, self.fix = detail, fix
        super().__init__(f"{detail}; to fix: {fix}")


class ModelTooLarge(Rejected):
    """The model folder is over an operator bound; ``setting`` names it, e.g. PROMOTER_MAX_FILES."""

    reason = "ModelTooLarge"

    def __init__(self, what: str, found: int, unit: str, setting: str, limit: int, more: bool = False) -> None:
        self.found = found
        self.setting = setting
        self.limit = limit
        count = f"more than {limit}" if more else str(found)  # more: the listing stopped past the limit
        super().__init__(f"{what} has {count} {unit}, over the operator's limit {setting}={limit}; "
                         "nothing was copied (log a smaller model folder or raise the limit)")


class CredentialsProblem(Rejected):
    """Names the Secret and the key at fault; it is never given a value to leak."""

    reason = "CredentialsInvalid"

    def __init__(self, secret: str, problem: str) -> None:
        self.secret = secret
        self.problem = problem
        super().__init__(f"Secret {secret}: {problem}")


class NotAllowed(Rejected):
    """A URI or place the platform admin's settings do not allow; ``setting`` says which."""

    reason = "NotAllowed"

    def __init__(self, field: str, value: str, setting: str, allowed: Sequence[str]) -> None:
        self.field, self.value, self.setting = field, value, setting
        super().__init__(f"{field} {clip(value, 200)!r} is not allowed by the operator's settings "
                         f"({setting}: {', '.join(allowed) or 'none'}); ask the platform admin to add it")


class NotManaged(Rejected):
    """An existing Secret or SeldonDeployment the operator did not make: left as it is."""

    reason = "NotManaged"

    def __init__(self, what: str, field: str, problem: str, fix: str) -> None:
        self.what, self.field = what, field
        super().__init__(f"{what} ({field}) {problem}; it is left as it is: {fix}")


class CopyConflict(Rejected):
    """The target prefix holds a copy of something else: never overwritten, never served."""

    reason = "CopyConflict"

    def __init__(self, uri: str, detail: str) -> None:
        self.uri, self.detail = uri, detail
        super().__init__(f"{uri} already holds a copy that is not of this model ({detail}); it is "
                         "neither overwritten nor served: change spec.target.storage.prefix")


class ArtifactTampered(Rejected):
    reason = "ArtifactTampered"

    def __init__(self, uri: str, detail: str) -> None:
        self.uri = uri
        self.detail = detail
        super().__init__(f"artifact at {uri} does not match its manifest: {detail}")


class RegistryRefused(Rejected):
    """MLflow answered a registry request with a 4xx; ``code`` is its error_code, the only part
    of its answer repeated (the body may echo anything)."""

    reason = "RegistryRefused"

    def __init__(self, tracking_uri: str, what: str, status: int, code: str) -> None:
        self.status, self.code = status, code
        super().__init__(f"MLflow at {tracking_uri} refused {what}: {status} {code}")


class Waiting(PromoterError):
    """Temporary: try again after ``delay`` seconds; ``upstream`` is what is waited for."""

    reason = "Waiting"

    def __init__(self, message: str, upstream: str, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        super().__init__(message)


class RunNotFinished(Waiting):
    reason = "RunNotFinished"

    def __init__(self, run_id: str, status: str, delay: float = 30.0) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(f"run {run_id} is {status}; waiting for it to finish", "mlflow", delay)


class ServingChanged(Waiting):
    """Another promotion took the deployment while this one was judged against what it served."""

    reason = "ServingChanged"

    def __init__(self, deployment: str, judged: str | None, now: str | None, delay: float = 1.0) -> None:
        self.judged, self.now = judged, now
        super().__init__(f"{deployment} now serves run {now or 'nothing'}, not run {judged or 'nothing'} the "
                         "baseline gates were judged against; judging again", "kubernetes", delay)


class Unavailable(Waiting):
    """``upstream`` is "mlflow", "s3" or "kubernetes"; the reason is e.g. ``S3Unavailable``."""

    def __init__(self, upstream: str, detail: str, delay: float = 10.0) -> None:
        self.detail = detail
        # An instance attribute, because the reason depends on the upstream.
        self.reason = f"{upstream[:1].upper()}{upstream[1:].lower()}Unavailable"
        name = _UPSTREAM_NAMES.get(upstream, upstream)
        super().__init__(f"{name} is unavailable: {detail}; retrying in {delay:g}s", upstream, delay)
