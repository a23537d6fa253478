"""Every pair of licences in the table through the merge rule: allowed or refused, and the
derived flags, stated from the table's flags alone."""
from __future__ import annotations

import itertools

import pytest

from hub.errors import LicenseForbidsMerge
from hub.licenses import SourceLicense, derive_license, list_licenses

STRICT = {"allowed": 0, "share-alike": 1, "forbidden": 2}
TABLE = [lic for lic in list_licenses() if lic.id != "other"]


def carries(chosen, other) -> bool:
    """A share-alike licence can be the merge's only if it adds nothing the other forbids."""
    return not ((chosen.commercial_use and not other.commercial_use)
                or (not chosen.use_restrictions and other.use_restrictions)
                or STRICT[other.derivatives] > STRICT[chosen.derivatives]
                or (not chosen.attribution and other.attribution))


def expected_refusal(a, b, owns: bool) -> bool:
    if not owns and "forbidden" in (a.derivatives, b.derivatives):
        return True
    share_alike = {lic.id for lic in (a, b) if lic.derivatives == "share-alike"}
    if len(share_alike) > 1:
        return True
    if share_alike:
        chosen = a if a.derivatives == "share-alike" else b
        return not all(carries(chosen, lic) for lic in (a, b))
    return False


@pytest.mark.parametrize("owns", [False, True], ids=["others", "owner"])
def test_every_pair_of_licences_merges_or_is_refused_as_the_flags_say(owns):
    checked = 0
    for a, b in itertools.product(TABLE, repeat=2):
        sources = [SourceLicense(a.id, requester_owns=owns, source="x/a@1"),
                   SourceLicense(b.id, requester_owns=owns, source="y/b@1")]
        if expected_refusal(a, b, owns):
            with pytest.raises(LicenseForbidsMerge):
                derive_license(sources)
            continue
        derived = derive_license(sources)
        assert derived.commercial_use == (a.commercial_use and b.commercial_use), (a.id, b.id)
        assert derived.attribution == (a.attribution or b.attribution), (a.id, b.id)
        assert derived.use_restrictions == (a.use_restrictions or b.use_restrictions)
        assert derived.derivatives == max(a.derivatives, b.derivatives, key=STRICT.get)
        share_alike = [lic for lic in (a, b) if lic.derivatives == "share-alike"]
        if a.id == b.id:
            assert derived.id == a.id
        elif share_alike:
            assert derived.id == share_alike[0].id
        else:
            assert derived.id == "other" and a.id in derived.license_name
        assert derived.sources == (a.id, b.id)
        checked += 1
    assert checked > len(TABLE)  # most pairs merge; the refusals are the exception
