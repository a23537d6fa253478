"""A TCP endpoint that accepts connections and never answers: a hung S3, say."""
from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def hung_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a server that accepts and then stays silent."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        # Accepted connections are kept open (and never read) until the end, so a client
        # sees neither an answer nor a reset: only its own timeout ends the wait.
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # the accept timed out, or the listener closed
                continue
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()
