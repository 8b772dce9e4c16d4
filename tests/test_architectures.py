"""POP on every supported architecture: llama (SmolLM2), qwen2 and qwen3 (SmolLM2's weights rewritten
as those architectures, tests/arch_models.py) and gemma3 (the real Gemma-3-270M, sliding-window layers
with their own cache and RoPE base, post-norms, scaled embeddings), under flash attention on and off,
a q8_0 KV cache, chunked and multi-sequence batches and embedding contexts, on the CPU
(test_gpu_offload.py runs the same checks on a GPU backend).

The central check reads the KV cache back (llama_state_seq_get_data) and compares it byte for byte
with the full model's: with one layer L skipped, every layer up to and including L must hold exactly
what the full model stores, because L's input is the full model's; the layers after L must differ.
"""

import numpy as np
import pytest

import llama_cpp

from llama_contexts import (cache_layers, chunked_and_single, contexts, decode, default_skip, full_cut_like_pop,
                            logged_context, prompt_entries, set_skip, stats, tokens, two_sequences)
from pop_local import PopLlama
from pop_local import _native

pytestmark = pytest.mark.slow

ARCHES = ("llama", "qwen2", "qwen3", "gemma3")
N_PROMPT = 200

# (flash attention, K cache type, V cache type): llama.cpp needs flash attention for a quantized V cache
CACHE_CONFIGS = {
    "fa-off-f16": (False, None, None),
    "fa-on-f16": (True, None, None),
    "fa-on-q8_0": (True, llama_cpp.GGML_TYPE_Q8_0, llama_cpp.GGML_TYPE_Q8_0),
    "fa-off-k-q8_0": (False, llama_cpp.GGML_TYPE_Q8_0, None),
}


def load(path, fa=False, type_k=None, type_v=None, **kw):
    kw.setdefault("n_ctx", 2048)
    kw.setdefault("n_batch", 512)
    kw.setdefault("n_ubatch", 512)
    return PopLlama(path, flash_attn=fa, type_k=type_k, type_v=type_v, verbose=False, seed=1, **kw)


_models = {}


def model(arch_model, arch, config="fa-off-f16"):
    """One loaded model per (architecture, cache config), shared by the tests of this module."""
    key = (arch, config)
    if key not in _models:
        fa, tk, tv = CACHE_CONFIGS[config]
        _models[key] = load(arch_model(arch), fa, tk, tv)
    return _models[key]


def teardown_module():
    for llm in _models.values():
        llm.close()
    _models.clear()


# --- the checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHES)
def test_architecture_is_supported(arch_model, arch):
    llm = model(arch_model, arch)
    assert llm.pop_supported and llm.pop_metadata.architecture == arch and arch in _native.ARCHITECTURES


@pytest.mark.parametrize("config", list(CACHE_CONFIGS))
@pytest.mark.parametrize("arch", ARCHES)
def test_skipped_layer_stores_exactly_the_full_layers_kv(arch_model, long_text, arch, config):
    llm = model(arch_model, arch, config)
    n_layer = llm.pop_metadata.n_layer
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    for skipped in (n_layer // 2, n_layer - 3):
        with contexts(llm, 2) as (full, pop):
            full_logits = full_cut_like_pop(full, entries)
            set_skip(pop, [skipped])
            pop_logits = decode(pop, entries)[len(toks) - 1]
            assert stats(pop).pruned_tokens == len(toks) - 1 and stats(pop).full_tokens == 1
            assert stats(full).pruned_tokens == 0

            want, got = cache_layers(full, n_layer), cache_layers(pop, n_layer)
            for il in range(skipped + 1):
                assert got[il][0] == want[il][0], f"layer {il}: K differs (skipped layer {skipped})"
                assert got[il][1] == want[il][1], f"layer {il}: V differs (skipped layer {skipped})"
            for il in range(skipped + 1, n_layer):
                assert got[il][0] != want[il][0], f"layer {il}: K unchanged, so layer {skipped} was not skipped"
            # the last prompt token ran at full depth, over a cache that differs after the skipped layer
            assert not np.array_equal(pop_logits, full_logits)


@pytest.mark.parametrize("arch", ARCHES)
def test_skipping_only_the_last_layer_changes_nothing(arch_model, long_text, arch):
    """Its K/V are exact and its output would only feed the pruned tokens' logits, which nobody reads."""
    llm = model(arch_model, arch)
    n_layer = llm.pop_metadata.n_layer
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    with contexts(llm, 2) as (full, pop):
        want = full_cut_like_pop(full, entries)
        set_skip(pop, [n_layer - 1])
        got = decode(pop, entries)[len(toks) - 1]
        assert stats(pop).pruned_tokens == len(toks) - 1
        assert np.array_equal(got, want)
        assert cache_layers(pop, n_layer) == cache_layers(full, n_layer)


@pytest.mark.parametrize("arch", ARCHES)
def test_empty_skip_set_is_identical_to_pop_off(arch_model, long_text, arch):
    llm = model(arch_model, arch)
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    with contexts(llm, 2) as (on, off):
        set_skip(on, [])
        _native.lib().pop_llama_set_enabled(off, False)
        assert np.array_equal(decode(on, entries)[len(toks) - 1], decode(off, entries)[len(toks) - 1])
        assert stats(on).pruned_tokens == 0


@pytest.mark.parametrize("arch", ARCHES)
def test_boundary_token_runs_the_full_model(arch_model, long_text, arch):
    """POP's logits for the last prompt token == the full graph run for that token over POP's cache."""
    llm = model(arch_model, arch)
    skip = default_skip(llm.pop_metadata.n_layer)
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    with contexts(llm, 2) as (one, two):
        set_skip(one, skip)
        got = decode(one, entries)[len(toks) - 1]
        set_skip(two, skip)
        decode(two, entries[:-1])  # no outputs: all pruned
        _native.lib().pop_llama_set_enabled(two, False)
        want = decode(two, entries[-1:])[0]  # the full graph
        assert stats(one).pruned_tokens == stats(two).pruned_tokens == len(toks) - 1
        assert np.array_equal(got, want)


@pytest.mark.parametrize("arch", ARCHES)
def test_pruned_graph_computes_only_the_skipped_layers_kv(arch_model, long_text, arch):
    """The graph nodes ggml's scheduler runs (seen through its eval callback): in a pruned ubatch a
    skipped layer computes K and V and nothing after them; the boundary token's graph runs every layer."""
    llm = model(arch_model, arch)
    n_layer = llm.pop_metadata.n_layer
    skip = default_skip(n_layer)
    entries = prompt_entries(tokens(llm, long_text, 32))
    with logged_context(llm) as (ctx, log):
        set_skip(ctx, skip)
        decode(ctx, entries[:-1])
        pruned = log.take()
        decode(ctx, entries[-1:])
        boundary = log.take()
    for il in range(n_layer):
        assert f"Kcur-{il}" in pruned and f"Vcur-{il}" in pruned, il
        for name in (f"kqv_out-{il}", f"ffn_out-{il}", f"l_out-{il}"):
            assert (name in pruned) == (il not in skip), name
            assert name in boundary, name
    assert set(pruned.values()) == set(boundary.values()) == {"CPU"}


@pytest.mark.parametrize("arch", ARCHES)
def test_chunked_and_two_sequence_batches_match_single_pass(arch_model, long_text, arch):
    llm = model(arch_model, arch)
    skip = default_skip(llm.pop_metadata.n_layer)
    # gemma3: longer than its 512-token sliding window, with the small SWA cache (swa_full off; the
    # llama_cpp.Llama default is the full-size one), so sliding-window cells are reused mid-prompt
    n = 700 if arch == "gemma3" else N_PROMPT
    toks = tokens(llm, long_text, n)
    want, got = chunked_and_single(llm, prompt_entries(toks), skip)
    np.testing.assert_allclose(got, want, atol=5e-3, rtol=0)

    alone, batched = two_sequences(llm, toks[:150], toks[:1] + toks[150:290], skip)
    assert np.array_equal(batched[0], alone[0]) and np.array_equal(batched[1], alone[1])


@pytest.mark.parametrize("arch", ARCHES)
def test_embedding_contexts_run_full_and_match(arch_model, arch):
    """Embeddings need every token's output, so nothing is pruned: the vectors equal POP-off vectors."""
    path = arch_model(arch)
    text = "The lighthouse keeper kept two logbooks, one for the weather and one for herself."
    vecs = {}
    for on in (True, False):
        llm = load(path, embedding=True, n_ctx=256, pop=on,
                   kv_overrides={"pop.prefill.skip_layers": {"gemma3": "12-17"}.get(arch, "20-29")})
        try:
            vecs[on] = np.asarray(llm.embed(text))
            assert llm.pop_stats()["pruned_tokens"] == 0
        finally:
            llm.close()
    assert vecs[True].size > 0 and np.array_equal(vecs[True], vecs[False])
