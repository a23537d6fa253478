"""Streaming uploads: each file part goes to a temporary file, hashed as it arrives."""
from __future__ import annotations

import hashlib
import tempfile
from typing import IO

from flask import Request
from werkzeug.formparser import FormDataParser, MultiPartParser

# werkzeug reads multipart bodies 64 KiB at a time, and gunicorn re-copies its read-ahead
# buffer on every read; bigger reads halve the cost of receiving a multi-GB upload. It must
# stay below MAX_FORM_MEMORY_SIZE (500 kB) or werkzeug's decoder refuses the body.
FORM_READ_BYTES = 256 * 1024


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


class MalformedForm(ValueError):
    """The body is not valid multipart/form-data (no boundary, cut short, garbled)."""


class LargeReadFormDataParser(FormDataParser):
    """werkzeug's parser with a larger read size (see FORM_READ_BYTES), that says when a
    body is not valid multipart (werkzeug's default is an empty form, which the route
    would report as a missing field)."""

    def parse(self, stream, mimetype, content_length, options=None):
        """Parse the form; MalformedForm when the body is not valid multipart."""
        self.silent = False
        try:
            return super().parse(stream, mimetype, content_length, options)
        except ValueError as exc:
            raise MalformedForm(str(exc)) from exc

    def _parse_multipart(self, stream, mimetype, content_length, options):
        parser = MultiPartParser(stream_factory=self.stream_factory,
                                 max_form_memory_size=self.max_form_memory_size,
                                 max_form_parts=self.max_form_parts, cls=self.cls,
                                 buffer_size=FORM_READ_BYTES)
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        form, files = parser.parse(stream, boundary, content_length)
        return stream, form, files


class HubRequest(Request):
    """A request whose file parts stream into HashingFiles under DATA_DIR/tmp."""

    form_data_parser_class = LargeReadFormDataParser

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        from hub.runtime import current_hub

        return HashingFile(str(current_hub().settings.data_dir / "tmp"))
