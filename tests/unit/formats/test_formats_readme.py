"""README.md: UTF-8 and YAML front matter supplying licence, tags and base model."""
from __future__ import annotations

import pytest

from hub.errors import InvalidRequest
from hub.formats import parse_readme

CARD = """---
license: apache-2.0
tags:
- lora
- chat
base_model:
- meta-llama/Llama-3.1-8B
- other/model
pipeline_tag: text-generation
date: 2024-05-01
---

# My adapter
"""


def test_front_matter_supplies_licence_tags_base_model_and_task():
    info = parse_readme(CARD.encode())
    assert info.license == "apache-2.0"
    assert info.tags == ["lora", "chat"]
    assert info.base_model == "meta-llama/Llama-3.1-8B"
    assert info.pipeline_tag == info.task == "text-generation"
    assert info.front_matter["date"] == "2024-05-01"  # stored as JSON: dates become strings
    assert info.text == CARD


def test_other_licence_name_and_link_and_single_tag_string():
    text = "---\nlicense: other\nlicense_name: my-licence\nlicense_link: https://x.test/l\ntags: solo\n---\nbody"
    info = parse_readme(text.encode())
    assert (info.license, info.license_name, info.license_link) == (
        "other", "my-licence", "https://x.test/l")
    assert info.tags == ["solo"]


def test_front_matter_with_windows_line_endings_is_read():
    info = parse_readme(b"---\r\nlicense: mit\r\ntags: [x]\r\n---\r\n# body\r\n")
    assert info.license == "mit" and info.tags == ["x"]


def test_empty_front_matter_gives_no_defaults():
    assert parse_readme(b"---\n---\n# body\n").front_matter == {}


def test_readme_without_front_matter_has_no_defaults():
    info = parse_readme("# Title\n\n---\nlicense: mit\n---\n".encode())
    assert info.front_matter == {} and info.license is None and info.tags == []


def test_peft_generated_model_card_parses(adapters):
    info = parse_readme((adapters["lora"] / "README.md").read_bytes())
    assert "lora" in info.tags
    assert info.front_matter["library_name"] == "peft"


def test_non_utf8_readme_is_refused():
    with pytest.raises(InvalidRequest, match="README.md is not UTF-8") as info:
        parse_readme("---\nlicense: mit\n---\ncaf\xe9".encode("latin-1"))
    assert info.value.status == 400 and info.value.code == "invalid_request"


@pytest.mark.parametrize("front, match", [
    ("license: [mit\n", "not valid YAML"),
    ("- a\n- b\n", "must be a YAML mapping"),
    ("tags: {a: 1}\n", "`tags` must be"),
    ("license: {id: mit}\n", "`license` must be a string"),
    ("a: &x [1, 2]\nb: *x\n", "aliases"),
    ("k: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_front_matter_is_refused_naming_the_problem(front, match):
    with pytest.raises(InvalidRequest, match=match):
        parse_readme(f"---\n{front}---\n# body\n".encode())


def test_unterminated_front_matter_is_refused():
    with pytest.raises(InvalidRequest, match="never ends"):
        parse_readme(b"---\nlicense: mit\n# body\n")


def test_readme_over_the_size_limit_is_refused():
    with pytest.raises(InvalidRequest, match="the limit is 100"):
        parse_readme(b"x" * 101, max_bytes=100)


@pytest.mark.parametrize("field, value", [
    ("description", "d" * 10_001), ("base_model", "b" * 257), ("task", "t" * 65),
    ("pipeline_tag", "p" * 65), ("license_name", "n" * 257)])
def test_card_fields_over_the_api_limits_are_refused_naming_the_field(field, value):
    with pytest.raises(InvalidRequest, match=f"`{field}`.*limit"):
        parse_readme(f"---\n{field}: {value}\n---\n".encode())


@pytest.mark.parametrize("field", ["description", "base_model", "task", "license_name",
                                   "pipeline_tag"])
@pytest.mark.parametrize("char", ["\\0", "\\x07", "\\ud800"])
def test_card_fields_with_nul_or_control_characters_are_refused(field, char):
    with pytest.raises(InvalidRequest, match=f"`{field}` holds U\\+"):
        parse_readme(f'---\n{field}: "a{char}b"\n---\n'.encode())


def test_a_multiline_description_in_the_card_is_kept():
    info = parse_readme(b"---\ndescription: |\n  one\n  two\n---\n")
    assert info.front_matter["description"] == "one\ntwo\n"
