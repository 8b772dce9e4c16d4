"""POP on every architecture of pop_local/format/architectures.py (the list compiled into libllama: an
architecture is on it only when this module passes for it): llama (SmolLM2), qwen2 and qwen3 (SmolLM2's
weights rewritten as those architectures, tests/arch_models.py), gemma3 (the real Gemma-3-270M), and tiny
random-weight models of the others (tests/tiny_models.py: dense, MoE, MLA, hybrid recurrent, sliding
window, KV sharing), under flash attention on and off, a q8_0 KV cache, chunked and multi-sequence
batches and embedding contexts, on the CPU (test_gpu_offload.py runs the same checks on a GPU backend).

The central check reads the cache back (llama_state_seq_get_data) and compares it byte for byte, at
every layer and prompt position, with an exact reference: the full model whose skipped layers pass their
input through (their output node overwritten with their input while the prompt runs; everything else of
them, their K/V or recurrent states included, computed as usual: helpers.llama_contexts.PassThrough).
That is POP's definition (x_{l+1} = x_l, K/V from x_l), so nothing is left to a tolerance: a
pass-through that fed the wrong tensor onward, or K/V from the wrong input, changes later layers' bytes.
KV-sharing layers (gemma4) store nothing and are covered by the logits, which must be equal too; hybrid
models' recurrent layers are compared by their conv and recurrent states.
"""

import ctypes

import llama_cpp
import numpy as np
import pytest

from helpers.llama_contexts import (
    cache_layers,
    contexts,
    decode,
    default_skip,
    full_cut_like_pop,
    layer_kinds,
    logged_context,
    pass_through_reference,
    prompt_entries,
    set_skip,
    stats,
    tokens,
    two_sequences,
)
from helpers.tiny_models import Dims, tiny_model
from helpers.tiny_specs import SPECS
from pop_local import PopLlama
from pop_local.format.architectures import ARCHITECTURES, NAMES
from pop_local.runtime import native as _native
from pop_local.runtime.upstream import model_pointer

pytestmark = pytest.mark.slow

ARCHES = NAMES
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
    kw.setdefault("min_tokens", 0)  # these tests check pruning itself, on prompts of every length
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
def test_pop_cache_is_the_pass_through_reference(arch_model, long_text, arch, config):
    """POP's cache equals, byte for byte at every layer and prompt position, the cache of the full model
    whose skipped layers pass their input through (helpers.llama_contexts.PassThrough), and the first
    answer token's logits equal the reference's: one layer in the middle, and the default tail block.
    The reference itself differs from the full model after the first skipped layer (wherever a later
    layer stores anything), so the check cannot pass by POP doing nothing."""
    if config == "fa-off-k-q8_0" and layer_kinds(model_pointer(model(arch_model, arch)))[-1] & _native.LAYER_K_ONLY:
        pytest.skip("a K-only (MLA) cache: llama.cpp refuses a K cache type different from V's")
    llm = model(arch_model, arch, config)
    n_layer = llm.pop_metadata.n_layer
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    for skip in ([n_layer // 2], default_skip(n_layer)):
        want, want_logits = pass_through_reference(llm, entries, skip)
        with contexts(llm, 2) as (full, pop):
            full_cut_like_pop(full, entries)
            set_skip(pop, skip)
            got_logits = decode(pop, entries)[len(toks) - 1]
            assert stats(pop).pruned_tokens == len(toks) - 1 and stats(pop).full_tokens == 1
            got, plain = cache_layers(pop), cache_layers(full)
        assert got.keys() == want.keys() == plain.keys()
        for il in want:
            assert got[il][0] == want[il][0], f"layer {il}: K differs from the reference (skip {skip})"
            assert got[il][1] == want[il][1], f"layer {il}: V differs from the reference (skip {skip})"
        assert np.array_equal(got_logits, want_logits)
        # up to the first skipped layer, whose input is the full model's, the reference is the full model
        assert all(want[il] == plain[il] for il in want if il <= skip[0])
        later = [il for il in want if il > skip[0]]
        assert all(want[il][0] != plain[il][0] for il in later), "the reference passed nothing through"


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
        assert cache_layers(pop) == cache_layers(full)


@pytest.mark.parametrize("arch", ARCHES)
def test_empty_skip_set_is_identical_to_pop_off(arch_model, long_text, arch):
    llm = model(arch_model, arch)
    toks = tokens(llm, long_text, N_PROMPT)
    entries = prompt_entries(toks)
    with contexts(llm, 2) as (on, off):
        set_skip(on, [])
        _native.lib().pop_llama_set_enabled(off, False)
        for ctx in (on, off):  # POP's own set only (test_kv_sharing_layers_are_skipped_exactly: the exact skip)
            _native.lib().pop_llama_set_exact_prefill(ctx, False)
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


# nodes of a layer's attention (past its K/V) and FFN, and its output, as the builders name them
LAYER_WORK = ("Qcur", "kqv_out", "attn_out", "ffn_", "l_out")


def _layer_nodes(nodes, il):
    return {name.rsplit("-", 1)[0] for name in nodes if name.endswith(f"-{il}")}


@pytest.mark.parametrize("arch", ARCHES)
def test_pruned_graph_computes_only_the_skipped_layers_kv(arch_model, long_text, arch):
    """The graph nodes ggml's scheduler runs (seen through its eval callback): in a pruned ubatch a
    skipped layer computes what it stores (K and V, or a recurrent layer's states) and nothing of its
    attention, FFN or output; the boundary token's graph runs every layer."""
    llm = model(arch_model, arch)
    n_layer = llm.pop_metadata.n_layer
    skip = default_skip(n_layer)
    kinds = layer_kinds(model_pointer(llm))
    entries = prompt_entries(tokens(llm, long_text, 32))
    with logged_context(llm) as (ctx, log):
        set_skip(ctx, skip)
        decode(ctx, entries[:-1])
        pruned = log.take()
        decode(ctx, entries[-1:])
        boundary = log.take()
    for il in range(n_layer):
        ran, full = _layer_nodes(pruned, il), _layer_nodes(boundary, il)
        assert "l_out" in full, il
        if il not in skip:
            assert "l_out" in ran, il
            continue
        assert not [n for n in ran if n.startswith(LAYER_WORK)], (il, sorted(ran))
        if kinds[il]:  # it stores something, so something of it runs
            assert ran - {"pop_pass"}, il
        for name in ("Kcur", "Vcur"):
            if name in full and kinds[il] & _native.LAYER_KV:
                assert name in ran, (il, name)
        assert ran - {"pop_pass"} < full, il  # the pass-through copy of the input is the layer's output
    assert set(pruned.values()) == set(boundary.values()) == {"CPU"}


@pytest.mark.parametrize("arch", [a for a in ARCHES if a in ("gemma4", "gemma3n")])
def test_kv_sharing_layers_are_skipped_exactly(arch_model, long_text, arch):
    """Layers that reuse earlier layers' K/V store nothing: for tokens without outputs they are skipped
    with results identical to the full model (POP itself off), and none of their nodes runs."""
    llm = model(arch_model, arch)
    n_layer = llm.pop_metadata.n_layer
    kinds = layer_kinds(model_pointer(llm))
    shared = [il for il in range(n_layer) if kinds[il] == 0]
    assert shared and shared == list(range(shared[0], n_layer))
    entries = prompt_entries(tokens(llm, long_text, N_PROMPT))
    with contexts(llm, 2) as (exact, full):
        lib = _native.lib()
        for ctx in (exact, full):
            lib.pop_llama_set_enabled(ctx, False)
        lib.pop_llama_set_exact_prefill(full, False)
        arr = (ctypes.c_int32 * n_layer)()
        assert lib.pop_llama_get_exact_layers(exact, arr, n_layer) == len(shared) and list(arr[:len(shared)]) == shared
        got, want = decode(exact, entries)[len(entries) - 1], decode(full, entries)[len(entries) - 1]
        assert np.array_equal(got, want)
        assert cache_layers(exact) == cache_layers(full)
        assert stats(exact).pruned_tokens == len(entries) - 1 and stats(full).pruned_tokens == 0
    with logged_context(llm) as (ctx, log):
        _native.lib().pop_llama_set_enabled(ctx, False)
        decode(ctx, entries[:-1])
        pruned = log.take()
    for il in shared:
        assert _layer_nodes(pruned, il) <= {"pop_pass"}, il  # only the copy of its input passes through


@pytest.mark.parametrize("arch", ARCHES)
def test_chunked_and_two_sequence_batches_are_exact(arch_model, long_text, arch):
    """A prompt in 64-token ubatches stores exactly the pass-through reference cut the same way (no
    tolerance: the same kernels run on the same shapes), and two sequences in one batch give each
    sequence's logits alone."""
    llm = model(arch_model, arch)
    skip = default_skip(llm.pop_metadata.n_layer)
    # sliding-window models: longer than gemma3's 512-token window, with the small SWA cache (swa_full off;
    # the llama_cpp.Llama default is the full-size one), so sliding-window cells are reused mid-prompt
    n = 700 if any(k & _native.LAYER_SWA for k in layer_kinds(model_pointer(llm))) else N_PROMPT
    toks = tokens(llm, long_text, n)
    entries = prompt_entries(toks)
    chunked = {"n_batch": 1024, "n_ubatch": 64, "swa_full": False}
    want, want_logits = pass_through_reference(llm, entries, skip, **chunked)
    with contexts(llm, 1, **chunked) as (ctx,):
        set_skip(ctx, skip)
        got_logits = decode(ctx, entries)[n - 1]
        assert stats(ctx).pruned_tokens == n - 1 and stats(ctx).full_tokens == 1
        got = cache_layers(ctx)
    assert got == want
    assert np.array_equal(got_logits, want_logits)

    alone, batched = two_sequences(llm, toks[:150], toks[:1] + toks[150:290], skip)
    assert np.array_equal(batched[0], alone[0]) and np.array_equal(batched[1], alone[1])


@pytest.mark.parametrize("arch", ARCHES)
def test_embedding_contexts_run_full_and_match(arch_model, arch):
    """Embeddings need every token's output, so nothing is pruned: the vectors equal POP-off vectors."""
    path = arch_model(arch)
    n_layer = model(arch_model, arch).pop_metadata.n_layer
    text = "The lighthouse keeper kept two logbooks, one for the weather and one for herself."
    vecs = {}
    for on in (True, False):
        llm = load(path, embedding=True, n_ctx=256, pop=on,
                   kv_overrides={"pop.prefill.skip_layers": ",".join(map(str, default_skip(n_layer)))})
        try:
            vecs[on] = np.asarray(llm.embed(text))
            assert llm.pop_stats()["pruned_tokens"] == 0
        finally:
            llm.close()
    assert vecs[True].size > 0 and np.array_equal(vecs[True], vecs[False])


FITTED = [a.name for a in ARCHITECTURES if a.fitted_kv and a.name in SPECS]


@pytest.mark.parametrize("arch", FITTED)
def test_fitted_projections_replace_the_pruned_layers_own(tmp_path, long_text, arch):
    """A file's fitted K/V tensors (blk.N.attn_k.pop / attn_v.pop) are what a pruned layer projects with:
    fitted tensors equal to the layer's own weights store exactly the own K/V; the layer's K and V weights
    swapped store other K/V, in that layer only (tiny random-weight models)."""
    from gguf import GGUFReader

    from pop_local.converter.writer import write_pop_gguf

    src = tiny_model(arch, Dims(n_layer=6))
    skipped = 3  # an attention layer in every spec (qwen35's first full-attention layer)
    weights = {t.name: t for t in GGUFReader(src, "r").tensors}

    def fitted_file(name, swap):
        own = {kv: weights[f"blk.{skipped}.attn_{kv}.weight"] for kv in ("k", "v")}
        tensors = {f"blk.{skipped}.attn_{kv}.pop": (own[other].data, own[other].tensor_type)
                   for kv, other in ((("k", "v"), ("v", "k")) if swap else (("k", "k"), ("v", "v")))}
        return write_pop_gguf(src, tmp_path / name, [skipped], extra_tensors=tensors)

    caches = {}
    for name, swap in (("same.gguf", False), ("other.gguf", True)):
        llm = load(fitted_file(name, swap))
        try:
            toks = tokens(llm, long_text, N_PROMPT)
            assert llm.n_fitted_layers == 1 and llm.fitted_active
            with contexts(llm, 1) as (ctx,):
                decode(ctx, prompt_entries(toks))
                caches[name] = cache_layers(ctx)
            with contexts(llm, 1) as (ctx,):
                _native.lib().pop_llama_set_kv_mode(ctx, _native.KV_OWN)
                decode(ctx, prompt_entries(toks))
                caches["own"] = cache_layers(ctx)
        finally:
            llm.close()
    assert caches["same.gguf"] == caches["own"]
    other, own = caches["other.gguf"], caches["own"]
    assert all(other[il] == own[il] for il in own if il < skipped)
    assert other[skipped][0] != own[skipped][0] and other[skipped][1] != own[skipped][1]
