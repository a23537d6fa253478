"""validate_upload end to end on folders written by PEFT, and corrupted copies of them."""
from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from formats_support import files_of
from safetensors.torch import load_file, save_file

from hub.errors import (
    InvalidAdapterConfig, InvalidRequest, InvalidSafetensors, MissingFile, NonFiniteWeights,
    UnexpectedFile, UnsupportedFormat,
)
from hub.formats import AdapterInfo, validate_upload

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def test_peft_lora_adapter_is_described(adapters):
    info = validate_upload(files_of(adapters["lora"]))
    assert isinstance(info, AdapterInfo)
    assert (info.peft_type, info.r, info.lora_alpha) == ("LORA", 4, 8.0)
    assert info.target_modules == ["q_proj", "v_proj"]
    tensors = load_file(adapters["lora"] / WEIGHTS)
    assert info.num_parameters == sum(t.numel() for t in tensors.values()) == 2 * 2 * 2 * 4 * 64
    assert info.base_model == "tiny/llama"
    assert info.mergeable is True
    assert info.config["peft_type"] == "LORA" and info.task_type is None
    assert info.readme is not None and "lora" in info.readme.tags


def test_readme_is_optional(adapters):
    files = files_of(adapters["lora"])
    del files["README.md"]
    assert validate_upload(files).readme is None


@pytest.mark.parametrize("missing", [CONFIG, WEIGHTS])
def test_missing_required_file_is_refused(adapters, missing):
    files = files_of(adapters["lora"])
    del files[missing]
    with pytest.raises(MissingFile, match=missing):
        validate_upload(files)


def test_unexpected_file_is_refused(adapters, tmp_path):
    extra = tmp_path / "notes.txt"
    extra.write_text("hi")
    with pytest.raises(UnexpectedFile, match="notes.txt"):
        validate_upload({**files_of(adapters["lora"]), "notes.txt": extra})


def test_pickle_named_file_is_refused(adapters, tmp_path):
    binfile = tmp_path / "adapter_model.bin"
    torch.save({"w": torch.zeros(1)}, binfile)
    with pytest.raises(UnsupportedFormat, match="safe_serialization=True"):
        validate_upload({**files_of(adapters["lora"]), binfile.name: binfile})


def test_pickle_renamed_to_safetensors_is_refused(copy_adapter):
    folder = copy_adapter("lora")
    tensors = {k: v.tolist() for k, v in load_file(folder / WEIGHTS).items()}
    (folder / WEIGHTS).write_bytes(pickle.dumps(tensors, protocol=4))
    with pytest.raises(UnsupportedFormat, match="pickle"):
        validate_upload(files_of(folder))


def test_torch_save_zip_renamed_to_safetensors_is_refused(copy_adapter):
    folder = copy_adapter("lora")
    torch.save(load_file(folder / WEIGHTS), folder / WEIGHTS)
    with pytest.raises(UnsupportedFormat, match="save_file"):
        validate_upload(files_of(folder))


def test_pickle_bytes_under_the_readme_name_are_refused(copy_adapter):
    folder = copy_adapter("lora")
    (folder / "README.md").write_bytes(pickle.dumps("hello", protocol=2))
    with pytest.raises(UnsupportedFormat):
        validate_upload(files_of(folder))


def test_truncated_weights_are_refused(copy_adapter):
    folder = copy_adapter("lora")
    blob = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InvalidSafetensors):
        validate_upload(files_of(folder))


def test_header_cap_is_honoured(adapters):
    with pytest.raises(InvalidSafetensors, match="exceeds the limit of 64 bytes"):
        validate_upload(files_of(adapters["lora"]), max_header_bytes=64)


def test_config_over_the_limit_is_refused_before_reading(copy_adapter):
    folder = copy_adapter("lora")
    config = json.loads((folder / CONFIG).read_text())
    config["notes"] = "x" * 2_000
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterConfig, match="the limit is 1000"):
        validate_upload(files_of(folder), max_config_bytes=1000)


def test_config_that_is_not_an_object_is_refused(copy_adapter):
    folder = copy_adapter("lora")
    (folder / CONFIG).write_text('["LORA"]')
    with pytest.raises(InvalidAdapterConfig, match="JSON object"):
        validate_upload(files_of(folder))


@pytest.mark.parametrize("dtype, bad", [
    (torch.float32, math.nan), (torch.bfloat16, math.inf), (torch.float16, -math.inf)])
def test_non_finite_weight_is_refused_naming_the_tensor(copy_adapter, dtype, bad):
    folder = copy_adapter("lora")
    tensors = {k: v.to(dtype) for k, v in load_file(folder / WEIGHTS).items()}
    victim = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    tensors[victim][7, 1] = bad
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    with pytest.raises(NonFiniteWeights, match=victim.replace(".", r"\.")) as info:
        validate_upload(files_of(folder))
    assert info.value.status == 422


def test_dora_adapter_is_valid_but_not_mergeable(adapters):
    info = validate_upload(files_of(adapters["dora"]))
    assert info.peft_type == "LORA" and info.mergeable is False


@pytest.mark.parametrize("kind, feature", [("lora_bias", "lora_bias"),
                                           ("modules_to_save", "modules_to_save"),
                                           ("conv", "Conv LoRA")])
def test_lora_variants_the_engine_refuses_are_not_mergeable_and_say_why(adapters, kind, feature):
    info = validate_upload(files_of(adapters[kind]))
    assert info.mergeable is False and feature in info.not_mergeable_reason


def test_ia3_adapter_is_stored_but_not_mergeable(adapters):
    info = validate_upload(files_of(adapters["ia3"]))
    assert info.peft_type == "IA3"
    assert info.mergeable is False
    assert info.r is None and info.lora_alpha is None
    assert info.target_modules == ["down_proj", "k_proj"]
    assert info.num_parameters == 2 * (64 + 128)


def test_ia3_adapter_is_still_checked_as_safetensors(copy_adapter):
    folder = copy_adapter("ia3")
    with (folder / WEIGHTS).open("ab") as fh:
        fh.write(b"\x00" * 4)
    with pytest.raises(InvalidSafetensors, match="unused bytes"):
        validate_upload(files_of(folder))


@pytest.mark.parametrize("kind, targets", [("embedding", ["embed_tokens", "q_proj"]),
                                           ("gpt2", ["c_attn"]),
                                           ("rank_pattern", ["down_proj", "q_proj", "v_proj"])])
def test_embedding_gpt2_and_rank_pattern_adapters_are_mergeable(adapters, kind, targets):
    info = validate_upload(files_of(adapters[kind]))
    assert info.mergeable is True and info.not_mergeable_reason is None
    assert info.target_modules == targets


def test_readme_front_matter_is_returned(copy_adapter):
    folder = copy_adapter("lora")
    (folder / "README.md").write_text("---\nlicense: mit\ntags: [a, b]\nbase_model: org/base\n---\nhi")
    readme = validate_upload(files_of(folder)).readme
    assert (readme.license, readme.tags, readme.base_model) == ("mit", ["a", "b"], "org/base")


def test_non_utf8_readme_is_refused(copy_adapter):
    folder = copy_adapter("lora")
    (folder / "README.md").write_bytes(b"# Caf\xe9\n")
    with pytest.raises(InvalidRequest, match="not UTF-8"):
        validate_upload(files_of(folder))
