"""The S3 blob store (`s3://bucket/prefix`): AWS or any S3-compatible service.

botocore and boto3 are imported here and nowhere else; every exception they raise is
turned into a HubError at this edge, so nothing above `hub.storage` sees them.
"""
from __future__ import annotations

import io
import math
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from hub.errors import NotFound, StorageUnavailable
from hub.storage.base import BlobStore, S3Timeouts, check_key, check_source

MiB = 1024 * 1024
# S3 allows 10,000 parts per upload; stay below it so a huge file gets bigger parts.
_MAX_PARTS = 9000
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId",
                 "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


class S3BlobStore(BlobStore):
    """Blobs as objects `<prefix>/<key>` in one bucket, uploaded with multipart transfers."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, chunk_size: int = 64 * MiB,
                 max_concurrency: int = 4, timeouts: S3Timeouts | None = None) -> None:
        if not bucket:
            raise ValueError("an S3 store needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or None
        self.chunk_size = chunk_size
        self.max_concurrency = max_concurrency
        self._region = region
        timeouts = timeouts or S3Timeouts()
        self._client_config = Config(
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.read,
            retries={"max_attempts": timeouts.max_attempts, "mode": "standard"},
            signature_version="s3v4",
            # MinIO, Ceph and moto serve buckets by path, not by virtual host.
            s3={"addressing_style": "path"} if self.endpoint_url else {},
            max_pool_connections=max(10, max_concurrency * 2),
        )
        # The health check tries once: a probe that retries a hung store only delays the
        # answer that it is down.
        self._probe_config = self._client_config.merge(
            Config(retries={"max_attempts": 1, "mode": "standard"}))
        self._client_obj = None
        self._probe_obj = None
        self._lock = threading.Lock()
        self._bucket_verified = False

    def __repr__(self) -> str:
        where = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3BlobStore({self.bucket!r}, {self.prefix!r}{where})"

    @property
    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint_url}"
                                                      if self.endpoint_url else "")

    @property
    def _client(self):
        # Built on first use: creating a client costs ~50 ms and boto3 sessions are not
        # thread-safe, so build it once under a lock.
        if self._client_obj is None:
            with self._lock:
                if self._client_obj is None:
                    self._client_obj = self._new_client(self._client_config)
        return self._client_obj

    @property
    def _probe(self):
        if self._probe_obj is None:
            with self._lock:
                if self._probe_obj is None:
                    self._probe_obj = self._new_client(self._probe_config)
        return self._probe_obj

    def _new_client(self, config: Config):
        with self._converting("connect"):
            session = boto3.session.Session()
            region = self._region or session.region_name or "us-east-1"
            return session.client("s3", endpoint_url=self.endpoint_url, region_name=region,
                                  config=config)

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _converting(self, action: str, key: str | None = None) -> Iterator[None]:
        """Turn any boto3/botocore exception raised inside into a HubError.

        A 404 means a missing blob when `key` is given, else a missing bucket.
        """
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or code
            if code == "NoSuchBucket" or (code in _MISSING_KEY_CODES and key is None):
                raise self._no_bucket() from exc
            if code in _MISSING_KEY_CODES:
                raise NotFound(f"blob {key} is not in the store") from exc
            if code in _DENIED_CODES:
                raise StorageUnavailable(
                    f"access to S3 bucket {self.bucket!r} denied during {action} "
                    f"({code}): check the credentials and the bucket policy") from exc
            raise StorageUnavailable(f"S3 {action} failed on {self._where}: "
                                     f"{code}: {message}") from exc
        except Boto3Error as exc:
            # upload_file wraps the ClientError in a message string.
            if "NoSuchBucket" in str(exc):
                raise self._no_bucket() from exc
            raise StorageUnavailable(f"S3 {action} failed on {self._where}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 {action} failed on {self._where}: {exc}") from exc

    def _no_bucket(self) -> StorageUnavailable:
        return StorageUnavailable(
            f"S3 bucket {self.bucket!r} does not exist"
            + (f" at {self.endpoint_url}" if self.endpoint_url else "")
            + "; create it or fix LORASTACK_STORAGE_URL")

    def _verify_bucket(self) -> None:
        # A HEAD on a missing key and on a missing bucket both answer a bare 404, so the
        # first 404 costs one HEAD on the bucket to tell "no blob" from "no bucket".
        if not self._bucket_verified:
            self.check()

    def put_file(self, key: str, path: Path, *, size: int, sha256: str,
                 consume: bool = False) -> None:
        """Upload `path` under `key` (multipart, streamed from disk) unless it exists."""
        object_key = self._object_key(key)
        check_source(path, size)
        if self.size(key) == size:
            return  # content-addressed: same key and size means the same bytes
        chunk = max(self.chunk_size, math.ceil(size / _MAX_PARTS))
        config = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk,
                                max_concurrency=self.max_concurrency, use_threads=True)
        with self._converting("upload", key):
            self._client.upload_file(
                str(path), self.bucket, object_key, Config=config,
                ExtraArgs={"ContentType": "application/octet-stream",
                           "Metadata": {"sha256": sha256}})

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under `key`."""
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None when there is none."""
        object_key = self._object_key(key)
        try:
            with self._converting("head", key):
                head = self._client.head_object(Bucket=self.bucket, Key=object_key)
        except NotFound:
            self._verify_bucket()
            return None
        return int(head["ContentLength"])

    def open_read(self, key: str) -> BinaryIO:
        """A buffered, streaming reader over the object's body."""
        object_key = self._object_key(key)
        with self._converting("download", key):
            response = self._client.get_object(Bucket=self.bucket, Key=object_key)
        return io.BufferedReader(_BodyReader(response["Body"], self, key), buffer_size=MiB)

    def presigned_url(self, key: str, *, filename: str, expires_in: int,
                      cache_control: str | None = None) -> str | None:
        """A GET URL valid `expires_in` seconds that downloads as `filename` (and, when
        given, is served with `cache_control`)."""
        object_key = self._object_key(key)
        with self._converting("presign", key):
            return self._client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": object_key,
                        "ResponseContentDisposition": content_disposition(filename),
                        **({"ResponseCacheControl": cache_control} if cache_control else {})},
                ExpiresIn=int(expires_in))

    def delete(self, key: str) -> None:
        """Remove the blob; a missing one is fine (S3 deletes are idempotent)."""
        object_key = self._object_key(key)
        with self._converting("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=object_key)

    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every key under the prefix with its LastModified (UTC)."""
        start = f"{self.prefix}/" if self.prefix else ""
        with self._converting("list"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", ()):
                    yield item["Key"][len(start):], _utc(item["LastModified"])

    def remove_incomplete_uploads(self, before: datetime, *,
                                  dry_run: bool = False) -> list[str]:
        """Abort the multipart uploads under the prefix begun before `before`: S3 keeps
        (and bills) the parts of an upload that was never completed."""
        start = f"{self.prefix}/" if self.prefix else ""
        aborted = []
        with self._converting("list multipart uploads"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            stale = [(item["Key"], item["UploadId"])
                     for page in paginator.paginate(Bucket=self.bucket, Prefix=start)
                     for item in page.get("Uploads", ())
                     if _utc(item["Initiated"]) < before]
        for object_key, upload_id in stale:
            if not dry_run:
                with self._converting("abort multipart upload"):
                    try:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=object_key, UploadId=upload_id)
                    except ClientError as exc:
                        # Completed or aborted by its own writer since the listing.
                        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                            raise
            aborted.append(f"multipart upload {object_key[len(start):]} ({upload_id})")
        return aborted

    def check(self) -> None:
        """HEAD the bucket: proves the endpoint answers, the bucket exists, we may use it."""
        with self._converting("health check"):
            self._probe.head_bucket(Bucket=self.bucket)
        self._bucket_verified = True


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


class _BodyReader(io.RawIOBase):
    """A botocore StreamingBody as a raw file whose read errors are HubErrors."""

    def __init__(self, body, store: S3BlobStore, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._store._converting("download", self._key):
            data = self._body.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            except Exception:  # closing a dropped connection must not mask the caller's error
                pass
        super().close()


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact UTF-8 name (RFC 6266)."""
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_"
                         for ch in filename) or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
