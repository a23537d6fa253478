"""The registry's upload checks and the merge engine agree on every adapter.

Each case is a real adapter saved by PEFT (or a PEFT adapter edited where PEFT cannot
make the case); it goes through `validate_upload` and through `load_source` /
`load_sources`. What the registry marks mergeable the engine merges, and what the engine
refuses the registry either refuses or marks not mergeable, naming the same feature.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
from merge_fixtures import llama, save_adapter

from hub.errors import HubError
from hub.formats import module_scaling, validate_upload
from hub.merge.plan import load_sources, plan_modules
from hub.merge.sources import load_source
from hub.merge.spec import SourceSpec

WEIGHTS = "adapter_model.safetensors"
BASE = dict(family="llama", seed=11, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])

# case -> (mergeable, a word the upload's reason and the engine's refusal both hold)
CASES = {
    "plain": (True, None),
    "embedding": (True, None),
    "rslora_patterns": (True, None),
    "use_dora": (False, "DoRA"),
    "lora_bias": (False, "lora_bias"),
    "bias_all": (False, "bias"),
    "bias_lora_only": (False, "bias"),
    "layer_replication": (False, "layer_replication"),
    "use_qalora": (False, "QALoRA"),
    "modules_to_save": (False, "modules_to_save"),
    "trainable_token_indices": (False, "trainable_token_indices"),
    "target_parameters": (False, "target_parameters"),
    "alora_invocation_tokens": (False, "aLoRA"),
    "conv": (False, "Conv LoRA"),
    "int64_factor": (False, "I64"),
    "bool_factor": (False, "BOOL"),
    "mixed_dtypes": (False, "one dtype per module"),
    "zero_size": (False, "zero-size"),
    "loha": (False, "LOHA"),
}


def _conv_model():
    import torch.nn as nn

    class TinyConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Linear(8, 4)

    return TinyConv()


def _retyped(root: Path, source: Path, name: str, change) -> Path:
    """A copy of `source` whose tensors `change(tensors)` edited (PEFT cannot save these)."""
    from safetensors.torch import load_file, save_file

    target = root / name
    shutil.copytree(source, target)
    tensors = load_file(str(target / WEIGHTS))
    change(tensors)
    save_file(tensors, str(target / WEIGHTS), metadata={"format": "pt"})
    return target


def _first(tensors: dict, suffix: str) -> str:
    return sorted(k for k in tensors if k.endswith(suffix))[0]


@pytest.fixture(scope="session")
def cases(tmp_path_factory) -> dict[str, Path]:
    """Every case folder, saved by PEFT on the tiny LLaMA (a tiny Conv2d model for conv)."""
    import torch
    from peft import LoHaConfig, get_peft_model
    from tests.support.adapters import save_peft_lora

    root = tmp_path_factory.mktemp("rulebook")
    variants = {
        "plain": {}, "use_dora": dict(use_dora=True), "lora_bias": dict(lora_bias=True),
        "bias_all": dict(bias="all"), "bias_lora_only": dict(bias="lora_only"),
        "layer_replication": dict(layer_replication=[[0, 2], [1, 2]]),
        "use_qalora": dict(use_qalora=True), "modules_to_save": dict(modules_to_save=["lm_head"]),
        "trainable_token_indices": dict(trainable_token_indices=[1, 2]),
        "target_parameters": dict(target_modules=[], target_parameters=["self_attn.q_proj.weight"]),
        "alora_invocation_tokens": dict(alora_invocation_tokens=[1, 2]),
        "embedding": dict(target_modules=["embed_tokens", "q_proj"]),
        "rslora_patterns": dict(use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                                rank_pattern={"layers.0.self_attn.q_proj": 2, "down_proj": 6},
                                alpha_pattern={"v_proj": 3, "down_proj": 18}),
    }
    out = {name: save_adapter(root / name, **{**BASE, **kw}) for name, kw in variants.items()}
    out["conv"] = save_peft_lora(root / "conv", _conv_model(), seed=0, base_name="tiny-conv",
                                 r=2, lora_alpha=2, target_modules=["conv"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_peft_model(llama(0), LoHaConfig(r=4, target_modules=["q_proj"])).save_pretrained(
            str(root / "loha"))
    out["loha"] = root / "loha"

    def to_int(tensors):
        key = _first(tensors, "lora_A.weight")
        tensors[key] = (tensors[key] * 100).to(torch.int64)

    def to_bool(tensors):
        key = _first(tensors, "lora_B.weight")
        tensors[key] = tensors[key] > 0

    def mix(tensors):
        key = _first(tensors, "lora_B.weight")
        tensors[key] = tensors[key].half()

    def empty(tensors):
        key = _first(tensors, "lora_A.weight")
        tensors[key] = torch.zeros(tensors[key].shape[0], 0)

    for name, change in (("int64_factor", to_int), ("bool_factor", to_bool),
                         ("mixed_dtypes", mix), ("zero_size", empty)):
        out[name] = _retyped(root, out["plain"], name, change)
    return out


def _files(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_file() and p.name != "README.md"}


def _upload(folder: Path):
    try:
        return validate_upload(_files(folder)), None
    except HubError as error:
        return None, error


def _engine(folder: Path):
    try:
        return load_source(folder, 1.0), None
    except HubError as error:
        return None, error


@pytest.mark.parametrize("name", sorted(CASES))
def test_upload_and_engine_agree_on_whether_an_adapter_merges(cases, name):
    mergeable, feature = CASES[name]
    info, upload_error = _upload(cases[name])
    source, engine_error = _engine(cases[name])
    assert upload_error is None, f"the registry refuses a PEFT adapter: {upload_error}"
    assert info.mergeable is (source is not None), (info, engine_error)
    assert info.mergeable is mergeable
    if mergeable:
        assert info.not_mergeable_reason is None
        source.close()
        loaded = load_sources([SourceSpec(cases[name], 1.0)])
        try:
            assert {plan.name for plan in plan_modules(loaded)} == set(source.modules)
        finally:
            for each in loaded:
                each.close()
    else:
        assert feature in info.not_mergeable_reason
        assert feature in engine_error.detail and str(cases[name]) in engine_error.detail


def test_the_engine_scales_each_module_as_the_rulebook_and_peft_do(cases):
    from peft import PeftModel

    folder = cases["rslora_patterns"]
    config = json.loads((folder / "adapter_config.json").read_text())
    source = load_source(folder, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(llama(0), str(folder))
    peft_scale = {name[len("base_model.model."):]: module.scaling["default"]
                  for name, module in model.named_modules()
                  if isinstance(getattr(module, "scaling", None), dict)}
    try:
        assert set(source.modules) == set(peft_scale)
        distinct = set()
        for name, ref in source.modules.items():
            assert ref.scale == module_scaling(config, name)
            assert ref.scale == pytest.approx(peft_scale[name], rel=1e-12)
            distinct.add(ref.scale)
        assert len(distinct) >= 3  # r, rank_pattern and alpha_pattern all took part
    finally:
        source.close()
