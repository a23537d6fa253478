"""How the Hugging Face protocol renders a HubError: the Hub's `X-Error-Code` and JSON
`{"error": ...}`, so that huggingface_hub raises RepositoryNotFoundError,
RevisionNotFoundError or EntryNotFoundError with lorastack's message."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from flask import g, jsonify

from hub.errors import HubError, NotFound

log = logging.getLogger("hub.hf")

REPO_NOT_FOUND = "RepoNotFound"
REVISION_NOT_FOUND = "RevisionNotFound"
ENTRY_NOT_FOUND = "EntryNotFound"
#: The client reads a 401 with this message as a bad token, any other 401 on a repository
#: URL as a repository it may not see.
BAD_CREDENTIALS = "Invalid credentials in Authorization header"


@contextmanager
def missing_is(kind: str) -> Iterator[None]:
    """Name what a NotFound raised inside means to the Hub's client (repo, revision, entry)."""
    try:
        yield
    except NotFound as exc:
        exc.hf_error_code = kind
        raise


def render(error: HubError):
    """The response for `error`: status, X-Error-Code / X-Error-Message, {"error", "code"}."""
    detail = error.detail
    if error.status == 503:
        # Its detail names internal hosts and buckets; the log has it under the request id.
        log.warning("%s for request %s: %s", error.code, g.get("request_id", "-"), detail)
        detail = f"{error.title}; try again later (request id {g.get('request_id', '-')})."
    # The client shows `error` as it is: the code goes in it, as the CLI prints it.
    detail = f"{detail} ({error.code})"
    response = jsonify({"error": detail, "code": error.code})
    response.status_code = error.status
    if isinstance(error, NotFound):
        response.headers["X-Error-Code"] = getattr(error, "hf_error_code", REPO_NOT_FOUND)
        # With the commit, the client caches that the file is absent from it.
        commit = getattr(error, "repo_commit", None)
        if commit:
            response.headers["X-Repo-Commit"] = commit
    message = BAD_CREDENTIALS if error.status == 401 else detail
    # A header holds one line of Latin-1; the body keeps the full text.
    response.headers["X-Error-Message"] = " ".join(message.split()).encode(
        "ascii", "replace").decode()
    response.headers.update(error.headers())
    return response
