"""How a stored file leaves the hub: the cache policy every surface sends with its bytes.

One rule for the API, the web pages and the Hugging Face endpoint: a shared cache (a CDN,
a proxy) may keep a public file, never a private one.
"""
from __future__ import annotations

#: How long a shared cache may keep a public file named by its version label. The bytes
#: never change, but the adapter can be made private: an hour bounds how long a cache in
#: front of the hub keeps serving it after that (ETag revalidation is cheap).
PUBLIC_MAX_AGE = 3600


def file_cache_control(visibility: str, pinned: bool) -> str:
    """Cache-Control for a file's bytes; `pinned` when the URL names a label, not `latest`."""
    if visibility != "public":
        return "private, no-store"
    if not pinned:  # `latest` moves: revalidate every time
        return "public, no-cache"
    return f"public, max-age={PUBLIC_MAX_AGE}"


def redirect_cache_control(visibility: str, pinned: bool, url_ttl: int) -> str:
    """Cache-Control for a redirect to a signed URL: never kept past half its signature."""
    if visibility != "public" or not pinned:
        return file_cache_control(visibility, pinned)
    return f"public, max-age={max(0, min(PUBLIC_MAX_AGE, url_ttl // 2))}"


#: The file whose download counts as one download of the adapter, on every surface.
COUNTED_FILE = "adapter_model.safetensors"


def counts_as_download(path: str, method: str, range_header: str | None, status: int) -> bool:
    """Whether a response sent the adapter's weights out: a GET (not a HEAD) of the weights
    that starts at byte 0 and was answered with bytes or a redirect to them (not a 304
    revalidation or a 416)."""
    first_byte = range_header is None or range_header.replace(" ", "").startswith("bytes=0-")
    return (path == COUNTED_FILE and method == "GET" and first_byte
            and status in (200, 206, 302))
