"""Tiny base models built from their configs with seeded random weights (no downloads).

One place for the shapes every suite adapts: the registry, formats and merge tests each
save real PEFT adapters on these, overriding a field where a case needs another shape.
"""
from __future__ import annotations

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=128)
TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64,
                 bos_token_id=0, eos_token_id=0)


def tiny_llama(seed: int = 0, **overrides):
    """A tiny LLaMA (Linear layers, embeddings); `overrides` change its config."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides})).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    """A tiny GPT-2 (Conv1D layers: fan_in_fan_out); `overrides` change its config."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**{**TINY_GPT2, **overrides})).eval()
