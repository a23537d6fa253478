"""adapter_config.json parsing and its agreement with the tensors (PEFT naming)."""
from __future__ import annotations

import json

import pytest
from formats_support import read_raw, write_raw

from hub.errors import InvalidAdapterConfig, TensorMismatch
from hub.formats import (
    check_lora_tensors, get_pattern_key, module_key, module_rank, module_scaling,
    parse_adapter_config, read_safetensors_header,
)

WEIGHTS = "adapter_model.safetensors"


def _config(adapters, kind="lora") -> dict:
    return json.loads((adapters[kind] / "adapter_config.json").read_text())


def _dump(config: dict) -> bytes:
    return json.dumps(config).encode()


def test_peft_config_parses_to_the_same_dict(adapters):
    raw = (adapters["lora"] / "adapter_config.json").read_bytes()
    assert parse_adapter_config(raw) == json.loads(raw)


@pytest.mark.parametrize("raw, match", [
    (b"[1, 2]", "must be a JSON object"),
    (b'"LORA"', "must be a JSON object"),
    (b"{", "not valid JSON"),
    (b'{"peft_type": "LORA", "r": NaN}', "not valid JSON"),
    (b'{"peft_type": "LORA", "peft_type": "IA3"}', "duplicate key"),
    (b"\xff{}", "not UTF-8"),
    (b"{}", "peft_type"),
    (b'{"peft_type": 3}', "peft_type"),
    (b"[" * 50_000, "not valid JSON"),
])
def test_config_that_is_not_an_object_with_peft_type_is_refused(raw, match):
    with pytest.raises(InvalidAdapterConfig, match=match):
        parse_adapter_config(raw)


def test_config_over_the_size_limit_is_refused(adapters):
    config = _config(adapters)
    config["padding"] = "x" * 1_000_000
    with pytest.raises(InvalidAdapterConfig, match="the limit is 1000000"):
        parse_adapter_config(_dump(config))


@pytest.mark.parametrize("field, value, match", [
    ("r", 0, "`r` must be an integer"),
    ("r", -4, "`r` must be an integer"),
    ("r", 4.0, "`r` must be an integer"),
    ("r", True, "`r` must be an integer"),
    ("r", 10**6, "`r` must be an integer"),
    ("r", None, "`r` must be an integer"),
    ("lora_alpha", 0, "`lora_alpha` must be a finite number > 0"),
    ("lora_alpha", -8, "`lora_alpha`"),
    ("lora_alpha", "8", "`lora_alpha`"),
    ("lora_alpha", 1e400, "`lora_alpha`"),
    ("target_modules", 5, "`target_modules`"),
    ("target_modules", ["q_proj", 1], "`target_modules`"),
    ("modules_to_save", "lm_head", "`modules_to_save`"),
    ("rank_pattern", ["q_proj"], "`rank_pattern` must be an object"),
    ("rank_pattern", {"q_proj": 0}, r"`rank_pattern\['q_proj'\]`"),
    ("rank_pattern", {"q_proj": 2.5}, r"`rank_pattern\['q_proj'\]`"),
    ("rank_pattern", {"(q_proj": 2}, "not a valid regex"),
    ("rank_pattern", {r"(q)\1_proj": 2}, "cannot be matched in linear time"),
    ("alpha_pattern", {r"(?<=self_attn\.)q_proj": 2}, "cannot be matched in linear time"),
    ("rank_pattern", {"(?>q)_proj": 2}, "cannot be matched in linear time"),
    ("alpha_pattern", {"v_proj": -1}, r"`alpha_pattern\['v_proj'\]`"),
    ("rank_pattern", {f"m{i}": 2 for i in range(5000)}, "5000 entries; the limit is 4096"),
    ("base_model_name_or_path", 7, "`base_model_name_or_path`"),
])
def test_lora_fields_out_of_range_are_refused(adapters, field, value, match):
    config = _config(adapters)
    config[field] = value
    raw = _dump(config).replace(b"Infinity", b"1e400")
    with pytest.raises(InvalidAdapterConfig, match=match):
        parse_adapter_config(raw)


@pytest.mark.parametrize("value", [None, "all-linear", ".*\\.(q|v)_proj", ["q_proj"]])
def test_target_modules_may_be_a_list_a_string_or_null(adapters, value):
    config = _config(adapters)
    config["target_modules"] = value
    assert parse_adapter_config(_dump(config))["target_modules"] == value


def test_non_lora_config_needs_only_peft_type(adapters):
    config = _config(adapters, "ia3")
    assert parse_adapter_config(_dump(config))["peft_type"] == "IA3"


@pytest.mark.parametrize("patterns, module, expected", [
    ({"q_proj": 2}, "model.layers.0.self_attn.q_proj", 2),
    ({"model.layers.0.self_attn.q_proj": 2}, "model.layers.0.self_attn.q_proj", 2),
    ({"model.layers.0.self_attn.q_proj": 2}, "model.layers.10.self_attn.q_proj", 4),
    ({"layers.0.self_attn.q_proj": 2}, "model.layers.10.self_attn.q_proj", 4),
    ({"proj": 2}, "model.layers.0.self_attn.q_proj", 4),  # no partial-name match
    ({r"layers\.[01]\..*q_proj": 3}, "model.layers.1.self_attn.q_proj", 3),
    ({"^model.layers.0.self_attn.q_proj": 2}, "model.layers.0.self_attn.q_proj", 2),
    ({"q_proj|v_proj": 3}, "model.layers.0.self_attn.v_proj", 3),
    ({r"self_attn\.(q|k)_proj": 5, "k_proj": 6}, "model.layers.0.self_attn.k_proj", 5),
    ({"k_proj": 6, r"self_attn\.(q|k)_proj": 5}, "model.layers.0.self_attn.k_proj", 6),
    ({r"layers\.\d+\.mlp\..*": 7}, "model.layers.12.mlp.down_proj", 7),
    ({"(a|a)*": 2}, "model.aaaa", 2),  # hostile shapes keep PEFT's meaning on short names
    ({".*a.*b.*c.*d": 2}, "x.abcd", 2),
    ({"(.*a){3}": 2}, "x.abcaba", 2),
])
def test_rank_pattern_matches_module_names_as_peft_does(patterns, module, expected):
    from peft.utils.other import get_pattern_key as peft_get_pattern_key

    config = {"r": 4, "rank_pattern": patterns}
    assert module_rank(config, module) == expected
    assert get_pattern_key(patterns, module) == peft_get_pattern_key(patterns, module)


def _header_with(tmp_path, adapters, kind, change):
    header, data = read_raw(adapters[kind] / WEIGHTS)
    data = change(header, data)
    path = tmp_path / WEIGHTS
    write_raw(path, header, data)
    return read_safetensors_header(path)


def test_valid_adapter_with_rank_pattern_passes_with_its_ranks(adapters):
    config = _config(adapters, "rank_pattern")
    layout = check_lora_tensors(config, read_safetensors_header(adapters["rank_pattern"] / WEIGHTS))
    ranks = {m: p["lora_A.weight"].shape[0] for m, p in layout.modules.items()}
    assert ranks["base_model.model.model.layers.0.self_attn.q_proj"] == 2
    assert ranks["base_model.model.model.layers.1.self_attn.q_proj"] == 4
    assert ranks["base_model.model.model.layers.1.mlp.down_proj"] == 6
    assert layout.target_names() == ["down_proj", "q_proj", "v_proj"]


def test_rank_pattern_ignored_would_be_a_mismatch(adapters):
    config = _config(adapters, "rank_pattern")
    config["rank_pattern"] = {}
    with pytest.raises(TensorMismatch, match=r"tensors have rank [26], the config says 4"):
        check_lora_tensors(config, read_safetensors_header(adapters["rank_pattern"] / WEIGHTS))


def test_config_rank_different_from_the_tensors_is_refused(adapters):
    config = _config(adapters)
    config["r"] = 8
    with pytest.raises(TensorMismatch, match="q_proj'.*rank 4, the config says 8") as info:
        check_lora_tensors(config, read_safetensors_header(adapters["lora"] / WEIGHTS))
    assert info.value.status == 422


def test_missing_lora_b_is_refused_naming_the_module(tmp_path, adapters):
    victim = "base_model.model.model.layers.1.self_attn.v_proj"

    def drop_b(header, data):
        entry = header.pop(victim + ".lora_B.weight")
        start, end = entry["data_offsets"]
        for e in header.values():
            if isinstance(e, dict) and "data_offsets" in e and e["data_offsets"][0] >= end:
                e["data_offsets"] = [o - (end - start) for o in e["data_offsets"]]
        return data[:start] + data[end:]

    header = _header_with(tmp_path, adapters, "lora", drop_b)
    with pytest.raises(TensorMismatch, match=rf"'{victim}': lora_B.weight is missing"):
        check_lora_tensors(_config(adapters), header)


def test_a_and_b_with_different_ranks_are_refused(tmp_path, adapters):
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

    def reshape_b(header, data):
        header[name]["shape"] = [128, 2]  # same byte count, rank 2
        return data

    header = _header_with(tmp_path, adapters, "lora", reshape_b)
    with pytest.raises(TensorMismatch, match="lora_A.weight has rank 4 but lora_B.weight has rank 2"):
        check_lora_tensors(_config(adapters), header)


def test_one_dimensional_lora_weight_is_refused(tmp_path, adapters):
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"

    def flatten(header, data):
        header[name]["shape"] = [256]
        return data

    header = _header_with(tmp_path, adapters, "lora", flatten)
    with pytest.raises(TensorMismatch, match="expected matching 2-D"):
        check_lora_tensors(_config(adapters), header)


def test_tensor_outside_peft_naming_is_refused(tmp_path, adapters):
    def rename(header, data):
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
        header["model.layers.0.self_attn.q_proj.weight"] = header.pop(key)
        return data

    header = _header_with(tmp_path, adapters, "lora", rename)
    with pytest.raises(TensorMismatch, match="not in PEFT's LoRA naming"):
        check_lora_tensors(_config(adapters), header)


def test_saved_module_is_allowed_only_when_config_lists_it(adapters):
    from dataclasses import replace

    config = _config(adapters, "modules_to_save")
    header = read_safetensors_header(adapters["modules_to_save"] / WEIGHTS)
    assert check_lora_tensors(config, header).extras == ["base_model.model.lm_head.weight"]
    # A whole lm_head is also what PEFT saves for a resized vocabulary: kept, not mergeable.
    config["modules_to_save"] = None
    assert check_lora_tensors(config, header).extras == ["base_model.model.lm_head.weight"]
    # Any other whole module is saved only when modules_to_save lists it.
    tensors = {(k.replace("lm_head", "score") if "lm_head" in k else k): v
               for k, v in header.tensors.items()}
    with pytest.raises(TensorMismatch, match="score.weight"):
        check_lora_tensors(config, replace(header, tensors=tensors))


def test_conv_embedding_and_gpt2_adapters_pass(adapters):
    for kind, targets in [("conv", ["conv"]), ("embedding", ["embed_tokens", "q_proj"]),
                          ("gpt2", ["c_attn"])]:
        layout = check_lora_tensors(_config(adapters, kind),
                                    read_safetensors_header(adapters[kind] / WEIGHTS))
        assert layout.target_names() == targets



@pytest.mark.parametrize("rslora", [False, True])
def test_module_scaling_matches_the_loaded_peft_model(adapters, copy_adapter, rslora):
    import warnings

    from formats_support import llama
    from peft import PeftModel

    folder = copy_adapter("rank_pattern")
    config = _config(adapters, "rank_pattern")
    config["use_rslora"] = rslora
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(llama(), folder)
    seen = 0
    for name, layer in model.named_modules():
        if isinstance(getattr(layer, "scaling", None), dict) and "default" in layer.scaling:
            key = module_key(name)
            assert module_scaling(config, key) == pytest.approx(layer.scaling["default"]), name
            assert module_rank(config, key) == layer.r["default"]
            seen += 1
    assert seen == 6


@pytest.mark.parametrize("field", ["base_model_name_or_path", "task_type", "peft_type"])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f"])
def test_config_strings_with_nul_or_control_characters_are_refused(adapters, field, char):
    config = _config(adapters)
    config[field] = f"a{char}b"
    with pytest.raises(InvalidAdapterConfig, match=f"`{field}` holds U\\+.*control character"):
        parse_adapter_config(_dump(config))
