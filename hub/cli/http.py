"""A small HTTP client for the hub: bearer auth, HubError subclasses, streamed transfers.

Usable as a library: every failure is a `hub.errors.HubError` (the server's problem+json
turned back into its class, or HubUnreachable), never a `requests` exception.
"""
from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

from hub.config import client_endpoint, client_token
from hub.errors import HubError, HubUnreachable, error_from_problem

# A body that is not problem+json (a proxy's page, an old hub) still gets a code.
_CODE_BY_STATUS = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                   405: "method_not_allowed", 413: "file_too_large", 429: "rate_limited"}


class HubClient:
    """Talks to a hub at LORASTACK_ENDPOINT with LORASTACK_TOKEN (or the given ones)."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        import requests

        self.endpoint = (endpoint or client_endpoint()).rstrip("/")
        self.token = token or client_token()
        self.session = requests.Session()
        if self.token:
            self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.session.headers["User-Agent"] = "lorastack-cli"

    def request(self, method: str, path: str, **kwargs):
        """Send a request to /api/v1`path`; raise the HubError an error response stands for."""
        import requests

        url = f"{self.endpoint}/api/v1{path}"
        try:
            response = self.session.request(method, url, timeout=kwargs.pop("timeout", 600),
                                            **kwargs)
        except requests.RequestException as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def get_json(self, path: str, **params) -> dict:
        """GET `path` and return its JSON body."""
        return self.json(self.request("GET", path, params=params or None))

    def post_json(self, path: str, body: dict) -> dict:
        """POST a JSON body to `path` and return the JSON answer."""
        return self.json(self.request("POST", path, json=body))

    def json(self, response) -> dict:
        """A successful response's JSON object; HubUnreachable when it is not one (the
        endpoint is some other server, or a proxy's login page)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise HubUnreachable(f"the server at {self.endpoint} did not answer with the hub's"
                                 " JSON: is LORASTACK_ENDPOINT the hub's address?")
        return body

    def download(self, path: str, out: BinaryIO,
                 on_chunk: Callable[[bytes], None] | None = None) -> None:
        """Stream the bytes at `path` into `out`, calling `on_chunk` with each chunk."""
        import requests

        with self.request("GET", path, stream=True) as response:
            try:
                for chunk in response.iter_content(1 << 20):
                    out.write(chunk)
                    if on_chunk is not None:
                        on_chunk(chunk)
            except requests.RequestException as exc:
                raise self._unreachable(exc, during="a download") from None

    def _unreachable(self, exc: Exception, during: str = "the request") -> HubUnreachable:
        import requests

        if isinstance(exc, requests.Timeout):
            what = f"the hub at {self.endpoint} did not answer in time during {during}"
        elif isinstance(exc, requests.ConnectionError):
            what = f"cannot reach the hub at {self.endpoint} (or it broke off {during})"
        else:
            what = f"{during} to the hub at {self.endpoint} failed ({type(exc).__name__})"
        return HubUnreachable(f"{what}: check LORASTACK_ENDPOINT and that the hub runs")


def error_from_response(response) -> HubError:
    """The HubError for an error response: its problem+json, or one made from the status."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "code" not in body:
        status = response.status_code
        code = _CODE_BY_STATUS.get(status, "internal" if status >= 500 else "invalid_request")
        body = {"code": code, "detail": f"HTTP {status} from {response.url}"}
    return error_from_problem(body, response.status_code)


class MultipartStream(io.RawIOBase):
    """multipart/form-data read lazily from disk, with a known length (no chunking)."""

    def __init__(self, fields: list[tuple[str, str]], files: list[tuple[str, Path]]) -> None:
        self.boundary = uuid.uuid4().hex
        self._pieces: list[bytes | Path] = []
        for name, value in fields:
            self._pieces.append(self._head(name) + b"\r\n" + value.encode() + b"\r\n")
        for name, path in files:
            self._pieces.append(self._head(name, path.name) +
                                b"Content-Type: application/octet-stream\r\n\r\n")
            self._pieces.append(path)
            self._pieces.append(b"\r\n")
        self._pieces.append(f"--{self.boundary}--\r\n".encode())
        self.len = sum(len(p) if isinstance(p, bytes) else os.path.getsize(p)
                       for p in self._pieces)
        self._index = 0
        self._position = 0
        self._current: io.BufferedReader | io.BytesIO | None = None
        #: Called with the size of every chunk read: how push draws its progress.
        self.on_read: Callable[[int], None] | None = None

    def _head(self, name: str, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        return f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n".encode()

    @property
    def content_type(self) -> str:
        """The Content-Type header value."""
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self.len

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        # requests sizes a body as len - tell(); RawIOBase.tell() raises, and requests then
        # takes the length as 0 and falls back to chunked encoding.
        return self._position

    def read(self, size: int = -1) -> bytes:
        """Read up to `size` bytes (a whole piece at most)."""
        if size is None or size < 0:
            size = 1 << 20
        while self._index < len(self._pieces):
            if self._current is None:
                piece = self._pieces[self._index]
                self._current = io.BytesIO(piece) if isinstance(piece, bytes) else open(piece, "rb")
            chunk = self._current.read(size)
            if chunk:
                self._position += len(chunk)
                if self.on_read is not None:
                    self.on_read(len(chunk))
                return chunk
            self._current.close()
            self._current = None
            self._index += 1
        return b""
