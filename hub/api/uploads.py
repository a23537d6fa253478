"""Streaming uploads: each file part goes to a temporary file, hashed as it arrives."""
from __future__ import annotations

import hashlib
import tempfile
from typing import IO

from flask import Request, current_app


class HashingFile:
    """A temporary file that computes its sha256 and size while it is written."""

    def __init__(self, directory: str) -> None:
        self._file: IO[bytes] = tempfile.NamedTemporaryFile(dir=directory, prefix="upload-",
                                                            delete=True)
        self._sha256 = hashlib.sha256()
        self.size = 0

    @property
    def name(self) -> str:
        """The temporary file's path."""
        return self._file.name

    def write(self, data: bytes) -> int:
        """Write and hash a chunk."""
        self._sha256.update(data)
        self.size += len(data)
        return self._file.write(data)

    def hexdigest(self) -> str:
        """The sha256 of everything written."""
        return self._sha256.hexdigest()

    def flush(self) -> None:
        """Flush to disk so the path can be read by another handle."""
        self._file.flush()

    def __getattr__(self, attribute: str):
        # read, seek, tell, close ... go to the real file.
        return getattr(self._file, attribute)

    def __iter__(self):
        return iter(self._file)


class HubRequest(Request):
    """A request whose file parts stream into HashingFiles under DATA_DIR/tmp."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        hub = current_app.extensions["lorastack"]
        return HashingFile(str(hub.settings.data_dir / "tmp"))
