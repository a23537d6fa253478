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


class _Response:
    """Just what error_from_response reads from a requests.Response."""

    def __init__(self, status: int, body=None, url: str = "http://hub.invalid/api/v1/x"):
        self.status_code, self._body, self.url = status, body, url

    def json(self):
        if self._body is None:
            raise ValueError("not JSON")
        return self._body


def test_a_problem_body_becomes_the_error_class_of_its_code():
    from hub.cli.http import error_from_response
    from hub.errors import NotFound, VersionExists

    error = error_from_response(_Response(404, {"code": "not_found", "detail": "no such"}))
    assert type(error) is NotFound and error.detail == "no such" and error.status == 404
    assert isinstance(error_from_response(_Response(409, {"code": "version_exists",
                                                          "detail": "x"})), VersionExists)


def test_an_error_without_a_problem_body_gets_a_code_from_its_status():
    from hub.cli.http import error_from_response
    from hub.errors import InternalError, NotFound, Unauthorized

    assert type(error_from_response(_Response(502))) is InternalError
    assert type(error_from_response(_Response(404, ["a list"]))) is NotFound
    error = error_from_response(_Response(401))
    assert type(error) is Unauthorized and "HTTP 401" in error.detail


def test_an_unreachable_hub_is_a_hub_error_naming_lorastack_endpoint():
    import pytest

    from hub.cli.http import HubClient
    from hub.errors import HubUnreachable

    with pytest.raises(HubUnreachable, match="LORASTACK_ENDPOINT") as caught:
        HubClient("http://127.0.0.1:9", token="").get_json("/health")
    assert caught.value.code == "hub_unreachable" and "127.0.0.1:9" in caught.value.detail


def test_a_refused_token_names_lorastack_token_and_says_when_none_is_set(monkeypatch):
    from hub.cli.errors import describe
    from hub.errors import NotFound, Unauthorized

    monkeypatch.delenv("LORASTACK_TOKEN", raising=False)
    unset = describe(Unauthorized("This needs a token."))
    assert unset.startswith("LORASTACK_TOKEN is not set") and unset.endswith("(unauthorized)")
    monkeypatch.setenv("LORASTACK_TOKEN", "wrong")
    refused = describe(Unauthorized("The token is not valid."))
    assert "refused the token" in refused and "LORASTACK_TOKEN" in refused
    assert "lorastack tokens create" in refused and "LORASTACK_DATA_DIR" in refused
    assert describe(NotFound("alice/x not found.")) == "alice/x not found. (not_found)"


def test_multipart_stream_reports_every_byte_read(tmp_path: Path):
    from hub.cli.http import MultipartStream

    weights = tmp_path / "adapter_model.safetensors"
    weights.write_bytes(b"\0" * 300_000)
    body = MultipartStream([("version", "1")], [("files", weights)])
    counted = []
    body.on_read = counted.append
    while body.read(65536):
        pass
    assert sum(counted) == len(body)
