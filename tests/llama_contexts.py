"""Raw llama.cpp contexts for tests that drive llama_decode themselves (batches with chosen output
flags, several sequences) beside a PopLlama's own context."""

import contextlib
import ctypes

import numpy as np

import llama_cpp

from pop_local import _native


def context(llm, **params):
    """A new context on `llm`'s model with `llm`'s settings (flash attention, threads, ...), then `params`."""
    cp = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    for k, v in params.items():
        setattr(cp, k, v)
    ctx = llama_cpp.llama_init_from_model(llm._model.model, cp)
    assert ctx
    return ctx


@contextlib.contextmanager
def contexts(llm, n, **params):
    """`n` contexts made by context(), freed on exit."""
    made = []
    try:
        for _ in range(n):
            made.append(context(llm, **params))
        yield made
    finally:
        for ctx in made:
            llama_cpp.llama_free(ctx)


def decode(ctx, entries, n_seq_max=1):
    """One llama_decode of (token, pos, seq, output) entries; {batch index: logits} of the outputs."""
    batch = llama_cpp.llama_batch_init(len(entries), 0, n_seq_max)
    try:
        for i, (tok, pos, seq, out) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, out
            batch.seq_id[i][0] = seq
        batch.n_tokens = len(entries)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llama_cpp.llama_get_model(ctx)))
        return {i: np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,)).copy()
                for i, e in enumerate(entries) if e[3]}
    finally:
        llama_cpp.llama_batch_free(batch)


def stats(ctx):
    s = _native.PopStats()
    _native.lib().pop_llama_get_stats(ctx, ctypes.byref(s))
    return s


def set_skip(ctx, layers):
    arr = (ctypes.c_int32 * max(1, len(layers)))(*layers)
    assert _native.lib().pop_llama_set_skip_layers(ctx, arr, len(layers)) == 0


def full_cut_like_pop(ctx, entries):
    """The full model on `ctx`, with the batch cut the way POP cuts it (the prompt without outputs,
    then its last token alone); the last token's logits."""
    _native.lib().pop_llama_set_enabled(ctx, False)
    decode(ctx, entries[:-1])
    return decode(ctx, entries[-1:])[0]
