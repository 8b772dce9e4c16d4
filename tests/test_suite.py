"""The answers suite (pop_local/measure/suite.py, docqa.py): generated document questions, paired
intervals and verdicts, and a small slice of the real suite through `lm_eval --model pop-local`, offline,
on SmolLM2 (RULER's needle task and the document questions at 512 tokens)."""

import glob
import json
import os
import subprocess
import sysconfig

import pytest

from pop_local.errors import PopError
from pop_local.integrations.lm_eval_suite import item_hashes, run_suite, suite_speed
from pop_local.measure import docqa, suite


@pytest.fixture(scope="module")
def count_tokens(smollm2_tokens):
    return smollm2_tokens


def test_document_questions_fit_their_length_and_carry_distractors(count_tokens):
    items = docqa.make_items(0, 1024, 12, count_tokens)
    assert len({i.id for i in items}) == 12 and len({i.prompt for i in items}) == 12
    for item in items:
        n = count_tokens(item.prompt)
        assert 1024 - 96 - 120 <= n <= 1024 - 96, (item.id, n)  # filled close to the budget, never over
        body, question = item.prompt.rsplit("\n\nQuestion: ", 1)
        assert question == item.question
        assert docqa.score_reply(item.answer, item.answer, item.distractors) == 1.0
        assert item.distractors, item.id  # the same kind of fact, stated for someone else
        for d in item.distractors:
            assert d in body and d != item.answer
            assert docqa.score_reply(d, item.answer, item.distractors) == 0.0
            assert docqa.score_reply(f"{item.answer} or {d}", item.answer, item.distractors) == 0.0
    assert len({i.kind for i in items}) >= 4
    # an item depends on (seed, length, index) only, not on the items made before it
    assert docqa.make_item(0, 1024, 7, count_tokens) == items[7]
    assert docqa.make_item(1, 1024, 7, count_tokens) != items[7]
    with pytest.raises(ValueError, match="does not fit"):
        docqa.make_item(0, 40, 0, count_tokens)


def test_needle_items_fill_their_length_with_distracting_needles(count_tokens):
    from pop_local.measure import needles

    items = needles.make_items(0, 1024, 8, count_tokens)
    assert len({i.prompt for i in items}) == 8 and {i.kind for i in items} == {"needle"}
    depths = []
    for item in items:
        n = count_tokens(item.prompt)
        assert 1024 - 64 - 40 <= n <= 1024 - 64, (item.id, n)
        body = item.prompt.rsplit("\n\nQuestion: ", 1)[0]
        assert body.count(f" is {item.answer}.") == 1 and len(item.distractors) > 40
        assert all(d in body for d in item.distractors)
        assert docqa.score_reply(f"The number is {item.answer}.", item.answer, item.distractors) == 1.0
        assert docqa.score_reply(item.distractors[0], item.answer, item.distractors) == 0.0
        depths.append(body.index(f" is {item.answer}.") / len(body))
    assert min(depths) < 0.4 and max(depths) > 0.6  # the asked record at varied depths
    assert needles.make_item(0, 1024, 5, count_tokens) == items[5] != needles.make_item(1, 1024, 5, count_tokens)


def test_a_reply_is_scored_on_its_first_line():
    assert docqa.score_reply("\n  230 °C.\nOr 170 °C.", "230", ("170",)) == 1.0
    assert docqa.score_reply("2300", "230", ()) == 0.0  # whole words only
    assert docqa.score_reply("", "230", ()) == 0.0
    assert docqa.score_reply("Ruth Achterberg", "Ruth Achterberg", ("Peter Lindgren",)) == 1.0
    assert docqa.score_reply("Peter Lindgren, then Ruth Achterberg", "Ruth Achterberg", ("Peter Lindgren",)) == 0.0


def test_paired_interval():
    assert suite.paired_interval([1, 1, 0, 0], [1, 1, 0, 0]) == (0.0, 0.0, 0.0)
    assert suite.paired_interval([0] * 30, [1] * 30) == (-1.0, -1.0, -1.0)
    diff, low, high = suite.paired_interval([1, 0, 1, 1, 0, 1, 1, 1] * 5, [1, 1, 1, 1, 0, 1, 0, 1] * 5)
    assert diff == 0.0 and -0.3 < low < 0 < high < 0.3
    assert suite.paired_interval([1, 0, 1], [0, 0, 1], seed=3) == suite.paired_interval([1, 0, 1], [0, 0, 1], seed=3)
    with pytest.raises(PopError):
        suite.paired_interval([], [])


def _cell(setting, scores, task="t", length=1024, hashes=None):
    items = [{"id": i, "hash": (hashes or {}).get(i, f"h{i}"), "score": s, "reply": ""} for i, s in enumerate(scores)]
    return {"task": task, "length": length, "setting": setting, "n": len(scores),
            "score": sum(scores) / len(scores), "items": items}


def test_the_flop_ideal_counts_a_full_depth_tail():
    from pop_local.measure.flops import ModelShape, ideal_speedup

    shape = ModelShape(n_layer=30, n_embd=576, n_ff=1536, n_head=9, n_head_kv=3, head_dim=64)
    skip = range(20, 30)
    base = ideal_speedup(shape, 1024, skip)
    assert ideal_speedup(shape, 1024, skip, full_tail=0) == ideal_speedup(shape, 1024, skip, full_tail=1) == base
    assert 1.0 < ideal_speedup(shape, 1024, skip, full_tail=128) < ideal_speedup(shape, 1024, skip, full_tail=32) < base
    assert ideal_speedup(shape, 1024, skip, full_tail=1025) == pytest.approx(1.0)


def test_retention_verdicts():
    full = [1] * 40 + [0] * 10
    result = {"cells": [
        _cell("full", full), _cell("same", full),                    # kept: nothing lost
        _cell("worse", [0] * 20 + [1] * 20 + [0] * 10),               # lost: 20 of 40 answers gone
        _cell("few", [1] * 40 + [0] * 10, task="u"),                  # the full model cannot do task u
        _cell("full", [0] * 40 + [1] * 10, task="u"),
        _cell("full", [1, 1, 1, 0], task="v"), _cell("small", [1, 0, 1, 0], task="v"),  # 4 items: undecided
    ]}
    rows = {(r["setting"], r["task"]): r for r in suite.retention(result)}
    assert rows[("same", "t")]["verdict"] == "kept" and rows[("same", "t")]["retention"] == 1.0
    assert rows[("worse", "t")]["verdict"] == "lost" and rows[("worse", "t")]["retention"] == 0.5
    assert rows[("worse", "t")]["high"] < 0
    assert rows[("few", "u")]["verdict"] == "full below 0.3" and rows[("few", "u")]["retention"] is None
    assert rows[("small", "v")]["verdict"] == "undecided" and rows[("small", "v")]["n"] == 4
    # a small loss the interval allows (above -10 points) is still not kept below 95% of the full score
    slight = {"cells": [_cell("full", [1] * 100 + [0] * 100, task="w"),
                        _cell("slight", [0] * 9 + [1] * 91 + [1] * 3 + [0] * 97, task="w")]}
    (row,) = suite.retention(slight)
    assert row["low"] > -0.10 and row["high"] > 0 and row["retention"] == pytest.approx(0.94)
    assert row["verdict"] == "undecided"
    result["cells"].append(_cell("other", full, hashes={3: "changed"}))
    with pytest.raises(PopError, match="different items"):
        suite.retention(result)


def test_the_suite_pairs_settings_on_the_same_items(smollm2):
    """The library path on the real model: two settings, RULER's single needle, the document questions
    and the needle in prose at 512 tokens, 3 items each; paired rows; speed of both settings at one length."""
    settings = [s for s in suite.standard_settings(smollm2) if s.name in ("full", "paper")]
    assert [s.args for s in settings] == [{"pop": False}, {"pop": True, "skip_layers": "20-29", "kv_mode": "own"}]
    tasks = ["niah_single_1", "pop_docqa", "pop_needle"]
    result = run_suite(smollm2, lengths=[512], items={512: 3}, tasks=tasks, settings=settings, n_threads=2)
    assert {(c["setting"], c["task"]) for c in result["cells"]} == {(s, t) for s in ("full", "paper") for t in tasks}
    for c in result["cells"]:
        assert c["n"] == 3 and all(0.0 <= r["score"] <= 1.0 for r in c["items"])
    needle = next(c for c in result["cells"] if c["setting"] == "full" and c["task"] == "niah_single_1")
    assert needle["score"] > 0  # the full model finds a needle in 380 tokens of repeated text
    prose = next(c for c in result["cells"] if c["setting"] == "full" and c["task"] == "pop_needle")
    assert prose["score"] > 0  # and one in 450 tokens of varied prose
    rows = suite.retention(result)
    assert len(rows) == 3 and all(r["n"] == 3 for r in rows)
    # the generators are seeded per task and length: built again, alone, the tasks ask the same items
    asked = {c["task"]: [r["hash"] for r in c["items"]] for c in result["cells"] if c["setting"] == "full"}
    assert item_hashes(smollm2, ["pop_needle", "pop_docqa", "niah_single_1"], 512, 3) == asked
    cwe = item_hashes(smollm2, ["ruler_cwe"], 512, 2)  # ruler_cwe shuffles with a module-level generator too
    assert item_hashes(smollm2, ["niah_single_1", "ruler_cwe"], 512, 2)["ruler_cwe"] == cwe["ruler_cwe"]
    speed = suite_speed(smollm2, settings, [256], repeats=1, n_threads=2)
    (row,) = speed["rows"]
    assert row["n_tokens"] == 256 and set(row["ms"]) == {"full", "paper"} and row["speedup"]["paper"] > 0
    assert 1.3 < row["ideal"]["paper"] < 1.6


def test_a_slice_through_the_lm_eval_command(default_model_start, tmp_path):
    """What .ci/run checks of the suite: the stock `lm_eval` command with `--model pop-local`, offline,
    RULER's niah_single_1 and pop_docqa at 512 tokens, 3 items each, on the embedded default model."""
    _, cache = default_model_start
    (model,) = glob.glob(str(cache / "models" / "*.pop.gguf"))
    scripts = sysconfig.get_path("scripts")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "POP_LOCAL_CACHE": str(cache)}
    suite.offline_environment()  # the nltk stand-in, made in the cache
    env["NLTK_DATA"] = os.environ["NLTK_DATA"]
    metadata = {"tokenizer": suite.tokenizer_dir(model), "max_seq_lengths": [512], "docqa_items": 3}
    proc = subprocess.run([os.path.join(scripts, "lm_eval"), "--model", "pop-local", "--model_args",
                           f"model={model},n_ctx=512,n_threads=2", "--tasks", "niah_single_1,pop_docqa",
                           "--include_path", suite.TASKS_DIR, "--metadata", json.dumps(metadata), "--limit", "3",
                           "--output_path", str(tmp_path), "--log_samples"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "**" / "results_*.json"), recursive=True)
    with open(path) as f:
        results = json.load(f)["results"]
    assert 0.0 <= results["pop_docqa"]["score,none"] <= 1.0
    assert results["niah_single_1"]["512,none"] > 0
    samples = glob.glob(str(tmp_path / "**" / "samples_pop_docqa_*.jsonl"), recursive=True)
    assert samples and sum(1 for _ in open(samples[0])) == 3
    assert "punkt_tab" not in proc.stderr  # nothing tried the network


def test_resuming_checks_settings_before_running_and_merges_by_cell():
    """benchmarks/suite.py --resume: an own setting is parsed and checked; a name given twice, or recorded
    with other arguments, stops the run before anything runs; new cells replace recorded ones by key."""
    from pop_local.integrations.lm_eval_suite import parse_setting

    tail = parse_setting("d-tail64:full_tail=64;kv_mode=own")
    assert tail.args == {"full_tail": 64, "kv_mode": "own"}
    with pytest.raises(PopError, match="full_tail"):
        parse_setting("bad:full_tail=-2")
    with pytest.raises(PopError, match="expected NAME"):
        parse_setting("nothing")
    recorded = {"settings": {"full": {"args": {"pop": False}}, "d-tail64": {"args": {"full_tail": 32}}},
                "cells": [{"setting": "full", "task": "t", "length": 512, "score": 0.5}],
                "lengths": [512], "tasks": ["t"], "items": {"512": 3}, "gen_cap": {"t": 8}}
    with pytest.raises(PopError, match="recorded with"):
        suite.check_settings(recorded, [suite.Setting("full", {"pop": False}), tail])
    with pytest.raises(PopError, match="named twice"):
        suite.check_settings(None, [tail, tail])
    part = {"settings": {"x": {"args": {}}}, "lengths": [1024], "tasks": ["t", "u"], "items": {"1024": 2},
            "gen_cap": {"u": 4}, "cells": [{"setting": "full", "task": "t", "length": 512, "score": 1.0},
                                           {"setting": "x", "task": "u", "length": 1024, "score": 0.0}]}
    merged = suite.merge_results(recorded, part)
    assert [(c["setting"], c["score"]) for c in merged["cells"]] == [("full", 1.0), ("x", 0.0)]
    assert merged["lengths"] == [512, 1024] and merged["tasks"] == ["t", "u"] and set(merged["settings"]) == {
        "full", "d-tail64", "x"}
    from pop_local.integrations.lm_eval_suite import missing_cells

    full, x = suite.Setting("full", {"pop": False}), suite.Setting("x", {"full_tail": 8})
    groups, replaced = missing_cells(None, "unread.gguf", [full, x], ["t"], 512, 3)
    assert groups == {("t",): [full, x]} and not replaced
    with pytest.raises(PopError, match="no full-model answers"):
        missing_cells(None, "unread.gguf", [x], ["t"], 512, 3)
    with pytest.raises(PopError, match="holds 2 items"):
        missing_cells({"cells": [{"setting": "full", "task": "t", "length": 512, "n": 2, "items": []}]},
                      "unread.gguf", [x], ["t"], 512, 3)
