"""Calibration in PyTorch/transformers: load the model, sample responses, measure importance."""

from __future__ import annotations

import json
import os
from typing import Callable, Dict, List, Optional, Tuple

from pop_local import keys
from pop_local.errors import PopError
from pop_local.metadata import PopMetadata

from .arch import arch_spec
from .calibration_data import BUILTIN_PROMPTS
from .importance import Importance, layer_importance

__all__ = ["calibrate", "load_prompts", "load_model"]


def load_prompts(data: Optional[str]) -> List[str]:
    """Built-in prompts, or a file: .jsonl (a "prompt", "instruction" or "text" field per line) or text
    (paragraphs separated by blank lines)."""
    if data is None:
        return list(BUILTIN_PROMPTS)
    if not os.path.isfile(data):
        raise PopError(f"{data}: no such file")
    with open(data, encoding="utf-8") as f:
        raw = f.read()
    prompts: List[str] = []
    if data.endswith(".jsonl"):
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PopError(f"{data}:{n}: not JSON ({e.msg})") from None
            text = next((obj[k] for k in ("prompt", "instruction", "text") if isinstance(obj, dict) and k in obj), None)
            if not isinstance(text, str):
                raise PopError(f'{data}:{n}: expected an object with a "prompt", "instruction" or "text" string')
            prompts.append(text)
    else:
        prompts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not prompts:
        raise PopError(f"{data}: no prompts found")
    return prompts


def load_model(src: str, hf_model: Optional[str], device: str, dtype: str):
    """A transformers CausalLM and tokenizer: the GGUF's own (dequantized) weights, or --hf-model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise PopError(f"--dtype must be float32, bfloat16 or float16, got {dtype}")
    if hf_model:
        tok = AutoTokenizer.from_pretrained(hf_model)
        model = AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch_dtype)
    else:
        folder, name = os.path.split(os.path.abspath(src))
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
    model.requires_grad_(False)
    return model.to(device).eval(), tok


def _prompt_ids(tok, prompt: str, seq_len: int) -> List[int]:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    ids = list(ids)
    return ids[-seq_len:] if len(ids) > seq_len else ids


def calibrate(src: str, meta: PopMetadata, *, hf_model: Optional[str], data: Optional[str], samples: int, seq_len: int,
              response_tokens: int, device: str, dtype: str, seed: int,
              progress: Optional[Callable[[str, int, int], None]] = None) -> Tuple[Importance, Dict]:
    """Importance of every layer in both stages; returns it and the provenance keys."""
    import torch

    if samples < 1 or seq_len < 8 or response_tokens < 1:
        raise PopError("--samples, --seq-len and the response length must be positive (--seq-len at least 8)")
    prompts = load_prompts(data)
    model, tok = load_model(src, hf_model, device, dtype)
    spec = arch_spec(model.config.model_type)
    if spec.gguf_arch != meta.architecture:
        raise PopError(f"the calibration model is '{model.config.model_type}' but the GGUF is '{meta.architecture}'")

    torch.manual_seed(seed)
    seqs, lens = [], []
    for i in range(samples):
        ids = _prompt_ids(tok, prompts[i % len(prompts)], seq_len)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=device), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=response_tokens, pad_token_id=tok.eos_token_id)
        seqs.append(out[0].tolist())
        lens.append(len(ids))
        if progress:
            progress("sampling responses", i + 1, samples)
    done = [0]

    def tick(n):
        done[0] += n
        if progress:
            progress("measuring importance", done[0], samples)

    imp = layer_importance(model, spec, meta.n_layer, seqs, lens, progress=tick)
    provenance = {
        keys.CALIB_SOURCE: hf_model or os.path.basename(src),
        keys.CALIB_DATA: "builtin" if data is None else os.path.basename(data),
        keys.CALIB_SAMPLES: imp.samples,
        keys.CALIB_SEQ_LEN: seq_len,
        keys.CALIB_RESPONSE_TOKENS: response_tokens,
        keys.CALIB_SEED: seed,
    }
    return imp, provenance
