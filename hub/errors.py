"""The one error hierarchy: every failure a user can cause carries a stable code.

No web framework is imported here: the merge engine, the formats checks, the services
and the CLI's client raise these, and each surface renders them its own way
(problem+json for /api/v1, an HTML page for the web pages, the Hub's headers for the
Hugging Face endpoint). API.md lists every code (a test keeps the two in step).
"""
from __future__ import annotations

import logging

log = logging.getLogger("hub.errors")


class HubError(Exception):
    """An error with a stable machine-readable `code`, an HTTP status and a detail.

    Each code is one subclass below, written out so a reader (and a client that gets a
    problem+json body back) can find it; `status` may be narrowed per raise (an
    InvalidRequest is 413 for a body too large, 415 for a wrong media type).
    """

    code = "invalid_request"
    status = 400
    title = "Bad request"
    #: code -> class, filled by every subclass: how a client turns a body back into an error.
    by_code: dict[str, type["HubError"]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        HubError.by_code.setdefault(cls.code, cls)

    def __init__(self, detail: str, *, status: int | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.extra = extra

    def to_problem(self) -> dict:
        """The problem+json body (RFC 9457) for this error."""
        body = {
            "type": f"https://lorastack.dev/errors/{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str]:
        """The HTTP headers this error's status calls for, on every surface: the auth
        scheme of a 401, and when to come back after a 429 or 503."""
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="lorastack"'
        retry_after = self.extra.get("retry_after")
        if self.status in (429, 503) and retry_after is not None:
            headers["Retry-After"] = str(int(retry_after))
        return headers


def caller_safe(error: HubError, *, trusted: bool, request_id: str) -> HubError:
    """The error as a caller may see it: one who is not `trusted` gets a 503 without its cause.

    A 503's detail names internal hosts, ports, buckets and paths. It is logged with the
    request id; a trusted caller (each surface says who: on the API a token issued by the
    operator, on the pages an admin) still sees it in full.
    """
    if error.status != 503 or trusted:
        return error
    log.warning("%s for request %s: %s", error.code, request_id, error.detail)
    safe = type(error)(f"{error.title}; try again later (the cause is in the server log"
                       f" under request id {request_id}).", status=error.status, **error.extra)
    safe.code, safe.title = error.code, error.title
    return safe


def error_from_problem(body: dict, status: int) -> HubError:
    """The HubError a problem+json body describes (a client's view of a server's error)."""
    cls = HubError.by_code.get(str(body.get("code")), HubError)
    known = {"type", "title", "status", "detail", "code"}
    error = cls(str(body.get("detail") or body.get("title") or f"HTTP {status}"), status=status,
                **{key: value for key, value in body.items() if key not in known})
    if cls is HubError and body.get("code"):
        error.code = str(body["code"])  # a code newer than this client: kept as sent
    return error


class InvalidRequest(HubError):
    """Malformed query parameters or body."""

    code = "invalid_request"
    status = 400
    title = "Invalid request"


class InvalidName(HubError):
    """An owner or adapter name outside the allowed pattern."""

    code = "invalid_name"
    status = 400
    title = "Invalid name"


class InvalidVersion(HubError):
    """A version label outside the allowed pattern."""

    code = "invalid_version"
    status = 400
    title = "Invalid version label"


class InvalidAdapterConfig(HubError):
    """adapter_config.json is not a config PEFT can load."""

    code = "invalid_adapter_config"
    status = 422
    title = "Invalid adapter config"


class InvalidSafetensors(HubError):
    """adapter_model.safetensors is damaged or not safetensors."""

    code = "invalid_safetensors"
    status = 422
    title = "Invalid safetensors file"


class TensorMismatch(HubError):
    """The tensors do not match what PEFT saves for the config."""

    code = "tensor_mismatch"
    status = 422
    title = "Tensors do not match the config"


class NonFiniteWeights(HubError):
    """A weight (or a merged value) is NaN or infinite."""

    code = "non_finite_weights"
    status = 422
    title = "Non-finite weights"


class UnsupportedFormat(HubError):
    """A file format the hub does not read (pickles, other layouts)."""

    code = "unsupported_format"
    status = 415
    title = "Unsupported file format"


class MissingFile(HubError):
    """A required file is missing."""

    code = "missing_file"
    status = 400
    title = "Missing file"


class UnexpectedFile(HubError):
    """A file that does not belong in an adapter folder."""

    code = "unexpected_file"
    status = 400
    title = "Unexpected file"


class FileTooLarge(HubError):
    """An upload or field above the hub's limits."""

    code = "file_too_large"
    status = 413
    title = "File too large"


class UnknownLicense(HubError):
    """A licence id that is not in the table."""

    code = "unknown_license"
    status = 400
    title = "Unknown licence"


class VersionExists(HubError):
    """The version label exists with different files."""

    code = "version_exists"
    status = 409
    title = "Version exists"


class NotFound(HubError):
    """Nothing there, or nothing the caller may see (never 403 for private)."""

    code = "not_found"
    status = 404
    title = "Not found"


class Unauthorized(HubError):
    """No valid token where one is needed."""

    code = "unauthorized"
    status = 401
    title = "Unauthorized"


class Forbidden(HubError):
    """The caller is known but may not do this."""

    code = "forbidden"
    status = 403
    title = "Forbidden"


class StorageUnavailable(HubError):
    """The blob store cannot be reached."""

    code = "storage_unavailable"
    status = 503
    title = "Storage unavailable"


class DatabaseUnavailable(HubError):
    """The database cannot be reached."""

    code = "database_unavailable"
    status = 503
    title = "Database unavailable"


class InvalidMerge(HubError):
    """Merge parameters out of range, or a result the output cannot hold."""

    code = "invalid_merge"
    status = 400
    title = "Invalid merge"


class IncompatibleAdapters(HubError):
    """Sources that cannot be merged together."""

    code = "incompatible_adapters"
    status = 422
    title = "Incompatible adapters"


class LicenseForbidsMerge(HubError):
    """A source's licence forbids the merge."""

    code = "license_forbids_merge"
    status = 403
    title = "Licence forbids merge"


class RateLimited(HubError):
    """Too many requests; see Retry-After."""

    code = "rate_limited"
    status = 429
    title = "Rate limited"


class MethodNotAllowed(HubError):
    """The HTTP method is not allowed on this path."""

    code = "method_not_allowed"
    status = 405
    title = "Method not allowed"


class InternalError(HubError):
    """An unexpected failure: never raised for a caller's mistake."""

    code = "internal"
    status = 500
    title = "Internal server error"


class QueueUnavailable(HubError):
    """The job queue's broker cannot be reached."""

    code = "queue_unavailable"
    status = 503
    title = "Queue unavailable"


class MergeExpired(HubError):
    """An unpublished merge result outlived its time to live."""

    code = "merge_expired"
    status = 410
    title = "Merge expired"


class WorkerLost(HubError):
    """A merge's worker stopped heartbeating too many times."""

    code = "worker_lost"
    status = 500
    title = "Worker lost"


class MergeCancelled(HubError):
    """The merge was cancelled by its requester."""

    code = "merge_cancelled"
    status = 409
    title = "Merge cancelled"


class UserExists(HubError):
    """A user of that name exists already (CLI)."""

    code = "user_exists"
    status = 409
    title = "User exists"


class HubUnreachable(HubError):
    """The client cannot reach the hub, or the connection broke (CLI and client library)."""

    code = "hub_unreachable"
    status = 503
    title = "Hub unreachable"
