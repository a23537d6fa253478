"""`lorastack serve` against slow and idle clients, malformed HTTP and a large publish: a real
server process, raw sockets, bounded checks (never a benchmark)."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.moto_server import free_port
from tests.support.processes import HubProcess, SOURCE_ROOT

SLOW_CLIENTS = 200
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One `lorastack serve` (a single process, few threads: the hardest case) and a token."""
    root = tmp_path_factory.mktemp("serve")
    port = free_port()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("LORASTACK_") and key != "PORT"}
    env.update(LORASTACK_DATA_DIR=str(root / "var"), PORT=str(port), LORASTACK_SECRET_KEY="t",
               PYTHONPATH=os.pathsep.join(filter(None, [str(SOURCE_ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    lorastack = str(Path(sys.executable).parent / "lorastack")
    created = subprocess.run([lorastack, "users", "create", "alice"], env=env, check=True,
                             capture_output=True, text=True)
    server = HubProcess(["serve", "--workers", "1", "--threads", "4"], env, root / "serve.log")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"{base}/api/v1/health", timeout=2)
            break
        except requests.RequestException:  # not up yet, or slow to answer at first
            assert time.monotonic() < deadline and server.proc.poll() is None, server.log()
            time.sleep(0.2)
    yield {"base": base, "port": port, "env": env, "server": server, "root": root,
           "token": created.stdout.strip().splitlines()[-1], "lorastack": lorastack}
    server.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _raw(port: int, data: bytes) -> tuple[int, dict, bytes]:
    """Send `data` on a fresh connection; the status, headers and body of the answer."""
    with _connect(port) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or len(received.split(b"\r\n\r\n", 1)[1]) < int(
                _headers(received).get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, _headers(received), body


def _headers(received: bytes) -> dict:
    lines = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_health_answers_within_a_second_while_200_clients_stall(hub):
    port = hub["port"]
    stalled = []
    try:
        for i in range(SLOW_CLIENTS):
            sock = _connect(port)
            if i % 2:  # half a request header, never finished
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            else:  # a complete header, then a body shorter than its Content-Length
                sock.sendall(b"POST /api/v1/merges/plan HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Type: application/json\r\nContent-Length: 900\r\n\r\n{\"a")
            stalled.append(sock)
        for _ in range(5):
            started = time.monotonic()
            response = requests.get(f"{hub['base']}/api/v1/health", timeout=5)
            elapsed = time.monotonic() - started
            assert response.status_code == 200 and elapsed < 1.0, elapsed
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /api/v1/health?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"h" * 70000 + b"\r\n\r\n",
     431),
    (b"POST /api/v1/merges/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 12ab\r\n\r\n", 400),
    (b"POST /api/v1/merges/plan HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
     b"Transfer-Encoding: gzip\r\n\r\nx", 501),
    (b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
])
def test_requests_the_server_refuses_are_problem_json(hub, request_bytes, status):
    got, headers, body = _raw(hub["port"], request_bytes)
    assert got == status, body
    assert headers["content-type"] == "application/problem+json", body
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"] == "invalid_request", problem


def test_a_large_json_body_or_an_anonymous_upload_is_refused_before_it_is_sent(hub):
    port = hub["port"]
    huge = 5 * 1024 * MiB
    status, _, body = _raw(port, b"PATCH /api/v1/adapters/alice/x HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                                 b"Content-Length: %d\r\n\r\n" % huge)
    assert status == 413 and json.loads(body)["code"] == "invalid_request"
    status, headers, body = _raw(port, b"POST /api/v1/adapters/alice/x/versions HTTP/1.1\r\n"
                                       b"Host: x\r\nContent-Type: multipart/form-data; boundary=b"
                                       b"\r\nContent-Length: %d\r\n\r\n" % huge)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, _, body = _raw(port, b"POST /api/v1/adapters/alice/x/versions HTTP/1.1\r\n"
                                 b"Host: x\r\nAuthorization: Bearer %s\r\n"
                                 b"Content-Length: %d\r\n\r\n"
                                 % (hub["token"].encode(), 11 * 1024 ** 3))
    assert status == 413 and json.loads(body)["code"] == "file_too_large"


def _signed_session(secret_key: str, data: dict) -> str:
    """A sign-in cookie's value as the hub signs it (Flask's session with its secret key)."""
    from flask import Flask

    app = Flask("signer")
    app.secret_key = secret_key
    return app.session_interface.get_signing_serializer(app).dumps(data)


def test_the_hf_commit_and_the_publish_page_take_large_bodies_from_a_named_caller(hub):
    """The server's gate knows every large-body route: an HF commit with a token of the hub's
    form and a publish-page upload with a sign-in cookie the hub signed reach the app (which
    then checks them); a made-up header or cookie is refused from the headers."""
    port, body = hub["port"], b"x" * (3 * MiB)

    def post(path: str, headers: bytes, *, send_body: bool = True) -> tuple[int, dict, bytes]:
        # A refusal comes before the body: only the headers are sent, and it still answers.
        return _raw(port, b"POST %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: %d\r\n\r\n%s"
                    % (path, headers, len(body), body if send_body else b""))

    commit = b"/api/models/alice/absent/commit/main"
    ndjson = b"Content-Type: application/x-ndjson\r\n"
    token = b"Authorization: Bearer %s\r\n" % hub["token"].encode()
    status, headers, answer = post(commit, token + ndjson)
    # The protocol's own answer to the body (the Hub's error style), not the gate's.
    assert headers["content-type"] == "application/json" and "error" in json.loads(answer)
    for header in (b"Bearer lst_x", b"Bearer " + b"x" * 47, b"Basic " + hub["token"].encode(),
                   b"anything"):
        status, headers, answer = post(commit, b"Authorization: %s\r\n" % header + ndjson,
                                       send_body=False)
        assert status == 401 and json.loads(answer)["code"] == "unauthorized", header

    form = b"Content-Type: multipart/form-data; boundary=b\r\n"
    signed = _signed_session("t", {"uid": 1, "stamp": "stale"}).encode()
    status, headers, _ = post(b"/new", form + b"Cookie: theme=dark; lorastack_session=%s\r\n"
                              % signed)
    assert status != 401 and headers["content-type"].startswith("text/html")
    for cookie in (b"lorastack_session=stale",  # any value
                   b"xlorastack_session=" + signed,  # another cookie's name
                   b"lorastack_session=" + _signed_session("other key", {"uid": 1}).encode(),
                   b"lorastack_session=" + _signed_session("t", {"csrf": "c"}).encode()):
        status, _, answer = post(b"/new", form + b"Cookie: %s\r\n" % cookie, send_body=False)
        assert status == 401 and json.loads(answer)["code"] == "unauthorized", cookie
    status, _, answer = post(b"/new", form, send_body=False)
    assert status == 401 and json.loads(answer)["code"] == "unauthorized"


def _big_adapter(directory: Path, size: int) -> Path:
    """A valid LoRA adapter folder (PEFT's naming and config) of about `size` bytes."""
    import torch
    from safetensors.torch import save_file

    r, hidden = 64, 4096
    modules = max(1, size // (2 * r * hidden * 2))
    tensors = {}
    generator = torch.Generator().manual_seed(0)
    for i in range(modules):
        prefix = f"base_model.model.model.layers.{i // 2}.self_attn.{('q_proj', 'v_proj')[i % 2]}"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, hidden, generator=generator).half()
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(hidden, r, generator=generator).half()
    directory.mkdir()
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 2 * r,
        "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "test/llama-4096"}))
    return directory


def test_a_large_publish_streams_with_bounded_server_memory(hub):
    folder = _big_adapter(hub["root"] / "big", 256 * MiB)
    server = psutil.Process(hub["server"].proc.pid)

    def tree_rss() -> int:
        total = 0
        for proc in [server, *server.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    before, peak, done = tree_rss(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        env = {**hub["env"], "LORASTACK_ENDPOINT": hub["base"], "LORASTACK_TOKEN": hub["token"]}
        pushed = subprocess.run([hub["lorastack"], "push", str(folder), "alice/big", "--version",
                                 "1.0", "--license", "apache-2.0"], env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        done.set()
        sampler.join()
    assert pushed.returncode == 0, pushed.stderr + hub["server"].log()[-3000:]
    version = requests.get(f"{hub['base']}/api/v1/adapters/alice/big/versions/1.0",
                           timeout=10).json()
    weights = next(f for f in version["files"] if f["path"] == "adapter_model.safetensors")
    assert weights["size"] == (folder / "adapter_model.safetensors").stat().st_size
    assert peak[0] - before < 100 * MiB, (before, peak[0])
    # The spooled body and the upload's temporary file are gone.
    assert not [p for p in (hub["root"] / "var" / "tmp").iterdir() if p.is_file()]


def test_headers_and_bodies_that_stall_are_cut_off_after_their_timeouts(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from flask import Flask

    from hub.cli import serving

    monkeypatch.setattr(serving, "HEADER_TIMEOUT", 1)
    monkeypatch.setattr(serving, "IDLE_TIMEOUT", 2)
    app = Flask("probe")
    app.add_url_rule("/echo", "echo", lambda: "ok", methods=["GET", "POST"])
    (tmp_path / "tmp").mkdir()
    gate = serving.BodyGate(app, SimpleNamespace(max_json_bytes=MiB, max_upload_bytes=MiB,
                                                 data_dir=tmp_path))
    with _serving(app, gate) as port:
        # A header that keeps trickling is cut at the header deadline, though never idle.
        trickle = _connect(port)
        trickle.sendall(b"GET /echo HTTP/1.1\r\n")
        body = _connect(port)
        body.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
        started, cut = time.monotonic(), {}
        while len(cut) < 2 and time.monotonic() - started < 15:
            for name, sock in (("header", trickle), ("body", body)):
                if name in cut:
                    continue
                try:
                    if name == "header":
                        sock.sendall(b"X: y\r\n")
                    sock.settimeout(0.3)
                    if sock.recv(1) == b"":
                        cut[name] = time.monotonic() - started
                except socket.timeout:
                    pass
                except OSError:
                    cut[name] = time.monotonic() - started
        assert 0.9 < cut.get("header", 99) < 5, cut
        assert 1.9 < cut.get("body", 99) < 8, cut
        assert _raw(port, b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200


@contextlib.contextmanager
def _serving(app, gate):
    """The hub's waitress servers on a free port, run by a thread of this process."""
    from waitress import wasyncore

    from hub.cli import serving

    listener = socket.create_server(("127.0.0.1", 0))
    servers, socket_map = serving.make_servers(app, gate, [listener], threads=2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, use_poll=True, count=1)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for server in servers:
            server.close()
        servers[0].task_dispatcher.shutdown()


@pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)
def test_forwarded_addresses_reach_the_app_which_believes_them_only_if_told(settings):
    from hub import create_app
    from hub.cli import serving

    def statuses(app, forwarded_for: str, count: int) -> list[int]:
        with _serving(app, serving.BodyGate(app, settings)) as port:
            return [_raw(port, b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n"
                               b"Authorization: Bearer lsk_wrong\r\n"
                               b"X-Forwarded-For: %s\r\n\r\n" % forwarded_for.encode())[0]
                    for _ in range(count)]

    limited = settings.with_overrides(auth_failures_per_minute=3)
    behind_proxy = create_app(limited.with_overrides(trusted_proxies=1))
    assert statuses(behind_proxy, "203.0.113.7", 4) == [401, 401, 401, 429]
    assert statuses(behind_proxy, "198.51.100.9", 1) == [401]
    direct = create_app(limited)  # the header is a client's claim: one count, the peer's
    assert statuses(direct, "203.0.113.7", 3) + statuses(direct, "198.51.100.9", 1) == \
        [401, 401, 401, 429]


def test_a_chunked_publish_is_spooled_and_a_chunked_json_body_stops_at_its_limit(hub, lora_dir):
    from hub.cli.http import MultipartStream

    form = MultipartStream([("version", "chunked"), ("license", "apache-2.0")],
                           [("files", p) for p in sorted(lora_dir.iterdir()) if p.is_file()])

    def chunks():  # a generator: requests sends it chunked, without a Content-Length
        while data := form.read(100_000):
            yield data

    response = requests.post(f"{hub['base']}/api/v1/adapters/alice/chunked/versions",
                             data=chunks(), timeout=60,
                             headers={"Authorization": f"Bearer {hub['token']}",
                                      "Content-Type": form.content_type})
    assert response.status_code == 201, response.text
    too_big = requests.patch(f"{hub['base']}/api/v1/adapters/alice/chunked", timeout=60,
                             data=(b" " * 65536 for _ in range(64)),
                             headers={"Authorization": f"Bearer {hub['token']}",
                                      "Content-Type": "application/json"})
    assert too_big.status_code == 413, too_big.text
    assert too_big.json()["code"] == "invalid_request"


def test_the_access_log_line_shows_the_raw_target_and_no_caller_can_forge_a_line(tmp_path):
    import logging
    from types import SimpleNamespace

    from flask import Flask

    from hub.cli import serving

    app = Flask("probe")
    app.add_url_rule("/<path:anything>", "any", lambda anything: "ok")
    (tmp_path / "tmp").mkdir()
    gate = serving.BodyGate(app, SimpleNamespace(max_json_bytes=MiB, max_upload_bytes=MiB,
                                                 data_dir=tmp_path))
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access_log = logging.getLogger("test.access")
    access_log.propagate, access_log.level = False, logging.INFO
    access_log.addHandler(Collect())
    listener = socket.create_server(("127.0.0.1", 0))
    servers, socket_map = serving.make_servers(app, gate, [listener], threads=2,
                                               access_log=access_log)
    from waitress import wasyncore

    stop = threading.Event()
    thread = threading.Thread(target=lambda: [wasyncore.loop(timeout=0.2, map=socket_map,
                                                             use_poll=True, count=1)
                                              for _ in iter(stop.is_set, True)])
    thread.start()
    try:
        port = listener.getsockname()[1]
        for target in (b"/%0d%0a127.0.0.1%20%22GET%20/admin%20HTTP/1.1%22%20200",
                       b"/a%1b[31mred?q=%0a\x1b[0m"):
            assert _raw(port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)[0] in (200, 404)
    finally:
        stop.set()
        thread.join()
        for server in servers:
            server.close()
        servers[0].task_dispatcher.shutdown()
    assert len(lines) == 2, lines
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
    assert '"GET /%0d%0a127.0.0.1%20%22GET%20/admin' in lines[0], lines[0]
    assert "/a%1b[31mred?q=%0a\\x1b[0m" in lines[1], lines[1]
