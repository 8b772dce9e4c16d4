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
    """The answer check interleaves single needles, needles among needles and document questions, fills
    its length, states each answer in the prompt and not in the question, and never asks the suite's items."""
    from pop_local.converter.answer_check import KINDS, check_items
    from pop_local.measure import docqa, needles

    items = check_items(smollm2_tokens, 512, per_kind=3)
    assert [i.id.split("-")[0] for i in items] == ["single", "needle", "docqa"] * 3 and len(KINDS) == 3
    for item in items:
        document, question = item.prompt.rsplit("Question:", 1)
        assert item.answer in document and item.answer not in question, item.id
        assert 350 < smollm2_tokens(item.prompt) <= 512, item.id
    suite = docqa.make_items(0, 512, 3, smollm2_tokens) + needles.make_items(0, 512, 3, smollm2_tokens)
    assert not {i.prompt for i in items} & {i.prompt for i in suite}
    assert check_items(smollm2_tokens, 512, per_kind=3) == items  # the same questions in every conversion


@pytest.mark.slow
def test_the_answer_check_pairs_candidates_with_the_full_model_and_stops_early(smollm2):
    """A candidate that skips nothing (POP on, empty set) answers as the full model: every item the full
    model answers is answered, nothing lost, the interval [0, 0], so it keeps the answers; a set that
    skips almost every layer loses the first needle the full model finds and stops there, unless asked
    to go on."""
    from pop_local import read_pop_metadata
    from pop_local.converter.answer_check import AnswerCheck

    meta = read_pop_metadata(smollm2)
    check = AnswerCheck(smollm2, meta, per_kind=2, length=512)
    try:
        items, length, right = check.shape
        assert (items, length) == (6, 512) and check.full[0] == 1.0  # SmolLM2 finds a single needle at 512
        same = check.score(())
        assert (same.scored, same.lost, same.low) == (right, 0, 0.0) and same.passed(right) and right >= 2
        gutted = tuple(range(2, meta.n_layer))
        stopped = check.score(gutted)
        assert stopped.scored < right and stopped.lost >= 1 and not stopped.passed(right)
        whole = check.score(gutted, stop_early=False)
        assert whole.scored == right and whole.lost >= stopped.lost and not whole.passed(right)
    finally:
        check.close()
