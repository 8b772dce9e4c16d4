"""Serving you can trust: outputs equal a fresh run after every settings change, /pop/stats never
touches a running request, and the server honours (or refuses) every load setting."""

import json
import threading
import time
import urllib.request

import pytest

from helpers.serve_process import serving
from pop_local import PopError, PopLlama
from pop_local.runtime.settings import LoadSettings, PopSettings

pytestmark = pytest.mark.slow

DOC_TOKENS = 600
MORE_TOKENS = 100
TURN_TOKENS = 256  # turn 1 of the two-turn comparisons


@pytest.fixture(scope="module")
def pop_model(smollm2, tmp_path_factory):
    from pop_local.converter.writer import write_pop_gguf

    path = tmp_path_factory.mktemp("serving") / "smollm2.pop.gguf"
    write_pop_gguf(smollm2, path, "20-29", min_tokens=0)  # short test prompts are pruned too
    return str(path)


@pytest.fixture(scope="module")
def llm(pop_model):
    model = PopLlama(pop_model, n_ctx=2048, n_batch=512, verbose=False, seed=0)
    yield model
    model.close()


@pytest.fixture(scope="module")
def document(llm, long_text):
    tokens = llm.tokenize(long_text.encode(), add_bos=True)
    assert len(tokens) > DOC_TOKENS + MORE_TOKENS
    return tokens[:DOC_TOKENS], tokens[:DOC_TOKENS + MORE_TOKENS]


def greedy(llm, prompt, n=24):
    return llm.create_completion(prompt, max_tokens=n, temperature=0.0, top_k=1)["choices"][0]["text"]


def evaluated(llm, before):
    now = llm.pop_stats()
    return (now["pruned_tokens"] + now["full_tokens"]) - (before["pruned_tokens"] + before["full_tokens"])


# --- 1. a cached prefix is reused only under the settings that computed it ------------------------

def test_pop_off_after_a_pop_prefill_equals_a_fresh_full_run(llm, document):
    doc, longer = document
    llm.pop_enabled = False
    llm.reset()
    fresh_full = greedy(llm, longer)

    llm.pop_enabled = True
    llm.reset()
    greedy(llm, doc, n=1)  # the document prefilled with POP
    llm.pop_enabled = False
    before = llm.pop_stats()
    after_switch = greedy(llm, longer)
    llm.pop_enabled = True
    assert evaluated(llm, before) >= len(longer)  # nothing computed under POP was reused
    assert after_switch == fresh_full


def test_same_settings_still_reuse_the_prefix(llm, document):
    doc, longer = document
    llm.reset()
    greedy(llm, doc, n=1)
    before = llm.pop_stats()
    greedy(llm, longer, n=4)
    # the 100 new tokens (the last cached one is replayed) and the generated ones, not the document
    assert evaluated(llm, before) <= MORE_TOKENS + 8


def test_a_skip_set_or_kv_mode_change_invalidates_the_prefix(llm, document):
    doc, longer = document
    llm.reset()
    greedy(llm, doc, n=1)
    llm.skip_layers = "22-29"
    try:
        before = llm.pop_stats()
        greedy(llm, longer, n=2)
        assert evaluated(llm, before) >= len(longer)
    finally:
        llm.skip_layers = "20-29"


def test_reuse_across_settings_is_an_explicit_option(pop_model, document):
    doc, longer = document
    model = PopLlama(pop_model, n_ctx=2048, verbose=False, reuse_cache_across_settings=True)
    try:
        greedy(model, doc, n=1)
        model.pop_enabled = False
        before = model.pop_stats()
        greedy(model, longer, n=2)
        assert evaluated(model, before) <= MORE_TOKENS + 4
    finally:
        model.close()


def test_saved_states_keep_their_settings(llm, document):
    doc, longer = document
    llm.reset()
    greedy(llm, doc, n=1)
    state = llm.save_state()
    llm.pop_enabled = False
    try:
        llm.load_state(state)
        assert llm.reusable_prefix() == 0
        llm.pop_enabled = True
        # all but the prompt's last token, which ran at full depth (a fresh run would prune it)
        assert llm.reusable_prefix() == llm.n_tokens - 1 >= DOC_TOKENS - 1
    finally:
        llm.pop_enabled = True


def test_integrations_sharing_a_model_each_get_a_fresh_run(pop_model, document, llm):
    from pop_local.integrations import _backend

    text = llm.detokenize(document[1][1:]).decode("utf-8", "ignore")
    settings = _backend.Target(pop_model, LoadSettings(n_ctx=2048))
    shared, _ = _backend.shared_model(settings)
    on, off = PopSettings(pop=True), PopSettings(pop=False)

    shared.reset()
    fresh_off = _backend.complete(settings, off, text, max_tokens=16, temperature=0.0)
    shared.reset()
    fresh_on = _backend.complete(settings, on, text, max_tokens=16, temperature=0.0)
    # alternate: each request finds the other setting's cache and must not use it
    after_on = _backend.complete(settings, off, text, max_tokens=16, temperature=0.0)
    after_off = _backend.complete(settings, on, text, max_tokens=16, temperature=0.0)
    assert after_on["content"] == fresh_off["content"] and after_on["pop"]["pruned_tokens"] == 0
    assert after_off["content"] == fresh_on["content"] and after_off["pop"]["pruned_tokens"] > DOC_TOKENS


# --- 1b. a reused prefix never differs from a fresh run ---------------------------------------------

def turn_two_against_a_fresh_run(model, prompt, more, n=16):
    """(turn 2's reply, a fresh run's reply, prompt tokens turn 2 evaluated, turn 2's length): turn 2 is
    turn 1's prompt, its reply (as the cache holds it) and `more`."""
    eos = model.token_eos()
    model.reset()
    model.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1, logit_bias={eos: -100})
    turn2 = list(model.input_ids[: model.n_tokens]) + list(more)  # the prompt and the reply fed back
    before = model.pop_stats()
    again = model.create_completion(turn2, max_tokens=n, temperature=0.0, top_k=1, logit_bias={eos: -100})
    prompt_evaluated = evaluated(model, before) - (n - 1)  # the last reply token is never evaluated
    model.reset()
    fresh = model.create_completion(turn2, max_tokens=n, temperature=0.0, top_k=1, logit_bias={eos: -100})
    return again["choices"][0]["text"], fresh["choices"][0]["text"], prompt_evaluated, len(turn2)


@pytest.fixture(scope="module")
def gemma4(arch_model):
    """A generated random-weight gemma4 (KV sharing: its last layers store no K/V and are skipped exactly)."""
    model = PopLlama(arch_model("gemma4"), skip_layers="2-4", min_tokens=0, n_ctx=1024, n_batch=512,
                     verbose=False, seed=0)
    yield model
    model.close()


@pytest.mark.parametrize("which", ["smollm2", "gemma4"])
def test_turn_two_equals_a_fresh_run(which, llm, gemma4, long_text):
    """The reply and the prompt's last token ran at full depth; a fresh run of turn 2 prunes them. So turn 2
    reuses turn 1's prompt but its last token, evaluates the rest again, and answers as a fresh run does."""
    model = llm if which == "smollm2" else gemma4
    toks = model.tokenize(long_text.encode())[:TURN_TOKENS + 64]
    again, fresh, prompt_evaluated, n = turn_two_against_a_fresh_run(model, toks[:TURN_TOKENS], toks[TURN_TOKENS:])
    assert again == fresh
    # reused: the first TURN_TOKENS - 1 (pruned as a fresh run prunes them); evaluated: the rest
    assert prompt_evaluated == n - (TURN_TOKENS - 1)


def test_a_prompt_under_the_minimum_is_weighed_as_a_fresh_run_weighs_it(pop_model, document):
    """The prompt minimum counts the whole prompt, a reused prefix included: a short follow-up after a long
    document is pruned as a fresh run of the whole prompt would be (not run at full depth for being short)."""
    doc = document[1]
    model = PopLlama(pop_model, n_ctx=1024, min_tokens=128, verbose=False, seed=0)
    try:
        again, fresh, _, _ = turn_two_against_a_fresh_run(model, doc[:TURN_TOKENS], doc[TURN_TOKENS:TURN_TOKENS + 40])
        assert again == fresh and model.pop_stats()["short_prompts"] == 0
        model.reset()
        greedy(model, doc[:60], n=2)  # a prompt under the minimum runs the full model and says so
        assert model.pop_stats()["short_prompts"] == 1
    finally:
        model.close()


def test_pop_off_stays_off_and_keeps_its_own_cache_on_a_kv_sharing_model(arch_model, long_text):
    """Gemma 4 runs its exact KV-sharing skip with POP off: a short prompt must not turn POP on, and a
    prefix computed with POP must not be reused after POP is turned off."""
    model = PopLlama(arch_model("gemma4"), skip_layers="2-4", min_tokens=64, pop=False, n_ctx=1024, n_batch=512,
                     verbose=False, seed=0)
    try:
        toks = model.tokenize(long_text.encode())
        doc, longer = toks[:DOC_TOKENS], toks[:DOC_TOKENS + MORE_TOKENS]
        assert model.pop_active  # the exact skip: POP's own set is off
        greedy(model, toks[:20], n=2)
        assert not model.pop_enabled and model.pop_stats()["short_prompts"] == 0
        model.reset()
        fresh_off = greedy(model, longer)
        model.pop_enabled = True
        model.reset()
        greedy(model, doc, n=1)
        model.pop_enabled = False
        before = model.pop_stats()
        after_switch = greedy(model, longer)
        assert evaluated(model, before) >= len(longer) and after_switch == fresh_off
    finally:
        model.close()


# --- 1c. options that would quietly turn POP into something else -------------------------------------

def lora_adapter(base, path, layer, rank=4):
    """A LoRA adapter GGUF for `base` (random A and B for blk.LAYER.attn_k), as llama.cpp's loader reads them."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(base, "r")
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    wk = next(t for t in reader.tensors if t.name == f"blk.{layer}.attn_k.weight")
    n_in, n_out = (int(x) for x in wk.shape[:2])
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    writer.add_tensor(f"blk.{layer}.attn_k.weight.lora_a", rng.normal(0, 0.02, (rank, n_in)).astype(np.float32))
    writer.add_tensor(f"blk.{layer}.attn_k.weight.lora_b", rng.normal(0, 0.02, (n_out, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_a_lora_adapter_with_fitted_kv_is_refused_with_what_to_do(smollm2, tmp_path):
    """Fitted K/V were fitted to the base weights: with an adapter they would replace its K/V in the
    pruned layers. Refused at load (and on a later switch), with the setting that works."""
    from gguf import GGUFReader

    from pop_local.converter.writer import write_pop_gguf
    from pop_local.errors import PopSettingError

    weights = {t.name: t for t in GGUFReader(smollm2, "r").tensors}
    own = {kv: weights[f"blk.29.attn_{kv}.weight"] for kv in ("k", "v")}
    fitted = write_pop_gguf(smollm2, tmp_path / "fitted.gguf", [29], extra_tensors={
        f"blk.29.attn_{kv}.pop": (own[kv].data, own[kv].tensor_type) for kv in ("k", "v")})
    adapter = lora_adapter(smollm2, tmp_path / "adapter.gguf", 29)
    with pytest.raises(PopSettingError, match='LoRA adapter.*kv_mode="own"'):
        PopLlama(str(fitted), lora_path=adapter, n_ctx=256, verbose=False)
    model = PopLlama(str(fitted), lora_path=adapter, kv_mode="own", n_ctx=256, verbose=False)
    try:
        assert model.kv_used == "own" and model.n_fitted_layers == 1
        with pytest.raises(PopSettingError, match="LoRA"):
            model.kv_mode = "fitted"
        assert greedy(model, "The capital of France is", n=2)
    finally:
        model.close()


def test_speculative_decoding_is_refused_while_pop_prunes(pop_model):
    """A draft model makes every prompt token an output, and outputs run at full depth: nothing would be pruned."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from pop_local.apps.server import create_pop_app
    from pop_local.errors import PopSettingError

    with pytest.raises(PopSettingError, match="draft_model.*pop=False"):
        PopLlama(pop_model, draft_model=LlamaPromptLookupDecoding(), n_ctx=256, verbose=False)
    with pytest.raises(PopError, match="draft_model"):
        create_pop_app(pop_model, LoadSettings(n_ctx=256), draft_model="prompt-lookup-decoding")
    PopLlama(pop_model, draft_model=LlamaPromptLookupDecoding(), pop=False, n_ctx=256, verbose=False).close()


# --- 2 and 3: the server ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(pop_model):
    with serving(pop_model, "--n-ctx", "2048") as (port, _):
        yield f"http://127.0.0.1:{port}"


def get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def stream_completion(base, prompt, max_tokens, eos):
    """(text chunks, finish_reason) of a streamed /v1/completions request that cannot stop early."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "logit_bias": {str(eos): -100}}).encode()
    req = urllib.request.Request(f"{base}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    chunks, finish = [], None
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[6:])["choices"][0]
            chunks.append(choice["text"])
            finish = choice.get("finish_reason") or finish
    return chunks, finish


def test_stats_during_a_stream_neither_cut_nor_delay_it(server, llm):
    eos = llm.token_eos()
    polls = []
    result = {}

    def run():
        result["out"] = stream_completion(server, "Once upon a time, in a small village by the sea,", 200, eos)

    worker = threading.Thread(target=run)
    worker.start()
    while worker.is_alive():
        start = time.perf_counter()
        stats = get_json(f"{server}/pop/stats")
        polls.append((time.perf_counter() - start, stats["full_tokens"]))
        time.sleep(0.2)
    worker.join()
    chunks, finish = result["out"]
    assert finish == "length" and len(chunks) >= 200  # (+1: the closing chunk)
    assert len(polls) >= 3
    assert max(t for t, _ in polls) < 2.0  # answered at once, not after the stream
    assert polls[-1][1] > polls[0][1]  # the snapshot moves while the stream runs


def test_a_second_request_queues_instead_of_cutting_the_stream(server, llm):
    eos = llm.token_eos()
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault(
        "out", stream_completion(server, "The three rules of the lighthouse were", 120, eos)))
    worker.start()
    time.sleep(1.0)
    other = json.dumps({"prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode()
    req = urllib.request.Request(f"{server}/v1/completions", data=other, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        assert json.loads(r.read())["choices"][0]["text"]
    worker.join()
    chunks, finish = result["out"]
    assert finish == "length" and len(chunks) >= 120


def test_server_honours_load_settings_it_did_not_copy_before(pop_model):
    from pop_local.apps.server import create_pop_app
    from pop_local.runtime.settings import LoadSettings

    # kv_overrides through the shared settings (turned into upstream's key=type:value strings), and an
    # upstream-only ModelSettings field (rope_freq_base) passed through
    load = LoadSettings(kv_overrides={"pop.prefill.skip_layers": "5-9", "pop.prefill.enabled": True}, n_ctx=512)
    app = create_pop_app(pop_model, load, rope_freq_base=20000.0)
    llm = app.state.pop_llm
    try:
        assert llm.skip_layers == tuple(range(5, 10)) and llm.pop_enabled
        assert llm.context_params.rope_freq_base == 20000.0 and llm.n_ctx() == 512
    finally:
        llm.close()


def test_server_refuses_a_setting_it_cannot_honour(pop_model):
    from pop_local.apps.server import create_pop_app

    with pytest.raises(PopError, match="logits_all"):
        create_pop_app(pop_model, logits_all=True)


def test_a_small_soak_loses_nothing_and_matches_solo_answers(pop_model):
    """The soak harness (run at scale by benchmarks/soak.py) at test size: 4 clients, 48 requests (streams
    dropped mid-way among them), /pop/stats polled throughout; every completed answer equals the same
    request run alone."""
    from helpers.soak import soak

    r = soak(pop_model, clients=4, requests=48, abandon=0.2, max_tokens=12, seed=1)
    assert r["failed"] == 0 and r["truncated"] == 0 and r["differ_from_alone"] == 0, r["examples"]
    assert r["stats_failures"] == 0 and r["stats_polls"] > 10
    assert r["abandoned"] > 0 and r["streaming"] > r["abandoned"] and r["completed"] == 48 - r["abandoned"]
