"""The one error hierarchy: every failure a user can cause carries a stable code.

No web framework is imported here, so the merge engine, the formats checks and the
CLI raise the same errors the HTTP layer renders as problem+json.
"""
from __future__ import annotations


class HubError(Exception):
    """An error with a stable machine-readable `code`, an HTTP status and a detail."""

    code = "invalid_request"
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None,
                 **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
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


def _error(name: str, code: str, status: int, title: str) -> type[HubError]:
    return type(name, (HubError,), {"code": code, "status": status, "title": title,
                                    "__doc__": f"{title} ({code})."})


InvalidRequest = _error("InvalidRequest", "invalid_request", 400, "Invalid request")
InvalidName = _error("InvalidName", "invalid_name", 400, "Invalid name")
InvalidVersion = _error("InvalidVersion", "invalid_version", 400, "Invalid version label")
InvalidAdapterConfig = _error("InvalidAdapterConfig", "invalid_adapter_config", 422,
                              "Invalid adapter config")
InvalidSafetensors = _error("InvalidSafetensors", "invalid_safetensors", 422,
                            "Invalid safetensors file")
TensorMismatch = _error("TensorMismatch", "tensor_mismatch", 422,
                        "Tensors do not match the config")
NonFiniteWeights = _error("NonFiniteWeights", "non_finite_weights", 422,
                          "Non-finite weights")
UnsupportedFormat = _error("UnsupportedFormat", "unsupported_format", 415,
                           "Unsupported file format")
MissingFile = _error("MissingFile", "missing_file", 400, "Missing file")
UnexpectedFile = _error("UnexpectedFile", "unexpected_file", 400, "Unexpected file")
FileTooLarge = _error("FileTooLarge", "file_too_large", 413, "File too large")
UnknownLicense = _error("UnknownLicense", "unknown_license", 400, "Unknown licence")
VersionExists = _error("VersionExists", "version_exists", 409, "Version exists")
NotFound = _error("NotFound", "not_found", 404, "Not found")
Unauthorized = _error("Unauthorized", "unauthorized", 401, "Unauthorized")
Forbidden = _error("Forbidden", "forbidden", 403, "Forbidden")
StorageUnavailable = _error("StorageUnavailable", "storage_unavailable", 503,
                            "Storage unavailable")
DatabaseUnavailable = _error("DatabaseUnavailable", "database_unavailable", 503,
                             "Database unavailable")
InvalidMerge = _error("InvalidMerge", "invalid_merge", 400, "Invalid merge")
IncompatibleAdapters = _error("IncompatibleAdapters", "incompatible_adapters", 422,
                              "Incompatible adapters")
LicenseForbidsMerge = _error("LicenseForbidsMerge", "license_forbids_merge", 403,
                             "Licence forbids merge")
RateLimited = _error("RateLimited", "rate_limited", 429, "Rate limited")
