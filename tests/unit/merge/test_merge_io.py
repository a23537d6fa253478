"""Spec validation, PEFT pattern keys, licences and the streaming safetensors writer."""
from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file

from hub.errors import InvalidMerge
from hub.formats.peft_config import get_pattern_key as pattern_key  # what the engine matches with
from hub.merge.sources import readme_license
from hub.merge.spec import MergeSpec, SourceSpec
from hub.merge.writer import SafetensorsStream, pattern_key_for, staging, target_modules_for


def test_pattern_key_follows_peft_first_match_at_a_dot_boundary():
    patterns = ["q_proj", "layers.1.self_attn.v_proj", "v_proj"]
    assert pattern_key(patterns, "model.layers.0.self_attn.q_proj") == "q_proj"
    assert pattern_key(patterns, "model.layers.1.self_attn.v_proj") == "layers.1.self_attn.v_proj"
    assert pattern_key(patterns, "model.layers.0.self_attn.v_proj") == "v_proj"
    assert pattern_key(patterns, "model.layers.0.self_attn.xq_proj") == "model.layers.0.self_attn.xq_proj"


def test_written_pattern_keys_match_only_their_module_in_old_and_new_peft():
    names = [f"model.layers.{i}.self_attn.{m}" for i in (1, 11, 21) for m in ("q_proj", "v_proj")]
    for name in names:
        key = pattern_key_for(name, names)
        assert [n for n in names if re.match(rf"(.*\.)?({key})$", n)] == [name]
        assert [n for n in names if re.match(rf".*\.{key}$", n)] == [name]


def test_target_modules_union_or_full_names_when_a_source_restricts_layers():
    names = ["model.layers.0.q_proj", "model.layers.0.k_proj"]
    assert target_modules_for(names, [{"target_modules": ["q_proj"]}, {"target_modules": ["k_proj"]}]) \
        == ["k_proj", "q_proj"]
    assert target_modules_for(names, [{"target_modules": "q_proj|k_proj"}]) == sorted(names)
    assert target_modules_for(names, [{"target_modules": ["q_proj", "k_proj"],
                                       "layers_to_transform": [0]}]) == sorted(names)


def test_readme_licence_from_front_matter_only(tmp_path):
    (tmp_path / "README.md").write_text("---\nbase_model: x\nlicense: 'cc-by-4.0'\n---\nlicense: no\n")
    assert readme_license(tmp_path) == "cc-by-4.0"
    (tmp_path / "README.md").write_text("# title\nlicense: mit\n")
    assert readme_license(tmp_path) is None
    (tmp_path / "README.md").write_text("---\nlicense:\n- mit\n- apache-2.0\n---\n")
    assert readme_license(tmp_path) == "mit, apache-2.0"
    # A YAML comment, a folded value and a byte-order mark are YAML, not part of the id.
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0 # see LICENSE\n---\n")
    assert readme_license(tmp_path) == "apache-2.0"
    (tmp_path / "README.md").write_text("---\nlicense: >-\n  mit\n---\n")
    assert readme_license(tmp_path) == "mit"
    (tmp_path / "README.md").write_bytes(b"\xef\xbb\xbf---\nlicense: gemma\n---\n")
    assert readme_license(tmp_path) == "gemma"


@pytest.mark.parametrize("kwargs,needle", [
    (dict(method="avg"), "unknown merge method"),
    (dict(method="ties"), "needs a density"),
    (dict(method="ties", density=0.0), "density"),
    (dict(method="dare_ties", density=1.01), "density"),
    (dict(method="linear", density=0.5), "density applies"),
    (dict(rank=0), "rank"),
    (dict(majority_sign_method="mean"), "majority"),
    (dict(output="dense"), "output"),
    (dict(dtype="int8"), "dtype"),
    (dict(device="tpu"), "device"),
    (dict(seed=-1), "seed"),
])
def test_spec_refuses_bad_parameters_with_one_clear_error(kwargs, needle):
    with pytest.raises(InvalidMerge, match=needle):
        MergeSpec(**kwargs).validate()


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), "x"])
def test_source_weight_must_be_a_finite_number(weight):
    with pytest.raises(InvalidMerge):
        SourceSpec("a", weight)


@pytest.mark.parametrize("path", ["/var/cache/lorastack/abc123", "runs/abc123/", "abc123"])
def test_source_label_defaults_to_the_folder_name_not_its_path(path):
    assert SourceSpec(path).label == "abc123"


def test_source_label_given_by_the_caller_is_kept_and_an_empty_one_refused():
    assert SourceSpec("/tmp/x", 0.5, "alice/style@2").label == "alice/style@2"
    with pytest.raises(InvalidMerge, match="label"):
        SourceSpec("/tmp/x", 1.0, " ")


def test_source_weight_error_names_the_label_not_the_folder():
    with pytest.raises(InvalidMerge) as refused:
        SourceSpec("/var/cache/lorastack/abc123", "x", "alice/style@2")
    assert "alice/style@2" in refused.value.detail and "/var/cache" not in refused.value.detail


def test_streamed_safetensors_reads_back_in_every_output_dtype(tmp_path):
    tensors = {"b": torch.randn(3, 5), "a": torch.randn(7), "c": torch.randn(2, 2)}
    entries = [("b", torch.bfloat16, (3, 5)), ("a", torch.float16, (7,)), ("c", torch.float32, (2, 2))]
    stream = SafetensorsStream(tmp_path / "x.safetensors", entries, {"format": "pt"})
    for name, _, _ in entries:
        stream.write(name, tensors[name])
    stream.close()
    loaded = load_file(str(tmp_path / "x.safetensors"))
    for name, dtype, _ in entries:
        assert loaded[name].dtype == dtype
        assert torch.equal(loaded[name], tensors[name].to(dtype))


def test_staging_leaves_nothing_behind_on_failure_and_moves_into_place_on_success(tmp_path):
    with pytest.raises(RuntimeError):
        with staging(tmp_path / "out") as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with staging(tmp_path / "out") as tmp:
        (tmp / "done").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "done").exists()


def test_sources_get_the_registrys_config_checks_including_unsafe_patterns(tmp_path):
    import json as _json

    from hub.errors import InvalidAdapterConfig
    from hub.merge.sources import load_source

    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
              "rank_pattern": {r"(q)\1_proj": 2}}  # RE2 cannot match a backreference
    (tmp_path / "adapter_config.json").write_text(_json.dumps(config))
    with pytest.raises(InvalidAdapterConfig, match="adapter_config.json"):
        load_source(tmp_path, 1.0)
