"""The S3 side: copy a model folder into the target bucket, verify it, write its manifest.

The copy lands under ``<prefix>/<runId>/``. The manifest (``promotion-manifest.json``: each
file's path, size, sha256 and ETag) is written last, after every file was read back and
hashed, so a prefix with a manifest is a complete, verified copy; one without is not, and a
later reconcile copies it again. A verified copy already there is reused without a write.

Same endpoint and same credentials: S3 CopyObject, no model bytes through the operator
(only the read-back that hashes them). Otherwise: a streamed copy, one part at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.error import S3Error

from . import faults
from .errors import ArtifactTampered, CredentialsProblem, ModelNotFound, Unavailable

MANIFEST = "promotion-manifest.json"
# 10,000 files (PROMOTER_MAX_FILES at most) with 1 KiB keys stay below this; Store.read's 4 MiB did not.
MANIFEST_LIMIT = 16 * 1024 * 1024
# Streamed copies hold about two parts per file in flight: 8 MiB parts keep the operator near
# 110 MiB at the default copy concurrency whatever the model's size (16 MiB parts: ~180 MiB).
# A file over 10,000 parts (78 GiB) gets larger parts, S3's limit.
PART_SIZE = 8 * 1024 * 1024
MAX_PARTS = 10_000
CHUNK = 1024 * 1024
COPY_OBJECT_LIMIT = 5 * 1024**3
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}

Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str = ""
    etag: str = ""


@dataclass(frozen=True)
class CopyResult:
    files: int
    bytes: int
    digest: str
    manifest_key: str
    mode: str  # "reused", "server-side" or "streamed"
    bytes_through: int  # model bytes that passed through the operator to be written


def parse_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


class ObjectStore(Protocol):
    """What the copy needs of an S3 endpoint reached with one set of credentials (:class:`Store`
    over minio; an in-memory one in the unit tests). Failures come out as the operator's two
    error kinds: ``CredentialsProblem`` when refused, ``Unavailable`` otherwise."""

    endpoint: str
    who: str  # the Secret the credentials came from, for messages
    retry_delay: float

    def same_as(self, other: ObjectStore) -> bool: ...
    def list(self, bucket: str, prefix: str) -> dict[str, FileEntry]: ...
    def read(self, bucket: str, key: str, limit: int = ...) -> bytes | None: ...
    def hash(self, bucket: str, key: str, on_chunk: Callable[[int], None] | None = None) -> tuple[str, int]: ...
    def copy_within(self, bucket: str, key: str, src_bucket: str, src_key: str, size: int) -> None: ...
    def open(self, bucket: str, key: str) -> AbstractContextManager[BinaryIO]: ...
    def put_stream(self, bucket: str, key: str, data: BinaryIO, size: int) -> None: ...
    def put(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...


class Store:
    """One S3 endpoint with one set of credentials; ``who`` names the Secret for messages.
    Thread-safe: one is shared by every promotion that uses the same endpoint and keys."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, who: str,
                 timeout: float = 10.0, retry_delay: float = 10.0) -> None:
        parsed = urlparse(endpoint)
        self.endpoint = endpoint.rstrip("/")
        self.who = who
        self.retry_delay = retry_delay
        self.identity = identity(access_key, secret_key)
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=max(timeout, 60.0)),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(502, 503, 504)),
            maxsize=16,
        )
        self.client = Minio(parsed.netloc, access_key=access_key, secret_key=secret_key,
                            secure=parsed.scheme == "https", region="us-east-1", http_client=self._http)

    def close(self) -> None:
        self._http.clear()

    def same_as(self, other: ObjectStore) -> bool:
        """Same endpoint and same identity: a CopyObject from one to the other works."""
        return isinstance(other, Store) and self.endpoint == other.endpoint and self.identity == other.identity

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one S3 call, turning its failures into the operator's two error kinds."""
        try:
            return fn()
        except S3Error as e:
            if e.code in _DENIED:
                raise CredentialsProblem(self.who, f"S3 at {self.endpoint} refused it for {what} "
                                         f"({e.code})") from None
            if e.code == "NoSuchBucket":
                raise Unavailable("s3", f"bucket {e.bucket_name!r} does not exist at {self.endpoint} "
                                  "(create it)", max(self.retry_delay, 60.0)) from None
            raise Unavailable("s3", f"S3 at {self.endpoint} answered {e.code} for {what}",
                              self.retry_delay) from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise Unavailable("s3", f"cannot reach S3 at {self.endpoint} for {what}: "
                              f"{type(e).__name__}", self.retry_delay) from None

    def list(self, bucket: str, prefix: str) -> dict[str, FileEntry]:
        prefix = prefix.rstrip("/") + "/"

        def run() -> dict[str, FileEntry]:
            return {
                o.object_name[len(prefix):]: FileEntry(o.object_name[len(prefix):], int(o.size or 0),
                                                       etag=(o.etag or "").strip('"'))
                for o in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if o.object_name and not o.is_dir
            }

        return dict(self.call(f"listing s3://{bucket}/{prefix}", run))

    def read(self, bucket: str, key: str, limit: int = 4 * 1024 * 1024) -> bytes | None:
        """A small object's bytes, or None when it does not exist."""

        def run() -> bytes | None:
            try:
                response = self.client.get_object(bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return bytes(response.read(limit + 1)[:limit])
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
        if size <= COPY_OBJECT_LIMIT:
            source = CopySource(src_bucket, src_key)
            self.call(f"copying {src_key}", lambda: self.client.copy_object(bucket, key, source))
        else:
            parts = [ComposeSource(src_bucket, src_key)]
            self.call(f"copying {src_key}", lambda: self.client.compose_object(bucket, key, parts))

    @contextlib.contextmanager
    def open(self, bucket: str, key: str) -> Iterator[BinaryIO]:
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


def identity(access_key: str, secret_key: str) -> str:
    """A stand-in for a key pair that is safe to keep and compare (never the keys themselves)."""
    return hashlib.sha256(f"{access_key}\0{secret_key}".encode()).hexdigest()


class _Guarded:
    """A source stream whose read failures become the operator's error kinds."""

    def __init__(self, store: Store, what: str, raw: Any) -> None:
        self.store, self.what, self.raw = store, what, raw

    def read(self, n: int = -1) -> bytes:
        return bytes(self.store.call(self.what, lambda: self.raw.read(n)))


class _HashingReader:
    """Wraps a response stream: hashes what passes, counts it, reports progress."""

    def __init__(self, raw: BinaryIO, on_chunk: Callable[[int], None]) -> None:
        self.raw, self.on_chunk = raw, on_chunk
        self.digest, self.size = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        self.on_chunk(len(data))
        return bytes(data)


@dataclass(frozen=True)
class ModelFolder:
    """The model's files in the MLflow artifact store: ``store``, ``bucket``, ``prefix``."""

    store: ObjectStore
    bucket: str
    prefix: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def files(self) -> dict[str, FileEntry]:
        return self.store.list(self.bucket, self.prefix)

    def read(self, path: str) -> bytes | None:
        return self.store.read(self.bucket, f"{self.prefix}/{path}")


def locate(candidates: Iterable[tuple[ObjectStore, str]], run_id: str, model_name: str
           ) -> tuple[ModelFolder, dict[str, FileEntry]]:
    """The first candidate s3:// URI that holds an MLmodel; ModelNotFound naming all tried."""
    tried: list[str] = []
    for store, uri in candidates:
        tried.append(uri)
        try:
            bucket, prefix = parse_s3_uri(uri)
        except ValueError:
            # mlflow-artifacts:/ (proxied artifacts) and file:/ stores are not read yet
            tried[-1] = f"{uri} (not an s3:// artifact store: run MLflow with --default-artifact-root s3://...)"
            continue
        folder = ModelFolder(store, bucket, prefix.rstrip("/"))
        files = folder.files()
        if "MLmodel" in files:
            return folder, files
    raise ModelNotFound(run_id, model_name, tried)


class Copier:
    def __init__(self, target: ObjectStore, bucket: str, prefix: str, concurrency: int = 4) -> None:
        self.target, self.bucket = target, bucket
        self.prefix = prefix.rstrip("/")
        self.concurrency = concurrency
        self.manifest_key = f"{self.prefix}/{MANIFEST}"

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def existing(self, source_files: dict[str, FileEntry] | None = None) -> CopyResult | None:
        """A verified copy already there, or None; ArtifactTampered when it was changed."""
        raw = self.target.read(self.bucket, self.manifest_key, MANIFEST_LIMIT)
        if raw is None:
            return None
        try:
            manifest = json.loads(raw)
            entries = [FileEntry(**f) for f in manifest["files"]]
        except (ValueError, KeyError, TypeError):
            raise ArtifactTampered(self.uri, f"{MANIFEST} is not a valid manifest") from None
        present = self.target.list(self.bucket, self.prefix)
        present.pop(MANIFEST, None)
        problems = []
        for entry in entries:
            found = present.pop(entry.path, None)
            if found is None:
                problems.append(f"{entry.path} is missing")
            elif found.size != entry.size or (entry.etag and found.etag != entry.etag):
                problems.append(f"{entry.path} changed (size {found.size}, manifest says {entry.size})")
        problems += [f"unexpected file {p}" for p in sorted(present)]
        if source_files is not None:
            want = {p: f.size for p, f in source_files.items()}
            have = {e.path: e.size for e in entries}
            if want != have:
                problems.append("the source model's files differ from the copy")
        if problems:
            raise ArtifactTampered(self.uri, "; ".join(problems[:5]))
        return CopyResult(len(entries), sum(e.size for e in entries), _digest(raw),
                          self.manifest_key, "reused", 0)

    def copy(self, source: ModelFolder, files: dict[str, FileEntry], meta: dict[str, str],
             on_progress: Progress | None = None) -> CopyResult:
        server_side = source.store.same_as(self.target)
        total_bytes = sum(f.size for f in files.values())
        lock = threading.Lock()
        done = {"files": 0, "bytes": 0, "through": 0}

        def tick(n: int) -> None:
            with lock:
                done["bytes"] += n
                now = (done["files"], done["bytes"])
            if on_progress:  # the reporter throttles; a single large file shows progress too
                on_progress(now[0], len(files), now[1], total_bytes)

        def one(entry: FileEntry) -> FileEntry:
            src_key, dst_key = f"{source.prefix}/{entry.path}", f"{self.prefix}/{entry.path}"
            streamed_sha = ""
            if server_side:
                self.target.copy_within(self.bucket, dst_key, source.bucket, src_key, entry.size)
            else:
                streamed_sha = self._stream(source, src_key, dst_key, entry.size, tick)
                with lock:
                    done["through"] += entry.size
            sha, size = self.target.hash(self.bucket, dst_key, None if not server_side else tick)
            if size != entry.size or (streamed_sha and streamed_sha != sha):
                raise Unavailable("s3", f"read-back of {dst_key} did not match what was copied "
                                  f"({size} of {entry.size} bytes)", self.target.retry_delay)
            with lock:
                done["files"] += 1
                files_done = done["files"]
            faults.checkpoint("mid-copy", files_done)
            if on_progress:
                on_progress(done["files"], len(files), done["bytes"], total_bytes)
            return FileEntry(entry.path, size, sha)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            copied = list(pool.map(one, sorted(files.values(), key=lambda f: f.path)))
        present = self.target.list(self.bucket, self.prefix)
        entries = [FileEntry(e.path, e.size, e.sha256, present[e.path].etag if e.path in present else "")
                   for e in copied]
        raw = render_manifest(entries, {**meta, "source": source.uri})
        faults.checkpoint("before-manifest")
        self.target.put(self.bucket, self.manifest_key, raw, "application/json")
        return CopyResult(len(entries), total_bytes, _digest(raw), self.manifest_key,
                          "server-side" if server_side else "streamed", done["through"])

    def _stream(self, source: ModelFolder, src_key: str, dst_key: str, size: int,
                tick: Callable[[int], None]) -> str:
        with source.store.open(source.bucket, src_key) as raw:
            reader = _HashingReader(raw, tick)
            self.target.put_stream(self.bucket, dst_key, cast(BinaryIO, reader), size)
        return reader.digest.hexdigest()


def part_size(size: int) -> int:
    """PART_SIZE, or the smallest whole MiB that keeps ``size`` within MAX_PARTS parts."""
    mib = 1024 * 1024
    return max(PART_SIZE, -(-size // (MAX_PARTS * mib)) * mib)


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk = self.data[self.pos:end]
        self.pos += len(chunk)
        return chunk


def render_manifest(entries: list[FileEntry], meta: dict[str, str]) -> bytes:
    """Deterministic: the same files give the same bytes, hence the same digest."""
    body = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "PromotionManifest",
        **{k: meta[k] for k in sorted(meta)},
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256, "etag": e.etag}
                  for e in sorted(entries, key=lambda e: e.path)],
    }
    return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
