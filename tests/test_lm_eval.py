"""PopLocalLM, the lm-evaluation-harness model (`lm_eval --model pop-local`), on the real SmolLM2 model.

Two tiny offline tasks written for these tests (tests/data/lm_eval: multiple choice and generation,
over local jsonl files) run through lm_eval itself: with POP off every request's log-likelihood must
equal a plain llama-cpp-python evaluation of the same tokens, with POP on the setting must reach the
model (pruned tokens, other log-likelihoods), and the stock `lm_eval` command must find the model
through the startup hook install.sh puts in the virtual environment.

Every model here runs on one thread: the machine has two cores, and llama.cpp's spinning threads slow
down many times over when another process holds a core (thread counts do not change the results).
"""

import math
import os
import subprocess
import sys
import sysconfig

import lm_eval
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS_DIR = os.path.join(ROOT, "tests", "data", "lm_eval")
TASKS = ["pop_local_mc", "pop_local_gen"]
LOAD = "n_ctx=1024,n_threads=1"
POP_ON = "pop=True,skip_layers=20-29,min_tokens=0"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def offline():
    """No network, and the working directory the task files' data paths are relative to (lm_eval 0.4.13
    passes data_files to datasets.load_dataset as written)."""
    with pytest.MonkeyPatch.context() as mp:
        for k, v in OFFLINE.items():
            mp.setenv(k, v)
        mp.chdir(ROOT)
        yield


def _evaluate(model, model_args=None):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, bootstrap_iters=0,
                                   task_manager=TaskManager(include_path=TASKS_DIR, include_defaults=False))


def _loglikelihoods(results):
    """[((context, continuation), (log-likelihood, is_greedy))] of every multiple-choice request."""
    out = []
    for sample in results["samples"]["pop_local_mc"]:
        for args, resp in zip(sample["arguments"], sample["resps"]):
            out.append((tuple(args), tuple(resp[0])))
    return out


def _generations(results):
    return [(s["arguments"][0][0], s["arguments"][0][1], s["resps"][0][0]) for s in results["samples"]["pop_local_gen"]]


@pytest.fixture(scope="module")
def pop_off(offline, smollm2):
    """Both tasks with POP off, by name and model_args string, as lm_eval's CLI does."""
    import pop_local.integrations.lm_eval  # noqa: F401 - registers "pop-local" (the startup hook does too)

    return _evaluate("pop-local", f"model={smollm2},pop=False,{LOAD}")


@pytest.fixture(scope="module")
def pop_on(offline, smollm2):
    """Both tasks with POP on (SmolLM2 has 30 layers: the last third pruned; min_tokens=0: these short
    contexts are pruned too), and the POP counters."""
    from pop_local.integrations.lm_eval import PopLocalLM

    lm = PopLocalLM.create_from_arg_string(f"model={smollm2},{POP_ON},{LOAD}")
    before = lm.llm.pop_stats()
    results = _evaluate(lm)
    return lm, results, before, lm.llm.pop_stats()


@pytest.fixture(scope="module")
def plain(smollm2):
    """An unpatched-behaviour llama_cpp.Llama with every token an output: the reference."""
    from pop_local.runtime.models import plain_llama

    llm = plain_llama(smollm2, logits_all=True, n_ctx=1024, n_batch=512, n_threads=1, n_threads_batch=1, verbose=False)
    yield llm
    llm.close()


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _plain_tokens(llm, context, continuation):
    """lm_eval's split, done here independently: trailing context spaces move to the continuation, whose
    tokens are those of context+continuation after the context's (BOS as the model adds it)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    tok = lambda s: llm.tokenize(s.encode(), add_bos=True, special=True)  # noqa: E731
    ctx = tok(context)
    return ctx, tok(context + continuation)[len(ctx):]


def _plain_score(llm, ctx, cont):
    """Context, then continuation, evaluated by plain llama-cpp-python; log-softmax rows of its scores."""
    llm.reset()
    llm.eval(ctx)
    llm.eval(cont[:-1])
    lp = _log_softmax(llm.scores[len(ctx) - 1: len(ctx) + len(cont) - 1])
    return float(lp[np.arange(len(cont)), cont].sum()), bool((lp.argmax(axis=-1) == np.asarray(cont)).all())


# --- fast: settings and the hook, no model --------------------------------------------------------

def test_model_args_take_every_settings_field_by_name():
    from pop_local.integrations.lm_eval import split_model_args
    from pop_local.runtime.settings import LoadFields, PopFields

    load, pop = split_model_args({"n_ctx": 2048, "n_threads": 1, "pop": True, "skip_layers": "20-29", "kv_mode": "own"})
    assert (load.n_ctx, load.n_threads, pop.pop, pop.skip_layers, pop.kv_mode) == (2048, 1, True,
                                                                                   tuple(range(20, 30)), "own")
    # lm_eval reads "25" as a number; a one-layer set is still a set
    assert split_model_args({"skip_layers": 25})[1].skip_layers == (25,)
    assert split_model_args({"skip_layers": ""})[1].skip_layers == ()
    assert split_model_args({"tensor_split": 1})[0].tensor_split == (1.0,)
    # every field, whatever the settings define now or later, passes through by its name
    defaults = {name: getattr(cls(), name) for cls in (LoadFields, PopFields) for name in cls.model_fields}
    load, pop = split_model_args(defaults)
    assert {**load.model_dump(), **pop.model_dump()} == {**LoadFields().model_dump(), **PopFields().model_dump()}


@pytest.mark.parametrize("args, field", [("n_ctx=abc", "n_ctx"), ("skip_layers=x", "skip_layers"),
                                         ("skip_layers=29-20", "skip_layers"), ("pop=maybe", "pop"),
                                         ("kv_mode=wide", "kv_mode"), ("no_such_arg=1", "no_such_arg")])
def test_a_bad_model_arg_is_an_error_naming_it(args, field):
    from pop_local.errors import PopSettingError
    from pop_local.integrations.lm_eval import PopLocalLM

    with pytest.raises(PopSettingError) as e:
        PopLocalLM.create_from_arg_string(args)  # lm_eval's own parsing; checked before any model loads
    assert e.value.field == field and str(e.value).startswith(f"{field}: ")


@pytest.mark.slow
def test_a_skip_set_the_model_lacks_is_an_error_naming_it(smollm2):
    from pop_local.errors import PopSettingError
    from pop_local.integrations.lm_eval import PopLocalLM

    with pytest.raises(PopSettingError) as e:
        PopLocalLM.create_from_arg_string(f"model={smollm2},skip_layers=28-30,{LOAD}")
    assert e.value.field == "skip_layers" and "out of range" in str(e.value)


def test_the_hook_registers_lazily_and_keeps_lm_evals_own_models():
    import lm_eval.api.registry as registry

    from pop_local.integrations import lm_eval_hook

    lm_eval_hook.register(registry)  # idempotent: already registered (by the hook or the adapter)
    assert "pop-local" in registry.model_registry and "hf" in registry.model_registry
    assert lm_eval_hook.TARGET == "pop_local.integrations.lm_eval:PopLocalLM"
    from pop_local.integrations.lm_eval import PopLocalLM

    assert registry.get_model("pop-local") is PopLocalLM


# --- on SmolLM2 --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pop_off_equals_plain_llama_cpp_request_by_request(pop_off, plain):
    requests = _loglikelihoods(pop_off)
    assert len(requests) == 40  # 10 questions x 4 choices
    diffs, correct = [], []
    for i in range(0, len(requests), 4):
        ours, ref = [], []
        for (context, continuation), (ll, greedy) in requests[i:i + 4]:
            ctx, cont = _plain_tokens(plain, context, continuation)
            ref_ll, ref_greedy = _plain_score(plain, ctx, cont)
            diffs.append(abs(ll - ref_ll))
            assert ll == ref_ll, (context, continuation, ll, ref_ll)  # bit-exact: same logits, same float64 sum
            assert greedy == ref_greedy
            ours.append(ll)
            ref.append(ref_ll)
        correct.append(int(np.argmax(ref)) == pop_off["samples"]["pop_local_mc"][i // 4]["target"])
    assert max(diffs) == 0.0
    assert pop_off["results"]["pop_local_mc"]["acc,none"] == pytest.approx(np.mean(correct), abs=0)
    print(f"\n40 requests, max |pop-local - plain| = {max(diffs)}; acc {np.mean(correct)}")
    # generation with POP off is plain greedy completion of the same prompt
    for context, gen_kwargs, text in _generations(pop_off):
        plain.reset()
        ref = plain.create_completion(context, max_tokens=gen_kwargs["max_gen_toks"], temperature=0.0,
                                      repeat_penalty=1.0, stop=gen_kwargs["until"])["choices"][0]["text"]
        assert text == ref, (context, text, ref)


@pytest.mark.slow
def test_pop_on_reaches_the_model_and_scores_as_pop_local_eval(pop_on, pop_off):
    from pop_local.measure.evaluate import continuation_logprobs

    lm, results, before, after = pop_on
    llm = lm.llm
    assert llm.pop_active and llm.skip_layers == tuple(range(20, 30)) and lm.pop.min_tokens == 0
    assert after["pruned_tokens"] - before["pruned_tokens"] > 0
    on, off = _loglikelihoods(results), _loglikelihoods(pop_off)
    assert [r for r, _ in on] == [r for r, _ in off]
    assert all(math.isfinite(ll) for _, (ll, _) in on)
    assert sum(a[0] != b[0] for (_, a), (_, b) in zip(on, off)) > 0  # the setting reached the model
    gens = _generations(results)
    assert len(gens) == 8 and all(isinstance(text, str) for _, _, text in gens)
    # the same semantics as `pop-local eval`: context prefilled with POP, continuation at full depth
    try:
        for (context, continuation), (ll, _) in on[:8]:
            ctx, cont = _plain_tokens(llm, context, continuation)
            lp = continuation_logprobs(llm, "pop", ctx, cont, llm.skip_layers)
            assert ll == float(lp[np.arange(len(cont)), cont].sum())
    finally:
        llm.apply_pop_settings(lm.pop)


@pytest.mark.slow
def test_without_a_model_the_pop_ready_default_runs_and_prunes(offline, long_text, default_model_start):
    from lm_eval.api.instance import Instance

    from pop_local.converter.default_model import model_meta
    from pop_local.integrations.lm_eval import PopLocalLM

    meta = model_meta(None)
    lm = PopLocalLM.create_from_arg_string(LOAD)  # no model: the embedded default, POP as the file says
    assert lm.model_path == meta.path and lm.llm.pop_active and lm.llm.skip_layers == meta.skip_layers
    before = lm.llm.pop_stats()["pruned_tokens"]
    context = long_text[:1200]  # some hundred tokens: longer than the file's min_tokens
    [(ll, _)] = lm.loglikelihood([Instance("loglikelihood", {}, (context, " the"), 0)], disable_tqdm=True)
    assert math.isfinite(ll) and lm.llm.pop_stats()["pruned_tokens"] > before


@pytest.mark.slow
def test_chat_template_is_the_models_own(pop_on):
    lm = pop_on[0]
    prompt = lm.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), prompt
    prefill = lm.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "He"}],
                                     add_generation_prompt=False)
    assert prefill.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHe"), prefill  # continued
    assert lm.chat_template(True) == lm.llm.metadata["tokenizer.chat_template"] and lm.tokenizer_name


@pytest.mark.slow
def test_rolling_loglikelihood_and_a_shared_context_are_exact(offline, smollm2, long_text):
    from lm_eval import utils as lm_utils
    from lm_eval.api.instance import Instance

    from pop_local.integrations.lm_eval import PopLocalLM
    from pop_local.runtime.models import plain_llama

    lm = PopLocalLM(model=smollm2, pop=False, n_ctx=64, n_threads=1)
    text = long_text[:600]
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    ref = plain_llama(smollm2, logits_all=True, n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
    try:
        tokens = ref.tokenize(text.encode(), add_bos=False, special=True)
        windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
            token_list=tokens, prefix_token=ref.token_bos(), max_seq_len=64, context_len=1)]
        assert len(windows) > 2 and sum(len(c) for _, c in windows) == len(tokens)
        assert rolling == sum(_plain_score(ref, ctx, cont)[0] for ctx, cont in windows)
        # two continuations after one context: the second reuses the first's prefill, exactly
        pairs = [("The lighthouse keeper", " climbed the stairs"), ("The lighthouse keeper", " slept"), ("", " Hello")]
        ours = lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)
        for (context, continuation), (ll, greedy) in zip(pairs, ours):
            ctx, cont = _plain_tokens(ref, context, continuation) if context else ([ref.token_bos()], ref.tokenize(
                continuation.encode(), add_bos=False, special=True))
            assert (ll, greedy) == _plain_score(ref, ctx, cont)
    finally:
        ref.close()


@pytest.mark.slow
def test_the_stock_lm_eval_command_finds_pop_local_through_the_startup_hook(smollm2, tmp_path):
    pth = os.path.join(sysconfig.get_paths()["purelib"], "pop_local_lm_eval.pth")
    if not os.path.isfile(pth):
        pytest.fail(f"{pth} is missing: run `bash install.sh` (it copies pop_local_lm_eval.pth into the "
                    "virtual environment's site-packages, so that the stock lm_eval command finds pop-local)")
    with open(pth) as installed, open(os.path.join(ROOT, "pop_local_lm_eval.pth")) as shipped:
        assert installed.read() == shipped.read(), f"{pth} is out of date: run `bash install.sh`"
    env = {**os.environ, **OFFLINE}
    # at startup the hook is in place and nothing heavy is imported
    probe = ("import sys; print(*[m in sys.modules for m in ('lm_eval', 'llama_cpp', 'torch', "
             "'pop_local.integrations.lm_eval_hook')])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["False", "False", "False", "True"], out
    # importing lm_eval's registry registers pop-local by name only; lm_eval's own models stay
    probe = ("import sys, lm_eval.api.registry as r; print('pop-local' in r.model_registry, 'hf' in r.model_registry, "
             "'pop_local.integrations.lm_eval' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "True", "False"], out

    script = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    command = [script] if os.path.isfile(script) else [sys.executable, "-m", "lm_eval"]
    run = subprocess.run(command + ["run", "--model", "pop-local", "--model_args",
                                    f"model={smollm2},{POP_ON},{LOAD}", "--tasks", ",".join(TASKS),
                                    "--include_path", TASKS_DIR, "--limit", "4", "--output_path", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    table = run.stdout
    assert "pop_local_mc" in table and "acc" in table and "pop_local_gen" in table and "exact_match" in table, table
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
