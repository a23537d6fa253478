"""Content-addressed blob stores, chosen by the scheme of `LORASTACK_STORAGE_URL`.

`file:///abs/path` is a folder on this machine, `s3://bucket/prefix` any S3-compatible
service. The S3 store (and boto3 with it) is imported only when an s3 URL is opened, so
importing this package stays cheap for the CLI and the merge worker.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlsplit

from hub.storage.base import BlobStore, S3Timeouts, blob_key, check_key

__all__ = ["BlobStore", "S3Timeouts", "blob_key", "check_key", "open_store", "STORE_SCHEMES"]


def _open_local(url: str, *, s3_endpoint_url: str | None = None,
                s3_timeouts: S3Timeouts | None = None) -> BlobStore:
    from hub.storage.local import LocalBlobStore

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
        raise ValueError(f"a file storage URL needs an absolute path, like file:///srv/blobs; "
                         f"got {url!r}")
    return LocalBlobStore(Path(unquote(parts.path)))


def _open_s3(url: str, *, s3_endpoint_url: str | None = None,
             s3_timeouts: S3Timeouts | None = None) -> BlobStore:
    from hub.storage.s3 import S3BlobStore

    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"an S3 storage URL names a bucket, like s3://bucket/prefix; got {url!r}")
    return S3BlobStore(parts.netloc, unquote(parts.path).strip("/"), endpoint_url=s3_endpoint_url,
                       timeouts=s3_timeouts or S3Timeouts())


# The known schemes; a new backend is one more entry (mlflow's artifact registry does the same).
STORE_SCHEMES: dict[str, Callable[..., BlobStore]] = {
    "file": _open_local,
    "s3": _open_s3,
}


def open_store(storage_url: str, *, s3_endpoint_url: str | None = None,
               s3_timeouts: S3Timeouts | None = None) -> BlobStore:
    """The blob store for `storage_url`, picked by its scheme; ValueError for an unknown one."""
    scheme = urlsplit(storage_url).scheme.lower() if storage_url else ""
    factory = STORE_SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in STORE_SCHEMES)
        raise ValueError(f"unsupported storage URL {storage_url!r}: the scheme must be one of "
                         f"{known}")
    return factory(storage_url, s3_endpoint_url=s3_endpoint_url, s3_timeouts=s3_timeouts)
