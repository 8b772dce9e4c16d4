"""Tiny random-weight transformers models (Llama, Gemma 3) and token samples for the converter's tests."""

import torch
import transformers


def tiny_llama(n_layer=4, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval().requires_grad_(False)


def tiny_gemma3(n_layer=4, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layer,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                        max_position_embeddings=64, sliding_window=8)
    return transformers.Gemma3ForCausalLM(cfg).eval().requires_grad_(False)


def sample(n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (n,), generator=g).tolist()
