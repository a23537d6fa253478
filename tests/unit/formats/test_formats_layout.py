"""The key layout: every key a name PEFT saves for the config, on a module it targets."""
from __future__ import annotations

import json

import pytest
from formats_support import files_of, llama, save_adapter
from safetensors.torch import load_file, save_file

from hub.errors import MissingFile, TensorMismatch, UnexpectedFile
from hub.formats import is_target, validate_upload

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"

TARGETING = [
    dict(target_modules=["q_proj", "v_proj"]),
    dict(target_modules=["self_attn.q_proj", "model.layers.1.mlp.down_proj"]),
    dict(target_modules=r".*\.layers\.1\..*(q|v)_proj"),
    dict(target_modules=["q_proj", "up_proj"], layers_to_transform=[1], layers_pattern="layers"),
    dict(target_modules=["q_proj"], layers_to_transform=0),
    dict(target_modules=["model.layers.0.self_attn.q_proj", "k_proj"], layers_to_transform=[1]),
    dict(target_modules=["q_proj", "v_proj"], exclude_modules=["model.layers.0.self_attn.v_proj"]),
    dict(target_modules=["q_proj", "v_proj"], exclude_modules=r".*layers\.1\.self_attn\.q_proj"),
    dict(target_modules=["proj"]),  # a partial name matches nothing
]


@pytest.mark.parametrize("fields", TARGETING)
def test_module_targeting_matches_peft_on_every_module_of_a_model(fields):
    from peft import LoraConfig
    from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists

    peft_config = LoraConfig(r=4, lora_alpha=8, **fields)
    config = json.loads(json.dumps(peft_config.to_dict(), default=list))  # as saved: sets as lists
    for name, _ in llama().named_modules():
        if name:
            found = check_target_module_exists(peft_config, name)
            assert is_target(config, name) is (bool(found) and not isinstance(found, _ExcludedModule)), name


@pytest.fixture(scope="module")
def narrowed(tmp_path_factory):
    """PEFT adapters whose targets are narrowed by regex, layer index and exclusion."""
    from peft import LoraConfig

    root = tmp_path_factory.mktemp("narrowed")
    return {f"case{i}": save_adapter(root, f"case{i}", llama, LoraConfig(r=4, lora_alpha=8, **fields))
            for i, fields in enumerate(TARGETING[:-1])}


def test_peft_adapters_with_narrowed_targets_validate_and_merge(narrowed):
    for folder in narrowed.values():
        assert validate_upload(files_of(folder)).mergeable is True


def _with_keys(folder, rename):
    tensors = load_file(str(folder / WEIGHTS))
    save_file({rename(k): v for k, v in tensors.items()}, str(folder / WEIGHTS))


@pytest.mark.parametrize("rename, why", [
    (lambda k: "weird." + k, "start with 'base_model.model.'"),
    (lambda k: k.replace("base_model.model.", ""), "start with 'base_model.model.'"),
    (lambda k: k.replace("q_proj", "k_proj"), "is not one `target_modules` matches"),
    (lambda k: k.replace("lora_A.weight", "lora_A.default.weight"), "not a LoRA tensor"),
])
def test_a_key_peft_would_ignore_is_refused_naming_it(copy_adapter, rename, why):
    folder = copy_adapter("lora")
    _with_keys(folder, rename)
    with pytest.raises(TensorMismatch, match="PEFT would ignore it") as info:
        validate_upload(files_of(folder))
    assert why in info.value.detail


def test_a_key_outside_the_layers_to_transform_is_refused(narrowed, tmp_path):
    import shutil

    folder = tmp_path / "ltt"
    shutil.copytree(narrowed["case3"], folder)  # q_proj/up_proj of layer 1 only
    _with_keys(folder, lambda k: k.replace("layers.1.", "layers.0."))
    with pytest.raises(TensorMismatch, match=r"layers\.0\.mlp\.up_proj"):
        validate_upload(files_of(folder))


def _kohya(path):
    import torch

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, str(path))


def test_a_kohya_lora_without_a_config_is_told_the_accepted_format(tmp_path):
    _kohya(tmp_path / WEIGHTS)
    with pytest.raises(MissingFile, match="kohya") as info:
        validate_upload({WEIGHTS: tmp_path / WEIGHTS})
    assert "adapter_config.json" in info.value.detail and "lora_A.weight" in info.value.detail


def test_kohya_keys_beside_a_peft_config_are_named_as_kohya(copy_adapter):
    folder = copy_adapter("lora")
    _kohya(folder / WEIGHTS)
    with pytest.raises(TensorMismatch, match="kohya"):
        validate_upload(files_of(folder))


def test_a_freely_named_safetensors_file_is_refused_pointing_at_peft_names(tmp_path):
    _kohya(tmp_path / "my_style.safetensors")
    with pytest.raises(UnexpectedFile, match="kohya") as info:
        validate_upload({"my_style.safetensors": tmp_path / "my_style.safetensors"})
    assert WEIGHTS in info.value.detail


def _with_extra(folder, name, shape):
    import torch

    tensors = load_file(str(folder / WEIGHTS))
    tensors[name] = torch.full(shape, 7.0)
    save_file(tensors, str(folder / WEIGHTS))


def test_a_base_weight_saved_beside_a_linear_lora_is_refused(copy_adapter):
    # PEFT would load it over the base model's q_proj: no LoRA does that.
    folder = copy_adapter("lora")
    _with_extra(folder, "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight",
                (64, 64))
    with pytest.raises(TensorMismatch, match="q_proj.base_layer.weight"):
        validate_upload(files_of(folder))


def test_a_resized_vocabulary_saved_whole_is_accepted_and_not_mergeable(tmp_path):
    import warnings

    from peft import LoraConfig, get_peft_model

    from tests.support.tiny_models import tiny_llama

    model = tiny_llama()
    model.resize_token_embeddings(130, mean_resizing=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8,
                                                      target_modules=["q_proj"]))
        peft_model.save_pretrained(str(tmp_path), save_embedding_layers=True)
    keys = set(load_file(str(tmp_path / WEIGHTS)))
    assert "base_model.model.lm_head.weight" in keys  # PEFT saved the resized layers
    info = validate_upload({p.name: p for p in tmp_path.iterdir() if p.name != "README.md"})
    assert info.mergeable is False and "weight" in info.not_mergeable_reason


@pytest.mark.parametrize("pattern", ["layers|h", "(?P<idx>x)"])
def test_a_layers_pattern_that_leaves_no_index_is_a_clear_refusal(copy_adapter, pattern):
    from hub.errors import HubError

    folder = copy_adapter("lora")
    config = json.loads((folder / CONFIG).read_text())
    config.update(layers_to_transform=[0], layers_pattern=pattern)
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(HubError) as info:  # never a TypeError or re.error (a 500)
        validate_upload(files_of(folder))
    assert info.value.status in (400, 422)


HOSTILE = ["(a|a)*$", "(.*a){25}", ".*a.*b.*c.*d", ".*.*.*.*.*=", "(a+)+", "(x+x+)+y"]


def test_hostile_patterns_are_matched_in_linear_time_at_upload(copy_adapter):
    """Patterns that take Python's backtracking re minutes against a long module name (the
    names are an upload's own) are matched by RE2 in a blink; the adapter is accepted."""
    import time

    from formats_support import read_raw, write_raw

    folder = copy_adapter("lora")
    header, data = read_raw(folder / WEIGHTS)
    long_part = "abc" * 150 + "a" * 40
    renamed = {key.replace("self_attn.", f"self_attn.{long_part}."): value
               for key, value in header.items()}
    write_raw(folder / WEIGHTS, renamed, data)
    config = json.loads((folder / CONFIG).read_text())
    config["rank_pattern"] = {pattern: config["r"] for pattern in HOSTILE}
    config["alpha_pattern"] = {pattern: config["lora_alpha"] for pattern in HOSTILE}
    (folder / CONFIG).write_text(json.dumps(config))
    started = time.perf_counter()
    info = validate_upload(files_of(folder))
    assert time.perf_counter() - started < 1.0
    assert info.mergeable


@pytest.mark.parametrize("field", ["target_modules", "exclude_modules", "layers_pattern"])
@pytest.mark.parametrize("pattern", [r"(q)\1", "(?=q)q_proj", "(?<!k)_proj", "q_proj++"])
def test_patterns_re2_cannot_match_are_refused_by_name(copy_adapter, field, pattern):
    from hub.errors import InvalidAdapterConfig

    folder = copy_adapter("lora")
    config = json.loads((folder / CONFIG).read_text())
    config[field] = pattern
    if field == "layers_pattern":
        config["layers_to_transform"] = [0]
    (folder / CONFIG).write_text(json.dumps(config))
    with pytest.raises(InvalidAdapterConfig, match="linear time|not a valid regex") as info:
        validate_upload(files_of(folder))
    assert f"`{field}`" in info.value.detail and info.value.status in (400, 422)
