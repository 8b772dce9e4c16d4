"""Every generated part of README.md and docs/*.md, made from benchmarks/results/*.json (and the code), never typed.

    python benchmarks/tables.py            # rewrite the generated blocks in place
    python benchmarks/tables.py --check    # exit 1, naming each block that differs from what its source gives
    python benchmarks/tables.py --show KEY # print one block (e.g. "headline", "help chat")

A block is `<!-- generated: KEY -->` ... `<!-- end generated -->`; KEY names a function below. Each
measured table ends with the results files it came from, with their commit, machine and date.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, ROOT)

BLOCK = re.compile(r"(<!-- generated: (?P<key>[^>]+?) -->)(?P<body>.*?)(<!-- end generated -->)", re.S)
LABELS = {"smollm2": "SmolLM2-135M-Instruct Q4_1", "gemma3": "Gemma-3-270M Q4_K_M",
          "smollm2-q8_0": "SmolLM2-135M-Instruct Q8_0 (re-quantized from Q4_1)",
          "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
          "gemma3-check": "Gemma-3-270M Q4_K_M, answer-checked default",
          "gemma3-shallow": "Gemma-3-270M Q4_K_M, its last layers at 2k",
          "qwen2.5-coder-1.5b-check": "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, answer-checked default",
          "qwen2.5-coder-1.5b-samples8": "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 8 samples",
          "llama-3.1-8b-shape": "Llama-3.1-8B shape Q4_0 (random weights)"}
ORDER = {"smollm2": 0, "smollm2-q8_0": 0.5, "gemma3": 1, "gemma3-check": 1.5, "gemma3-shallow": 1.6,
         "qwen2.5-coder-1.5b": 2,
         "qwen2.5-coder-1.5b-check": 2.5, "qwen2.5-coder-1.5b-samples8": 2.6, "llama-3.1-8b-shape": 3}


def _load(name: str) -> dict:
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _sources(*names: str) -> str:
    """The line under a table: each results file with its commit (and date), then the machine(s)."""
    parts, machines = [], []
    for name in names:
        r = _load(name)
        when = ", ".join(x for x in (r.get("commit") and f"commit {r['commit']}", r.get("date")) if x)
        parts.append(f"`{name}` ({when or 'recorded before results carried their commit'})")
        where = r.get("machine_detail") or r.get("machine")
        if where and where not in machines:
            machines.append(where)
    return "Source: " + ", ".join(parts) + "; measured on " + " / ".join(machines or ["an unrecorded machine"]) + "."


def _layers(layers) -> str:
    from pop_local.format.layers import format_layers

    return layers if isinstance(layers, str) else format_layers(layers)


# --- the tables -------------------------------------------------------------------------------------

def _headline_choice(be: dict, ev: dict) -> "tuple[str, str]":
    """(skip set, K/V) the headline's bench and eval ran: the file's set, fitted where eval used the fit."""
    return be["skip_layers"], "fitted" if ev.get("file_choice") == "pop_fitted" else "own"


def _conversion_choice(made: dict) -> "tuple[str, str]":
    """(skip set, K/V) a conversion record (benchmarks/converter_cost.py) says the converter chose."""
    return _layers(made["skip_layers"]), made["kv_method"]


def headline() -> str:
    """Speed and quality at the default settings on each test model (benchmarks/headline.py)."""
    lines = ["| model | skip set (K/V) | prefill @512 (FLOP ideal) | prefill @2048 (FLOP ideal) | decode | "
             "KL vs full (512 / 1024) | top-1 agreement | pass key (POP / full) |",
             "|---|---|---|---|---|---|---|---|"]
    files = []
    names = sorted({os.path.basename(p)[len("headline-"):-len("-bench.json")]
                    for p in glob.glob(os.path.join(RESULTS, "headline-*-bench.json"))}, key=lambda n: ORDER.get(n, 9))
    for name in names:
        be, ev = _load(f"headline-{name}-bench.json"), _load(f"headline-{name}-eval.json")
        files += [f"headline-{name}-bench.json", f"headline-{name}-eval.json"]
        speed = {row["n_tokens"]: row for row in be["prefill"]}
        cells = [f"**{speed[n]['speedup']:.2f}x** ({speed[n]['ideal_speedup']:.2f}x)" if n in speed else "-"
                 for n in (512, 2048)]
        mode = ev["modes"][ev.get("file_choice", "pop")]
        by = " / ".join(f"{mode['by_context'][str(c)]['kl_to_full']:.3f}" for c in ev["contexts"])
        full = ev["modes"]["full"]

        def keys_found(m):  # pass-key retrieval over every prompt length
            acc = m.get("passkey_accuracy") or {}
            return sum(acc.values()) / len(acc) if acc else None

        key = f"{keys_found(mode):.2f} / {keys_found(full):.2f}" if keys_found(mode) is not None else "-"
        decode = be["decode"]
        timed = _headline_choice(be, ev)
        kv = timed[1]
        conv = next((d[4] for d in DEFAULTS if d[5] == name and d[4]), None)
        before = ""
        if conv and os.path.exists(os.path.join(RESULTS, conv)):  # timed before the converter chose otherwise
            now = _conversion_choice(_load(conv))
            if now != timed:
                before = f"; the default before: now {now[0]}, {now[1]}"
                files.append(conv)
        label = LABELS.get(f"{name}-q8_0" if "q8_0" in be["model"].lower() else name, name)  # the embedded default
        lines.append(f"| {label} | {be['skip_layers']} "
                     f"({kv}{before}) | "
                     f"{cells[0]} | {cells[1]} | {decode['pop_tps']['median'] / decode['full_tps']['median']:.2f}x | "
                     f"{by} | {mode['top1_agreement']:.3f} | {key} |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def answers() -> str:
    """What POP does to answers, per model: the paper's set and the default setting (benchmarks/answers.py)."""
    names = sorted({os.path.basename(p)[len("answers-"):-len(".json")]
                    for p in glob.glob(os.path.join(RESULTS, "answers-*.json"))},
                   key=lambda n: ORDER.get(n, 9))
    lines = ["| model | setting | skip set (K/V) | converter held-out KL | same replies short / long "
             "| first difference (long, token) | reply F1 vs full (long) | answer found long: POP / full "
             "| lm-eval MC acc / gen exact (full) | prefill @512 | prefill @2048 |", "|---" * 11 + "|"]
    files = []
    for name in names:
        ans_f, lm_f, be_f = f"answers-{name}.json", f"lmeval-{name}.json", f"headline-{name}-bench.json"
        files += [ans_f, lm_f, be_f]
        ans, lm, be = _load(ans_f)["answers"], _load(lm_f), _load(be_f)
        speed = {row["n_tokens"]: row for row in be["prefill"]}
        full = ans["settings"]["full"]
        scores = lm["settings"]
        # the default setting is the paper's on some models: one row then
        settings = ["pop"] if lm["paper_is_default"] else ["paper", "pop"]
        # eval --answers leaves the paper's setting out where the default has its skip set (other K/V)
        settings = [s for s in settings if s in ans["settings"]]
        for setting in settings:
            a = ans["settings"][setting]
            prefix = "paper_" if setting == "paper" else ""
            cells = [f"{speed[n][prefix + 'speedup']:.2f}x" if n in speed else "-" for n in (512, 2048)]
            diff = "-" if a["long"]["first_diff"] is None else f"{a['long']['first_diff']:.1f}"
            lm_set, lm_full = scores[setting], scores["full"]
            label = {"paper": "paper (last third)", "pop": "**default**"}[setting]
            if lm["paper_is_default"]:
                label = "**default** = paper (last third)"
            lines.append(
                f"| {LABELS.get(name, name)} | {label} | {lm['skip'][setting]} ({lm['kv'][setting]}) | "
                f"{lm['held_out_kl'][setting]:.3f} | {a['short']['identical']:.2f} / {a['long']['identical']:.2f} | "
                f"{diff} | "
                f"{a['long']['f1']:.2f} | {a['long']['found']:.2f} / {full['long']['found']:.2f} | "
                f"{lm_set['pop_local_mc']['acc,none']:.2f} / {lm_set['pop_local_gen']['exact_match,none']:.2f} "
                f"({lm_full['pop_local_mc']['acc,none']:.2f} / {lm_full['pop_local_gen']['exact_match,none']:.2f}) | "
                f"{cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def min_tokens() -> str:
    """Time saved and short answers changed by pruning short prompts (benchmarks/min_tokens.py)."""
    files = sorted((os.path.basename(p) for p in glob.glob(os.path.join(RESULTS, "min-tokens-*.json"))),
                   key=lambda n: ORDER.get(n[len("min-tokens-"):-len(".json")], 9))
    lengths = sorted({row["n_tokens"] for f in files for row in _load(f)["prefill"]})
    lines = ["| model | skip set | " + " | ".join(f"{n} tokens" for n in lengths)
             + " | short chat questions pruned: identical replies (F1) |",
             "|---|---|" + "---|" * len(lengths) + "---|"]
    for name in files:
        r = _load(name)
        by = {row["n_tokens"]: row for row in r["prefill"]}
        cells = [f"{by[n]['speedup']:.2f}x, {by[n]['saved_ms']:.1f} ms" if n in by else "-" for n in lengths]
        a = r["short_answers"]
        toks = r["short_prompt_tokens"]
        lines.append(f"| {LABELS.get(r['name'], r['name'])} | {_layers(r['skip_layers'])} | " + " | ".join(cells)
                     + f" | {a['identical']:.2f} ({a['f1']:.2f}) over {a['prompts']} questions of "
                     f"{toks[0]}-{toks[-1]} tokens before the chat template |")
    return ("Each cell: prefill speedup of POP over the full model and the time it saves, with the minimum off.\n\n"
            + "\n".join(lines) + "\n\n" + _sources(*files))


def converter_cost() -> str:
    """Conversion time and memory per model (benchmarks/converter_cost.py)."""
    rows = [(os.path.basename(p), _load(os.path.basename(p)))
            for p in glob.glob(os.path.join(RESULTS, "convert-*.json"))]
    rows.sort(key=lambda x: (ORDER.get(x[1]["name"], 9), x[1]["name"], x[1]["path"] != "in-memory"))
    lines = ["| model | GGUF | samples | calibration | wall time | peak RSS | RSS - file | printed estimate "
             "| skip set |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in rows:
        gb, peak = r["file_bytes"] / 2**30, r["peak_rss_bytes"] / 2**30
        lines.append(f"| {LABELS.get(r['name'], r['label'])} | {gb:.2f} GB | {r['samples']} | {r['path']} | "
                     f"{r['seconds'] / 60:.1f} min | {peak:.1f} GB | {peak - gb:+.1f} GB | "
                     f"{r['estimate_min']} min, {r['estimate_gb']} GB | {_layers(r['skip_layers'])} |")
    return "\n".join(lines) + "\n\n" + _sources(*(name for name, _ in rows))


# (model label, suite results, the suite setting that is the default, how a user gets it, the conversion's
# results: what it chose and what its answer check measured, the headline name: its bench timed that file)
DEFAULTS = (("smollm2-q8_0", "smollm2-q8_0", "documents-check", "the embedded default (`pop-local chat`)", None,
             "smollm2"),
            ("gemma3", "gemma3-check", "documents-check", "`pop-local convert`", "convert-gemma3-streamed.json",
             "gemma3"),
            ("qwen2.5-coder-1.5b", "qwen2.5-coder-1.5b-check", "documents-check", "`pop-local convert`",
             "convert-qwen2.5-coder-1.5b-streamed.json", "qwen2.5-coder-1.5b"))


def _setting_skip(description: str) -> "tuple[str, str] | None":
    """(skip set, K/V) from a suite setting's description: the file's own ("20-29 (own K/V)") or an added
    setting's arguments ("skip_layers=13-17; kv_mode=fitted")."""
    m = re.search(r"(\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*) \((\w+) K/V\)", description)
    if m:
        return m.group(1), m.group(2)
    m = re.search(r"skip_layers=([\d,-]+)(?:; kv_mode=(\w+))?", description)
    return (m.group(1), m.group(2) or "own") if m else None


def _headline_prefill(name: str, skip: str, kv: str) -> "tuple[str, list] | None":
    """The headline bench's prefill speedups when it timed this skip set and K/V (else None)."""
    bench, ev = f"headline-{name}-bench.json", f"headline-{name}-eval.json"
    if not (os.path.exists(os.path.join(RESULTS, bench)) and os.path.exists(os.path.join(RESULTS, ev))):
        return None
    be, e = _load(bench), _load(ev)
    if _headline_choice(be, e) != (skip, kv):
        return None
    cells = [f"{r['n_tokens']}: **{r['speedup']:.2f}x** ({r['ideal_speedup']:.2f}x)" for r in be["prefill"]]
    return ", ".join(cells), [bench, ev]


def defaults() -> str:
    """What each model's default keeps: its skip set, the suite's verdict on every task the full model can
    do at each length, the measured prefill speedup (FLOP ideal: the suite's timing, else the headline
    bench's of the same choice), and its conversion's answer check."""
    from pop_local.measure.suite import retention

    lines = ["| model | default | skip set (K/V) | answers kept (suite, n per cell) | prefill (FLOP ideal) | "
             "the converter's check |", "|---|---|---|---|---|---|"]
    files = []
    for name, suite_name, setting, how, conv, headline_name in DEFAULTS:
        if not os.path.exists(os.path.join(RESULTS, f"suite-{suite_name}.json")):
            continue
        r, speed, f = _suite_files(suite_name)
        files += f
        skip, kv = _setting_skip(r["settings"][setting]["description"]) if setting in r["settings"] else ("-", "-")
        rows = [x for x in sorted(retention(r), key=lambda x: (x["task"], x["length"]))
                if x["setting"] == setting and x["verdict"] != "full below 0.3"]
        kept = [f"{task} " + ", ".join(f"{x['length']}: {x['verdict']} ({x['n']})" for x in rows if x["task"] == task)
                for task in dict.fromkeys(x["task"] for x in rows)]
        lengths = [L for L in sorted(speed) if setting in speed[L]["ms"]]
        pre = ", ".join(f"{L}: {_prefill(speed, setting, L)}" for L in lengths)
        check, ideal = "-", None
        if conv and os.path.exists(os.path.join(RESULTS, conv)):
            made = _load(conv)
            c = (made.get("frontier") or {}).get("check")
            if c:
                chosen = next((m for m in c["measured"] if m["passed"]), None)
                rejected = sum(not m["passed"] for m in c["measured"])
                check = (f"kept {c['full_right'] - chosen['lost']} of {c['full_right']}; {rejected} faster options "
                         "rejected") if chosen else "none kept"
                files.append(conv)
                now = _conversion_choice(made)
                if now != (skip, kv):  # the suite measured an earlier choice: say so, never pass it off
                    kept = ["not measured yet" + (f" (the suite has {skip} ({kv}), the choice before)"
                                                  if skip != "-" else "")]
                    skip, kv = now
                    pre = ""
                ideal = made["frontier"]["speedup_2048"]
        if not pre:
            timed = _headline_prefill(headline_name, skip, kv)
            if timed:
                pre, more = timed
                files += more
            else:
                pre = f"not timed (FLOP ideal {ideal:.2f}x at 2048)" if ideal else "not timed"
        lines.append(f"| {LABELS.get(name, name)} | {how} | {skip} ({kv}) | {'; '.join(kept)} | {pre} | {check} |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def converter_check(name: str) -> str:
    """The default conversion's answer check, candidate by candidate (benchmarks/converter_cost.py)."""
    source = f"convert-{name}-streamed.json"
    conv = _load(source)
    check = (conv.get("frontier") or {}).get("check")
    if not check:
        return f"(no answer check recorded in `{source}`)"
    lines = [f"{check['items']} questions of {check['length']} tokens; the full model answers {check['full_right']}, "
             "which each candidate is asked.",
             "", "| candidate (fastest first) | K/V | FLOP ideal @2048 | answered | lost | lower end | verdict |",
             "|---|---|---|---|---|---|---|"]
    for m in check["measured"]:
        low = "-" if m["low"] is None else _points(m["low"])
        verdict = "**keeps (chosen)**" if m["passed"] else ("stopped: cannot pass" if m["low"] is None else "fails")
        lines.append(f"| {m['skip']} | {m['kv']} | {m['speedup_2048']:.2f}x | {m['scored']} | {m['lost']} | "
                     f"{low} | {verdict} |")
    return "\n".join(lines) + f"\n\nChosen: {_layers(conv['skip_layers'])} ({conv['kv_method']} K/V), conversion " \
        f"{conv['seconds'] / 60:.1f} min, peak {conv['peak_rss_bytes'] / 2**30:.1f} GB for a " \
        f"{conv['file_bytes'] / 2**30:.2f} GB file ({conv['samples']} samples).\n\n" + _sources(source)


def layer_sets(name: str) -> str:
    """A skip set grown layer by layer under the answer check (benchmarks/layer_sets.py)."""
    source = f"layer-sets-{name}.json"
    r = _load(source)
    c = r["check"]
    lines = [f"Start: {r['start']['set']} ({r['start']['text']}); {c['items']} check questions of {c['length']} "
             f"tokens, the full model answers {c['full_right']}.", "",
             "| added layer | prefill importance | set tried | FLOP ideal @2048 | check | kept |",
             "|---|---|---|---|---|---|"]
    for t in r["trials"]:
        check = (f"{t['scored']} answered, {t['lost']} lost" if t["low"] is None
                 else f"{t['lost']} lost, lower end {_points(t['low'])}")
        lines.append(f"| {t['layer']} | {t['importance']:.3g} | {t['set']} | {t['speedup_2048']:.2f}x | {check} | "
                     f"{'yes' if t['kept'] else 'no'} |")
    return ("\n".join(lines) + f"\n\nFinal: {r['final']} ({r['final_speedup_2048']:.2f}x FLOP ideal at 2048 tokens)."
            "\n\n" + _sources(source))


def _agreement_files(prefix: str):
    """One agreement benchmark's results files, the models in table order."""
    return sorted(glob.glob(os.path.join(RESULTS, f"{prefix}-*.json")),
                  key=lambda p: ORDER.get(_load(os.path.basename(p))["name"], 9))


def _agreed(tally: dict, what: str) -> str:
    decided = tally["agree"] + tally["disagree"]
    return (f"the check agrees with the suite on {tally['agree']} of {decided} {what} the suite decides "
            f"({tally['suite undecided']} undecided by the suite)")


def check_agreement() -> str:
    """The converter's check against the answers suite, every setting of every model
    (benchmarks/check_agreement.py)."""
    files = _agreement_files("check-agreement")
    if not files:
        return "(not measured yet: `python benchmarks/check_agreement.py NAME`)"
    lines = ["| model | setting | the check (24 items at 1k) | the suite (kept / lost / undecided cells) | |",
             "|---|---|---|---|---|"]
    tally = {"agree": 0, "disagree": 0, "suite undecided": 0}
    for path in files:
        r = _load(os.path.basename(path))
        for row in r["rows"]:
            cells = [c for c in row["cells"] if c["verdict"] != "full below 0.3"]
            count = {v: sum(c["verdict"] == v for c in cells) for v in ("kept", "lost", "undecided")}
            where = ", ".join(f"{c['task']}@{c['length'] // 1024}k {c['verdict']}" for c in cells)
            tally[row["agreement"]] += 1
            lines.append(f"| {LABELS.get(r['name'], r['name'])} | {row['setting']} | {row['check']['text']} | "
                         f"{row['suite']} ({count['kept']} / {count['lost']} / {count['undecided']}: {where}) | "
                         f"{row['agreement']} |")
    return ("\n".join(lines) + f"\n\n{_agreed(tally, 'settings').capitalize()}.\n\n"
            + _sources(*(os.path.basename(p) for p in files)))


def candidate_agreement() -> str:
    """The converter's check against the suite on every candidate a default conversion's check measured
    (benchmarks/candidate_agreement.py)."""
    files = _agreement_files("candidate-agreement")
    if not files:
        return "(not measured yet: `python benchmarks/candidate_agreement.py NAME`)"
    lines = ["| model | candidate (fastest first) | the conversion's check | the suite (n per task) | |",
             "|---|---|---|---|---|"]
    tally = {"agree": 0, "disagree": 0, "suite undecided": 0}
    for path in files:
        r = _load(os.path.basename(path))
        for row in r["rows"]:
            c, right = row["check"], r["check_shape"]["full_right"]
            check = (f"passes ({c['scored']} of {right})" if c["passed"] else
                     f"fails: {c['lost']} lost of {c['scored']} asked")
            cells = "; ".join(f"{x['task']}@{x['length'] // 1024}k {_points(x['score'] - x['full'])} "
                              f"[{_points(x['low'])}] {x['verdict']} ({x['n']})" for x in row["cells"])
            tally[row["agreement"]] += 1
            lines.append(f"| {LABELS.get(r['name'], r['name'])} | {row['candidate']} | {check} | {row['suite']}: "
                         f"{cells} | {row['agreement']} |")
    return ("\n".join(lines) + f"\n\nOn the candidates the converter measured, {_agreed(tally, 'candidates')}; "
            "each cell: points against the full model [the paired interval's lower end], verdict (n).\n\n"
            + _sources(*(os.path.basename(p) for p in files)))


def weight_types() -> str:
    """The embedded default's weight type: prefill and answers per type (benchmarks/weight_types.py)."""
    source = "weight-types-smollm2.json"
    r = _load(source)
    lengths = r["lengths"]
    lines = ["| type | file | " + " | ".join(f"prefill {n}: full / paper's set" for n in lengths)
             + f" | answers (of {r['rows'][0]['answers']['n']}) | vs Q4_1 [95% interval] |",
             "|---|---|" + "---|" * len(lengths) + "---|---|"]
    base = next(row for row in r["rows"] if row["type"] == "q4_1")["prefill_ms"]
    for row in r["rows"]:
        a = row["answers"]
        speed = " | ".join(f"{row['prefill_ms'][str(n)]['full']:.0f} / {row['prefill_ms'][str(n)]['paper']:.0f} ms "
                           f"({base[str(n)]['full'] / row['prefill_ms'][str(n)]['full']:.2f}x)" for n in lengths)
        lines.append(f"| {row['type'].upper()} | {row['file_bytes'] / 2**20:.0f} MiB | {speed} | "
                     f"{round(a['score'] * a['n'])} | {_points(a['diff_vs_q4_1'])} [{_points(a['low'])}, "
                     f"{_points(a['high'])}] |")
    return ("\n".join(lines) + f"\n\nMedians of {r['repeats']} alternating runs in one process; the paper's set is "
            f"{_layers(r['paper'])} (own K/V); (x) is the full model's prefill speed against Q4_1's.\n\n"
            + _sources(source))


def budget(name: str) -> str:
    """One model's paper set against its default budget: the converter's frontier, eval and bench."""
    conv_f, ev_f, be_f = f"convert-{name}-streamed.json", f"budget-{name}-eval.json", f"budget-{name}-bench.json"
    conv, ev, be = _load(conv_f), _load(ev_f), _load(be_f)
    fr = conv["frontier"]
    ctx = [str(c) for c in ev["contexts"]]
    speed = {row["n_tokens"]: row for row in be["prefill"]}
    lines = ["| model | setting | skip set | K/V | converter held-out KL | eval KL (" + " / ".join(ctx)
             + ") | eval top-1 | prefill @512 (FLOP ideal) | prefill @2048 (FLOP ideal) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, mode, skip, kv, kl, prefix in (
            ("paper (last third)", "paper", be["paper_skip_layers"], "own", fr["paper_kl"], "paper_"),
            ("**default budget**", ev["file_choice"], be["skip_layers"], conv["kv_method"], fr["kl"], "")):
        m = ev["modes"][mode]
        by = " / ".join(f"{m['by_context'][c]['kl_to_full']:.3f}" for c in ctx)
        cells = [f"{speed[n][prefix + 'speedup']:.2f}x ({speed[n][prefix + 'ideal_speedup']:.2f}x)"
                 for n in (512, 2048)]
        lines.append(f"| {LABELS.get(name, name)} | {label} | {skip} | {kv} | {kl:.3f} | "
                     f"{m['kl_to_full']:.3f} ({by}) | {m['top1_agreement']:.3f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n\n" + _sources(conv_f, ev_f, be_f)


def llama8b_shape() -> str:
    """The 8B-shaped random-weight model: conversion cost and prefill (benchmarks/llama8b_shape.py)."""
    name = "llama-3.1-8b-shape"
    conv_f, be_f = f"convert-{name}-streamed.json", f"bench-{name}.json"
    conv, be = _load(conv_f), _load(be_f)
    gb, peak = conv["file_bytes"] / 2**30, conv["peak_rss_bytes"] / 2**30
    lines = ["| model (random weights) | GGUF | samples | wall time | peak RSS | skip set (K/V) | prompt tokens "
             "| full ms | POP ms | speedup | FLOP ideal |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in be["prefill"]:
        lines.append(f"| Llama-3.1-8B shape, Q4_0 | {gb:.2f} GB | {conv['samples']} | {conv['seconds'] / 60:.0f} min | "
                     f"{peak:.1f} GB | {be['skip_layers']} ({conv['kv_method']}) | {row['n_tokens']} | "
                     f"{row['full_ms']['median']:.0f} | {row['pop_ms']['median']:.0f} | **{row['speedup']:.2f}x** | "
                     f"{row['ideal_speedup']:.2f}x |")
    return "\n".join(lines) + "\n\n" + _sources(conv_f, be_f)


def arch_bench() -> str:
    """Prefill on generated MoE and KV-sharing models (benchmarks/architectures.py)."""
    lines = ["| case (random weights) | prompt tokens | full ms | POP ms (skip) | speedup | FLOP ideal "
             "| exact skip only ms | exact speedup | exact FLOP ideal |", "|---|---|---|---|---|---|---|---|---|"]
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(RESULTS, "arch-*.json")))
    for name in files:
        r = _load(name)
        d = r["dims"]
        shape = (f"{r['architecture']}, {d['n_layer']} layers, hidden {d['n_embd']}"
                 + (f", {d['n_expert']} experts top-{d['n_expert_used']}" if "n_expert" in d else "")
                 + (f", last {d['n_kv_shared']} layers share K/V" if "n_kv_shared" in d else ""))
        for row in r["prefill"]:
            pop = (f"{row['pop_ms']['median']:.0f} ({r['skip_layers']}"
                   + (f" + exact {r['exact_layers']})" if r.get("exact_layers") else ")"))
            exact = (f"{row['exact_ms']['median']:.0f} | **{row['exact_speedup']:.2f}x** | "
                     f"{row['exact_ideal_speedup']:.2f}x" if "exact_ms" in row else "- | - | -")
            lines.append(f"| {r['case']}: {shape} | {row['n_tokens']} | {row['full_ms']['median']:.0f} | {pop} | "
                         f"**{row['speedup']:.2f}x** | {row['ideal_speedup']:.2f}x | {exact} |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def images() -> str:
    """Image prefill on real language models with generated projectors (benchmarks/image_prefill.py)."""
    lines = ["| language model (real) + projector (random weights) | skip set | image tokens (pruned) | prompt tokens "
             "| full ms | POP ms | speedup | FLOP ideal (language model) |", "|---|---|---|---|---|---|---|---|"]
    files = sorted((os.path.basename(p) for p in glob.glob(os.path.join(RESULTS, "image-*.json"))),
                   key=lambda n: ORDER.get(n[len("image-"):-len(".json")], 99))
    for name in files:
        r = _load(name)
        label = LABELS.get(name[len("image-"):-len(".json")], r["model"])
        f, p = r["full_ms"], r["pop_ms"]
        lines.append(f"| {label} + {r['mmproj'].split('-')[1]} projector | {r['skip_layers']} | {r['image_tokens']} "
                     f"({r['image_pruned_tokens']}) | {r['prompt_tokens']} | "
                     f"{f['median']:.0f} ({f['min']:.0f}-{f['max']:.0f}) | "
                     f"{p['median']:.0f} ({p['min']:.0f}-{p['max']:.0f}) | **{r['speedup']:.2f}x** | "
                     f"{r['ideal_speedup']:.2f}x |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def architectures() -> str:
    """The supported-architectures table, from the one list (pop_local/format/architectures.py)."""
    from pop_local.converter.arch import calibrated_architectures
    from pop_local.format.architectures import markdown_table

    return markdown_table(calibrated_architectures())


def help(command: str) -> str:  # shadows the builtin on purpose: the block key is "help COMMAND"
    """`pop-local COMMAND --help`, as the command prints it."""
    from click.testing import CliRunner

    from pop_local.apps.cli import cli

    out = CliRunner().invoke(cli, [command, "--help"], prog_name="pop-local", terminal_width=100).output
    return f"```text\n$ pop-local {command} --help\n{out.rstrip()}\n```"


def _points(x: float) -> str:
    return f"{x * 100:+.0f}".replace("-", "\u2212")


def _suite_files(name: str):
    """The suite's answers, its speed rows by length ({} without them) and the file names."""
    r = _load(f"suite-{name}.json")
    files, speed = [f"suite-{name}.json"], {}
    if os.path.exists(os.path.join(RESULTS, f"suite-{name}-speed.json")):
        speed = {row["n_tokens"]: row for row in _load(f"suite-{name}-speed.json")["rows"]}
        files.append(f"suite-{name}-speed.json")
    return r, speed, files


def _suite_n(cells: dict, setting: str, tasks, L: int) -> str:
    """The items per task at one length: one number, or one per task run there when they differ."""
    ns = [str(cells[(setting, t, L)]["n"]) for t in tasks if (setting, t, L) in cells]
    return ns[0] if len(set(ns)) == 1 else "/".join(ns)


def _prefill(speed: dict, setting: str, L: int) -> str:
    sp = speed.get(L)
    if sp is None or (setting != "full" and setting not in sp["speedup"]):
        return "-"
    return "1.00x" if setting == "full" else f"**{sp['speedup'][setting]:.2f}x** ({sp['ideal'][setting]:.2f}x)"


def _retained(x: dict) -> str:
    if x["retention"] is None:
        return f"full {x['full']:.2f} < 0.3"
    return f"{x['retention'] * 100:.0f}%, {_points(x['diff'])} [{_points(x['low'])}, {_points(x['high'])}]"


def suite_rows(name: str, settings: str, lengths: str = "", tasks: str = "") -> str:
    """Chosen POP settings of one model's suite side by side (at the comma-separated `lengths` and
    `tasks`, default all), every task the full model can do: score, retention and interval, verdict,
    prefill speedup."""
    from pop_local.measure.suite import retention

    r, speed, files = _suite_files(name)
    wanted = settings.split(",")
    at = {int(x) for x in lengths.split(",") if x}
    only = {x for x in tasks.split(",") if x}
    rows = sorted((x for x in retention(r) if x["setting"] in wanted and x["verdict"] != "full below 0.3"
                   and (not at or x["length"] in at) and (not only or x["task"] in only)),
                  key=lambda x: (x["task"], x["length"], wanted.index(x["setting"])))
    lines = ["| tokens | task | setting | what it runs | n | score (full) | POP − full [95%] | verdict | "
             "prefill (FLOP ideal) |", "|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['length']} | {x['task']} | {x['setting']} | {r['settings'][x['setting']]['description']} | "
                     f"{x['n']} | {x['score']:.2f} ({x['full']:.2f}) | {_retained(x)} | {x['verdict']} | "
                     f"{_prefill(speed, x['setting'], x['length'])} |")
    return "\n".join(lines) + "\n\n" + _sources(*files)


def suite(name: str) -> str:
    """The answers suite of one model (benchmarks/suite.py): per setting and prompt length, each task's
    score; for POP settings also the retention (POP / full) and the paired 95% interval of POP - full in
    points, then the verdicts; the prefill speedup at that length (FLOP ideal). A task not run at a
    length shows "-". Then the speed rows."""
    r, speed, files = _suite_files(name)
    cells = {(c["setting"], c["task"], c["length"]): c for c in r["cells"]}
    rows = {(x["setting"], x["task"], x["length"]): x for x in r["retention"]}
    tasks = r["tasks"]
    lines = ["| setting | length | n | prefill (FLOP ideal) | " + " | ".join(tasks) + " | kept / undecided / lost |",
             "|---|---|---|---|" + "---|" * len(tasks) + "---|"]
    for setting, info in r["settings"].items():
        for L in r["lengths"]:
            if not any((setting, t, L) in cells for t in tasks):
                continue
            out, verdicts = [], []
            for t in tasks:
                c = cells.get((setting, t, L))
                if c is None:
                    out.append("-")
                elif setting == "full":
                    out.append(f"{c['score']:.2f}")
                else:
                    x = rows[(setting, t, L)]
                    verdicts.append(x["verdict"])
                    out.append(f"{c['score']:.2f}" + ("" if x["retention"] is None else f" ({_retained(x)})"))
            tally = ("-" if setting == "full" else
                     f"{verdicts.count('kept')} / {verdicts.count('undecided')} / {verdicts.count('lost')}")
            label = "full" if setting == "full" else f"{setting}: {info['description']}"
            lines.append(f"| {label} | {L} | {_suite_n(cells, setting, tasks, L)} | {_prefill(speed, setting, L)} | "
                         + " | ".join(out) + f" | {tally} |")
    if speed:
        names = [s for s in r["settings"] if s != "full"]
        lines += ["", "| prompt tokens | full ms | " + " | ".join(names) + " | timed runs |",
                  "|---|---|" + "---|" * len(names) + "---|"]
        for n_tokens, row in sorted(speed.items()):
            lines.append(f"| {n_tokens} | {row['ms']['full']:.0f} | " + " | ".join(
                f"{row['speedup'][s]:.2f}x ({row['ideal'][s]:.2f}x)" if s in row["speedup"] else "-" for s in names)
                + f" | {row.get('repeats', '?')} |")
    return "\n".join(lines + ["", _sources(*files)])


def _suite_names():
    paths = glob.glob(os.path.join(RESULTS, "suite-*.json"))
    names = {os.path.basename(p)[len("suite-"):-len(".json")] for p in paths if not p.endswith("-speed.json")}
    return sorted(names, key=lambda n: (ORDER.get(n, 9), n))


def suite_summary() -> str:
    """The README's answers table: per model, POP setting and length, each task's retention, the paired
    95% interval of POP - full (points) and the verdict, with n and the prefill speedup (FLOP ideal).
    Tasks that no model's full model can do (under 0.3 everywhere) are left to docs/answers-suite.md, and
    so are the answer-checked defaults' own suites (NAME-check: the `defaults` table sums them up) and the
    shallow sets measured beside them (NAME-shallow)."""
    names = [n for n in _suite_names() if not n.endswith(("-check", "-shallow"))]
    runs = {n: _suite_files(n) for n in names}
    doable = {x["task"] for r, _, _ in runs.values() for x in r["retention"] if x["retention"] is not None}
    tasks = [t for t in dict.fromkeys(t for r, _, _ in runs.values() for t in r["tasks"]) if t in doable]
    lines = ["| model | setting | tokens | n | prefill (FLOP ideal) | " + " | ".join(tasks) + " |",
             "|---|---|---|---|---|" + "---|" * len(tasks)]
    files = []
    for name in names:
        r, speed, f = runs[name]
        files += f
        rows = {(x["setting"], x["task"], x["length"]): x for x in r["retention"]}
        cells = {(c["setting"], c["task"], c["length"]): c for c in r["cells"]}
        model = LABELS.get(name, name)
        for setting, info in r["settings"].items():
            if setting == "full":
                continue
            skip = re.search(r"(\d+(?:-\d+)?) \((\w+) K/V\)", info["description"])
            label = f"{setting} ({skip.group(1)}, {skip.group(2)})" if skip else setting
            for L in r["lengths"]:
                if not any((setting, t, L) in rows for t in tasks):
                    continue
                out = []
                for t in tasks:
                    x, full = rows.get((setting, t, L)), cells.get(("full", t, L))
                    if x is None:  # not run with this setting: say why where the full model cannot do it
                        out.append(f"full {full['score']:.2f} < 0.3" if full and full["score"] < 0.3 else "-")
                    else:
                        out.append(_retained(x) + ("" if x["retention"] is None else f", {x['verdict']}"))
                lines.append(f"| {model} | {label} | {L} | {_suite_n(cells, setting, tasks, L)} | "
                             f"{_prefill(speed, setting, L)} | " + " | ".join(out) + " |")
                model = label = ""
    plots = [f"![{LABELS.get(n, n)}: retention and prefill speedup against prompt length]"
             f"(benchmarks/results/suite-{n}.png)" for n in names
             if os.path.exists(os.path.join(RESULTS, f"suite-{n}.png"))]
    return "\n".join(lines + ["", _sources(*files)] + ([""] + plots if plots else []))


def http_fuzz() -> str:
    """The server fuzzed from its own OpenAPI schema, and by hand (benchmarks/http_fuzz.py)."""
    name = "http-fuzz.json"
    if not os.path.exists(os.path.join(RESULTS, name)):
        return ("(not measured yet: `python benchmarks/http_fuzz.py --requests 1000 "
                "--json benchmarks/results/http-fuzz.json`)")
    r = _load(name)
    lines = ["| operation | requests | answers (status: count) |", "|---|---|---|"]
    for op, statuses in r["by_operation"].items():
        answers = ", ".join(f"{status}: {n}" for status, n in statuses.items())
        lines.append(f"| `{op}` | {sum(statuses.values())} | {answers} |")
    lines += ["", f"{r['requests']} schema-drawn requests over {r['operations']} operations in {r['seconds']:.0f} s "
              f"(seed {r['seed']}, context {r['n_ctx']}): **{r['server_errors']} server errors (5xx), "
              f"{r['unanswered']} unanswered, {r['hangs']} hangs, {r['crashes']} crashes**; afterwards a normal "
              f"request answered {r['after']}. By hand: "
              + "; ".join(f"{case} {status}" for case, status in r["hand_written"].items()) + ".",
              "", _sources(name)]
    return "\n".join(lines)


def suite_all() -> str:
    """Every model's suite table (suite NAME) with its plot."""
    parts = []
    for name in _suite_names():
        plot = f"../benchmarks/results/suite-{name}.png"
        parts += [f"### {LABELS.get(name, name)}", "", suite(name), "",
                  f"![retention and prefill speedup against prompt length, {name}]({plot})", ""]
    return "\n".join(parts).rstrip()


TABLES = {"headline": headline, "answers": answers, "min-tokens": min_tokens, "converter-cost": converter_cost,
          "budget": budget,
          "suite": suite, "suite-summary": suite_summary, "converter-check": converter_check,
          "suite-rows": suite_rows, "layer-sets": layer_sets, "defaults": defaults,
          "check-agreement": check_agreement, "weight-types": weight_types,
          "candidate-agreement": candidate_agreement, "suite-all": suite_all,
          "llama8b-shape": llama8b_shape,
          "arch-bench": arch_bench, "images": images, "architectures": architectures, "help": help,
          "http-fuzz": http_fuzz}


def render(key: str) -> str:
    name, *args = key.split()
    if name not in TABLES:
        raise SystemExit(f"unknown generated block {key!r} (known: {', '.join(TABLES)})")
    return TABLES[name](*args)


def documents():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block differs from its source")
    p.add_argument("--show", metavar="KEY", help="print one block and stop")
    a = p.parse_args(argv)
    if a.show:
        print(render(a.show))
        return 0
    stale = []
    for path in documents():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        made = {}

        def fill(m):
            key = m.group("key").strip()
            made[key] = body = "\n" + made.get(key, render(key)) + "\n"  # noqa: B023 - BLOCK.sub() calls fill() within this iteration
            if m.group("body") != body:
                stale.append(f"{os.path.relpath(path, ROOT)}: {key}")  # noqa: B023 - BLOCK.sub() calls fill() within this iteration
            return m.group(1) + body + m.group(4)

        new = BLOCK.sub(fill, text)
        if new != text and not a.check:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(new)
            os.replace(tmp, path)
    if stale:
        print(("stale generated blocks (run python benchmarks/tables.py):\n  " if a.check else "rewrote:\n  ")
              + "\n  ".join(stale), file=sys.stderr if a.check else sys.stdout)
    return 1 if stale and a.check else 0


if __name__ == "__main__":
    sys.exit(main())
