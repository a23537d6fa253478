"""PEFT's key layout: which tensor names a LoRA adapter may hold, and on which modules.

Every key must be a name PEFT itself saves for the adapter's config; anything else would
be dropped without a word when PEFT loads the folder (a prefixed key loads as "every
LoRA weight missing"), so it is refused here, for the registry and the engine alike.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from hub.errors import TensorMismatch
from hub.formats.foreign import foreign_hint
from hub.formats.patterns import fullmatches, layer_index
from hub.formats.peft_config import MAX_TENSOR_NAME_LEN, PEFT_PREFIX, module_rank
from hub.formats.safetensors_file import SafetensorsHeader, TensorEntry, quote
from hub.formats.text import describe_char, unstorable_char

#: Leaf names of the input embeddings and output heads of transformers' models, whose
#: weights PEFT saves whole when the vocabulary was resized (save_embedding_layers).
EMBEDDING_LAYER_NAMES = frozenset({"embed_tokens", "lm_head", "wte", "embed_in", "embed_out"})

#: The update's two factors, by kind.
FACTORS = {"linear": ("lora_A.weight", "lora_B.weight"),
           "embedding": ("lora_embedding_A", "lora_embedding_B")}
# <module>.<lora param>, for adapter name "default" (PEFT strips it when saving).
# lora_magnitude_vector had a ".weight" suffix before PEFT 0.12.
_LORA_KEY = re.compile(
    r"(?P<module>.+)\.(?P<param>lora_A\.weight|lora_B\.weight|lora_B\.bias"
    r"|lora_embedding_A|lora_embedding_B|lora_magnitude_vector(?:\.weight)?)")
# Where PEFT looks for a layer index when layers_pattern is not given.
_ANY_LAYER_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")
KEY_NAMING = ("base_model.model.<module>.lora_A.weight / lora_B.weight / lora_embedding_A / "
              "lora_embedding_B, on a module `target_modules` matches, or a module listed in "
              "`modules_to_save`")


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its name inside the base model and its two factors."""

    name: str
    kind: str  # "linear" or "embedding"
    key_a: str
    key_b: str
    a: TensorEntry
    b: TensorEntry


@dataclass
class LoraLayout:
    """What the tensors of a LoRA adapter hold, after the checks.

    `modules` maps each prefixed module name to its LoRA params; `extras` are saved
    tensors a plain LoRA update does not carry (modules_to_save, trained biases, trained
    token rows); `ignored` are base weights PEFT saves beside an adapted embedding.
    """

    modules: dict[str, dict[str, TensorEntry]] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def target_names(self) -> list[str]:
        """Sorted leaf names of the adapted modules, e.g. ["q_proj", "v_proj"]."""
        return sorted({m.rsplit(".", 1)[-1] for m in self.modules})

    def lora_modules(self) -> list[LoraModule]:
        """The adapted modules with their A and B (the layout is already checked)."""
        out = []
        for prefixed, params in self.modules.items():
            kind = "embedding" if "lora_embedding_A" in params else "linear"
            a_param, b_param = FACTORS[kind]
            out.append(LoraModule(prefixed[len(PEFT_PREFIX):], kind, f"{prefixed}.{a_param}",
                                  f"{prefixed}.{b_param}", params[a_param], params[b_param]))
        return out


def _listed(path: str, names: list[str]) -> bool:
    return any(path == n or path.endswith("." + n) for n in names)


def _in_layers(config: dict, module: str) -> bool:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    patterns = config.get("layers_pattern") or []
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not patterns:
        match = _ANY_LAYER_INDEX.match(module)
        index = int(match.group("idx")) if match is not None else None
    else:
        index = layer_index(patterns, module)
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def is_target(config: dict, module: str) -> bool:
    """Whether PEFT would put a LoRA on `module` (a name inside the base model) for `config`.

    As peft's check_target_module_exists: a string is a regex that must match the whole
    name; a list entry matches the name itself or its last dotted parts; then
    exclude_modules and layers_to_transform narrow it. A config without targets (PEFT
    filled them in from the model type) matches any module.
    """
    excluded = config.get("exclude_modules")
    if isinstance(excluded, str) and fullmatches(excluded, module):
        return False
    if isinstance(excluded, list) and _listed(module, excluded):
        return False
    targets = config.get("target_modules")
    parameters = config.get("target_parameters") or []
    # LoRA on a parameter lives on the module that owns it: "mlp.experts.down_proj" -> "mlp.experts".
    if _listed(module, [p.rsplit(".", 1)[0] for p in parameters if "." in p]):
        return True
    if targets is None:
        return not parameters
    if isinstance(targets, str):
        return targets == "all-linear" or fullmatches(targets, module)
    if module in targets:  # named in full: layers_to_transform does not apply
        return True
    return _listed(module, targets) and _in_layers(config, module)


def _saved_kind(config: dict, path: str, param: str) -> str | None:
    """'extra' or 'ignored' when PEFT saves `path.param` beside the LoRA for this config."""
    tokens = bool(config.get("trainable_token_indices"))
    if path.endswith(".token_adapter") and param == "trainable_tokens_delta":
        return "extra" if tokens else None
    if path.endswith(".token_adapter.base_layer") and param == "weight":
        return "extra" if tokens else None  # the embedding saved beside trained tokens
    leaf = path.rsplit(".", 1)[-1]
    if path.endswith(".base_layer"):
        owner = path[: -len(".base_layer")]
        if not is_target(config, owner):
            return None
        if param == "weight":
            # save_embedding_layers: an adapted embedding layer's own weight, the base
            # model's, beside its LoRA. Any other layer's base weight would replace the
            # base model's when PEFT loads it: that is no LoRA.
            return "ignored" if owner.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES else None
        return "extra" if param == "bias" and config.get("bias") in ("all", "lora_only") else None
    if param == "weight" and leaf in EMBEDDING_LAYER_NAMES:
        # A resized vocabulary: PEFT saves the whole embedding / lm_head and loads it.
        return "extra"
    if param == "bias" and config.get("bias") == "all":
        return "extra"
    saved = config.get("modules_to_save") or []
    # Older PEFT kept the wrapper's ".modules_to_save.default" in the key.
    path = path.replace(".modules_to_save.default", "")
    parts = path.split(".")
    if any(_listed(".".join(parts[:i]), saved) for i in range(1, len(parts) + 1)):
        return "extra"
    return None


def _stray(name: str, why: str) -> TensorMismatch:
    hint = foreign_hint([name])
    return TensorMismatch(f"tensor {quote(name)} is not in PEFT's LoRA naming for this config "
                          f"({KEY_NAMING}): {why}; PEFT would ignore it when loading"
                          + (f". {hint}" if hint else ""))


def classify_key(config: dict, name: str, entry: TensorEntry, layout: LoraLayout) -> None:
    """File one tensor into `layout`, or raise TensorMismatch naming it."""
    if len(name) > MAX_TENSOR_NAME_LEN:
        raise TensorMismatch(f"tensor name {quote(name)} is longer than {MAX_TENSOR_NAME_LEN}")
    # Module names are stored (target_modules, refusal reasons): no NUL or other controls.
    bad = unstorable_char(name)
    if bad is not None:
        raise TensorMismatch(f"tensor name {quote(name)} holds {describe_char(bad)}")
    if not name.startswith(PEFT_PREFIX):
        raise _stray(name, f"PEFT's keys start with {PEFT_PREFIX!r}")
    inner = name[len(PEFT_PREFIX):]
    match = _LORA_KEY.fullmatch(inner)
    if match is not None:
        module = match.group("module")
        if not is_target(config, module):
            raise _stray(name, f"module {quote(module)} is not one `target_modules` matches")
        param = match.group("param").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
        layout.modules.setdefault(PEFT_PREFIX + module, {})[param] = entry
        return
    path, _, param = inner.rpartition(".")
    kind = _saved_kind(config, path, param) if path else None
    if kind is None:
        raise _stray(name, "not a LoRA tensor and not a module listed in `modules_to_save`")
    (layout.ignored if kind == "ignored" else layout.extras).append(name)


def check_lora_tensors(config: dict, header: SafetensorsHeader | Mapping[str, TensorEntry]
                       ) -> LoraLayout:
    """Check a LoRA adapter's tensor names and shapes against each other and the config."""
    tensors = header.tensors if isinstance(header, SafetensorsHeader) else header
    layout = LoraLayout()
    # Sorted, so the registry and the engine name the same first stray key.
    for name in sorted(tensors):
        classify_key(config, name, tensors[name], layout)
    if not layout.modules:
        raise TensorMismatch("adapter_model.safetensors holds no LoRA tensors")
    for module, params in layout.modules.items():
        _check_module(config, module, params)
    return layout


def _check_module(config: dict, module: str, params: dict[str, TensorEntry]) -> None:
    linear = "lora_A.weight" in params or "lora_B.weight" in params
    embedding = "lora_embedding_A" in params or "lora_embedding_B" in params
    if linear and embedding:
        raise TensorMismatch(f"module {quote(module)} has both lora_A/B and lora_embedding_A/B")
    a_key, b_key = FACTORS["embedding" if embedding else "linear"]
    if a_key not in params or b_key not in params:
        missing = b_key if a_key in params else a_key
        raise TensorMismatch(f"module {quote(module)}: {missing} is missing")
    a, b = params[a_key], params[b_key]
    # Linear LoRA is 2-D; Conv1d/2d/3d LoRA keeps the kernel dims on A and 1s on B.
    allowed_ndim = (2,) if embedding else (2, 3, 4, 5)
    if len(a.shape) not in allowed_ndim or len(b.shape) != len(a.shape):
        raise TensorMismatch(f"module {quote(module)}: {a_key} has shape {list(a.shape)} and "
                             f"{b_key} {list(b.shape)}; expected matching 2-D (or conv) tensors")
    rank = module_rank(config, module[len(PEFT_PREFIX):])
    # A is (r, in, *kernel) or (r, num_embeddings); B is (out, r, *ones) or (dim, r).
    ra, rb = a.shape[0], b.shape[1]
    if ra != rb:
        raise TensorMismatch(f"module {quote(module)}: {a_key} has rank {ra} but {b_key} has rank {rb}")
    if ra != rank:
        raise TensorMismatch(f"module {quote(module)}: tensors have rank {ra}, the config says {rank} "
                             "(`r` or the matching `rank_pattern` entry)")
    out_features = b.shape[0]
    bias = params.get("lora_B.bias")
    if bias is not None and bias.shape != (out_features,):
        raise TensorMismatch(f"module {quote(module)}: lora_B.bias has shape {list(bias.shape)}, "
                             f"expected [{out_features}]")
    mag = params.get("lora_magnitude_vector")
    if mag is not None and mag.numel != out_features and mag.numel != a.shape[-1]:
        raise TensorMismatch(f"module {quote(module)}: lora_magnitude_vector has shape "
                             f"{list(mag.shape)}, not one entry per output feature")
