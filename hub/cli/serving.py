"""The production HTTP server: gunicorn's arbiter runs the processes, waitress reads requests.

Why this pair. gunicorn's own workers hand a connection to a thread as soon as it is
readable, and the thread then waits on the socket: as many clients as there are threads,
each sending half a header or a short body under a larger Content-Length, hold every thread
and the hub stops answering. waitress reads each request, headers and body, in one event
loop, and gives it to a thread only once it is complete; a body larger than waitress's
in-memory buffer (inbuf_overflow) is spooled to a file under DATA_DIR/tmp on the way
(unlinked at once, so a crash leaves nothing). A slow or idle client costs a socket and a
small buffer, never a thread. gunicorn's arbiter is kept for what it does well: one
process per core, restarts, signals, graceful stops.

What it costs: a publish is written to disk twice (waitress's spool, then the hashed upload
file), and an upload's body arrives in full before the app sees the caller; so the limits
that need no database are applied here, from the request line and headers, before any
body byte is read (hub.cli.serving.BodyGate). A large body to any route but the upload
routes is refused at once, and so is one whose headers carry neither a bearer token of the
hub's form (its prefix and length) nor, on the publish page, a sign-in cookie signed by the
app's secret key for a user. Whether that token exists, or that user still does, needs the
database and waits for the route: a made-up string of a token's form still has its body
spooled, up to LORASTACK_MAX_UPLOAD_BYTES, before its 401. The other alternatives were
worse: an async worker (gevent) monkey-patches threads, and the inline merge worker's torch
compute and psycopg's C waits would block its loop; an ASGI server with a WSGI adapter
still parks a thread on a slow body.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from typing import Any

from gunicorn.workers.base import Worker
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.buffers import OverflowableBuffer, TempfileBasedBuffer
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import Error
from werkzeug.exceptions import HTTPException

from hub.bodies import UPLOAD_ENDPOINTS, session_check, shows_credentials
from hub.errors import FileTooLarge, HubError, InvalidRequest, Unauthorized

#: The request line's limit (as nginx's large_client_header_buffers): longer is 414.
MAX_REQUEST_LINE = 8190
#: All headers together; beyond it, 431 before the rest is read.
MAX_HEADER_BYTES = 64 * 1024
#: Whole seconds a client has to send its request line and headers (a total, not per read).
HEADER_TIMEOUT = 20
#: Seconds without a byte in either direction before a connection is closed; it is also the
#: read timeout of a body that stalls.
IDLE_TIMEOUT = 60
#: Open connections per process; more wait in the listen backlog.
CONNECTIONS = 1000
#: Bytes read from a socket at once: large uploads arrive in fewer loop turns.
RECV_BYTES = 256 * 1024
#: What the access log escapes in a request target (C0, DEL and C1 controls).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def default_workers() -> int:
    """One web process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ServerError(Error):
    """A request refused before the app runs, with the HubError the caller gets."""

    def __init__(self, error: HubError) -> None:
        super().__init__(error.detail)
        self.error = error
        self.code = error.status
        self.reason = error.title

    def to_response(self, ident=None):
        """problem+json, as /api/v1 answers (the caller may be a client of the API)."""
        error = self.error
        headers = [("Content-Type", "application/problem+json"), *error.headers().items()]
        body = json.dumps(error.to_problem()).encode()
        return f"{error.status} {error.title}", headers, body


def _as_problem(error: Error) -> ServerError:
    """waitress's own refusals (plain text) as the hub's errors."""
    if isinstance(error, ServerError):
        return error
    detail = str(error.body)
    if error.code == 413:
        return ServerError(FileTooLarge(f"The body is larger than this hub accepts ({detail})."))
    if error.code == 431:
        wrapped = InvalidRequest(f"The request headers are too large (at most"
                                 f" {MAX_HEADER_BYTES} bytes).", status=431)
    else:
        status = error.code if 400 <= error.code < 600 else 400
        wrapped = InvalidRequest(f"The request is not valid HTTP/1.1: {detail}.", status=status)
    wrapped.title = error.reason
    return ServerError(wrapped)


class BodyGate:
    """The limits a request meets before its body is read: which route may take a large body
    (hub.bodies.UPLOAD_ENDPOINTS), and only from a caller whose headers carry a token of the
    hub's form or a sign-in cookie the app signed (hub.bodies.shows_credentials)."""

    def __init__(self, app, settings) -> None:
        self._urls = app.url_map.bind("localhost")
        self._signed_in = session_check(app)
        self.max_json = settings.max_json_bytes
        self.max_upload = settings.max_upload_bytes
        self.spool_dir = str(settings.data_dir / "tmp")

    def endpoint(self, method: str, path: str) -> str | None:
        """The route's endpoint name (None: no route)."""
        try:
            return self._urls.match(path, method=method)[0]
        except HTTPException:
            return None

    def body_limit(self, method: str, path: str) -> int:
        """The most bytes a body to this route may have."""
        return (self.max_upload if self.endpoint(method, path) in UPLOAD_ENDPOINTS
                else self.max_json)

    def refusal(self, method: str, path: str, headers: dict, length: int | None,
                limit: int) -> HubError | None:
        """Why this request is answered without reading its body (None: read it)."""
        if length is not None and length <= self.max_json:
            return None
        if limit <= self.max_json:
            if length is None:
                return None  # chunked: counted as it arrives (HubRequestParser.received)
            return InvalidRequest(f"The body is larger than this hub accepts here ({limit}"
                                  " bytes; LORASTACK_MAX_JSON_BYTES): send a small JSON object.",
                                  status=413)
        endpoint = self.endpoint(method, path) or ""
        if not shows_credentials(headers, endpoint, self._signed_in):
            if endpoint == "web.publish":
                return Unauthorized("Sign in to publish from the page (your sign-in cookie is"
                                    " missing, altered or expired).")
            return Unauthorized("Publishing needs a write token: send it as"
                                " `Authorization: Bearer <token>` (a token made by"
                                " `lorastack tokens create` or the tokens page).")
        if length is not None and length > limit:
            return FileTooLarge(f"The upload is larger than this hub accepts ({limit} bytes;"
                                " LORASTACK_MAX_UPLOAD_BYTES).")
        return None


class _SpoolFile(TempfileBasedBuffer):
    def __init__(self, spool_dir: str, from_buffer=None) -> None:
        self.spool_dir = spool_dir
        super().__init__(from_buffer)

    def newfile(self):
        # Under DATA_DIR/tmp, the disk uploads are sized for (not /tmp, often in memory);
        # unlinked at once, so nothing is left behind, whatever ends the process.
        return tempfile.TemporaryFile("w+b", dir=self.spool_dir, prefix="spool-")


class _SpoolBuffer(OverflowableBuffer):
    """waitress's body buffer: in memory up to inbuf_overflow, then a _SpoolFile."""

    def __init__(self, overflow: int, spool_dir: str) -> None:
        super().__init__(overflow)
        self.spool_dir = spool_dir

    def _set_large_buffer(self):
        old = self.buf
        self.buf = _SpoolFile(self.spool_dir, old)
        if hasattr(old, "close"):
            old.close()
        self.overflowed = True


class HubRequestParser(HTTPRequestParser):
    """waitress's parser, with the hub's limits checked before the body and its errors
    rendered as problem+json."""

    gate: BodyGate

    def __init__(self, adj) -> None:
        super().__init__(adj)
        self.started = time.monotonic()
        self.body_limit = adj.max_request_body_size

    def received(self, data):
        """Consume bytes; refuse a chunked body once it passes its route's limit."""
        consumed = super().received(data)
        if (self.body_rcv is not None and not self.completed
                and self.body_bytes_received > self.body_limit):
            self.error = ServerError(InvalidRequest(
                f"The body is larger than this hub accepts here ({self.body_limit} bytes).",
                status=413))
            self.completed = True
        if self.error is not None:
            self.error = _as_problem(self.error)
        return consumed

    def parse_header(self, header_plus):
        """Parse, then apply the gate: an answer now, or a body spooled under DATA_DIR."""
        line = header_plus.split(b"\r\n", 1)[0]
        if len(line) > MAX_REQUEST_LINE:
            error = InvalidRequest(f"The request line is longer than {MAX_REQUEST_LINE} bytes;"
                                   " send long parameters in a JSON body.", status=414)
            error.title = "URI Too Long"
            self._refuse(error)
            super().parse_header(b"GET / HTTP/1.0\r\n")
            return
        super().parse_header(header_plus)
        if self.error is not None:
            return
        gate = self.gate
        length = None if self.chunked else self.content_length
        try:
            self.body_limit = gate.body_limit(self.command, self.path)
            refusal = gate.refusal(self.command, self.path, self.headers, length,
                                   self.body_limit)
        except Exception as exc:  # the event loop must never die on one request
            refusal = InvalidRequest(f"The request could not be routed: {exc}")
        if refusal is not None:
            self._refuse(refusal)
            self.body_rcv, self.content_length = None, 0
            return
        if self.body_rcv is not None:
            self.body_rcv.buf = _SpoolBuffer(self.adj.inbuf_overflow, gate.spool_dir)

    def _refuse(self, error: HubError) -> None:
        self.error = ServerError(error)
        self.completed = True
        self.expect_continue = False  # no "100 Continue": the answer is final


class ProblemErrorTask(ErrorTask):
    """waitress's error response, as problem+json."""

    def execute(self):
        """Render the refusal and close the connection after it."""
        self.request.error = _as_problem(self.request.error)
        super().execute()


class LoggedTask(WSGITask):
    """A request run by the app, with its access-log line (and the hub's request id)."""

    access_log: Any = None

    def execute(self):
        """Run the app, then log one line."""
        started = time.perf_counter()
        try:
            super().execute()
        finally:
            if self.access_log is not None:
                self._log(time.perf_counter() - started)

    def _log(self, elapsed: float) -> None:
        request = self.request
        request_id = next((v for k, v in self.response_headers if k.lower() == "x-request-id"),
                          "-")
        # The target as the client sent it (still percent-encoded), its control characters
        # escaped: a decoded %0d%0a would end the line and let a caller write the next one.
        target = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", request.request_uri)
        self.access_log.info('%s "%s %s HTTP/%s" %s %sB %dms id=%s', self.channel.addr[0],
                             request.command, target, request.version,
                             (self.status or "-").split(" ")[0], self.content_bytes_written,
                             elapsed * 1000, request_id)


class HubServer(TcpWSGIServer):
    """One listening socket's server, whose housekeeping also ends slow headers."""

    def maintenance(self, now):
        """Close idle connections (waitress) and those whose headers are overdue."""
        super().maintenance(now)
        overdue = time.monotonic() - HEADER_TIMEOUT
        for channel in self.active_channels.values():
            parser = channel.request
            if (parser is not None and not parser.headers_finished
                    and parser.started < overdue):
                channel.will_close = True


def make_servers(app, gate: BodyGate, sockets: list, *, threads: int, access_log=None):
    """waitress servers for `sockets` sharing one thread pool; returns (servers, map)."""
    parser = type("Parser", (HubRequestParser,), {"gate": gate})
    task = type("Task", (LoggedTask,), {"access_log": access_log})
    channel = type("Channel", (HTTPChannel,), {"parser_class": parser, "task_class": task,
                                               "error_task_class": ProblemErrorTask})
    server_class = type("Server", (HubServer,), {"channel_class": channel})
    adj = Adjustments(
        threads=threads, ident="lorastack", connection_limit=CONNECTIONS,
        channel_timeout=IDLE_TIMEOUT, cleanup_interval=2, recv_bytes=RECV_BYTES,
        max_request_header_size=MAX_HEADER_BYTES,
        # The gate sets each request's own limit; this is the ceiling of all of them.
        max_request_body_size=max(gate.max_upload, gate.max_json) + 1,
        asyncore_use_poll=True, expose_tracebacks=False, log_socket_errors=False,
        # X-Forwarded-* reach the app, which alone decides whether to believe them
        # (LORASTACK_TRUSTED_PROXIES, werkzeug's ProxyFix in hub.app).
        clear_untrusted_proxy_headers=False)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    socket_map: dict = {}
    servers = []
    for sock in sockets:
        sock.setblocking(False)
        servers.append(server_class(app, socket_map, True, sock, dispatcher=dispatcher,
                                    adj=adj, bind_socket=False,
                                    sockinfo=(sock.family, sock.type, sock.proto,
                                              sock.getsockname())))
    return servers, socket_map


class WaitressWorker(Worker):
    """A gunicorn worker process that serves its listeners with waitress (see the module)."""

    def run(self):
        """Serve until gunicorn says stop, telling the arbiter it is alive."""
        from hub.runtime import EXTENSION_KEY

        settings = self.wsgi.extensions[EXTENSION_KEY].settings
        gate = BodyGate(self.wsgi, settings)
        access_log = self.log.access_log if self.cfg.accesslog else None
        servers, socket_map = make_servers(self.wsgi, gate, [s.sock for s in self.sockets],
                                           threads=self.cfg.threads, access_log=access_log)
        try:
            while self.alive:
                self.notify()
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
                wasyncore.loop(timeout=1.0, map=socket_map, use_poll=True, count=1)
        finally:
            for server in servers:
                server.close()  # stop accepting; the arbiter keeps its own listener
            servers[0].task_dispatcher.shutdown(timeout=self.cfg.graceful_timeout)
