"""Raw llama.cpp contexts for tests that drive llama_decode themselves (batches with chosen output
flags, several sequences) beside a PopLlama's own context."""

import contextlib
import ctypes
import struct

import llama_cpp
import numpy as np

from pop_local.runtime import native as _native
from pop_local.runtime.upstream import model_pointer


def context(llm, **params):
    """A new context on `llm`'s model with `llm`'s settings (flash attention, threads, ...), then `params`."""
    cp = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    for k, v in params.items():
        setattr(cp, k, v)
    ctx = llama_cpp.llama_init_from_model(model_pointer(llm), cp)
    assert ctx
    return ctx


class NodeLog:
    """Where the graph nodes of a context ran: ggml's scheduler calls `callback` with every node of
    every split before computing it (ask=true); answering false asks for nothing, so the schedule and
    the backends' kernels stay exactly as without the callback. `nodes` collects (name, buffer name)."""

    def __init__(self):
        from pop_local.runtime.devices import tensor_placement

        self.nodes = []

        def seen(tensor, ask, _user_data):
            if ask:
                self.nodes.append(tensor_placement(tensor))
            return False

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(seen)  # kept alive with the log

    def take(self):
        """{node name: buffer name} of what ran since the last take()."""
        got, self.nodes = dict(self.nodes), []
        return got


@contextlib.contextmanager
def logged_context(llm, **params):
    """A context made by context() whose scheduler reports every node to a NodeLog: (ctx, log)."""
    log = NodeLog()
    ctx = context(llm, cb_eval=log.callback, cb_eval_user_data=None, **params)
    try:
        yield ctx, log
    finally:
        llama_cpp.llama_free(ctx)


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
    """The full model on `ctx` (POP and the exact KV-sharing skip off), with the batch cut the way POP
    cuts it (the prompt without outputs, then its last token alone); the last token's logits."""
    _native.lib().pop_llama_set_enabled(ctx, False)
    _native.lib().pop_llama_set_exact_prefill(ctx, False)  # KV-sharing models: their exact skip off too
    decode(ctx, entries[:-1])
    return decode(ctx, entries[-1:])[0]


class PassThrough:
    """The exact reference for POP's cache: a scheduler callback that makes the full model pass each
    layer of `skip` through while `active` (the prompt's tokens without outputs): when the node named
    "l_out-L" (the layer's output, which every builder on the list names after its residual adds) has
    been computed, its bytes are overwritten with the layer's input ("l_out-(L-1)", saved when it was
    computed). Everything else of the layer runs as in the full model, so its K/V (or recurrent states)
    come from the same input. POP's pruned graph must store exactly what this stores, byte for byte.

    ggml's scheduler computes the nodes up to the one a callback asked for, calls it with the data, and
    only then goes on (ggml_backend_sched_compute_splits), so the overwrite is what later nodes read.
    The skipped layers' own output rows are selected for outputs on the last layer (0 rows here)."""

    def __init__(self, skip):
        from pop_local.runtime.upstream import _load_beside_llama

        self.skip, self.active = set(skip), True
        self.saved, self.replaced = {}, []
        assert 0 not in self.skip, "layer 0's input is the embeddings, not a named l_out"
        base = ctypes.CDLL(_load_beside_llama("ggml-base")._name)  # own prototypes, not the product's
        for name, restype in (("ggml_get_name", ctypes.c_char_p), ("ggml_nbytes", ctypes.c_size_t),
                              ("ggml_is_contiguous", ctypes.c_bool)):
            fn = getattr(base, name)
            fn.restype, fn.argtypes = restype, [ctypes.c_void_p]
        for name in ("ggml_backend_tensor_get", "ggml_backend_tensor_set"):  # any backend's buffer
            fn = getattr(base, name)
            fn.restype, fn.argtypes = None, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]

        def seen(tensor, ask, _user_data):
            name = (base.ggml_get_name(tensor) or b"").decode()
            if not (self.active and name.startswith("l_out-")):
                return False
            if ask:
                return True
            il = int(name[len("l_out-"):])
            size = base.ggml_nbytes(tensor)
            if il in self.skip:
                self.replaced.append(il)
                if size:
                    assert base.ggml_is_contiguous(tensor) and ctypes.sizeof(self.saved[il - 1]) == size, (il, size)
                    base.ggml_backend_tensor_set(tensor, self.saved[il - 1], 0, size)
            if il + 1 in self.skip:
                buf = ctypes.create_string_buffer(size)
                base.ggml_backend_tensor_get(tensor, buf, 0, size)
                self.saved[il] = buf
            return True

        self.callback = llama_cpp.ggml_backend_sched_eval_callback(seen)  # kept alive with the object


def pass_through_reference(llm, entries, skip, **params):
    """(cache_layers, last-token logits) of the full model on a new context (context(llm, **params)) cut
    the way POP cuts the prompt (full_cut_like_pop), with the layers of `skip` passing their input
    through for the tokens without outputs (PassThrough) and the last token at full depth."""
    ref = PassThrough(skip)
    ctx = context(llm, cb_eval=ref.callback, cb_eval_user_data=None, **params)
    try:
        _native.lib().pop_llama_set_enabled(ctx, False)
        _native.lib().pop_llama_set_exact_prefill(ctx, False)
        decode(ctx, entries[:-1])
        assert set(ref.replaced) == set(skip), "a skipped layer's output was never seen"
        ref.active = False
        logits = decode(ctx, entries[-1:])[0]
        return cache_layers(ctx), logits
    finally:
        llama_cpp.llama_free(ctx)


def default_skip(n_layer):
    return list(range(n_layer - round(n_layer / 3), n_layer))


def tokens(llm, text, n):
    toks = llm.tokenize(text.encode(), add_bos=True)
    while len(toks) < n:
        toks += toks[1:]
    return toks[:n]


def prompt_entries(toks, seq=0):
    """(token, pos, seq, output) entries of one prompt with an output at its last token."""
    return [(t, p, seq, p == len(toks) - 1) for p, t in enumerate(toks)]


# --- reading the KV cache back ------------------------------------------------------------------

class _Reader:
    def __init__(self, data):
        self.data, self.off = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.off)
        self.off += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def raw(self, n):
        b = self.data[self.off:self.off + n]
        self.off += n
        return b


def layer_kinds(model):
    """pop_llama_layer_kind of every layer of a llama_model pointer: what the layer keeps between steps."""
    lib = _native.lib()
    return [lib.pop_llama_layer_kind(model, il) for il in range(llama_cpp.llama_model_n_layer(model))]


def _read_kv_cache(r, layers, kinds):
    """One llama_kv_cache::state_write: per stream the cells, then per cache layer K rows, then V."""
    out = {}
    for _stream in range(r.take("I")):
        cells = r.take("I")
        if cells == 0:
            continue
        ext = any(kinds[il] & _native.LAYER_CELL_EXT for il in layers)
        for _ in range(cells):
            _pos, n_seq = r.take("iI")
            if ext:
                r.raw(12)  # llama_kv_cell_ext: x, y, tok
            r.raw(4 * n_seq)
        v_trans, n = r.take("II")
        assert n == len(layers), (n, layers)
        ks = []
        for _ in range(n):
            _type, row = r.take("iQ")
            ks.append(r.raw(row * cells))
        vs = []
        for il in layers:
            if kinds[il] & _native.LAYER_K_ONLY:
                vs.append(b"")
            elif v_trans:
                _type, el, n_embd_v = r.take("iII")
                vs.append(r.raw(el * n_embd_v * cells))
            else:
                _type, row = r.take("iQ")
                vs.append(r.raw(row * cells))
        for il, k, v in zip(layers, ks, vs):
            out[il] = (k, v)
    return out


def _read_recurrent(r, layers):
    """llama_memory_recurrent::state_write: the cells, then the conv (R) states of the recurrent layers,
    then their SSM / delta-net (S) states."""
    cells = r.take("I")
    for _ in range(cells):
        _pos, n_seq = r.take("iI")
        r.raw(4 * n_seq)
    _s_trans, _n_layer = r.take("II")
    rs = []
    for _ in layers:
        _type, row = r.take("iQ")
        rs.append(r.raw(row * cells))
    ss = []
    for _ in layers:
        _type, row = r.take("iQ")
        ss.append(r.raw(row * cells))
    return {il: (rr, sr) for il, rr, sr in zip(layers, rs, ss)}


def cache_layers(ctx, seq=0):
    """{model layer: (K bytes, V bytes)} of one sequence -- (conv state, recurrent state) for a recurrent
    layer -- from llama.cpp's own state serialisation (a magic and the sequence id, then the memory's
    state_write). A layer that stores nothing of its own (KV sharing) has no entry. Sliding-window models
    have two caches, written base (global layers) first, then SWA; hybrid models write the attention
    cache, then the recurrent states. Which layer is where comes from pop_llama_layer_kind."""
    kinds = layer_kinds(llama_cpp.llama_get_model(ctx))
    size = llama_cpp.llama_state_seq_get_size(ctx, seq)
    buf = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, seq)
    r = _Reader(bytes(buf[:written]))
    assert r.take("I") == 0xAF143CD8 and r.take("i") == seq  # llama_context::state_seq_get_data's header
    kv = [il for il, k in enumerate(kinds) if k & _native.LAYER_KV]
    base = [il for il in kv if not kinds[il] & _native.LAYER_SWA]
    swa = [il for il in kv if kinds[il] & _native.LAYER_SWA]
    recurrent = [il for il, k in enumerate(kinds) if k & _native.LAYER_RECURRENT]
    out = {}
    if swa:
        out.update(_read_kv_cache(r, base, kinds))
        out.update(_read_kv_cache(r, swa, kinds))
    elif kv:
        out.update(_read_kv_cache(r, kv, kinds))
    if recurrent:
        out.update(_read_recurrent(r, recurrent))
    assert r.off == len(r.data), "state not read to its end"
    return out


def chunked_and_single(llm, entries, skip):
    """The last prompt token's logits with POP on `skip` (empty: the full model): (one 1024-token ubatch,
    64-token ubatches), with the sliding-window cache at its small size (swa_full off), so a long prompt
    reuses cells."""
    n = len(entries)
    with contexts(llm, 1, n_batch=1024, n_ubatch=1024, swa_full=False) as (single,), \
            contexts(llm, 1, n_batch=1024, n_ubatch=64, swa_full=False) as (chunked,):
        for ctx in (single, chunked):
            set_skip(ctx, skip)
            if not skip:  # the full model: KV-sharing models' exact skip off too
                _native.lib().pop_llama_set_exact_prefill(ctx, False)
        want = decode(single, entries)[n - 1]
        got = decode(chunked, entries)[n - 1]
        if skip:
            assert stats(chunked).pruned_tokens == n - 1 and stats(chunked).full_tokens == 1
        else:  # the full model, cut the same way
            assert stats(chunked).pruned_tokens == 0
    return want, got


def two_sequences(llm, a, b, skip):
    """Prompts `a` (sequence 0) and `b` (sequence 1) with POP on `skip` (empty: the full model), each alone
    and both in one batch (a cache stream per sequence): ((a alone, b alone), (a batched, b batched))
    last-token logits."""
    ea, eb = prompt_entries(a), prompt_entries(b, seq=1)
    with contexts(llm, 2, n_seq_max=2, kv_unified=False) as (ref, both):
        for ctx in (ref, both):
            set_skip(ctx, skip)
            if not skip:  # the full model: KV-sharing models' exact skip off too
                _native.lib().pop_llama_set_exact_prefill(ctx, False)
        alone = decode(ref, ea, 2)[len(a) - 1], decode(ref, eb, 2)[len(b) - 1]
        out = decode(both, ea + eb, 2)
        pruned = len(a) + len(b) - 2 if skip else 0
        assert stats(both).pruned_tokens == pruned and stats(both).full_tokens == len(a) + len(b) - pruned
    return alone, (out[len(a) - 1], out[len(a) + len(b) - 1])
