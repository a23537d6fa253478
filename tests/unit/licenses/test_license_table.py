"""The licence table: its ids, its flags, and how ids and `other` fields are checked."""
from __future__ import annotations

import pytest

from hub.errors import InvalidRequest, UnknownLicense
from hub.licenses import LICENSES, License, get_license, list_licenses, validate_license_fields

HF_IDS = [
    "apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0",
    "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0", "cc-by-3.0",
    "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m",
    "bigscience-bloom-rail-1.0", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3",
    "gemma", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "afl-3.0", "artistic-2.0", "bsl-1.0",
    "mpl-2.0", "unlicense", "wtfpl", "other",
]
API_KEYS = {"id", "name", "url", "spdx", "commercial_use", "derivatives", "attribution",
            "use_restrictions"}
OTHER_ID = "other"


@pytest.mark.parametrize("license_id", HF_IDS)
def test_every_hugging_face_id_is_in_the_table(license_id: str) -> None:
    assert get_license(license_id).id == license_id


def test_every_entry_has_the_api_shape_and_valid_flags() -> None:
    assert list_licenses() == list(LICENSES.values())
    for lic in list_licenses():
        body = lic.to_dict()
        assert set(body) == API_KEYS
        assert body["id"] == lic.id and lic.name
        assert lic.derivatives in ("allowed", "share-alike", "forbidden")
        assert all(isinstance(body[flag], bool)
                   for flag in ("commercial_use", "attribution", "use_restrictions"))
        assert lic.id == OTHER_ID or (lic.url or "").startswith(("http://", "https://"))


def test_ids_are_lowercase_and_unique() -> None:
    ids = [lic.id for lic in list_licenses()]
    assert len(ids) == len(set(ids))
    assert all(i == i.lower() for i in ids)


@pytest.mark.parametrize("license_id", ["cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nc-nd-4.0",
                                        "cc-by-nc-3.0"])
def test_non_commercial_licences_forbid_commercial_use(license_id: str) -> None:
    assert get_license(license_id).commercial_use is False


@pytest.mark.parametrize("license_id", ["cc-by-nd-4.0", "cc-by-nc-nd-4.0"])
def test_no_derivatives_licences_forbid_derivatives(license_id: str) -> None:
    assert get_license(license_id).derivatives == "forbidden"


@pytest.mark.parametrize("license_id", ["cc-by-sa-4.0", "cc-by-nc-sa-4.0", "gpl-3.0",
                                        "agpl-3.0", "lgpl-3.0", "mpl-2.0"])
def test_copyleft_licences_are_share_alike(license_id: str) -> None:
    assert get_license(license_id).derivatives == "share-alike"


@pytest.mark.parametrize("license_id", ["openrail", "openrail++", "creativeml-openrail-m",
                                        "bigscience-openrail-m", "llama2", "llama3",
                                        "llama3.1", "gemma"])
def test_rail_llama_and_gemma_carry_use_restrictions_and_no_spdx_id(license_id: str) -> None:
    lic = get_license(license_id)
    assert lic.use_restrictions is True
    assert lic.spdx is None


@pytest.mark.parametrize("license_id", ["llama2", "llama3", "llama3.1", "gemma"])
def test_vendor_model_licences_allow_commercial_use_and_derivatives(license_id: str) -> None:
    lic = get_license(license_id)
    assert lic.commercial_use is True and lic.derivatives == "allowed"


@pytest.mark.parametrize("license_id", ["cc0-1.0", "unlicense", "wtfpl"])
def test_public_domain_dedications_need_no_attribution(license_id: str) -> None:
    lic = get_license(license_id)
    assert (lic.attribution, lic.commercial_use, lic.derivatives) == (False, True, "allowed")


@pytest.mark.parametrize("license_id, spdx", [("apache-2.0", "Apache-2.0"), ("mit", "MIT"),
                                              ("cc-by-nc-sa-4.0", "CC-BY-NC-SA-4.0"),
                                              ("gpl-3.0", "GPL-3.0-only")])
def test_spdx_ids_are_recorded_and_accepted_as_aliases(license_id: str, spdx: str) -> None:
    assert get_license(license_id).spdx == spdx
    assert get_license(spdx).id == license_id
    assert get_license(f" {license_id.upper()} ").id == license_id


def test_license_is_immutable() -> None:
    lic = get_license("mit")
    with pytest.raises(AttributeError):
        lic.commercial_use = False  # type: ignore[misc]
    assert isinstance(lic, License)
    with pytest.raises(TypeError):
        LICENSES["mine"] = lic  # type: ignore[index]


def test_unknown_id_names_close_matches_and_the_licences_endpoint() -> None:
    with pytest.raises(UnknownLicense) as info:
        get_license("apache2.0")
    assert info.value.code == "unknown_license"
    assert "apache-2.0" in info.value.detail
    assert "/api/v1/licenses" in info.value.detail


@pytest.mark.parametrize("bad", ["", "   ", "gpl", None, 42])
def test_blank_or_non_string_ids_are_unknown(bad) -> None:
    with pytest.raises(UnknownLicense):
        get_license(bad)


def test_other_needs_a_name_and_a_link() -> None:
    lic, name, link = validate_license_fields("other", " Acme Model Licence ",
                                              "https://acme.example/licence")
    assert (lic.id, name, link) == ("other", "Acme Model Licence", "https://acme.example/licence")
    with pytest.raises(InvalidRequest) as info:
        validate_license_fields("other", None, "https://acme.example/licence")
    assert "license_name" in info.value.detail and info.value.code == "invalid_request"
    with pytest.raises(InvalidRequest) as info:
        validate_license_fields("other", "Acme", "")
    assert "license_link" in info.value.detail


@pytest.mark.parametrize("link", ["LICENSE", "ftp://acme.example/l", "javascript:alert(1)",
                                  "https://", "https://acme.example/a b",
                                  "https://acme.example/" + "x" * 2000])
def test_other_link_must_be_an_absolute_http_url(link: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_license_fields("other", "Acme", link)


@pytest.mark.parametrize("name", ["x" * 201, "bad\nname", "tab\tname"])
def test_other_name_is_short_and_has_no_control_characters(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_license_fields("other", name, "https://acme.example/licence")


def test_known_ids_refuse_a_name_or_link_but_accept_blanks() -> None:
    assert validate_license_fields("MIT", "", "  ") == (get_license("mit"), None, None)
    with pytest.raises(InvalidRequest) as info:
        validate_license_fields("mit", "My MIT", None)
    assert "other" in info.value.detail


def test_validating_an_unknown_id_is_unknown_license() -> None:
    with pytest.raises(UnknownLicense):
        validate_license_fields("made-up", "x", "https://x.example")
