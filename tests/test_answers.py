"""Answer-level evaluation (pop_local.measure.answers, `pop-local eval --answers`) and its prompt sets."""

import json
import os
import subprocess
import sys

import pytest

from pop_local.errors import PopError
from pop_local.measure.answers import builtin_answer_set, first_difference, load_answer_set, token_f1

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metrics():
    assert token_f1("The capital is Paris.", "Paris is the capital") == 1.0
    assert token_f1("Paris", "Lyon") == 0.0
    assert 0 < token_f1("It opened in 1887 in the north", "1887") < 1
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_builtin_sets_are_well_formed_and_disjoint_from_calibration():
    from pop_local.converter.calibration_data import BUILTIN_PROMPTS

    items = builtin_answer_set()
    groups = {g: [i for i in items if i.group == g] for g in ("short", "long")}
    assert len(groups["short"]) >= 20 and len(groups["long"]) >= 8
    assert all(len(i.prompt.split()) < 60 for i in groups["short"])
    for item in groups["long"]:
        assert 900 <= len(item.prompt.split()) <= 1700, item.id
        assert item.answer and item.answer in item.prompt, item.id  # the answer is in the document
    prompts = {i.prompt for i in items}
    # no calibration passage or prompt reappears in the set
    for text in BUILTIN_PROMPTS:
        head = text[:80]
        assert not any(head in p for p in prompts)
    assert len({i.id for i in items}) == len(items)


@pytest.mark.parametrize("line, message", [
    ('{"prompt": ""}', "non-empty"),
    ('{"group": "medium", "prompt": "hi"}', "must be"),
    ("not json", "not JSON"),
    ('{"prompt": "hi", "answer": 3}', "answer"),
])
def test_bad_answer_files_fail_with_the_line(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(PopError, match=f"set.jsonl:2: .*{message}"):
        load_answer_set(str(path))


def _small_set(tmp_path, long_text):
    rows = [{"group": "short", "id": "s1", "prompt": "What is the capital of France?", "answer": "Paris"},
            {"group": "short", "id": "s2", "prompt": "Name a primary colour.", "answer": ""},
            {"group": "long", "id": "l1", "prompt": long_text[:5000] + "\n\nQuestion: Who kept two logbooks? "
                                                     "Answer briefly.", "answer": ""}]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_eval_answers_on_a_real_model(tmp_path, long_text, default_model_start):
    """`pop-local eval --answers` on the embedded default SmolLM2 file: with the default prompt minimum the
    short questions run the full model (identical replies); the long prompt runs pruned."""
    data = _small_set(tmp_path, long_text)
    out = tmp_path / "answers.json"
    run = subprocess.run([sys.executable, "-m", "pop_local", "eval", "--ctx", "", "--passkey", "", "--answers",
                          "--data", data, "--answer-tokens", "16", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| pop | short (2) | 1.00 |" in run.stdout
    result = json.loads(out.read_text())
    answers = result["answers"]
    assert result["commit"] and answers["min_tokens"] == 128
    assert answers["kv"] == "own"  # the embedded default has no fitted tensors (its kv_mode still reads "fitted")
    pop = answers["settings"]["pop"]
    assert pop["short"]["identical"] == 1.0 and pop["short"]["f1"] == 1.0
    assert answers["prompt_tokens"]["short"][-1] < 128 <= answers["prompt_tokens"]["long"][0]
    assert set(answers["replies"]["full"]) == {"s1", "s2", "l1"}
    assert 0.0 <= pop["long"]["f1"] <= 1.0 and pop["long"]["prompts"] == 1
    # with the minimum off the short questions are pruned too
    run = subprocess.run([sys.executable, "-m", "pop_local", "eval", "--ctx", "", "--passkey", "", "--answers",
                          "--data", data, "--answer-tokens", "16", "--pop-min-tokens", "0", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(out.read_text())["answers"]["min_tokens"] == 0


def test_eval_answers_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pop_local", "eval", "--ctx", "", "--passkey", "", "--answers",
                          "--data", str(bad)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "bad.jsonl:1: not JSON" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    run = subprocess.run([sys.executable, "-m", "pop_local", "eval", "--ctx", "", "--answers"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "--passkey" in run.stderr


def test_answer_found_matches_whole_words():
    from pop_local.measure.answers import answer_found

    assert answer_found("It opened in 1899, after the flood.", "1899")
    assert not answer_found("It opened in 18990.", "1899") and not answer_found("Gold is Au79", "Au")
    assert answer_found("The answer: an expired TLS certificate.", "an expired TLS certificate")
    assert not answer_found("anything", "")


def test_a_model_without_a_chat_template_is_asked_in_plain_text(gemma3, smollm2):
    """Gemma-3-270M's file has no chat template: in the [INST] format llama-cpp-python would guess, it
    replies nothing to a short question (every reply "identical" to the full model's empty one); asked in
    plain text it answers. SmolLM2's file has a template and keeps it."""
    from pop_local import PopLlama
    from pop_local.measure.answers import greedy_reply, has_chat_template

    for path, templated in ((gemma3, False), (smollm2, True)):
        llm = PopLlama(path, n_ctx=512, verbose=False, pop=False)
        try:
            assert has_chat_template(llm) == templated
            assert greedy_reply(llm, "What is the capital of France?", 8).strip()
        finally:
            llm.close()


def test_the_converters_check_asks_its_own_questions_of_each_kind(smollm2_tokens):
    """The answer check's documents take the kinds in turn (needles in prose, a needle among needles, a
    staff report); each asks up to four questions about different facts, the prompts identical up to
    the question (one cached document serves them all); each fills its length, states each answer in the
    document and not in the question, names the other asked values as distractors, and none is a suite item."""
    from pop_local.converter.answer_check import KINDS, check_document, check_items
    from pop_local.measure import docqa, needles

    documents = [check_document(smollm2_tokens, 512, d) for d in range(6)]
    assert [doc[0].id.split("-")[0] for doc in documents] == ["single", "needle", "docqa"] * 2 and len(KINDS) == 3
    for doc in documents:
        assert 2 <= len(doc) <= 4 or doc[0].kind == "role", doc[0].id  # a report about a post asks one
        documents_text = {item.prompt.rsplit("Question:", 1)[0] for item in doc}
        assert len(documents_text) == 1 and len({item.answer for item in doc}) == len(doc), doc[0].id
        for item in doc:
            document, question = item.prompt.rsplit("Question:", 1)
            assert item.answer in document and item.answer not in question, item.id
            assert 350 < smollm2_tokens(item.prompt) <= 512, item.id
            if item.kind in ("single", "needle"):  # every other record's number is a distractor
                assert {o.answer for o in doc} - {item.answer} <= set(item.distractors), item.id
    items = [item for doc in documents for item in doc]
    suite = (docqa.make_items(0, 512, 3, smollm2_tokens) + needles.make_items(0, 512, 3, smollm2_tokens)
             + [needles.make_single_item(0, 512, i, smollm2_tokens) for i in range(3)])  # pop_needle's
    assert not {i.prompt for i in items} & {i.prompt for i in suite}
    assert check_items(smollm2_tokens, 512, 6) == items  # the same questions in every conversion


def test_a_documents_first_question_is_the_single_question_item(smollm2_tokens):
    """The suite's document questions and the single-needle items stay what they were: a document's
    first question is make_item's item, whatever the number of questions."""
    from pop_local.measure import docqa, needles

    count = smollm2_tokens
    for index in range(3):
        assert docqa.make_document(0, 512, index, count, 4)[0] == docqa.make_item(0, 512, index, count)
        assert needles.make_document(0, 512, index, count, 4)[0] == needles.make_item(0, 512, index, count)
        single = needles.make_single_document(0, 512, index, smollm2_tokens, 1)
        assert single == [needles.make_single_item(0, 512, index, smollm2_tokens)] and not single[0].distractors


@pytest.mark.slow
def test_the_answer_check_pairs_candidates_with_the_full_model_and_stops_early(smollm2):
    """The check adds whole documents until the full model has answered its target; a candidate that skips
    nothing (POP on, empty set) answers as the full model: every item the full model answers is answered,
    nothing lost, the interval [0, 0], so it keeps the answers; a set that skips almost every layer loses
    the first question the full model answers and stops there, unless asked to go on."""
    from pop_local import read_pop_metadata
    from pop_local.converter.answer_check import AnswerCheck

    meta = read_pop_metadata(smollm2)
    check = AnswerCheck(smollm2, meta, target_right=3, max_documents=6, length=512)
    try:
        items, length, right = check.shape
        assert length == 512 and right >= 3 and items < 24  # stopped adding documents at the target
        assert sum(check.full[:-len([d for d in check.document if d == check.document[-1]])]) < 3  # not before
        assert check.document == sorted(check.document) and len(check.items) == items
        same = check.score(())
        assert (same.scored, same.lost, same.low) == (right, 0, 0.0) and same.passed(right)
        # the answers counted are those the full model gives again with the rounding moved
        assert right == sum(check.full) and right + check.unstable <= items
        gutted = tuple(range(2, meta.n_layer))
        stopped = check.score(gutted)
        assert stopped.scored < right and stopped.lost >= 1 and not stopped.passed(right)
        whole = check.score(gutted, stop_early=False)
        assert whole.scored == right and whole.lost >= stopped.lost and not whole.passed(right)
    finally:
        check.close()


@pytest.mark.slow
def test_a_fitted_candidate_is_scored_on_a_copy_it_can_keep(smollm2, tmp_path):
    """A candidate with fitted K/V answers from a temporary copy of the model carrying its projections;
    with `keep` (convert --keep-candidates) the copy is moved there, a complete POP file of that set. The
    source model is loaded again for the next own-K/V candidate."""
    from pop_local import read_pop_metadata
    from pop_local.converter.answer_check import AnswerCheck
    from pop_local.converter.calibrate import calibrate

    meta = read_pop_metadata(smollm2)
    block = (26, 27, 28, 29)
    cal = calibrate(smollm2, meta, hf_model=None, data=None, dataset=None, samples=4, seq_len=96,
                    response_tokens=32, device="cpu", dtype="float32", seed=0, fit_kv_for=lambda imp: block)
    skip, fitted = cal.fitted
    assert skip == block
    kept = tmp_path / "kept"
    kept.mkdir()
    check = AnswerCheck(smollm2, meta, target_right=3, max_documents=6, length=512, keep=str(kept))
    try:
        _, _, right = check.shape
        result = check.score(skip, fitted, stop_early=False)
        assert result.scored == right and 0 <= result.lost <= right
        assert [p.name for p in kept.iterdir()] == ["26-29-fitted.pop.gguf"]
        copy = read_pop_metadata(str(kept / "26-29-fitted.pop.gguf"))
        assert copy.skip_layers == block and copy.extra["pop.prefill.kv_method"] == "fitted"
        from gguf import GGUFReader

        assert any(t.name.endswith(".pop") for t in GGUFReader(str(kept / "26-29-fitted.pop.gguf")).tensors)
        own = check.score(skip)
        assert own.scored >= 1 and check.llm.pop_metadata.path == smollm2
    finally:
        check.close()


@pytest.mark.slow
def test_a_cached_document_answers_as_a_fresh_prompt_under_pop(smollm2, smollm2_tokens):
    """The check's economy is exact: POP's pruned positions depend only on what precedes them, so with
    the document cached a question's reply is the reply a fresh cache gives, under POP as in full. Asked
    again, only the prompt's last token runs, alone: the check's second rounding."""
    from pop_local.converter.answer_check import check_document
    from pop_local.measure.answers import greedy_reply
    from pop_local.runtime.llama import PopLlama

    doc = check_document(smollm2_tokens, 512, 0)
    llm = PopLlama(smollm2, skip_layers="20-29", min_tokens=0, n_ctx=640, n_batch=512, verbose=False, seed=0)
    try:
        assert llm.skip_layers == tuple(range(20, 30)) and llm.pop_active
        for pop in (True, False):
            llm.pop_enabled = pop
            fresh = [greedy_reply(llm, item.prompt, 16) for item in doc]
            llm.reset_pop_stats()
            cached = [greedy_reply(llm, item.prompt, 16, fresh=False) for item in doc]
            assert cached == fresh, pop
            if pop:  # the last fresh prompt left the document cached: each question prefilled its own tokens
                assert 0 < llm.pop_stats()["pruned_tokens"] < 4 * 40
        # the check's second rounding: the same question again evaluates its prompt's last token alone,
        # as one step after the cached rest (no prefill batch)
        llm.reset_pop_stats()
        greedy_reply(llm, doc[-1].prompt, 16, fresh=False)
        stats = llm.pop_stats()
        assert stats["last_prefill_tokens"] == 0 and stats["pruned_tokens"] == 0 and 1 <= stats["full_tokens"] <= 17
    finally:
        llm.close()
