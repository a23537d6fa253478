"""The /api/v1 blueprint; its errors are rendered as problem+json (hub.api.problems)."""
from __future__ import annotations

from flask import Blueprint

api_v1 = Blueprint("api_v1", __name__, url_prefix="/api/v1")


# Imported for their routes, which register on api_v1.
from hub.api import adapters, merges, meta, openapi, tokens  # noqa: E402,F401
