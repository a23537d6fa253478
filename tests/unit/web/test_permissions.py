"""The plain-words badges follow the licence table's flags (one source for both)."""
from __future__ import annotations

import pytest

from hub.licenses import list_licenses
from hub.web.licenses import permissions


def labels(license_id):
    return [p.label for p in permissions(license_id)]


@pytest.mark.parametrize("license_id, expected", [
    ("mit", ["Commercial use", "Derivatives", "Attribution"]),
    ("cc-by-nc-4.0", ["Non-commercial", "Derivatives", "Attribution"]),
    ("cc-by-sa-4.0", ["Commercial use", "Share-alike", "Attribution"]),
    ("cc-by-nd-4.0", ["Commercial use", "No derivatives", "Attribution"]),
    ("llama3.1", ["Commercial use", "Derivatives", "Attribution", "Use restrictions"]),
    # The table's flags for `other` are its strictest reading, not its terms: no claims.
    ("other", ["Custom licence"]),
    ("Apache-2.0", ["Commercial use", "Derivatives", "Attribution"]),  # SPDX id, any case
])
def test_badges_for_known_licences(license_id, expected):
    assert labels(license_id) == expected


def test_every_licence_in_the_table_has_a_commercial_and_a_derivatives_badge():
    for lic in list_licenses():
        if lic.id == "other":
            continue
        found = labels(lic.id)
        assert ("Commercial use" in found) == lic.commercial_use, lic.id
        assert ("Non-commercial" in found) == (not lic.commercial_use), lic.id
        derivatives = {"allowed": "Derivatives", "share-alike": "Share-alike",
                       "forbidden": "No derivatives"}[lic.derivatives]
        assert derivatives in found and ("Attribution" in found) == lic.attribution, lic.id


def test_a_missing_or_unknown_licence_says_so():
    assert labels(None) == ["No licence"]
    assert labels("made-up") == ["Unknown licence"]
