"""The copy: a model folder into the target bucket, verified, with its manifest.

The copy lands under ``<root>/<prefix>/<runId>/``. The manifest (``promotion-manifest.json``:
the run, the source folder, and each file's path, size, sha256, ETag and the source's ETag) is
written last, after every file was read back and hashed, so a prefix with a manifest is a
complete, verified copy; one without is not, and a later reconcile copies it again.

A copy already there is reused only when it provably holds this model: its manifest names the
same run and source folder, and every source file's bytes match (its ETag, where that is the
MD5 of the content on both sides, else its sha256). Any other copy at the target is a
``CopyConflict``: never overwritten, never served.

Same endpoint and same credentials: S3 CopyObject, no model bytes through the operator
(only the read-back that hashes them). Otherwise: a streamed copy, one part at a time.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, cast
from urllib.parse import urlparse

from . import deadline, faults
from .errors import ArtifactTampered, CopyConflict, ModelNotFound, Unavailable
from .store import CHUNK, MAX_PARTS, PART_SIZE, FileEntry, ObjectStore, Store, identity, part_size

MANIFEST = "promotion-manifest.json"
# 10,000 files (PROMOTER_MAX_FILES at most) with 1 KiB keys stay below this; Store.read's 4 MiB did not.
MANIFEST_LIMIT = 16 * 1024 * 1024

Progress = Callable[[int, int, int, int], None]


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

    def files(self, limit: int | None = None) -> dict[str, FileEntry]:
        return self.store.list(self.bucket, self.prefix, limit)

    def read(self, path: str, limit: int = 4 * 1024 * 1024) -> bytes | None:
        return self.store.read(self.bucket, f"{self.prefix}/{path}", limit)


def locate(candidates: Iterable[tuple[ObjectStore, str]], run_id: str, model_name: str,
           limit: int | None = None) -> tuple[ModelFolder, dict[str, FileEntry]]:
    """The first candidate s3:// URI that holds an MLmodel; ModelNotFound naming all tried.
    A listing stops one file past ``limit``."""
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
        files = folder.files(limit)
        if "MLmodel" in files or (limit is not None and len(files) > limit):
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

    def existing(self, source_files: dict[str, FileEntry] | None = None, source: ModelFolder | None = None,
                 run_id: str = "") -> CopyResult | None:
        """A verified copy already there, or None when there is none.

        With ``source`` (a new generation): the copy must be of that folder and run, byte for
        byte, else ``CopyConflict``. Without (the check of a deployed copy): the files must
        still match the manifest, else ``ArtifactTampered``."""
        raw = self.target.read(self.bucket, self.manifest_key, MANIFEST_LIMIT)
        if raw is None:
            return None
        wrong: type[CopyConflict] | type[ArtifactTampered] = CopyConflict if source else ArtifactTampered
        try:
            manifest = json.loads(raw)
            entries = [FileEntry(**f) for f in manifest["files"]]
        except (ValueError, KeyError, TypeError):
            raise wrong(self.uri, f"{MANIFEST} is not a valid manifest") from None
        if source is not None and (manifest.get("runId") != run_id or manifest.get("source") != source.uri):
            raise CopyConflict(self.uri, f"its manifest names run {str(manifest.get('runId'))[:40]!r} "
                               f"from {str(manifest.get('source'))[:200]!r}")
        problems = self._changed(entries)
        if source is not None and source_files is not None:
            problems += self._not_from(entries, source, source_files)
        if problems:
            raise wrong(self.uri, "; ".join(problems[:5]))
        return CopyResult(len(entries), sum(e.size for e in entries), _digest(raw),
                          self.manifest_key, "reused", 0)

    def _changed(self, entries: list[FileEntry]) -> list[str]:
        """How the files at the target differ from the manifest."""
        present = self.target.list(self.bucket, self.prefix, len(entries) + 1)
        present.pop(MANIFEST, None)
        problems = []
        for entry in entries:
            found = present.pop(entry.path, None)
            if found is None:
                problems.append(f"{entry.path} is missing")
            elif found.size != entry.size or (entry.etag and found.etag != entry.etag):
                problems.append(f"{entry.path} changed (size {found.size}, manifest says {entry.size})")
        return problems + [f"unexpected file {p[:200]}" for p in sorted(present)]

    def _not_from(self, entries: list[FileEntry], source: ModelFolder, files: dict[str, FileEntry]) -> list[str]:
        """How the copy's files differ from the source's, byte for byte."""
        have = {e.path: e for e in entries}
        if set(have) != set(files):
            return ["the source model's files differ from the copy"]
        problems = []
        for path, src in sorted(files.items()):
            entry = have[path]
            if src.size != entry.size:
                problems.append(f"{path} has {src.size} bytes at the source, {entry.size} in the copy")
            elif not _same_md5(src.etag, entry.source_etag or entry.etag):
                sha, _ = source.store.hash(source.bucket, f"{source.prefix}/{path}")
                if sha != entry.sha256:
                    problems.append(f"{path} holds other bytes than the source's")
        return problems

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
            return FileEntry(entry.path, size, sha, source_etag=entry.etag)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            copied = list(pool.map(one, sorted(files.values(), key=lambda f: f.path)))
        present = self.target.list(self.bucket, self.prefix, len(copied) + 1)
        entries = [FileEntry(e.path, e.size, e.sha256, present[e.path].etag if e.path in present else "",
                             e.source_etag) for e in copied]
        raw = render_manifest(entries, {**meta, "source": source.uri})
        faults.checkpoint("before-manifest")
        self.target.put(self.bucket, self.manifest_key, raw, "application/json")
        return CopyResult(len(entries), total_bytes, _digest(raw), self.manifest_key,
                          "server-side" if server_side else "streamed", done["through"])

    def _stream(self, source: ModelFolder, src_key: str, dst_key: str, size: int,
                tick: Callable[[int], None]) -> str:
        # One deadline for both sides: each read of the source is progress, and a source or a
        # target that stalls for the timeout ends the copy of this file.
        with deadline.deadline(self.target.timeout), source.store.open(source.bucket, src_key) as raw:
            reader = _HashingReader(raw, tick)
            self.target.put_stream(self.bucket, dst_key, cast(BinaryIO, reader), size)
        return reader.digest.hexdigest()


def _same_md5(a: str, b: str) -> bool:
    """Two ETags that are both the MD5 of the content (not multipart) and equal."""
    return bool(a) and a == b and "-" not in a


def render_manifest(entries: list[FileEntry], meta: dict[str, str]) -> bytes:
    """Deterministic: the same files give the same bytes, hence the same digest."""
    body = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "PromotionManifest",
        **{k: meta[k] for k in sorted(meta)},
        "files": [{"path": e.path, "size": e.size, "sha256": e.sha256, "etag": e.etag,
                   **({"source_etag": e.source_etag} if e.source_etag else {})}
                  for e in sorted(entries, key=lambda e: e.path)],
    }
    return (json.dumps(body, indent=2, sort_keys=False) + "\n").encode()


def _digest(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


__all__ = ["CHUNK", "MANIFEST", "MAX_PARTS", "PART_SIZE", "Copier", "CopyResult", "FileEntry", "ModelFolder",
           "ObjectStore", "Store", "identity", "locate", "parse_s3_uri", "part_size", "render_manifest"]
