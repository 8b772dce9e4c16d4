"""Quality-budgeted POP: the frontier the converter measures, the budget's choice, the keys in the file."""

import os

import pytest
from click.testing import CliRunner

from pop_local import PopMetadataError, keys, read_pop_metadata
from pop_local.apps.cli import cli
from pop_local.errors import PopError
from pop_local.format.frontier import Budget, FrontierRow, choose, frontier_fields, parse_budget

ROWS = [  # skip set, KL own, KL fitted, top-1 own, top-1 fitted, ideal @512, @2048
    FrontierRow((29,), 0.01, 0.01, 0.98, 0.98, 1.03, 1.03),
    FrontierRow((28, 29), 0.03, 0.02, 0.95, 0.97, 1.07, 1.07),
    FrontierRow((27, 28, 29), 0.09, 0.04, 0.90, 0.94, 1.11, 1.11),
    FrontierRow((26, 27, 28, 29), 0.20, 0.07, 0.84, 0.91, 1.15, 1.16),
]


# --- choice and budget values (no model) ---------------------------------------------------------------

def test_max_kl_picks_the_fastest_set_within_the_budget():
    assert choose(ROWS, Budget(max_kl=0.05)) == 2            # fitted K/V: 0.04 <= 0.05
    assert choose(ROWS, Budget(max_kl=0.05), kv="own") == 1  # own K/V only: 0.03
    assert choose(ROWS, Budget(max_kl=1.0)) == 3
    assert choose(ROWS, Budget(max_kl="paper"), paper_kl=0.09) == 3  # fitted 0.07 beats the paper's 0.09
    assert ROWS[3].kv_for("auto") == "fitted" and ROWS[0].kv_for("auto") == "own"  # a tie keeps own


def test_target_speedup_picks_the_most_faithful_set_reaching_it():
    assert choose(ROWS, Budget(target_speedup=1.1)) == 2
    assert choose(ROWS, Budget(target_speedup=1.01)) == 0


def test_unreachable_budgets_name_the_best_reached():
    with pytest.raises(PopError, match=r"best reached is 0\.01 \(29, own K/V\)"):
        choose(ROWS, Budget(max_kl=0.001))
    with pytest.raises(PopError, match=r"fastest measured is 1\.16x"):
        choose(ROWS, Budget(target_speedup=2.0))


@pytest.mark.parametrize("max_kl, speedup, message", [
    ("abc", None, "max_kl"), ("-1", None, "max_kl"), ("nan", None, "max_kl"), ("0", None, "max_kl"),
    (None, 1.0, "target_speedup"), (None, float("inf"), "target_speedup"), ("0.1", 1.5, "not both"),
])
def test_bad_budget_values(max_kl, speedup, message):
    """The library names the argument (the CLI words it as its option: test_bad_budget_options_...)."""
    with pytest.raises(PopError, match=message) as e:
        parse_budget(max_kl, speedup)
    if message != "not both":
        assert e.value.field == message and "--" not in str(e.value)


@pytest.mark.parametrize("args", [["--max-kl", "abc"], ["--max-kl", "-0.5"], ["--max-kl", "inf"],
                                  ["--target-speedup", "0.9"], ["--target-speedup", "fast"],
                                  ["--max-ratio", "1.5"], ["--max-ratio", "0"]])
def test_bad_budget_options_are_usage_errors(tmp_path, args):
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(cli, ["convert", "model.gguf", "-o", str(out)] + args)
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{args[0]}'" in r.output, r.output
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--max-kl", "0.1", "--layers", "20-29"], "drop --layers"),
    (["--target-speedup", "1.5", "--ratio", "0.3"], "drop --layers"),
    (["--max-kl", "0.1", "--layers", "20-29", "--no-calibrate"], "drop --layers"),
    (["--max-kl", "0.1", "--samples", "4"], "at least 8 --samples"),
    (["--max-ratio", "0.2"], "at least 1/3"),
])
def test_budget_conflicts_are_one_line_errors(smollm2, tmp_path, args, message):
    out = tmp_path / "o.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out)] + args)
    assert r.exit_code == 1 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


# --- the keys -----------------------------------------------------------------------------------------------

def _write(smollm2, path, fields, skip="26-29"):
    from pop_local.converter.writer import write_pop_gguf

    write_pop_gguf(smollm2, path, skip, extra=fields)
    return read_pop_metadata(path)


@pytest.mark.slow
def test_frontier_keys_round_trip(smollm2, tmp_path):
    fields = frontier_fields(ROWS, 3, Budget(max_kl="paper"), 0.09, (4, 192))
    meta = _write(smollm2, tmp_path / "f.gguf", fields)
    f = meta.frontier
    assert f.chosen == 3 and f.choice.skip == (26, 27, 28, 29) and f.budget == "max_kl=paper"
    assert f.paper_kl == pytest.approx(0.09) and f.held_out == (4, 192)
    for got, want in zip(f.rows, ROWS):
        assert got.skip == want.skip
        for name in ("kl_own", "kl_fitted", "top1_own", "top1_fitted", "speedup_512", "speedup_2048"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), rel=1e-6)
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "f.gguf"), "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    assert "| 26-29 | 4 | 0.2000 | 0.0700 | 0.840 | 0.910 | 1.15x | 1.16x | chosen |" in r.output
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_the_answer_rule_keeps_the_fastest_set_that_keeps_the_full_models_answers():
    from pop_local.format.frontier import CheckResult, first_passing, keeps_answers

    results = {3: CheckResult(2, 2, float("nan")), 2: CheckResult(20, 2, -0.2), 1: CheckResult(20, 0, 0.0),
               0: CheckResult(20, 0, 0.0)}
    seen = []

    def check(option):
        seen.append(option[0])
        return results[option[0]].passed(20)

    options = [(i, "own") for i in (3, 2, 1, 0)]
    assert first_passing(options, check) == (1, "own") and seen == [3, 2, 1]  # stops at the first that passes
    assert first_passing(options[:2], check) is None
    assert not results[3].passed(20) and results[3].text(20) == "stopped at 2: 2 lost"
    assert results[1].text(20) == "keeps 100% [+0]" and results[2].text(20) == "fails 90% [-20]"
    # both halves of the rule: 95% of the full score, and the interval's lower end above -10 points
    assert keeps_answers(0.95, 1.0, -0.09) and not keeps_answers(0.94, 1.0, 0.0)
    assert not keeps_answers(1.0, 1.0, -0.10)
    assert not CheckResult(4, 1, -0.05).passed(4)  # 3 of 4 right: 75% of the full model's score
    assert not CheckResult(20, 0, 0.0).passed(0)  # nothing the full model answers: nothing to keep


@pytest.mark.slow
def test_frontier_check_keys_round_trip_and_older_files_read_without_them(smollm2, tmp_path):
    import dataclasses

    from pop_local.format.frontier import CheckResult

    rows = [ROWS[0], dataclasses.replace(ROWS[1], check_own=CheckResult(20, 0, 0.0)), ROWS[2],
            dataclasses.replace(ROWS[3], check_own=CheckResult(3, 2, float("nan")),
                                check_fitted=CheckResult(20, 1, -0.15))]
    fields = frontier_fields(rows, 1, Budget(max_kl="paper"), 0.09, (4, 192), check=(24, 1024, 20))
    f = _write(smollm2, tmp_path / "a.gguf", fields, skip="28-29").frontier
    assert f.check == (24, 1024, 20) and f.rows[1].check_own == CheckResult(20, 0, 0.0)
    assert f.passed(f.choice.check_own) and not f.passed(f.rows[3].check_fitted)
    assert f.rows[3].check_own.scored == 3 and f.rows[0].check_own is None and f.rows[1].check_fitted is None
    r = CliRunner().invoke(cli, ["inspect", str(tmp_path / "a.gguf")])
    assert ("| 26-29 | 4 | 0.2000 | 0.0700 | 0.840 | 0.910 | 1.15x | 1.16x | stopped at 3: 2 lost | fails 95% [-15] "
            "|  |") in r.output
    assert "| 28-29 | 2 | 0.0300 | 0.0200 | 0.950 | 0.970 | 1.07x | 1.07x | keeps 100% [+0] | - | chosen |" in r.output
    assert "Answers: 24 generated needle and document questions of 1024 tokens, of which the full model" in r.output
    old = _write(smollm2, tmp_path / "old.gguf", frontier_fields(ROWS, 3, Budget(max_kl="paper"), 0.09, (4, 192)))
    assert old.frontier.check is None and old.frontier.choice.check() is None
    # a file converted with the check this one replaced: its keys load as plain metadata
    earlier = {**frontier_fields(ROWS, 3, Budget(max_kl="paper"), 0.09, (4, 192)),
               "pop.frontier.answers_own": [0.1, 0.2, 0.3, 0.4], "pop.frontier.answer_prompts": [6, 32, 4]}
    assert _write(smollm2, tmp_path / "earlier.gguf", earlier).frontier.check is None
    half = {k: v for k, v in fields.items() if k != keys.FRONTIER_CHECK_LOW_FITTED}
    with pytest.raises(PopMetadataError, match="check_low_fitted: missing"):
        _write(smollm2, tmp_path / "half.gguf", half, skip="28-29")
    bad = {**fields, keys.FRONTIER_CHECK_LOST_OWN: [0, 0, 0, 25]}
    with pytest.raises(PopMetadataError, match="check_lost_own: 25 is not a count of items"):
        _write(smollm2, tmp_path / "b.gguf", bad, skip="28-29")
    bad = {**fields, keys.FRONTIER_CHECK_SCORED_OWN: [0, 22, 0, 3]}
    with pytest.raises(PopMetadataError, match="answered or lost more than the 20 items"):
        _write(smollm2, tmp_path / "b3.gguf", bad, skip="28-29")
    bad = {**fields, keys.FRONTIER_CHECK: [24, 1024, 30]}
    with pytest.raises(PopMetadataError, match="pop.frontier.check: expected"):
        _write(smollm2, tmp_path / "c.gguf", bad, skip="28-29")


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    ({keys.FRONTIER_KL_OWN: [0.1, 0.2]}, "entries"),
    ({keys.FRONTIER_CHOSEN: 9}, "not an index"),
    ({keys.FRONTIER_CHOSEN: 1}, "not the file's skip set"),
    ({keys.FRONTIER_TOP1_OWN: [0.9, 0.9, 1.5, 0.9]}, "not a number in"),
    ({keys.FRONTIER_SKIP_LAYERS: ["29", "28-29", "27-29", "26-40"]}, "out of range"),
    ({keys.FRONTIER_SPEEDUP_2048: ["fast", "x", "y", "z"]}, "not a number"),
])
def test_malformed_frontier_keys_are_rejected(smollm2, tmp_path, change, message):
    fields = {**frontier_fields(ROWS, 3, Budget(max_kl="paper"), 0.09, (4, 192)), **change}
    from pop_local.converter.writer import write_pop_gguf

    path = tmp_path / "bad.gguf"
    write_pop_gguf(smollm2, path, "26-29", extra=fields)
    with pytest.raises(PopMetadataError, match=message):
        read_pop_metadata(path)
    r = CliRunner().invoke(cli, ["inspect", str(path)])
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_partial_frontier_is_rejected_and_files_without_one_keep_working(smollm2, tmp_path):
    fields = frontier_fields(ROWS, 3, Budget(max_kl="paper"), 0.09, (4, 192))
    del fields[keys.FRONTIER_KL_FITTED]
    with pytest.raises(PopMetadataError, match="partial"):
        _write(smollm2, tmp_path / "p.gguf", fields)
    assert _write(smollm2, tmp_path / "plain.gguf", {"pop.calibration.note": "x"}).frontier is None


# --- a real budgeted conversion (SmolLM2-135M) ------------------------------------------------------------

BUDGET_ARGS = ["--samples", "8", "--seq-len", "64", "--max-ratio", "0.2", "--max-kl", "0.5", "--seed", "3"]


@pytest.fixture(scope="module")
def budgeted(smollm2, tmp_path_factory):
    """Two conversions of SmolLM2 with the same budget and seed (small: 8 samples, up to 6 layers)."""
    folder = tmp_path_factory.mktemp("budget")
    paths = []
    for name in ("a.pop.gguf", "b.pop.gguf"):
        r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(folder / name)] + BUDGET_ARGS)
        assert r.exit_code == 0, r.output
        assert "held-out KL" in r.output and "(max_kl=0.5)" in r.output
        paths.append(str(folder / name))
    return paths


@pytest.mark.slow
def test_budgeted_conversion_is_reproducible(budgeted):
    from gguf import GGUFReader

    a, b = (read_pop_metadata(p) for p in budgeted)
    assert a.skip_layers == b.skip_layers and a.frontier.chosen == b.frontier.chosen
    assert a.frontier == b.frontier, [(x, y) for x, y in zip(a.frontier.rows, b.frontier.rows) if x != y]
    assert len(a.frontier.rows) == 6 and a.frontier.held_out[0] == 2
    tensors = [{t.name: t.data.tobytes() for t in GGUFReader(p, "r").tensors if t.name.endswith(".pop")}
               for p in budgeted]
    assert tensors[0] == tensors[1]


@pytest.mark.slow
def test_max_kl_picks_the_fastest_candidate_inside_the_budget(budgeted):
    meta = read_pop_metadata(budgeted[0])
    rows = meta.frontier.rows
    inside = [i for i, r in enumerate(rows) if r.kl() <= 0.5]
    assert meta.frontier.chosen == max(inside, key=lambda i: rows[i].speedup_2048)
    assert meta.skip_layers == rows[meta.frontier.chosen].skip
    assert meta.extra[keys.KV_METHOD] == rows[meta.frontier.chosen].kv_for("auto")
    # the last layer's prompt positions feed nothing: exact, up to float32 rounding (the streamed frontier
    # runs the response against a cache, the reference runs the whole sequence in one pass)
    assert rows[0].skip == (29,) and rows[0].kl_own <= 1e-5
    assert all(a.speedup_2048 < b.speedup_2048 for a, b in zip(rows, rows[1:]))
    assert rows[-1].kl_own > rows[1].kl_own > 0  # deeper costs more
    for limit in sorted({r.kl() for r in rows}):  # every budget the real frontier allows
        chosen = choose(rows, Budget(max_kl=limit))
        assert rows[chosen].kl() <= limit
        assert all(r.speedup_2048 <= rows[chosen].speedup_2048 for r in rows if r.kl() <= limit)
    with pytest.raises(PopError, match="best reached is"):
        choose(rows[1:], Budget(max_kl=rows[1].kl() / 2))


def test_a_budget_no_candidate_meets_is_a_one_line_error(smollm2, tmp_path):
    out = tmp_path / "never.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--samples", "8", "--seq-len", "64",
                                 "--max-ratio", "0.1", "--target-speedup", "3"])
    assert r.exit_code == 1, r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "fastest within --max-ratio 0.1 is 1.1" in error[0] and "(27-29)" in error[0]
    assert os.listdir(tmp_path) == []  # no output, no temp file


@pytest.mark.slow
def test_held_out_kl_predicts_eval_on_the_bundled_passage(default_model_start):
    """The default model's converter KL (512-token held-out prompts) against `pop-local eval` on text
    the converter never saw, at 512-token contexts, for the deepest set in its stored frontier (a third
    of the layers; the answer check chooses a shallower one on this model, whose KL is too small to
    compare): within 35%."""
    from pop_local import PopLlama
    from pop_local.converter.default_model import default_model_path
    from pop_local.format.layers import format_layers
    from pop_local.measure.evaluate import run_eval

    path = default_model_path()
    meta = read_pop_metadata(path)
    row = max(meta.frontier.rows, key=lambda r: len(r.skip))
    predicted = row.kl("own")
    llm = PopLlama(path, skip_layers=format_layers(row.skip), kv_mode="own", n_ctx=1024, n_batch=1024, verbose=False)
    try:
        result = run_eval(llm, ctx=(512,), continuation=64, windows=3, passkey_lengths=(), modes=["full", "pop"])
    finally:
        llm.close()
    measured = result["modes"]["pop"]["kl_to_full"]
    assert abs(measured - predicted) <= 0.35 * predicted, (predicted, measured)


@pytest.mark.slow
def test_fitted_kv_prediction_on_gemma3(gemma3, tmp_path):
    """Gemma-3-270M with the default budget chooses fitted K/V; the converter's held-out KL for the
    chosen set against `pop-local eval` on the bundled passage (text it never saw), 512-token
    contexts: within 35%. (Before ROBUST_RIDGE the fit was judged on text too like its own: 0.031
    predicted, 0.049 measured.)"""
    from pop_local import PopLlama
    from pop_local.measure.evaluate import run_eval

    out = str(tmp_path / "gemma.pop.gguf")
    r = CliRunner().invoke(cli, ["convert", gemma3, "-o", out, "--samples", "16", "--no-answer-check"])
    assert r.exit_code == 0, r.output
    meta = read_pop_metadata(out)
    assert meta.extra[keys.KV_METHOD] == "fitted"
    predicted = meta.frontier.choice.kl("fitted")
    assert predicted <= meta.frontier.paper_kl
    llm = PopLlama(out, n_ctx=1024, n_batch=1024, verbose=False)
    try:
        result = run_eval(llm, ctx=(512,), continuation=64, windows=3, passkey_lengths=(), modes=["full", "pop_fitted"])
    finally:
        llm.close()
    measured = result["modes"]["pop_fitted"]["kl_to_full"]
    assert abs(measured - predicted) <= 0.35 * predicted, (predicted, measured)


def test_held_out_prompts_share_no_text_with_training_prompts():
    from pop_local.converter.calibrate import split_prompts
    from pop_local.converter.calibration_data import BUILTIN_PROMPTS

    train, held = split_prompts(BUILTIN_PROMPTS)
    assert sorted(train + held) == sorted(BUILTIN_PROMPTS) and len(held) >= len(BUILTIN_PROMPTS) // 4
    paragraphs = lambda ps: {p for x in ps for p in x.split("\n\n") if len(p) >= 80}  # noqa: E731
    assert not paragraphs(train) & paragraphs(held)  # a passage with two questions stays on one side
    with pytest.raises(PopError, match="two unrelated"):
        split_prompts(["only one prompt"])


@pytest.mark.slow
def test_score_strategy_measures_importance_ordered_sets_and_the_papers(smollm2, tmp_path):
    out = tmp_path / "score.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--samples", "8", "--seq-len", "64",
                                 "--strategy", "score", "--max-ratio", "0.1", "--max-kl", "1"])
    assert r.exit_code == 0, r.output
    meta = read_pop_metadata(out)
    prefill = meta.extra[keys.IMPORTANCE_PREFILL]
    sets = [row.skip for row in meta.frontier.rows]
    assert [len(s) for s in sets] == [1, 2, 3, 10] and sets[-1] == tuple(range(20, 30))  # + the paper's set
    order = sorted(range(30), key=lambda i: (prefill[i], -i))
    assert sets[:3] == [tuple(sorted(order[:k])) for k in (1, 2, 3)]
    assert meta.skip_layers == sets[-1] and meta.extra[keys.STRATEGY] == "score"  # the fastest within KL 1


def test_budget_options_offer_both_kv_of_a_set_within_the_budget_fastest_first():
    from pop_local.format.frontier import budget_options

    rows = ROWS + [FrontierRow((25, 26, 27, 28, 29), 0.08, 0.05, 0.9, 0.93, 1.19, 1.19)]
    # limit 0.09: row 4 (both K/V within), row 3 (fitted only), row 2 (both), row 1, row 0
    assert budget_options(rows, Budget(max_kl=0.09)) == [(4, "fitted"), (4, "own"), (3, "fitted"), (2, "fitted"),
                                                          (2, "own"), (1, "fitted"), (1, "own"), (0, "own"),
                                                          (0, "fitted")]  # equal KL: the row's own choice first
    assert budget_options(rows, Budget(max_kl=0.09), kv="own")[:2] == [(4, "own"), (2, "own")]
