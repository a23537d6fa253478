"""The licence of a merge: the most restrictive combination, and the merges it refuses."""
from __future__ import annotations

import pytest

from hub.errors import InvalidMerge, LicenseForbidsMerge, UnknownLicense
from hub.licenses import DerivedLicense, SourceLicense, derive_license, get_license

ACME = ("Acme Model Licence", "https://acme.example/licence")


def src(license_id: str, *, owns: bool = False, source: str | None = None,
        name: str | None = None, link: str | None = None) -> SourceLicense:
    return SourceLicense(license_id, license_name=name, license_link=link,
                         requester_owns=owns, source=source)


def test_sources_sharing_one_licence_keep_it() -> None:
    derived = derive_license([src("apache-2.0"), src("apache-2.0")])
    assert (derived.id, derived.license_name, derived.license_link, derived.spdx) == (
        "apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0",
        "Apache-2.0")
    assert derived.sources == ("apache-2.0", "apache-2.0")


def test_a_single_source_keeps_its_licence_and_flags() -> None:
    derived = derive_license([src("llama3")])
    lic = get_license("llama3")
    assert derived.id == "llama3"
    assert (derived.commercial_use, derived.derivatives, derived.attribution,
            derived.use_restrictions) == (lic.commercial_use, lic.derivatives, lic.attribution,
                                          lic.use_restrictions)


def test_different_licences_become_other_describing_the_combination() -> None:
    derived = derive_license([src("apache-2.0"), src("llama3"), src("apache-2.0")])
    assert derived.id == "other"
    assert derived.license_name == "Combination of apache-2.0, llama3"
    assert derived.spdx is None and derived.license_link is None
    assert derived.sources == ("apache-2.0", "llama3", "apache-2.0")


def test_commercial_use_needs_every_source_to_allow_it() -> None:
    assert derive_license([src("mit"), src("apache-2.0")]).commercial_use is True
    assert derive_license([src("mit"), src("cc-by-nc-4.0")]).commercial_use is False


def test_attribution_is_required_when_any_source_requires_it() -> None:
    assert derive_license([src("cc0-1.0"), src("unlicense")]).attribution is False
    assert derive_license([src("cc0-1.0"), src("mit")]).attribution is True


def test_use_restrictions_apply_when_any_source_has_them() -> None:
    assert derive_license([src("mit"), src("apache-2.0")]).use_restrictions is False
    assert derive_license([src("mit"), src("gemma")]).use_restrictions is True


def test_a_source_that_forbids_derivatives_is_refused_naming_it() -> None:
    with pytest.raises(LicenseForbidsMerge) as info:
        derive_license([src("mit", source="bob/ok@1"),
                        src("cc-by-nd-4.0", source="alice/locked@2.0")])
    assert info.value.code == "license_forbids_merge"
    assert "alice/locked@2.0" in info.value.detail
    assert "cc-by-nd-4.0" in info.value.detail


def test_a_no_derivatives_source_is_refused_by_position_without_a_name() -> None:
    with pytest.raises(LicenseForbidsMerge) as info:
        derive_license([src("mit"), src("cc-by-nc-nd-4.0")])
    assert "source 2" in info.value.detail


def test_the_owner_may_merge_their_own_no_derivatives_source() -> None:
    derived = derive_license([src("mit"), src("cc-by-nd-4.0", owns=True)])
    assert derived.id == "other"
    assert derived.derivatives == "forbidden"
    assert derive_license([src("cc-by-nd-4.0", owns=True)] * 2).id == "cc-by-nd-4.0"


def test_two_different_share_alike_licences_are_refused() -> None:
    with pytest.raises(LicenseForbidsMerge) as info:
        derive_license([src("gpl-3.0", source="a/gpl@1"), src("cc-by-sa-4.0", source="b/sa@1")])
    assert "a/gpl@1" in info.value.detail and "b/sa@1" in info.value.detail
    assert "share-alike" in info.value.detail


def test_one_share_alike_licence_becomes_the_result() -> None:
    derived = derive_license([src("mit"), src("cc-by-sa-4.0"), src("apache-2.0"),
                              src("cc-by-sa-4.0")])
    assert derived.id == "cc-by-sa-4.0"
    assert derived.derivatives == "share-alike"
    assert derived.license_link == get_license("cc-by-sa-4.0").url
    assert derived.sources == ("mit", "cc-by-sa-4.0", "apache-2.0", "cc-by-sa-4.0")


def test_non_commercial_share_alike_absorbs_permissive_sources() -> None:
    derived = derive_license([src("apache-2.0"), src("cc-by-nc-sa-4.0")])
    assert derived.id == "cc-by-nc-sa-4.0" and derived.commercial_use is False


@pytest.mark.parametrize("restrictive, reason", [
    ("cc-by-nc-4.0", "forbids commercial use"),
    ("llama3", "adds use restrictions"),
    ("openrail", "adds use restrictions"),
])
def test_share_alike_cannot_absorb_a_source_with_stricter_terms(restrictive: str,
                                                                 reason: str) -> None:
    # The result would have to be released under the share-alike licence unchanged,
    # which cannot carry the other source's restriction.
    with pytest.raises(LicenseForbidsMerge) as info:
        derive_license([src("cc-by-sa-4.0"), src(restrictive, source="x/strict@1")])
    assert reason in info.value.detail and "x/strict@1" in info.value.detail


def test_owned_no_derivatives_source_cannot_join_a_share_alike_merge() -> None:
    with pytest.raises(LicenseForbidsMerge) as info:
        derive_license([src("gpl-3.0"), src("cc-by-nd-4.0", owns=True)])
    assert "forbids derivative works" in info.value.detail


def test_other_licences_with_the_same_name_and_link_stay_that_licence() -> None:
    derived = derive_license([src("other", name=ACME[0], link=ACME[1])] * 2)
    assert (derived.id, derived.license_name, derived.license_link) == ("other", *ACME)
    assert derived.commercial_use is False and derived.use_restrictions is True


def test_different_other_licences_are_combined_by_name() -> None:
    derived = derive_license([src("other", name=ACME[0], link=ACME[1]),
                              src("other", name="Beta Licence", link="https://beta.example")])
    assert derived.id == "other"
    assert derived.license_name == "Combination of Acme Model Licence, Beta Licence"
    assert derived.license_link is None


def test_unknown_source_licence_is_unknown_license() -> None:
    with pytest.raises(UnknownLicense):
        derive_license([src("mit"), src("not-a-licence")])


def test_no_sources_is_an_invalid_merge() -> None:
    with pytest.raises(InvalidMerge):
        derive_license([])


def test_to_dict_has_the_merge_licence_shape() -> None:
    derived = derive_license([src("mit"), src("llama3.1")])
    assert isinstance(derived, DerivedLicense)
    assert derived.to_dict() == {
        "id": "other", "license_name": "Combination of mit, llama3.1", "license_link": None,
        "spdx": None, "commercial_use": True, "derivatives": "allowed", "attribution": True,
        "use_restrictions": True, "sources": ["mit", "llama3.1"],
    }
