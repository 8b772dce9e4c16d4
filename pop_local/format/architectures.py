"""The architectures POP runs on: one table, read by the native build, the runtime, the tests and the docs.

POP needs nothing per architecture in llama.cpp: the shared graph code stores a pruned layer's K/V in
`build_attn` and redefines the layer's named output ("l_out") as a copy of its input (docs/architecture.md). An
architecture is listed here only when tests/test_architectures.py passes for it (it runs every row); the
native build compiles the names into libllama (native/patch_upstream.py writes pop_architectures.inc), so
any other architecture keeps the full graph with one warning.

Standard library only: native/patch_upstream.py loads this file by path inside the build's isolated env.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Architecture", "ARCHITECTURES", "NAMES", "markdown_table"]


@dataclass(frozen=True)
class Architecture:
    name: str       # general.architecture in GGUF (llama.cpp's LLM_ARCH name)
    examples: str   # models people run on it
    kind: str       # dense, MoE, MLA, hybrid, KV-sharing
    checked: str    # the weights its tests run on
    exact: bool = False     # has an exact prefill suffix (KV-sharing layers)
    fitted_kv: bool = True  # a pruned layer's K/V projection can be swapped for a fitted one (the builder
                            # projects K and V separately through llm_graph_context::build_qkv)


_REAL = "real weights (SmolLM2-135M)"
_REWRITTEN = "SmolLM2-135M's weights rewritten as this architecture"
_GEMMA = "real weights (Gemma-3-270M)"
_TINY = "generated random weights"

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture("llama", "Llama 2/3.x, SmolLM2, Mistral 7B, TinyLlama", "dense", _REAL),
    Architecture("qwen2", "Qwen2, Qwen2.5, Qwen2.5-Coder", "dense", _REWRITTEN),
    Architecture("qwen3", "Qwen3 dense", "dense", _REWRITTEN),
    Architecture("gemma3", "Gemma 3 (text)", "dense, sliding window", _GEMMA),
    Architecture("gemma2", "Gemma 2", "dense, sliding window, soft-capping", _TINY),
    Architecture("gemma4", "Gemma 4 (E2B, E4B, 31B)", "KV sharing, sliding window", _TINY, exact=True,
                 fitted_kv=False),
    Architecture("phi3", "Phi-3, Phi-4", "dense, fused QKV", _TINY, fitted_kv=False),
    Architecture("mistral3", "Ministral 3, Mistral Small 3.x", "dense, YaRN", _TINY),
    Architecture("smollm3", "SmolLM3", "dense, no-RoPE layers", _TINY),
    Architecture("olmo2", "OLMo 2", "dense, post-norms", _TINY),
    Architecture("granite", "Granite 3.x", "dense, scaled residuals", _TINY),
    Architecture("glm4", "GLM-4", "dense, post-norms", _TINY),
    Architecture("qwen2vl", "Qwen2-VL, Qwen2.5-VL (text)", "dense, M-RoPE", _TINY),
    Architecture("qwen3vl", "Qwen3-VL (text)", "dense, interleaved M-RoPE", _TINY),
    Architecture("qwen3moe", "Qwen3-30B-A3B, Qwen3-Coder", "MoE", _TINY),
    Architecture("gpt-oss", "gpt-oss-20b, gpt-oss-120b", "MoE, sliding window, attention sinks", _TINY),
    Architecture("glm4moe", "GLM-4.5, GLM-4.6", "MoE, shared expert", _TINY),
    Architecture("llama4", "Llama 4 Scout, Maverick", "MoE interleaved, chunked attention", _TINY),
    Architecture("deepseek2", "DeepSeek-V2/V3, Kimi K2", "MoE, MLA (K-only cache)", _TINY, fitted_kv=False),
    Architecture("qwen35", "Qwen3.5", "hybrid: gated delta-net + attention", _TINY),
    Architecture("qwen35moe", "Qwen3.5 MoE", "hybrid + MoE", _TINY),
)

NAMES: tuple[str, ...] = tuple(sorted(a.name for a in ARCHITECTURES))


def markdown_table(calibrated: "set[str] | frozenset[str]" = frozenset()) -> str:
    """The supported-architectures table of docs/architectures.md (benchmarks/tables.py writes it there).
    `calibrated`: the GGUF architectures the converter can calibrate (pop_local.converter.arch)."""
    rows = ["| architecture | models | kind | tests run on | prefill | calibration | fitted K/V |",
            "|---|---|---|---|---|---|---|"]
    for a in ARCHITECTURES:
        prefill = "exact KV-sharing skip + approximate POP" if a.exact else "approximate (POP)"
        fitted = ("yes" if a.name in calibrated else "runtime only (no calibration)") if a.fitted_kv else "no"
        rows.append(f"| `{a.name}` | {a.examples} | {a.kind} | {a.checked} | {prefill} | "
                    f"{'yes' if a.name in calibrated else 'no: --hf-model or --no-calibrate'} | {fitted} |")
    return "\n".join(rows)
