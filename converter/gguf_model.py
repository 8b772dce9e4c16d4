"""A transformers model whose weights stay in the GGUF until a block needs them.

The model is built from the GGUF's config with its parameters on the meta device (no memory); one
decoder layer at a time is dequantized from the file's memory map (pop_local.format.gguf_file,
gguf.dequantize), with transformers' own GGUF name map and tensor processors (Llama's Q/K row order,
Gemma's norm offset, merged MoE experts), and dropped again after use. The embedding gives only the rows a batch uses,
and the output head is read in chunks of rows. Peak memory is one layer in float32 plus the file's
own pages, whatever the model's size.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Callable, Dict, Iterator, List, Tuple

__all__ = ["GGUFModel", "HEAD_CHUNK_ROWS"]

HEAD_CHUNK_ROWS = 16384  # output-head rows dequantized at once (Qwen2.5's 151936 x 1536: 100 MB in float32)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def gguf_tokenizer_and_config(src: str):
    """transformers' tokenizer and config (with gguf_config_fixes) of a GGUF, read once per file and
    process: each read parses the whole file with gguf.GGUFReader (seconds for a large vocabulary), and a
    process that converts a file again (a server, a test suite, a budget sweep) need not pay it twice. The
    config is a copy, since building a model writes into it; the tokenizer is only read."""
    import copy

    st = os.stat(src)
    tokenizer, config = _tokenizer_and_config(os.path.abspath(src), st.st_mtime_ns, st.st_size)
    return tokenizer, copy.deepcopy(config)


@functools.lru_cache(maxsize=2)
def _tokenizer_and_config(path: str, mtime_ns: int, size: int):
    from transformers import AutoConfig, AutoTokenizer

    folder, name = os.path.split(path)
    return (AutoTokenizer.from_pretrained(folder, gguf_file=name),
            AutoConfig.from_pretrained(folder, gguf_file=name, **gguf_config_fixes(path)))


def gguf_config_fixes(src: str) -> dict:
    """Config values transformers' GGUF reader misses: it ignores qwen3's attention.key_length and
    assumes head_dim 128 (right for the released Qwen3 models, wrong for others), and the experts' width."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    from pop_local.format.metadata import read_header

    header = read_header(src)
    arch = header.get("general.architecture")
    fixes = {}
    head_dim = header.get(f"{arch}.attention.key_length")
    if head_dim is not None and "attention.key_length" not in GGUF_CONFIG_MAPPING.get(arch, {}):
        fixes["head_dim"] = int(head_dim)
    # MoE: the experts' width (qwen3moe's mapping misses it and assumes the released models' 768)
    n_ff_exp = header.get(f"{arch}.expert_feed_forward_length")
    if n_ff_exp is not None:
        fixes["moe_intermediate_size"] = int(n_ff_exp)
    return fixes



class GGUFModel:
    """`config`, `tokenizer`, the meta-device `model`, and `layer(i)` / `embed(ids)` / `head_chunks()`."""

    def __init__(self, src: str, layers_path: "Callable[[str], str]"):
        """layers_path(model_type): where the decoder layers live (converter/arch.py)."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        from pop_local.format.gguf_file import read_gguf

        self.tokenizer, self.config = gguf_tokenizer_and_config(src)
        # eager attention: the masks every layer receives are explicit tensors, so a block can be
        # re-run on a slice of positions (converter/streaming.py) with the matching slice of the mask
        with init_empty_weights(include_buffers=False):
            self.model = AutoModelForCausalLM.from_config(self.config, attn_implementation="eager",
                                                          dtype=torch.float32)
        self.model.requires_grad_(False).eval()
        path = layers_path(self.config.model_type)
        self.layers = _get(self.model, path)
        self.stack = _get(self.model, path.rsplit(".", 1)[0])  # the decoder (embeddings, layers, norm)
        self.reader = read_gguf(src)
        self.arch = self.reader.fields["general.architecture"].value
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.processor = TENSOR_PROCESSORS.get(self.arch, TensorProcessor)(config=self.config.to_dict())
        self.name_map = get_gguf_hf_weights_map(self.model, self.processor)
        self.by_block: Dict[int, List[str]] = {}
        self.globals: List[str] = []
        for tname in self.tensors:
            if tname.startswith("blk."):
                self.by_block.setdefault(int(tname.split(".")[1]), []).append(tname)
            elif tname not in ("token_embd.weight", "output.weight"):
                self.globals.append(tname)
        self.head_name = "output.weight" if "output.weight" in self.tensors else "token_embd.weight"
        self.softcap = getattr(self.config.get_text_config(), "final_logit_softcapping", None)
        self._load(self.globals, self.model, "")  # final norm (and any other small non-block tensor)
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def to(self, device, dtype) -> None:
        """Run layers on `device` in `dtype` (the output head stays float32 on that device)."""
        self.device, self.dtype = device, dtype
        self.final_norm.to(device=device, dtype=dtype)

    # --- weights ---------------------------------------------------------------------------------

    def _state(self, names) -> Dict[str, "object"]:
        import numpy as np
        import torch
        from gguf import dequantize

        parsed = {"tensors": {}, "config": self.config.to_dict()}
        state = {}
        for tname in names:
            t = self.tensors[tname]
            weights = dequantize(t.data, t.tensor_type)
            res = self.processor.process(weights=weights, name=tname, tensor_key_mapping=self.name_map,
                                         parsed_parameters=parsed)
            if res.name is not None and res.name in self.name_map:
                w = res.weights  # F32 tensors come back as read-only views of the memory map
                if w.dtype != np.float32 or not w.flags.writeable or not w.flags.c_contiguous:
                    w = np.array(w, dtype=np.float32)
                state[self.name_map[res.name]] = torch.from_numpy(w)
        state.update({k: v.float() for k, v in parsed["tensors"].items()})  # merged MoE experts
        return state

    def _load(self, names, module, prefix: str) -> None:
        state = self._state(names)
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if own:
            module.load_state_dict(own, strict=False, assign=True)

    @contextlib.contextmanager
    def layer(self, i: int) -> Iterator["object"]:
        """Decoder layer i with its weights dequantized (float32); back on the meta device afterwards."""
        module = self.layers[i]
        prefix = next(n for n, m in self.model.named_modules() if m is module) + "."
        state = {k[len(prefix):]: v for k, v in self._state(self.by_block.get(i, [])).items() if k.startswith(prefix)}
        expected = {n for n, _ in module.named_parameters()}
        missing = expected - set(state)
        if missing:
            raise RuntimeError(f"layer {i}: the GGUF has no tensor for {sorted(missing)[:3]}")
        module.load_state_dict(state, strict=False, assign=True)
        module.requires_grad_(False)
        module.to(device=self.device, dtype=self.dtype)
        try:
            yield module
        finally:
            module.to("meta")

    def embed(self, ids: List[int]):
        """Input embeddings [1, T, d] of one token sequence (only its rows are dequantized)."""
        import numpy as np
        import torch
        from gguf import dequantize

        emb = self.model.get_input_embeddings()
        t = self.tensors["token_embd.weight"]
        uniq, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
        rows = torch.from_numpy(np.array(dequantize(t.data[uniq], t.tensor_type), dtype=np.float32))
        out = rows[torch.from_numpy(inverse.reshape(1, -1))]
        scale = getattr(emb, "embed_scale", None)  # Gemma's scaled embedding (sqrt of the width)
        return out * scale.to(out.dtype) if scale is not None else out

    def head_chunks(self) -> Iterator[Tuple[int, "object"]]:
        """(first row, float32 rows [n, d]) of the output head, HEAD_CHUNK_ROWS at a time."""
        import numpy as np
        import torch
        from gguf import dequantize

        t = self.tensors[self.head_name]
        n = t.data.shape[0]
        for a in range(0, n, HEAD_CHUNK_ROWS):
            rows = np.array(dequantize(t.data[a:a + HEAD_CHUNK_ROWS], t.tensor_type), dtype=np.float32)
            yield a, torch.from_numpy(rows).to(self.device)

    @property
    def vocab_size(self) -> int:
        return int(self.tensors[self.head_name].data.shape[0])

    @property
    def final_norm(self):
        return self.stack.norm

    def layer_kwargs(self, n_tokens: int) -> List[Dict[str, object]]:
        """The keyword arguments the model's own forward hands each decoder layer for one sequence
        of n_tokens (masks, rotary embeddings, positions): recorded by running the decoder with
        stand-ins for its layers."""
        import torch

        recorded: List[Dict[str, object]] = [None] * len(self.layers)

        class Stop(Exception):
            pass

        class Recorder(torch.nn.Module):
            def __init__(self, i: int):
                super().__init__()
                self.i = i

            def forward(self, hidden_states, *args, **kwargs):
                if args:
                    raise RuntimeError("decoder layers are expected to take keyword arguments after the hidden states")
                recorded[self.i] = kwargs
                if self.i == len(recorded) - 1:
                    raise Stop
                return hidden_states

        originals = list(self.layers)
        d = self.config.get_text_config().hidden_size
        try:
            for i in range(len(originals)):
                self.layers[i] = Recorder(i)
            with torch.no_grad(), contextlib.suppress(Stop):
                self.stack(inputs_embeds=torch.zeros(1, n_tokens, d), use_cache=False)
        finally:
            for i, layer in enumerate(originals):
                self.layers[i] = layer
        return recorded
