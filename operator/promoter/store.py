"""The S3 side as the copy sees it: one endpoint reached with one set of credentials.

Everything read from an S3 server is bounded: each call has a deadline for the whole exchange
(``PROMOTER_HTTP_TIMEOUT``), a stream must keep delivering (each megabyte within that time), a
listing stops one entry past the limit it is given, and what a refusal adds to a message is its
error code, cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.error import S3Error

from . import deadline
from .errors import CredentialsProblem, Unavailable

# Streamed copies hold about two parts per file in flight: 8 MiB parts keep the operator near
# 110 MiB at the default copy concurrency whatever the model's size (16 MiB parts: ~180 MiB).
# A file over 10,000 parts (78 GiB) gets larger parts, S3's limit.
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
CHUNK = 1024 * 1024
COPY_OBJECT_LIMIT = 5 * 1024**3
COPY_RATE = 20 * 1024 * 1024  # bytes per second a server-side copy is given, beyond the timeout
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_CODE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str = ""
    etag: str = ""  # the copy's
    source_etag: str = ""  # the source object's, when the copy was made


class ObjectStore(Protocol):
    """What the copy needs of an S3 endpoint reached with one set of credentials (:class:`Store`
    over minio; an in-memory one in the unit tests). Failures come out as the operator's two
    error kinds: ``CredentialsProblem`` when refused, ``Unavailable`` otherwise."""

    endpoint: str
    who: str  # the Secret the credentials came from, for messages
    retry_delay: float
    timeout: float

    def same_as(self, other: ObjectStore) -> bool: ...
    def list(self, bucket: str, prefix: str, limit: int | None = None) -> dict[str, FileEntry]: ...
    def read(self, bucket: str, key: str, limit: int = ...) -> bytes | None: ...
    def hash(self, bucket: str, key: str, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]: ...
    def copy_within(self, bucket: str, key: str, src_bucket: str, src_key: str, size: int) -> None: ...
    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]: ...
    def put_stream(self, bucket: str, key: str, data: BinaryIO, size: int) -> None: ...
    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...


def identity(access_key: str, secret_key: str) -> str:
    """A stand-in for a key pair that is safe to keep and compare (never the keys themselves)."""
    return hashlib.sha256(f"{access_key}\0{secret_key}".encode()).hexdigest()


def _code(e: S3Error) -> str:
    return _CODE.sub("", str(e.code))[:64] or "an error"


class Store:
    """One S3 endpoint with one set of credentials; ``who`` names the Secret for messages.
    Thread-safe: one is shared by every promotion that uses the same endpoint and keys."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, who: str,
                 timeout: float = 10.0, retry_delay: float = 10.0) -> None:
        parsed = urlparse(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.who = who
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.identity = identity(access_key, secret_key)
        self._http = deadline.PoolManager(
            # per read; a server-side copy answers only when done. The deadline bounds the whole call.
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504), redirect=0),
            maxsize=16,
        )
        self.client = Minio(parsed.netloc, access_key=access_key, secret_key=secret_key,
                            secure=parsed.scheme == "https", region="us-east-1", http_client=self._http)

    def close(self) -> None:
        self._http.clear()

    def same_as(self, other: ObjectStore) -> bool:
        """Same endpoint and same identity: a CopyObject from one to the other works."""
        return isinstance(other, Store) and self.endpoint == other.endpoint and self.identity == other.identity

    def call(self, what: str, fn: Callable[[], Any], seconds: float | None = None) -> Any:
        """Run one S3 call within its deadline, turning its failures into the operator's two
        error kinds."""
        with deadline.deadline(seconds or self.timeout) as watch:
            try:
                result = fn()
                if watch.expired:  # cut short: what was read is not the answer
                    raise OSError("cut at the deadline")
                return result
            except S3Error as e:
                if e.code in _DENIED:
                    raise CredentialsProblem(self.who, f"S3 at {self.endpoint} refused it for {what} "
                                             f"({e.code})") from None
                if e.code == "NoSuchBucket":
                    raise Unavailable("s3", f"bucket {str(e.bucket_name)[:63]!r} does not exist at "
                                      f"{self.endpoint} (create it)", max(self.retry_delay, 60.0)) from None
                raise Unavailable("s3", f"S3 at {self.endpoint} answered {_code(e)} for {what}",
                                  self.retry_delay) from None
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                problem = (f"S3 at {self.endpoint} did not answer {what} within {watch.seconds:g}s" if watch.expired
                           else f"cannot reach S3 at {self.endpoint} for {what}: {type(e).__name__}")
                raise Unavailable("s3", problem, self.retry_delay) from None

    def list(self, bucket: str, prefix: str, limit: int | None = None) -> dict[str, FileEntry]:
        """The objects under prefix, keyed by path below it; at most ``limit`` + 1 of them (the
        caller tells "over the limit" from that)."""
        prefix = prefix.rstrip("/") + "/"

        def run() -> dict[str, FileEntry]:
            found: dict[str, FileEntry] = {}
            for o in self.client.list_objects(bucket, prefix=prefix, recursive=True):
                deadline.progress()
                if o.object_name and not o.is_dir:
                    path = o.object_name[len(prefix):]
                    found[path] = FileEntry(path, int(o.size or 0), etag=(o.etag or "").strip('"'))
                    if limit is not None and len(found) > limit:
                        break
            return found

        return dict(self.call(f"listing s3://{bucket}/{prefix}", run))

    def read(self, bucket: str, key: str, limit: int = 4 * 1024 * 1024) -> bytes | None:
        """A small object's first ``limit`` bytes, or None when it does not exist."""

        def run() -> bytes | None:
            try:
                response = self.client.get_object(bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return bytes(response.read(limit))
            finally:
                response.close()
                response.release_conn()

        result = self.call(f"reading s3://{bucket}/{key}", run)
        return result if result is None else bytes(result)

    def hash(self, bucket: str, key: str, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]:
        def run() -> tuple[str, int]:
            digest, size = hashlib.sha256(), 0
            response = self.client.get_object(bucket, key)
            try:
                for chunk in response.stream(CHUNK):
                    deadline.progress()
                    digest.update(chunk)
                    size += len(chunk)
                    if on_chunk:
                        on_chunk(len(chunk))
            finally:
                response.close()
                response.release_conn()
            return digest.hexdigest(), size

        result: tuple[str, int] = self.call(f"reading s3://{bucket}/{key}", run)
        return result

    def copy_within(self, bucket: str, key: str, src_bucket: str, src_key: str, size: int) -> None:
        """A server-side copy (CopyObject; a multipart compose above S3's 5 GiB limit)."""
        seconds = self.timeout + size / COPY_RATE
        if size <= COPY_OBJECT_LIMIT:
            source = CopySource(src_bucket, src_key)
            self.call(f"copying {src_key}", lambda: self.client.copy_object(bucket, key, source), seconds)
        else:
            parts = [ComposeSource(src_bucket, src_key)]
            self.call(f"copying {src_key}", lambda: self.client.compose_object(bucket, key, parts), seconds)

    @contextlib.contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
        """A stream of the object; use it inside the writer's call, whose deadline it keeps."""
        response = self.call(f"reading s3://{bucket}/{key}", lambda: self.client.get_object(bucket, key))
        try:
            yield cast(BinaryIO, _Guarded(self, f"reading s3://{bucket}/{key}", response))
        finally:
            response.close()
            response.release_conn()

    def put_stream(self, bucket: str, key: str, data: BinaryIO, size: int) -> None:
        # One part in flight per file: memory is PART_SIZE x copy concurrency, whatever the
        # model's size (minio's default of 3 parallel parts made it grow with it).
        self.call(f"writing s3://{bucket}/{key}", lambda: self.client.put_object(
            bucket, key, data, size, part_size=part_size(size), num_parallel_uploads=1))

    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.call(f"writing s3://{bucket}/{key}", lambda: self.client.put_object(
            bucket, key, cast(BinaryIO, _BytesReader(data)), len(data), content_type=content_type))


class _Guarded:
    """A source stream whose read failures become the operator's error kinds, and whose reads
    count as progress for the deadline they run under."""

    def __init__(self, store: Store, what: str, raw: Any) -> None:
        self.store, self.what, self.raw = store, what, raw

    def read(self, n: int = -1) -> bytes:
        data = bytes(self.store.call(self.what, lambda: self.raw.read(n)))
        deadline.progress()
        return data


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


def part_size(size: int) -> int:
    """PART_SIZE, or the smallest whole MiB that keeps ``size`` within MAX_PARTS parts."""
    mib = 1024 * 1024
    return max(PART_SIZE, -(-size // (MAX_PARTS * mib)) * mib)


__all__ = ["CHUNK", "MAX_PARTS", "PART_SIZE", "FileEntry", "ObjectStore", "Store", "identity", "part_size"]
