"""The CLI's streamed multipart body: correct bytes, and a length requests can see."""
from __future__ import annotations

from pathlib import Path


def test_multipart_stream_has_a_content_length_and_parses(tmp_path: Path):
    import requests
    from werkzeug.formparser import parse_form_data
    from werkzeug.test import EnvironBuilder

    from hub.cli.http import MultipartStream

    big = tmp_path / "adapter_model.safetensors"
    big.write_bytes(bytes(range(256)) * 5000)
    body = MultipartStream([("version", "1.0")], [("files", big)])
    prepared = requests.Request("POST", "http://hub.invalid/x", data=body,
                                headers={"Content-Type": body.content_type}).prepare()
    assert prepared.headers["Content-Length"] == str(len(body))
    assert "Transfer-Encoding" not in prepared.headers
    raw = b"".join(iter(lambda: body.read(4096), b""))
    assert len(raw) == len(body)
    environ = EnvironBuilder(method="POST", data=raw, content_type=body.content_type).get_environ()
    _, form, files = parse_form_data(environ)
    assert form["version"] == "1.0"
    assert files["files"].filename == "adapter_model.safetensors"
    assert files["files"].read() == big.read_bytes()
