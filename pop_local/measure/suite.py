"""Answers at the lengths people prompt: RULER's generated tasks and pop-local's document questions,
through lm-evaluation-harness, for several POP settings on one loaded model; retention with paired
intervals; prefill speed at the same lengths.

Tasks (all generated locally from the model's tokenizer, nothing downloaded):
    niah_single_1, niah_multikey_2, niah_multikey_3, ruler_vt, ruler_cwe, ruler_fwe   lm_eval's RULER
    pop_docqa   pop_local/measure/docqa.py (staff reports with distractors; tasks/pop_docqa.yaml)
    pop_needle  pop_local/measure/needles.py (one needle in varied prose; tasks/pop_needle.yaml): RULER's
                offline single needle repeats one sentence around it, which SmolLM2's deep sets keep
RULER's essay and SQuAD/HotpotQA variants download their text and are left out.

The tokenizer comes from the GGUF (transformers reads it; exported once into the cache), so the
prompts fill each length in the model's own tokens. Every setting answers the same items: the tasks are
built once per length (RULER's generators draw from process-wide random state, so building them again
would give other items) and each item's prompt hash is checked when settings are paired.

Generation is greedy (lm_eval's `generate_until` through `--model pop-local`), with each task's reply
capped at GEN_CAP tokens (RULER asks for up to 128; its answers come first, and every setting gets the
same cap, so the comparison stays paired). A length L holds prompts of at most L - 128 tokens (RULER's
own budget), L - 96 (pop_docqa) or L - 64 (pop_needle), before the chat template's few tokens; the context is L tokens.

`run_suite` returns a JSON-ready dict; `retention` turns it into rows (score, retention, paired 95%
bootstrap interval of POP - full, verdict); `measure_speed` times prefill of every setting at each length,
alternating in one process, with the FLOP ideal.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from pop_local.errors import PopError
from pop_local.format.frontier import keeps_answers

__all__ = ["TASKS", "GEN_CAP", "Setting", "standard_settings", "tokenizer_dir", "offline_environment",
           "paired_interval", "retention", "measure_speed", "TASKS_DIR", "check_settings", "merge_results"]

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tasks")
RULER = ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe")
TASKS = RULER + ("pop_docqa", "pop_needle")
# reply tokens per task: room for the answer (a 7-digit number, a UUID, five variable names, ten or three
# words, a short value) with some slack
GEN_CAP = {"niah_single_1": 24, "niah_multikey_2": 24, "niah_multikey_3": 48, "ruler_vt": 30, "ruler_cwe": 64,
           "ruler_fwe": 32, "pop_docqa": 24, "pop_needle": 24}
MIN_FULL_SCORE = 0.3  # below this the full model cannot do the task: no retention is reported


@dataclass(frozen=True)
class Setting:
    """A named POP setting: `args` are pop-local model_args (PopFields names) for `lm_eval --model pop-local`."""
    name: str
    args: Dict[str, Any] = field(default_factory=dict)
    description: str = ""


def standard_settings(path: str) -> List[Setting]:
    """full; the file's own setting ("default", when it has a skip set); the paper's last third with own
    K/V; two shallower tails (a quarter and a sixth of the layers, own K/V). A setting equal to one before
    it is left out (SmolLM2's default is the paper's set)."""
    from pop_local.format.frontier import paper_skip_set
    from pop_local.format.layers import format_layers
    from pop_local.format.metadata import read_pop_metadata

    meta = read_pop_metadata(path)
    n = meta.n_layer
    kv = meta.extra.get("pop.prefill.kv_method", "own")
    out = [Setting("full", {"pop": False}, "the full model")]
    seen = set()
    paper = tuple(paper_skip_set(n))
    if meta.skip_layers:
        same = " = the paper's last third" if (tuple(meta.skip_layers), kv) == (paper, "own") else ""
        out.append(Setting("default", {}, f"the file's {format_layers(meta.skip_layers)} ({kv} K/V){same}"))
        seen.add((tuple(meta.skip_layers), kv))
    tails = [("paper", paper, "the paper's last third")]
    tails += [(f"tail-{k}", tuple(range(n - k, n)), f"the last {k} layers") for k in (round(n / 4), round(n / 6))]
    for name, skip, words in tails:
        if (skip, "own") in seen or not skip:
            continue
        seen.add((skip, "own"))
        out.append(Setting(name, {"pop": True, "skip_layers": format_layers(skip), "kv_mode": "own"},
                           f"{words}, {format_layers(skip)} (own K/V)"))
    return out


def offline_environment() -> None:
    """No hub, no dataset server, no nltk download: RULER's import asks nltk for punkt_tab (used only by
    the essay haystacks), which offline prints an error per process; an empty stand-in stops the attempt."""
    from pop_local.runtime.models import cache_dir

    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    try:
        import nltk
    except ImportError:
        return  # RULER's import names the missing package itself
    try:
        nltk.data.find("tokenizers/punkt_tab")
        return
    except LookupError:
        pass
    stub = os.path.join(cache_dir(), "nltk-stub")
    os.makedirs(os.path.join(stub, "tokenizers", "punkt_tab"), exist_ok=True)
    os.environ["NLTK_DATA"] = stub + (os.pathsep + os.environ["NLTK_DATA"] if os.environ.get("NLTK_DATA") else "")
    nltk.data.path.insert(0, stub)  # nltk read NLTK_DATA when it was imported


def tokenizer_dir(path: str) -> str:
    """A transformers tokenizer folder for the GGUF at `path` (read from the file by transformers,
    exported once into the cache; keyed by the file's size and name), for RULER's `tokenizer` metadata."""
    import shutil
    import tempfile

    from pop_local.runtime.models import cache_dir

    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]
    out = os.path.join(cache_dir(), "tokenizers", f"{os.path.basename(path)}-{key}")
    if os.path.isfile(os.path.join(out, "tokenizer_config.json")):
        return out
    from transformers import AutoTokenizer

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=".tok-")
    try:
        AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                      gguf_file=os.path.basename(path)).save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def paired_interval(pop: Sequence[float], full: Sequence[float], *, iters: int = 10000, seed: int = 0,
                    level: float = 0.95):
    """(mean difference, low, high): percentile bootstrap over items of mean(pop - full), items paired."""
    import numpy as np

    d = np.asarray(pop, dtype=float) - np.asarray(full, dtype=float)
    if d.size == 0:
        raise PopError("no items to compare")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(iters, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def check_settings(result: Optional[Dict[str, Any]], settings: Sequence[Setting]) -> None:
    """Settings to add to recorded results: names unique, and a recorded name not reused for other
    arguments (PopError, before anything runs)."""
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PopError(f"settings named twice: {twice} (a setting of your own takes a name of its own)")
    for s in settings:
        recorded = (result or {}).get("settings", {}).get(s.name)
        if recorded is not None and recorded["args"] != s.args:
            raise PopError(f"setting {s.name!r} was recorded with {recorded['args']}, now {s.args}: "
                           "give the new one another name")


def merge_results(result: Optional[Dict[str, Any]], part: Dict[str, Any]) -> Dict[str, Any]:
    """`part` (a run_suite result) added to `result`, its cells replacing any recorded under the same keys."""
    if result is None:
        return part
    for name, info in part["settings"].items():
        result["settings"].setdefault(name, info)
    new = {(c["setting"], c["task"], c["length"]) for c in part["cells"]}
    result["cells"] = [c for c in result["cells"] if (c["setting"], c["task"], c["length"]) not in new]
    result["cells"] += part["cells"]
    result["lengths"] = sorted(set(result["lengths"]) | set(part["lengths"]))
    result["tasks"] = list(dict.fromkeys(result["tasks"] + part["tasks"]))
    result["items"].update(part["items"])
    result["gen_cap"].update(part["gen_cap"])
    return result


def retention(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One row per (task, length, POP setting): n, score, full score, retention (None where the full
    model scores under MIN_FULL_SCORE), the paired 95% interval of POP - full, and a verdict:
    "kept" (at least 95% of the full score and the interval's low end above -10 points:
    format.frontier.keeps_answers, the converter's rule too), "lost" (interval below 0), else "undecided"."""
    by = {(c["task"], c["length"], c["setting"]): c for c in result["cells"]}
    rows = []
    for (task, length, setting), cell in by.items():
        if setting == "full":
            continue
        full = by[(task, length, "full")]
        if [r["hash"] for r in cell["items"]] != [r["hash"] for r in full["items"]]:
            raise PopError(f"{task} at {length}: {setting} and full answered different items")
        diff, low, high = paired_interval([r["score"] for r in cell["items"]], [r["score"] for r in full["items"]])
        able = full["score"] >= MIN_FULL_SCORE
        verdict = ("full below 0.3" if not able else "lost" if high < 0 else
                   "kept" if keeps_answers(cell["score"], full["score"], low) else "undecided")
        rows.append({"task": task, "length": length, "setting": setting, "n": cell["n"], "score": cell["score"],
                     "full": full["score"], "retention": cell["score"] / full["score"] if able else None,
                     "diff": diff, "low": low, "high": high, "verdict": verdict})
    return rows


def measure_speed(llm, settings: Sequence[Setting], lengths: Sequence[int], *, repeats: int = 2,
                  progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Prefill milliseconds of every setting at every length (the bench prompt) on the loaded PopLlama `llm`,
    alternating in one process: one warm-up run of each setting at the shortest length, then `repeats`
    rounds per length with the order flipping; medians, speedup over full, and the FLOP ideal
    (pop_local.measure.flops). The context must hold the longest length."""
    import statistics

    from pop_local.runtime.settings import PopSettings, build

    from .bench import bench_prompt, time_prefill
    from .flops import ideal_speedup, model_shape

    if max(lengths) > llm.n_ctx():
        raise PopError(f"speed at {max(lengths)} tokens needs that context; the model was opened with {llm.n_ctx()}")
    pops = {s.name: build(PopSettings, s.args) for s in settings}
    names = list(pops)
    if "full" not in pops:
        raise PopError("the speed rows need the full setting to compare with")
    shape = model_shape(llm.model_path)
    say = progress or (lambda text: None)
    rows = []
    try:
        for i, n in enumerate(sorted(lengths)):
            prompt = bench_prompt(llm, n)
            times: Dict[str, List[float]] = {name: [] for name in names}
            warm = i == 0  # the first length's first round warms up and is not counted
            for r in range(repeats + warm):
                for name in (names if r % 2 == 0 else names[::-1]):
                    llm.apply_pop_settings(pops[name])
                    ms = time_prefill(llm, prompt)
                    if not (warm and r == 0):
                        times[name].append(ms)
            full = statistics.median(times["full"])
            row = {"n_tokens": n, "ms": {k: statistics.median(v) for k, v in times.items()}, "speedup": {}, "ideal": {}}
            for name in names:
                if name != "full":
                    llm.apply_pop_settings(pops[name])
                    row["speedup"][name] = full / row["ms"][name]
                    row["ideal"][name] = ideal_speedup(shape, n, llm.skip_layers if llm.pop_enabled else (),
                                                       full_tail=llm.full_tail)
            rows.append(row)
            say(f"speed at {n} tokens: " + ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items()))
    finally:
        llm.reset()
    return {"repeats": repeats, "threads": llm.context_params.n_threads_batch, "rows": rows}
