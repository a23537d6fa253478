"""The body of a Hub commit (`application/x-ndjson`), read as it streams in.

A line `{"key": "file", "value": {"content": "<base64>", "path": ...}}` can hold a whole
weights file: its content is decoded straight into a temporary file while it is hashed,
so memory stays flat whatever the size. Other lines (the header, `lfsFile`,
`deletedFile`) are small JSON objects.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from hub.errors import InvalidRequest

READ_BYTES = 1024 * 1024
#: The longest line that is not a file's content (a header, an lfsFile, a deletion).
MAX_LINE_BYTES = 1024 * 1024
_CONTENT = re.compile(rb'"content"\s*:\s*"')


class HashedTemp:
    """A temporary file under the hub's tmp folder, hashed while it is written."""

    def __init__(self, directory: str) -> None:
        self.file: IO[bytes] = tempfile.NamedTemporaryFile(dir=directory, prefix="commit-")
        self._sha256 = hashlib.sha256()
        self.size = 0

    @property
    def name(self) -> str:
        """The file's path (valid until close)."""
        return self.file.name

    def write(self, data: bytes) -> None:
        """Append and hash `data`."""
        self._sha256.update(data)
        self.size += len(data)
        self.file.write(data)

    def hexdigest(self) -> str:
        """The sha256 of everything written."""
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Remove the file."""
        self.file.close()


@dataclass
class CommitBody:
    """What a commit asks for: files added (path -> temp file), LFS files named by their
    sha256, and paths it deletes."""

    header: dict = field(default_factory=dict)
    files: dict[str, HashedTemp] = field(default_factory=dict)
    lfs_files: dict[str, dict] = field(default_factory=dict)
    deletions: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Remove the temporary files."""
        for temp in self.files.values():
            temp.close()


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.eof = False

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.stream.read(READ_BYTES)
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True


def parse_commit(stream: BinaryIO, tmp_dir: str) -> CommitBody:
    """Read a commit body; InvalidRequest for anything that is not the Hub's format."""
    body = CommitBody()
    reader = _Reader(stream)
    try:
        while True:
            line = _next_line(reader, body, tmp_dir)
            if line is None:
                break
            if line:
                _apply(body, line)
    except BaseException:
        body.close()
        raise
    if not body.header:
        body.close()
        raise InvalidRequest("A commit starts with a header line"
                             ' {"key": "header", "value": {"summary": ...}}.')
    return body


def _next_line(reader: _Reader, body: CommitBody, tmp_dir: str) -> dict | None:
    """The next line as a JSON object (a file's content already written out), or None."""
    while True:
        newline = reader.buffer.find(b"\n")
        match = _CONTENT.search(reader.buffer, 0, MAX_LINE_BYTES if newline < 0 else newline)
        if match is not None:
            return _file_line(reader, body, tmp_dir, match)
        if newline >= 0:
            line = bytes(reader.buffer[:newline])
            del reader.buffer[:newline + 1]
            return _loads(line) if line.strip() else {}
        if len(reader.buffer) > MAX_LINE_BYTES:
            raise InvalidRequest(f"A commit line other than a file's content is longer than"
                                 f" {MAX_LINE_BYTES} bytes.")
        if not reader.more():
            if not reader.buffer.strip():
                return None
            line = bytes(reader.buffer)
            reader.buffer.clear()
            return _loads(line)


def _file_line(reader: _Reader, body: CommitBody, tmp_dir: str, match) -> dict:
    """Decode a file's base64 content into a temporary file as it arrives."""
    prefix = bytes(reader.buffer[:match.start()]) + b'"content": ""'
    del reader.buffer[:match.end()]
    temp = HashedTemp(tmp_dir)
    carry = b""
    try:
        while True:
            quote = reader.buffer.find(b'"')
            block = bytes(reader.buffer if quote < 0 else reader.buffer[:quote])
            del reader.buffer[:len(block)]
            block = carry + block
            usable = len(block) - len(block) % 4 if quote < 0 else len(block)
            carry = block[usable:]
            if usable:
                temp.write(base64.b64decode(block[:usable], validate=True))
            if quote >= 0:
                del reader.buffer[:1]
                break
            if not reader.more():
                raise InvalidRequest("The commit body ends inside a file's content.")
        while reader.buffer.find(b"\n") < 0 and reader.more():
            if len(reader.buffer) > MAX_LINE_BYTES:
                raise InvalidRequest("A file line of the commit does not end.")
        newline = reader.buffer.find(b"\n")
        end = len(reader.buffer) if newline < 0 else newline
        tail = bytes(reader.buffer[:end])
        del reader.buffer[:end + 1]
        line = _loads(prefix + tail)
        value = line.get("value")
        path = value.get("path") if isinstance(value, dict) else None
        if line.get("key") != "file" or not isinstance(path, str):
            raise InvalidRequest('A line with "content" must be {"key": "file", "value":'
                                 ' {"content", "path", "encoding": "base64"}}.')
    except binascii.Error:
        temp.close()
        raise InvalidRequest("A file's content in the commit is not valid base64.") from None
    except BaseException:
        temp.close()  # until it is in body.files, nothing else removes it
        raise
    if path in body.files:
        body.files[path].close()
    body.files[path] = temp
    return {}


def _loads(line: bytes) -> dict:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        raise InvalidRequest("A commit line is not valid JSON (the body is one JSON object"
                             " a line, application/x-ndjson).") from None
    if not isinstance(value, dict):
        raise InvalidRequest("Each commit line is a JSON object.")
    return value


def _apply(body: CommitBody, line: dict) -> None:
    key, value = line.get("key"), line.get("value")
    if not isinstance(value, dict):
        raise InvalidRequest(f"Commit line {key!r} has no object 'value'.")
    if key == "header":
        body.header = value
    elif key == "lfsFile":
        if not isinstance(value.get("path"), str) or not isinstance(value.get("oid"), str):
            raise InvalidRequest("An lfsFile line names a 'path' and an 'oid' (sha256).")
        body.lfs_files[value["path"]] = value
    elif key in ("deletedFile", "deletedFolder"):
        body.deletions.append(str(value.get("path")))
    else:
        raise InvalidRequest(f"Unknown commit line {key!r}: this hub takes header, file,"
                             " lfsFile, deletedFile.")
