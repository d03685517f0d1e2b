"""Object store: one small interface over MinIO/S3 and a local directory."""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ml.config import Settings


class StorageError(RuntimeError):
    """The object store failed; the message says which store and why."""


class StorageUnavailable(StorageError):
    """The object store cannot be reached (down, wrong endpoint, bad credentials)."""


class ObjectNotFound(StorageError, KeyError):
    """No object under that key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ObjectStore(ABC):
    """Keys are '/'-separated strings such as 'datasets/<version>/manifest.json'."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Write atomically: readers see the old object or the whole new one."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        """Keys under prefix in lexicographic order, strictly after start_after."""

    @abstractmethod
    def url(self, key: str, expires_s: int = 3600) -> str:
        """A URL a reader can fetch the object from (presigned for S3, file:// locally)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """A stable identifier to pass between tasks and log (s3://bucket/key, file:///...)."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageUnavailable with the setting to fix if the store cannot be used."""

    def put_many(self, objects: list[tuple[str, bytes, str]]) -> None:
        """Write (key, data, content_type) objects, each atomically; all are durable when this returns."""
        for key, data, content_type in objects:
            self.put_bytes(key, data, content_type)

    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> None:
        self.put_bytes(key, Path(path).read_bytes(), content_type)

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(self.get_bytes(key))
        os.replace(tmp, path)
        return path

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_array(self, key: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        self.put_bytes(key, buffer.getvalue())

    def get_array(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.get_bytes(key)), allow_pickle=False)


class LocalStore(ObjectStore):
    """A directory; writes go to a temp file in the same folder, then rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        clean = key.strip("/")
        if not clean or ".." in clean.split("/"):
            raise StorageError(f"invalid object key {key!r}")
        return self.root / clean

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.put_many([(key, data, content_type)])

    def put_many(self, objects: list[tuple[str, bytes, str]]) -> None:
        """Stage each object in a temp file beside its key, make them durable, then rename each into place.

        Several objects share one filesystem flush instead of an fsync each: the request log ships
        a batch of images and pointers per call, and a journal commit per object cost more CPU
        than the rest of shipping.
        """
        staged: list[tuple[str, Path]] = []
        path = self.root
        try:
            for key, data, _ in objects:
                path = self._path(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                staged.append((tmp, path))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    if len(objects) == 1:
                        handle.flush()
                        os.fsync(handle.fileno())
            if len(objects) > 1:
                _flush_filesystem(self.root)  # the bytes are on disk before any name points at them
            for tmp, path in staged:
                os.replace(tmp, path)
            if len(objects) > 1:
                _flush_filesystem(self.root)  # and the names
            staged = []
        except (PermissionError, NotADirectoryError, FileExistsError) as exc:
            raise StorageUnavailable(
                f"cannot write {path}: {exc.strerror}; set VISIONLOOP_LOCAL_STORE or VISIONLOOP_HOME "
                "to a writable directory"
            ) from None
        except OSError as exc:  # disk full and the like: the store is unusable, not the data bad
            raise StorageUnavailable(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            for tmp, _ in staged:
                Path(tmp).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(f"no object {key!r} in {self.root}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = []
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return iter(())
        for dirpath, _, filenames in os.walk(base):
            for name in filenames:
                if name.startswith("."):
                    continue  # in-flight temp files
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    keys.append(key)
        return iter(sorted(keys))

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self._path(key).as_uri()

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            raise StorageUnavailable(
                f"local object store {self.root} is not writable ({exc.strerror}); "
                "set VISIONLOOP_LOCAL_STORE or VISIONLOOP_HOME to a writable directory"
            ) from None


def _flush_filesystem(root: Path) -> None:
    """Make everything written under root durable: one syncfs(2) where libc has it, else a full sync."""
    syncfs = _syncfs()
    fd = os.open(root, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def _syncfs() -> Any:
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).syncfs  # Linux: libc is already loaded
    except (AttributeError, OSError):
        return None


PARALLEL_PUTS = 8  # below the HTTP pool's 16 connections, so PUTs never wait for a connection


class MinioStore(ObjectStore):
    """A bucket on MinIO or any S3 endpoint, through the minio SDK."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, bucket: str,
                 secure: bool = False, region: str = "us-east-1", timeout_s: float = 10.0):
        import urllib3
        from minio import Minio

        # Fail fast instead of urllib3's default long retry loop when the store is down.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)),
            maxsize=16,
        )
        self.endpoint, self.bucket = endpoint, bucket
        self.client = Minio(endpoint, access_key=access_key, secret_key=secret_key,
                            secure=secure, region=region, http_client=http)
        self._bucket_ready = False

    def _call(self, what: str, fn, *args, **kwargs):
        from minio.error import S3Error

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NoSuchBucket"):
                key = args[1] if len(args) > 1 else ""
                raise ObjectNotFound(f"no object {key!r} in s3://{self.bucket}") from None
            if exc.code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"):
                raise StorageUnavailable(
                    f"S3 {self.endpoint} refused {what} ({exc.code}); check VISIONLOOP_S3_ACCESS_KEY "
                    "and VISIONLOOP_S3_SECRET_KEY"
                ) from None
            raise StorageError(f"S3 {what} failed: {exc.code}: {exc.message}") from None
        except (OSError, Exception) as exc:  # urllib3 MaxRetryError, connection refused, timeouts
            if isinstance(exc, StorageError):
                raise
            raise StorageUnavailable(
                f"S3 endpoint {self.endpoint} unreachable during {what} ({type(exc).__name__}); "
                "check VISIONLOOP_S3_ENDPOINT or start MinIO"
            ) from None

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        if not self._call("bucket check", self.client.bucket_exists, self.bucket):
            try:
                self._call("bucket creation", self.client.make_bucket, self.bucket)
            except StorageError:
                if not self._call("bucket check", self.client.bucket_exists, self.bucket):
                    raise  # a concurrent creator is fine; anything else is not
        self._bucket_ready = True

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        # A single PUT is atomic on S3: the object appears whole or not at all.
        self._ensure_bucket()
        self._call("put", self.client.put_object, self.bucket, key, io.BytesIO(data), len(data),
                   content_type=content_type)

    def put_many(self, objects: list[tuple[str, bytes, str]]) -> None:
        """Concurrent PUTs (small objects are latency-bound); the first failure is raised once all are done."""
        if len(objects) <= 1:
            return super().put_many(objects)
        from concurrent.futures import ThreadPoolExecutor

        self._ensure_bucket()
        with ThreadPoolExecutor(max_workers=min(PARALLEL_PUTS, len(objects))) as pool:
            futures = [pool.submit(self.put_bytes, *obj) for obj in objects]
        for future in futures:
            future.result()

    def put_file(self, key: str, path: str | Path, content_type: str = "application/octet-stream") -> None:
        self._ensure_bucket()
        self._call("put", self.client.fput_object, self.bucket, key, str(path), content_type=content_type)

    def get_bytes(self, key: str) -> bytes:
        response = self._call("get", self.client.get_object, self.bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_file(self, key: str, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call("get", self.client.fget_object, self.bucket, key, str(path))
        return path

    def exists(self, key: str) -> bool:
        try:
            self._call("stat", self.client.stat_object, self.bucket, key)
            return True
        except ObjectNotFound:
            return False

    def delete(self, key: str) -> None:
        self._call("delete", self.client.remove_object, self.bucket, key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        self._ensure_bucket()
        objects = self._call("list", self.client.list_objects, self.bucket, prefix=prefix,
                             recursive=True, start_after=start_after)
        try:
            for obj in objects:
                yield obj.object_name
        except Exception as exc:  # the iterator does the HTTP calls
            if isinstance(exc, StorageError):
                raise
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} failed while listing {prefix!r}: {exc}") from None

    def url(self, key: str, expires_s: int = 3600) -> str:
        return self._call("presign", self.client.presigned_get_object, self.bucket, key,
                          expires=timedelta(seconds=expires_s))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def check(self) -> None:
        self._ensure_bucket()


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings describe: S3 when an endpoint is set, else the local directory."""
    if settings.use_s3:
        return MinioStore(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                          settings.s3_bucket, secure=settings.s3_secure, region=settings.s3_region)
    return LocalStore(settings.store_dir)
