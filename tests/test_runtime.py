"""The native POP runtime on the real SmolLM2-135M-Instruct model (llama architecture, 30 layers)."""

import ctypes
import os

import llama_cpp
import numpy as np
import pytest

from helpers.llama_contexts import context, decode, stats as pop_stats_of
from pop_local import PopLlama, PopMetadataError
from pop_local.runtime import native as _native
from pop_local.runtime.upstream import context_pointer

pytestmark = pytest.mark.slow

SKIP = "20-29"
SKIP_TUPLE = tuple(range(20, 30))


def make(path, **kw):
    kw.setdefault("n_ctx", 4096)
    kw.setdefault("n_batch", 512)
    kw.setdefault("n_ubatch", 512)
    kw.setdefault("verbose", False)
    kw.setdefault("seed", 1)
    kw.setdefault("min_tokens", 0)  # these tests check pruning itself, on prompts of every length
    return PopLlama(path, **kw)


def final_logits(llm, tokens):
    """Logits of the last prompt token after a fresh prefill of `tokens`."""
    llm.reset()
    llm.eval(tokens)
    return last_logits(llm)


def full_logits(llm, tokens):
    """final_logits with POP switched off for this one prompt (the previous switch is restored)."""
    was = llm.pop_enabled
    llm.pop_enabled = False
    try:
        return final_logits(llm, tokens)
    finally:
        llm.pop_enabled = was


def last_logits(llm):
    ptr = llama_cpp.llama_get_logits_ith(context_pointer(llm), -1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()


def prompt_tokens(llm, text, n):
    toks = llm.tokenize(text.encode(), add_bos=True)
    while len(toks) < n:
        toks += toks[1:]
    return toks[:n]


@pytest.fixture(scope="module")
def pop_llm(smollm2):
    """SmolLM2 with layers 20-29 skipped in prefill, set through kv_overrides (the file has no POP keys)."""
    return make(smollm2, kv_overrides={"pop.prefill.skip_layers": SKIP})


@pytest.fixture(scope="module")
def prompt512(pop_llm, long_text):
    return prompt_tokens(pop_llm, long_text, 512)


def test_overrides_reach_the_runtime(pop_llm):
    assert pop_llm.pop_supported
    assert pop_llm.skip_layers == SKIP_TUPLE
    assert pop_llm.pop_enabled and pop_llm.pop_active


def test_decode_threads_default_to_the_physical_cores(pop_llm):
    """llama.cpp's own tools' default; llama-cpp-python's (half the logical CPUs) would be one thread on a
    2-core machine without hyperthreads. The context was made with it (llama.cpp reports it back)."""
    from pop_local.runtime.devices import physical_cores

    cores = physical_cores()
    assert cores is not None and 1 <= cores <= len(os.sched_getaffinity(0))  # Linux, where the tests run
    assert pop_llm.n_threads == cores == llama_cpp.llama_n_threads(context_pointer(pop_llm))


def test_counters_show_pruned_prompt(pop_llm, prompt512):
    pop_llm.reset_pop_stats()
    final_logits(pop_llm, prompt512)
    s = pop_llm.pop_stats()
    assert s["pruned_tokens"] == 511 and s["full_tokens"] == 1
    assert s["last_prefill_tokens"] == 512 and s["last_prefill_ms"] > 0


def test_pop_changes_logits_but_not_the_shape_of_the_answer(pop_llm, prompt512):
    pruned = final_logits(pop_llm, prompt512)
    full = full_logits(pop_llm, prompt512)
    assert not np.array_equal(pruned, full), "POP on and off gave identical logits: nothing was skipped"
    # same argmax at the boundary: the last token ran at full depth over a slightly different cache
    assert int(np.argmax(pruned)) == int(np.argmax(full))


def test_empty_skip_set_is_identical_to_pop_off(smollm2, prompt512):
    llm = make(smollm2)  # the plain file: no skip set
    assert llm.skip_layers == () and not llm.pop_active
    off = full_logits(llm, prompt512)
    on = final_logits(llm, prompt512)
    assert np.array_equal(on, off)
    assert llm.pop_stats()["pruned_tokens"] == 0


def test_disabled_through_kv_overrides_is_identical_to_pop_off(smollm2, pop_llm, prompt512):
    llm = make(smollm2, kv_overrides={"pop.prefill.skip_layers": SKIP, "pop.prefill.enabled": False})
    assert llm.skip_layers == SKIP_TUPLE and not llm.pop_enabled
    disabled = final_logits(llm, prompt512)
    assert np.array_equal(disabled, full_logits(pop_llm, prompt512))
    assert llm.pop_stats()["pruned_tokens"] == 0


def test_one_token_prompt_runs_full(pop_llm):
    tok = [pop_llm.token_bos()]
    pop_llm.reset_pop_stats()
    on = final_logits(pop_llm, tok)
    off = full_logits(pop_llm, tok)
    assert np.array_equal(on, off)
    assert pop_llm.pop_stats()["pruned_tokens"] == 0


def greedy(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        tok = int(np.argmax(last_logits(llm)))
        out.append(tok)
        llm.eval([tok])
    return out


def test_greedy_continuation_stays_close(pop_llm, prompt512):
    """Teacher-forced top-1 agreement with the full model over a 64-token greedy continuation."""
    pop_llm.pop_enabled = False
    reference = greedy(pop_llm, prompt512, 64)
    pop_llm.pop_enabled = True
    pop_llm.reset()
    pop_llm.eval(prompt512)
    agree = 0
    for tok in reference:
        agree += int(np.argmax(last_logits(pop_llm))) == tok
        pop_llm.eval([tok])  # decode steps run the full graph
    agreement = agree / len(reference)
    print(f"top-1 agreement POP vs full, 512-token prompt, 64 steps: {agreement:.3f}")
    assert agreement >= 0.75


def test_chunked_prompt_matches_single_pass(smollm2, pop_llm, prompt512):
    single = final_logits(pop_llm, prompt512)
    # llama_decode cuts into ubatches of 64; PopLlama.eval cuts into n_batch chunks of 128
    for n_batch, n_ubatch in ((512, 64), (128, 128), (128, 32)):
        llm = make(smollm2, kv_overrides={"pop.prefill.skip_layers": SKIP}, n_batch=n_batch, n_ubatch=n_ubatch)
        llm.reset_pop_stats()
        chunked = final_logits(llm, prompt512)
        assert llm.pop_stats()["pruned_tokens"] == 511 and llm.pop_stats()["full_tokens"] == 1
        np.testing.assert_allclose(chunked, single, atol=2e-3, rtol=0, err_msg=f"n_batch={n_batch} n_ubatch={n_ubatch}")


def _context(llm, **params):
    return context(llm, **{"n_batch": 2048, **params})


@pytest.mark.parametrize("kv_unified", [True, False])
def test_two_sequences_in_one_batch(pop_llm, prompt512, kv_unified):
    """Two prompts in one llama_decode == each prompt in its own POP decode, in the same cache layout.

    (A unified cache places the second sequence after the first; upstream llama.cpp's own logits
    already depend on that placement, so the reference uses the same cells.)
    """
    a = prompt512[:300]
    b = prompt512[:1] + prompt512[200:420]
    entries_a = [(t, p, 0, p == len(a) - 1) for p, t in enumerate(a)]
    entries_b = [(t, p, 1, p == len(b) - 1) for p, t in enumerate(b)]
    ref, ctx = _context(pop_llm, n_seq_max=2, kv_unified=kv_unified), None
    try:
        ref_a = decode(ref, entries_a, n_seq_max=2)[len(a) - 1]
        ref_b = decode(ref, entries_b, n_seq_max=2)[len(b) - 1]
        ctx = _context(pop_llm, n_seq_max=2, kv_unified=kv_unified)
        out = decode(ctx, entries_a + entries_b, n_seq_max=2)
        stats = pop_stats_of(ctx)
        assert stats.pruned_tokens == len(a) + len(b) - 2 and stats.full_tokens == 2
        assert np.array_equal(out[len(a) - 1], ref_a)
        assert np.array_equal(out[len(a) + len(b) - 1], ref_b)
        if not kv_unified:  # one stream per sequence: the same cells as a PopLlama run
            np.testing.assert_allclose(ref_b, final_logits(pop_llm, b), atol=2e-3, rtol=0)
    finally:
        for c in (ref, ctx):
            if c:
                llama_cpp.llama_free(c)


def test_second_turn_matches_single_pass_with_mid_batch_output(pop_llm, prompt512):
    """Turn 1 then turn 2 on the same cache == one batch with outputs at the end of each turn."""
    turn1, turn2 = prompt512[:300], prompt512[300:]
    pop_llm.reset()
    pop_llm.eval(turn1)
    first = last_logits(pop_llm)
    pop_llm.eval(turn2)  # appended to the existing cache, like a second chat turn
    second = last_logits(pop_llm)

    ctx = _context(pop_llm)
    try:
        entries = [(t, p, 0, p in (len(turn1) - 1, len(prompt512) - 1)) for p, t in enumerate(prompt512)]
        out = decode(ctx, entries)
        stats = pop_stats_of(ctx)
        assert stats.full_tokens == 2 and stats.pruned_tokens == len(prompt512) - 2
        np.testing.assert_allclose(out[len(turn1) - 1], first, atol=2e-3, rtol=0)
        np.testing.assert_allclose(out[len(prompt512) - 1], second, atol=2e-3, rtol=0)
    finally:
        llama_cpp.llama_free(ctx)


def test_graph_reuse_never_mixes_pruned_and_full(pop_llm, prompt512):
    """Alternating POP on/off with identical shapes reproduces each mode exactly, decode steps included."""
    runs = {}
    for on in (True, False, True, False):
        pop_llm.pop_enabled = on
        runs.setdefault(on, []).append(greedy(pop_llm, prompt512[:200], 4) + [final_logits(pop_llm, prompt512[:200])])
    pop_llm.pop_enabled = True
    for _on, (first, again) in runs.items():
        assert first[:4] == again[:4]
        assert np.array_equal(first[4], again[4])
    assert not np.array_equal(runs[True][0][4], runs[False][0][4])


def test_runtime_skip_set_changes(pop_llm, prompt512):
    try:
        pop_llm.skip_layers = [25, 26, 27, 28, 29]
        assert pop_llm.skip_layers == (25, 26, 27, 28, 29)
        five = final_logits(pop_llm, prompt512)
        pop_llm.skip_layers = "20-29"
        ten = final_logits(pop_llm, prompt512)
        pop_llm.skip_layers = []
        none = final_logits(pop_llm, prompt512)
        assert not pop_llm.pop_active
        assert not np.array_equal(five, ten) and not np.array_equal(five, none)
    finally:
        pop_llm.skip_layers = SKIP_TUPLE


@pytest.mark.parametrize("layers, message", [
    ([30], "layer 30 is out of range"),
    ([-1], "layer -1 is out of range"),
    ([5, 3], "ascending"),
    ("20-x", "cannot read"),
])
def test_runtime_rejects_bad_layers(pop_llm, layers, message):
    with pytest.raises(PopMetadataError, match=message):
        pop_llm.skip_layers = layers
    assert pop_llm.skip_layers == SKIP_TUPLE


def test_c_api_rejects_out_of_range_without_change(pop_llm):
    lib = _native.lib()
    bad = (ctypes.c_int32 * 2)(3, 30)
    assert lib.pop_llama_set_skip_layers(context_pointer(pop_llm), bad, 2) == -1
    unordered = (ctypes.c_int32 * 2)(4, 3)
    assert lib.pop_llama_set_skip_layers(context_pointer(pop_llm), unordered, 2) == -1
    assert lib.pop_llama_set_stage_mode(context_pointer(pop_llm), 7) == -1
    assert pop_llm.skip_layers == SKIP_TUPLE


@pytest.mark.parametrize("overrides, message", [
    ({"pop.prefill.skip_layers": "25-35"}, r"pop\.prefill\.skip_layers: layer 35 is out of range"),
    ({"pop.prefill.skip_layers": "20-x"}, r"pop\.prefill\.skip_layers: cannot read"),
    ({"pop.prefill.skip_layers": "29-20"}, r"pop\.prefill\.skip_layers: range 29-20 is descending"),
    ({"pop.prefill.skip_layers": 20}, r"pop\.prefill\.skip_layers: the override must be a string"),
    ({"pop.prefill.enabled": "yes"}, r"pop\.prefill\.enabled: the override must be a bool"),
])
def test_bad_overrides_are_rejected_before_loading(smollm2, overrides, message):
    with pytest.raises(PopMetadataError, match=message):
        make(smollm2, kv_overrides=overrides)


def test_chat_completion_streaming_and_second_turn(pop_llm, long_text):
    """The llama_cpp.Llama surface works unchanged; each turn's new prompt tokens run pruned."""
    pop_llm.reset()
    pop_llm.reset_pop_stats()
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": long_text[:1500] + "\n\nWho kept two logbooks?"}]
    first = pop_llm.create_chat_completion(messages=messages, max_tokens=12, temperature=0.0)
    reply = first["choices"][0]["message"]["content"]
    assert reply.strip()
    after_first = pop_llm.pop_stats()
    assert after_first["pruned_tokens"] >= first["usage"]["prompt_tokens"] - 2
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And where did she live?"}]
    chunks = list(pop_llm.create_chat_completion(messages=messages, max_tokens=8, temperature=0.0, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text.strip()
    after_second = pop_llm.pop_stats()
    # the second turn reuses the cache and prunes only its new prompt tokens
    new_pruned = after_second["pruned_tokens"] - after_first["pruned_tokens"]
    assert 0 < new_pruned < first["usage"]["prompt_tokens"]


def test_embeddings_run_full(smollm2):
    llm = make(smollm2, embedding=True, n_ctx=512, kv_overrides={"pop.prefill.skip_layers": SKIP})
    vec = llm.embed("The lighthouse keeper kept two logbooks.")
    assert len(vec) == 576 or len(vec[0]) == 576
    assert llm.pop_stats()["pruned_tokens"] == 0


# --- the prompt-length minimum (pop.prefill.min_tokens) ------------------------------------------------

@pytest.mark.parametrize("n", [2, 64])
def test_min_tokens_boundary_n_minus_one_runs_full_and_n_prunes(pop_llm, prompt512, n):
    """An evaluation of min_tokens - 1 new tokens is exactly the full model; one of min_tokens prunes."""
    pop_llm.min_tokens = n
    try:
        for length, pruned in ((n - 1, False), (n, True)):
            toks = prompt512[:length]
            pop_llm.reset_pop_stats()
            got = final_logits(pop_llm, toks)
            s = pop_llm.pop_stats()
            want = full_logits(pop_llm, toks)
            if pruned:
                assert s["pruned_tokens"] == length - 1 and s["short_prompts"] == 0
                assert not np.array_equal(got, want)
            else:
                assert s["pruned_tokens"] == 0 and np.array_equal(got, want)
                assert s["short_prompts"] == (1 if length > 1 else 0)
    finally:
        pop_llm.min_tokens = 0
    assert pop_llm.pop_stats()["min_tokens"] == 0


def test_min_tokens_from_the_file_default_and_overrides(smollm2, tmp_path):
    from pop_local.converter.writer import write_pop_gguf
    from pop_local.format import keys

    with_key = str(tmp_path / "m.pop.gguf")
    write_pop_gguf(smollm2, with_key, "20-29", min_tokens=200)
    llm = PopLlama(with_key, n_ctx=256, verbose=False)
    assert llm.min_tokens == 200 and llm.pop_stats()["min_tokens"] == 200
    assert PopLlama(with_key, n_ctx=256, verbose=False, min_tokens=7).min_tokens == 7  # the argument wins
    over = PopLlama(with_key, n_ctx=256, verbose=False, kv_overrides={keys.MIN_TOKENS: 300})
    assert over.min_tokens == 300
    plain = PopLlama(smollm2, n_ctx=256, verbose=False, skip_layers="20-29")  # no key: the default
    assert plain.min_tokens == keys.DEFAULT_MIN_TOKENS
    # a chat turn under the minimum runs full; the statistics line says why
    from pop_local.apps.chat import ChatSession

    session = ChatSession(llm, max_tokens=4, temperature=0.0)
    "".join(session.reply("Hi"))
    assert session.last.pruned_tokens == 0 and session.last.short
    assert "under the 200-token minimum" in session.last.summary()


@pytest.mark.parametrize("value, message", [(-1, "from 0 to"), (1 << 25, "from 0 to"), ("12", "from 0 to"),
                                            (True, "from 0 to")])
def test_bad_min_tokens_are_rejected_naming_the_key(smollm2, value, message):
    from pop_local.errors import PopSettingError
    from pop_local.format import keys

    with pytest.raises(PopMetadataError, match=r"pop\.prefill\.min_tokens: .*" + message):
        make(smollm2, kv_overrides={keys.MIN_TOKENS: value})
    if type(value) is int:  # the argument is a pydantic int field: "12" and True convert, as for n_ctx
        with pytest.raises(PopSettingError, match="min_tokens"):
            make(smollm2, min_tokens=value)


# --- the full-depth tail (pop.prefill.full_tail) --------------------------------------------------------

def test_full_tail_runs_the_prompts_last_tokens_at_full_depth(pop_llm, prompt512):
    """full_tail N: the prompt's last N tokens run the full model after the pruned rest; a tail that covers
    the whole prompt is exactly the full model, a shorter one is not, and the cache label tells them apart."""
    pruned = final_logits(pop_llm, prompt512)
    try:
        pop_llm.full_tail = 64
        pop_llm.reset_pop_stats()
        tailed = final_logits(pop_llm, prompt512)
        s = pop_llm.pop_stats()
        assert s["pruned_tokens"] == 512 - 64 and s["full_tokens"] == 64 and s["full_tail"] == 64
        assert not np.array_equal(tailed, pruned)
        label = pop_llm._cache_label()
        pop_llm.full_tail = 512
        assert pop_llm._cache_label() != label and pop_llm.reusable_prefix() == 0
        assert np.array_equal(final_logits(pop_llm, prompt512), full_logits(pop_llm, prompt512))
        pop_llm.pop_enabled = False  # POP off: nothing pruned, the tail changes nothing
        pop_llm.reset_pop_stats()
        final_logits(pop_llm, prompt512)
        assert pop_llm.pop_stats()["pruned_tokens"] == 0 and pop_llm.pop_enabled is False
    finally:
        pop_llm.pop_enabled = True
        pop_llm.full_tail = 1
    assert np.array_equal(final_logits(pop_llm, prompt512), pruned)  # 1: the last token only, as before


def test_full_tail_from_the_file_the_argument_and_overrides(smollm2, tmp_path):
    from pop_local.converter.writer import write_pop_gguf
    from pop_local.errors import PopSettingError
    from pop_local.format import keys

    with_key = str(tmp_path / "tail.pop.gguf")
    write_pop_gguf(smollm2, with_key, "20-29", extra={keys.FULL_TAIL: 48})
    assert PopLlama(with_key, n_ctx=256, verbose=False).full_tail == 48
    assert PopLlama(with_key, n_ctx=256, verbose=False, full_tail=8).full_tail == 8  # the argument wins
    assert PopLlama(with_key, n_ctx=256, verbose=False, kv_overrides={keys.FULL_TAIL: 96}).full_tail == 96
    assert make(smollm2).full_tail == keys.DEFAULT_FULL_TAIL
    with pytest.raises(PopMetadataError, match=r"pop\.prefill\.full_tail: .*from 0 to"):
        make(smollm2, kv_overrides={keys.FULL_TAIL: -3})
    with pytest.raises(PopSettingError, match="full_tail"):
        make(smollm2, full_tail=-1)


def test_evaluations_are_weighed_and_labelled_as_a_fresh_run(pop_llm, prompt512):
    """The prompt minimum weighs the whole prompt, a cached prefix included, and positions that ran at
    full depth (an output, a prompt under the minimum) are reused by no later request: each prompt then
    computes what a fresh run of it would."""
    pop_llm.min_tokens = 100
    try:
        pop_llm.reset()
        short = pop_llm.pop_stats()["short_prompts"]
        pop_llm.eval(prompt512[:300])  # pruned but its last token, an output
        pop_llm.eval(prompt512[300:340])  # 40 new tokens of a 340-token prompt: pruned too
        assert pop_llm.pop_stats()["short_prompts"] == short
        assert pop_llm.reusable_prefix() == 299  # up to the first prompt's output, which ran full
        pop_llm.min_tokens = 50  # other settings: the positions the old minimum computed are not reused
        assert pop_llm.reusable_prefix() == 0
        pop_llm.reset()
        pop_llm.eval(prompt512[:40])  # under the minimum: the full model, reused by no pruned request
        assert pop_llm.pop_stats()["short_prompts"] == short + 1 and pop_llm.reusable_prefix() == 0
    finally:
        pop_llm.min_tokens = 0
        pop_llm.reset()
