"""The CLI against a server that is not an honest hub: nothing is written outside the
target, and every answer it cannot use is one line, never a traceback."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from hub.cli import main

BYTES = b"planted"


def hostile_app(paths: list[str]):
    """A 'hub' whose version lists files named `paths`, and answers HTML elsewhere."""
    files = [{"path": p, "size": len(BYTES), "sha256": hashlib.sha256(BYTES).hexdigest()}
             for p in paths]

    @Request.application
    def app(request: Request) -> Response:
        if request.path.endswith("/versions/1"):
            return Response(json.dumps({"adapter": "eve/x", "version": "1", "yanked": False,
                                        "license": "mit", "files": files}),
                            mimetype="application/json")
        if "/files/" in request.path:
            return Response(BYTES, mimetype="application/octet-stream")
        return Response("<html>Please sign in</html>", mimetype="text/html")

    return app


@pytest.fixture
def hostile(request):
    server = make_server("127.0.0.1", 0, hostile_app(request.param))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("hostile", [["../escaped.txt"], ["/tmp/absolute.txt"],
                                     ["adapter_config.json", ".lorastack.json"]],
                         indirect=True)
def test_pull_never_writes_a_file_name_the_hub_makes_up(hostile, tmp_path):
    target = tmp_path / "inside" / "copy"
    result = CliRunner().invoke(main, ["pull", "eve/x@1", str(target)],
                                env={"LORASTACK_ENDPOINT": hostile, "LORASTACK_TOKEN": ""})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "(hub_unreachable)" in result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [] and not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("hostile", [[]], indirect=True)
def test_a_server_that_answers_html_is_one_line_naming_the_endpoint(hostile):
    result = CliRunner().invoke(main, ["show", "eve/other"],
                                env={"LORASTACK_ENDPOINT": hostile, "LORASTACK_TOKEN": ""})
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "LORASTACK_ENDPOINT" in lines[0] and "(hub_unreachable)" in lines[0]
