"""Licences: the table of ids with their permission flags, and the merge derivation rules.

Pure standard library, so the merge worker and the CLI can use it without the web stack.
"""
from __future__ import annotations

from hub.licenses.derive import DerivedLicense, SourceLicense, derive_license
from hub.licenses.table import (
    LICENSES,
    OTHER,
    Derivatives,
    License,
    get_license,
    list_licenses,
    validate_license_fields,
)

__all__ = ["LICENSES", "OTHER", "Derivatives", "License", "get_license", "list_licenses",
           "validate_license_fields", "SourceLicense", "DerivedLicense", "derive_license"]
