"""The answers suite run through lm-evaluation-harness (`--model pop-local`): every POP setting answers
the same generated items on one loaded model (pop_local.measure.suite says what is measured and how it
is summarised; this module drives lm_eval and loads the model).

    from pop_local.integrations.lm_eval_suite import run_suite, suite_speed
    result = run_suite("m.pop.gguf", lengths=[1024], items={1024: 50})
    rows = pop_local.measure.suite.retention(result)
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from pop_local.errors import PopError
from pop_local.measure.suite import (
    GEN_CAP,
    TASKS,
    TASKS_DIR,
    Setting,
    measure_speed,
    offline_environment,
    standard_settings,
    tokenizer_dir,
)

__all__ = ["run_suite", "suite_speed", "item_hashes", "parse_setting", "missing_cells"]


def _load_tasks(tasks: Sequence[str], length: int, tokenizer: str, docqa_items: int):
    """The tasks at one prompt length. RULER's generators draw from the process-wide `random` and numpy
    states, so each task is built after seeding both from (task, length): the same items in every run,
    whatever else the run builds, and a later run can add settings to earlier results. (ruler_cwe also
    shuffles with a generator of its own, made when its module runs: the module runs afresh each time.)"""
    import random
    import sys
    import zlib

    import numpy as np
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=TASKS_DIR, metadata={
        "tokenizer": tokenizer, "max_seq_lengths": [length], "docqa_items": docqa_items})
    loaded: Dict[str, Any] = {"tasks": {}, "groups": {}, "group_map": {}}
    for name in tasks:
        seed = zlib.crc32(f"{name}:{length}".encode())
        random.seed(seed)
        np.random.seed(seed)
        sys.modules.pop("lm_eval.tasks.ruler.cwe_utils", None)  # its RNG = random.Random(42), fresh
        one = manager.load([name])
        for key in loaded:
            loaded[key].update(one[key])
    for name, task in loaded["tasks"].items():
        task.set_config(key="generation_kwargs", value={"max_gen_toks": GEN_CAP[name]}, update=True)
    return loaded


def _doc_hash(doc: Dict[str, Any]) -> str:
    """An item's identity: its prompt text, hashed (pairs a setting's answers with the full model's)."""
    return hashlib.sha1(doc["input"].encode()).hexdigest()[:12]


def item_hashes(path: str, tasks: Sequence[str], length: int, n: int) -> Dict[str, List[str]]:
    """The hashes of the first `n` items of each task at `length`, as run_suite would ask them (so a run
    that adds settings to earlier results can tell whether those answered the same items)."""
    offline_environment()
    loaded = _load_tasks(tasks, length, tokenizer_dir(path), max(n, 1))
    return {name: [_doc_hash(doc) for doc in list(task.eval_docs)[:n]] for name, task in loaded["tasks"].items()}


def parse_setting(text: str) -> Setting:
    """"NAME:KEY=VALUE;KEY=VALUE" (pop-local model_args, as for lm_eval) -> a Setting, its values checked."""
    from .lm_eval import split_model_args

    name, _, spec = text.partition(":")
    args: Dict[str, Any] = {}
    for part in filter(None, spec.split(";")):
        key, eq, value = part.partition("=")
        if not eq:
            args = {}
            break
        value = value.strip()
        args[key.strip()] = {"true": True, "false": False}.get(value.lower(), value)
        if key.strip() != "skip_layers" and value.lstrip("-").isdigit():  # numbers as lm_eval passes them
            args[key.strip()] = int(value)
    if not name or not args:
        raise PopError(f"{text!r}: expected NAME:KEY=VALUE;KEY=VALUE")
    try:
        split_model_args(args)
    except PopError as e:
        raise PopError(f"{text!r}: {e}") from None
    return Setting(name, args, "; ".join(f"{k}={v}" for k, v in args.items()))


def missing_cells(result: Optional[Dict[str, Any]], path: str, settings: Sequence[Setting], tasks: Sequence[str],
                  length: int, n: int):
    """What a run at `length` must add to recorded `result`: ({tasks: [settings]}, the recorded (setting,
    task, length) cells it replaces). A task whose recorded items are not the ones the generators ask now
    (recorded before they were seeded per task, or by another version) runs again for every setting
    recorded there. PopError, before anything runs, when that or the pairing with the full model cannot
    be done."""
    cells = {(c["setting"], c["task"]): c for c in (result or {}).get("cells", []) if c["length"] == length}
    names = [s.name for s in settings]
    recorded = sorted({t for (_, t) in cells} & set(tasks))
    for (name, t), c in cells.items():
        if t in recorded and c["n"] != n:
            raise PopError(f"{length} tokens: {t} holds {c['n']} items per setting ({name}), not {n}")
    fresh = item_hashes(path, recorded, length, n) if recorded else {}
    stale = {t for (_, t), c in cells.items() if t in fresh and [r["hash"] for r in c["items"]] != fresh[t]}
    absent = sorted({name for (name, t) in cells if t in stale} - set(names))
    if absent:
        raise PopError(f"{length} tokens: {sorted(stale)} now ask other items than the settings {absent} "
                       "answered: include those settings to run them again")
    groups: Dict[tuple, List[Setting]] = {}
    for s in settings:
        todo = tuple(t for t in tasks if t in stale or (s.name, t) not in cells)
        if todo:
            groups.setdefault(todo, []).append(s)
    unpaired = sorted({t for todo in groups for t in todo
                       if "full" not in names and (("full", t) not in cells or t in stale)})
    if unpaired:
        raise PopError(f"{length} tokens: no full-model answers to pair with for {unpaired}: add the full setting")
    return groups, {(name, t, length) for (name, t) in cells if t in stale}


def _item_score(sample: Dict[str, Any], task: str, length: int) -> float:
    key = "score" if task.startswith("pop_") else str(length)
    value = sample.get(key)
    if not isinstance(value, (int, float)) or value < 0:
        raise PopError(f"{task}: no score at length {length} in lm_eval's sample (keys {sorted(sample)})")
    return float(value)


def run_suite(path: str, *, lengths: Sequence[int], items: Dict[int, int], tasks: Sequence[str] = TASKS,
              settings: Optional[Sequence[Setting]] = None, n_threads: Optional[int] = None,
              chat: Optional[bool] = None, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Every setting answers the first `items[L]` items of every task at every length L; JSON-ready:
    {model, tasks, lengths, chat, settings: {name: {description, args}}, cells: [{task, length, setting,
    n, score, seconds, items: [{id, hash, score, reply}]}]} (reply: the first 120 characters; seconds: the
    setting's wall time at that length over all tasks, split evenly between them).

    chat: each prompt as a user turn in the model's own chat template, the task's answer prefix opening
    the reply (lm_eval's apply_chat_template), as people prompt an instruct model; None: when the file
    has a template."""
    offline_environment()
    try:
        from lm_eval.evaluator import evaluate
    except ImportError as e:
        raise PopError(f'the answers suite needs the eval extra ({e}): pip install "pop-local[eval]"') from None

    from .lm_eval import PopLocalLM

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise PopError(f"unknown suite tasks {unknown}: choose from {', '.join(TASKS)}")
    settings = list(settings or standard_settings(path))
    tokenizer = tokenizer_dir(path)
    cells: List[Dict[str, Any]] = []
    say = progress or (lambda text: None)
    total = sum(items[L] for L in lengths) * len(tasks) * len(settings)
    done, started = 0, time.perf_counter()
    for length in lengths:
        loaded = _load_tasks(tasks, length, tokenizer, max(items[length], 1))
        load_args = {"n_ctx": length, "n_batch": 512} | ({"n_threads": n_threads} if n_threads else {})
        for setting in settings:
            lm = PopLocalLM(model=path, **load_args, **setting.args)
            if chat is None:
                chat = bool(lm.llm.metadata.get("tokenizer.chat_template"))
            t0 = time.perf_counter()
            out = evaluate(lm, loaded, limit=items[length], log_samples=True, bootstrap_iters=0,
                           apply_chat_template=chat, verbosity="WARNING")
            seconds = time.perf_counter() - t0
            for task in tasks:
                samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
                rows = [{"id": s["doc_id"], "hash": _doc_hash(s["doc"]),
                         "score": _item_score(s, task, length),
                         "reply": str(s["filtered_resps"][0])[:120]} for s in samples]
                cells.append({"task": task, "length": length, "setting": setting.name, "n": len(rows),
                              "score": sum(r["score"] for r in rows) / len(rows), "seconds": seconds / len(tasks),
                              "items": rows})
            done += items[length] * len(tasks)
            elapsed = time.perf_counter() - started
            say(f"{length} tokens, {setting.name}: " + ", ".join(
                f"{c['task']} {c['score']:.2f}" for c in cells[-len(tasks):])
                + f"  [{done}/{total} answers, {elapsed / 60:.1f} min, about {elapsed / done * (total - done) / 60:.0f}"
                  " min left]")
    return {"model": os.path.basename(path), "tasks": list(tasks), "lengths": list(lengths), "chat": chat,
            "items": {str(k): v for k, v in items.items()}, "gen_cap": {t: GEN_CAP[t] for t in tasks},
            "settings": {s.name: {"description": s.description, "args": s.args} for s in settings},
            "cells": cells}


def suite_speed(path: str, settings: Sequence[Setting], lengths: Sequence[int], *, repeats: int = 2,
                n_threads: Optional[int] = None, progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """measure_speed on the model at `path`, opened with a context of the longest length (the same shared
    model the lm_eval adapter uses for those load settings)."""
    from . import _backend
    from .lm_eval import _close_at_exit, split_model_args

    args = {"n_ctx": max(lengths), "n_batch": 512} | ({"n_threads": n_threads} if n_threads else {})
    load, _ = split_model_args(args)
    llm, lock = _backend.shared_model(_backend.resolve_target(path, load))
    _close_at_exit(llm)
    with lock:
        return measure_speed(llm, settings, lengths, repeats=repeats, progress=progress)
