"""Names, labels, tags and metadata follow API.md's patterns."""
from __future__ import annotations

import pytest

from hub.errors import InvalidName, InvalidRequest, InvalidVersion
from hub.services.names import (check_adapter_name, check_tags, check_user_name,
                                check_version_label, parse_metadata)


@pytest.mark.parametrize("label", ["1", "1.0.0", "v2.1-rc.1", "1.0+local", "A" * 64])
def test_valid_version_labels(label):
    assert check_version_label(label) == label


@pytest.mark.parametrize("label", ["", "latest", "LATEST", ".1", "-1", "a" * 65, "1 0",
                                   "1/0", "é"])
def test_invalid_version_labels(label):
    with pytest.raises(InvalidVersion):
        check_version_label(label)


@pytest.mark.parametrize("name", ["", "-x", "a..b", "x.git", "a/b", "a" * 97, "a\nb"])
def test_invalid_adapter_names(name):
    with pytest.raises(InvalidName):
        check_adapter_name(name)


def test_user_names():
    assert check_user_name("alice-1") == "alice-1"
    with pytest.raises(InvalidName):
        check_user_name("alice.bob")


def test_tags_are_deduplicated_and_checked():
    assert check_tags(["a", "b", "a"]) == ["a", "b"]
    assert check_tags("one") == ["one"]
    with pytest.raises(InvalidRequest):
        check_tags(["bad tag"])
    with pytest.raises(InvalidRequest):
        check_tags([str(i) for i in range(40)])


def test_metadata_refuses_unknown_fields_and_wrong_types():
    assert parse_metadata('{"description": "d", "visibility": "private"}').visibility == "private"
    for raw in ('{"x": 1}', "[1]", "{bad", '{"task": 5}', '{"visibility": "hidden"}'):
        with pytest.raises(InvalidRequest):
            parse_metadata(raw)


@pytest.mark.parametrize("a, b", [("alice", "Alice"), ("alice", "AIice"), ("alice", "A1ice"),
                                  ("alice", "ALICE"), ("my-lora", "My_Lora"),
                                  ("my-lora", "my..lora"), ("model0", "MODELO")])
def test_look_alike_names_share_a_name_key(a, b):
    from hub.services.names import name_key

    assert name_key(a) == name_key(b)


@pytest.mark.parametrize("a, b", [("alice", "alicia"), ("lora-7b", "lora-8b"),
                                  ("mylora", "my-lora")])
def test_different_names_keep_different_name_keys(a, b):
    from hub.services.names import name_key

    assert name_key(a) != name_key(b)


@pytest.mark.parametrize("name", ["new", "merge", "merges", "settings", "static", "api",
                                  "signin", "signout", "signup", "search", "admin", "docs",
                                  "New", "SETTINGS", "Adm1n", "d0cs"])
def test_page_paths_and_their_look_alikes_are_refused_as_user_names(name):
    with pytest.raises(InvalidName, match="reserved"):
        check_user_name(name)


def test_names_that_only_contain_a_page_path_stay_valid():
    assert check_user_name("newton") == "newton"
    assert check_user_name("api-team") == "api-team"


def test_a_typed_tags_field_splits_at_commas_and_whitespace():
    from hub.services.names import split_tags

    assert split_tags(" chat, code\tlong-context,,\nqa ") == ["chat", "code", "long-context", "qa"]
    assert split_tags("") == [] and split_tags(" , ") == []
