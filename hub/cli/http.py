"""A small HTTP client for the CLI: bearer auth, problem+json errors, streamed multipart."""
from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import click

from hub.config import client_endpoint, client_token


class HubClient:
    """Talks to a hub at LORASTACK_ENDPOINT with LORASTACK_TOKEN."""

    def __init__(self, endpoint: str | None = None, token: str | None = None) -> None:
        import requests

        self.endpoint = (endpoint or client_endpoint()).rstrip("/")
        self.session = requests.Session()
        token = token or client_token()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.headers["User-Agent"] = "lorastack-cli"

    def request(self, method: str, path: str, **kwargs):
        """Send a request; raise a one-line ClickException for an error response."""
        import requests

        url = f"{self.endpoint}/api/v1{path}"
        try:
            response = self.session.request(method, url, timeout=kwargs.pop("timeout", 600),
                                            **kwargs)
        except requests.ConnectionError:
            raise click.ClickException(f"cannot reach the hub at {self.endpoint}; is it running?"
                                       " (set LORASTACK_ENDPOINT)") from None
        if response.status_code >= 400:
            raise click.ClickException(describe_error(response))
        return response


def describe_error(response) -> str:
    """One line for an error response: its detail and code."""
    try:
        body = response.json()
        return f"{body.get('detail') or body.get('title')} ({body.get('code')})"
    except ValueError:
        return f"HTTP {response.status_code} from {response.url}"


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
                return chunk
            self._current.close()
            self._current = None
            self._index += 1
        return b""
