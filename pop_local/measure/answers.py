"""What POP does to answers: greedy replies of the full model and of POP settings, compared.

A built-in prompt set (written for the project, disjoint from the converter's calibration and layer-choice
prompts) has two groups: short chat questions (where POP saves almost nothing) and long-context questions
(a 1.1-1.6k-word document with the answer stated in it, then the question). Each prompt is answered as a
chat turn, greedily, by the full model and by each POP setting; per group and setting:

    identical     share of replies equal to the full model's reply
    first_diff    mean token position where a reply first differs from the full model's (replies that
                  differ only; tokens of the reply text)
    f1            token-level F1 of the reply against the full model's reply (SQuAD-style words)
    found         share of replies containing the reference answer, where the item has one (the full
                  model's own share is reported too: it bounds what POP can keep)

An item may carry images (a vision-language model loaded with its projector, mmproj): they go before
the question in the user message, and their tokens run pruned like the prompt's text.
"""

from __future__ import annotations

import os
import re
import string
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pop_local.errors import PopError

from .texts import json_lines

__all__ = ["AnswerItem", "load_answer_set", "builtin_answer_set", "run_answers", "format_answers_table", "answer_found",
           "token_f1", "first_difference"]

GROUPS = ("short", "long")
_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "answers.jsonl")


@dataclass(frozen=True)
class AnswerItem:
    group: str     # "short" or "long"
    id: str
    prompt: str
    answer: str = ""  # the reference answer, where one exists ("" otherwise)
    images: Tuple[str, ...] = ()  # image files (absolute paths) or URLs, before the question


def load_answer_set(path: str) -> List[AnswerItem]:
    """A JSON Lines file of {"group": "short"|"long", "id", "prompt", "answer"?, "images"?: [file or URL, ...]}
    (image files relative to the set's folder): one clear error per bad line."""
    items: List[AnswerItem] = []
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise PopError(f"{path}: cannot read as UTF-8 text ({getattr(e, 'strerror', None) or e})") from None
    for number, row in json_lines(text, path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise PopError(f"{path}:{number}: expected an object with a non-empty \"prompt\" string")
        group = row.get("group", "short")
        if group not in GROUPS:
            raise PopError(f"{path}:{number}: \"group\" must be \"short\" or \"long\", got {group!r}")
        answer = row.get("answer", "")
        if not isinstance(answer, str):
            raise PopError(f"{path}:{number}: \"answer\" must be a string")
        images = row.get("images", [])
        if not isinstance(images, list) or not all(isinstance(i, str) and i for i in images):
            raise PopError(f"{path}:{number}: \"images\" must be a list of image files or URLs")
        images = [i if _is_url(i) else os.path.join(os.path.dirname(os.path.abspath(path)), i) for i in images]
        missing = [i for i in images if not _is_url(i) and not os.path.isfile(i)]
        if missing:
            raise PopError(f"{path}:{number}: no such image file {missing[0]}")
        items.append(AnswerItem(group, str(row.get("id", number)), row["prompt"], answer, tuple(images)))
    if not items:
        raise PopError(f"{path}: no prompts")
    return items


def _is_url(image: str) -> bool:
    """An answer set's image given as a URL (kept as it is) rather than a file relative to the set."""
    return "://" in image or image.startswith("data:")


def builtin_answer_set() -> List[AnswerItem]:
    return load_answer_set(_DATA)


_PUNCT = str.maketrans("", "", string.punctuation)


def _words(text: str) -> List[str]:
    text = re.sub(r"\b(a|an|the)\b", " ", text.lower().translate(_PUNCT))
    return text.split()


def token_f1(reply: str, reference: str) -> float:
    """SQuAD-style word F1 of `reply` against `reference` (1.0 when both are empty)."""
    a, b = _words(reply), _words(reference)
    if not a or not b:
        return float(a == b)
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(b)
    return 2 * precision * recall / (precision + recall)


def first_difference(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    """Index of the first position where two token sequences differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def answer_found(reply: str, answer: str) -> bool:
    """Whether the reference answer's words appear in the reply, in order and as whole words."""
    want, got = _words(answer), _words(reply)
    return bool(want) and any(got[i:i + len(want)] == want for i in range(len(got) - len(want) + 1))


def has_chat_template(llm) -> bool:
    """Whether replies go through a chat template: the file's own, a chat handler or a chosen format
    (without any, llama-cpp-python guesses Llama 2's [INST] format)."""
    return ("tokenizer.chat_template" in llm.metadata or llm.chat_handler is not None
            or (llm.chat_format or "llama-2") != "llama-2")


def greedy_reply(llm, prompt: str, max_tokens: int, images: Sequence[str] = (), *, fresh: bool = True) -> str:
    """The greedy reply to one user message (after `images`, for a model with a projector), from a fresh
    cache (no setting reuses another's prompt), or with `fresh` False reusing the cached prefix the
    current setting computed (a PopLlama reuses no other setting's). A file without a chat template (a
    base model) gets the plain prompt and an "Answer:" line instead of the guessed [INST] format, to which
    Gemma-3-270M replies nothing at all to a short question."""
    from pop_local.runtime.multimodal import image_content

    if fresh:
        llm.reset()
    if images and not llm.multimodal:
        raise PopError("the answer set has images, and the model was loaded without a projector: give its mmproj file")
    if has_chat_template(llm) or images:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": image_content(prompt, images)}],
                                         max_tokens=max_tokens, temperature=0.0, top_k=1, seed=0)
        return out["choices"][0]["message"]["content"] or ""
    out = llm.create_completion(f"{prompt}\nAnswer:", max_tokens=max_tokens, temperature=0.0, top_k=1, seed=0)
    return out["choices"][0]["text"]


def _setting_switch(llm, name: str, skip: Sequence[int]):
    """A function that puts `llm` into setting `name`: "full", "pop" (the run's settings) or "paper"."""
    from pop_local.format.frontier import paper_skip_set

    kv_mode = llm.kv_mode  # the run's K/V choice, for "pop"

    def switch():
        if name == "full":
            llm.pop_enabled = False
            return
        want = tuple(paper_skip_set(llm.pop_metadata.n_layer)) if name == "paper" else tuple(skip)
        if want != llm.skip_layers:
            llm.skip_layers = want
        llm.kv_mode = "own" if name == "paper" else kv_mode
        llm.pop_enabled = True

    return switch


def run_answers(llm, items: Optional[Sequence[AnswerItem]] = None, *, max_tokens: int = 48,
                settings: Optional[Sequence[str]] = None, data_name: str = "built-in set",
                progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """Greedy replies of the full model and of each POP setting on `items` (default: the built-in set).

    `llm`: a PopLlama with its POP settings (skip set, K/V, prompt minimum) as the run should measure them;
    settings: "pop" (those) and "paper" (the paper's last third, own K/V, when it differs). JSON-ready.
    """
    items = list(items) if items is not None else builtin_answer_set()
    if max_tokens < 1:
        raise PopError("`max_tokens` must be at least 1")
    from pop_local.format.frontier import paper_skip_set
    from pop_local.format.layers import format_layers

    skip = llm.skip_layers
    if settings is None:
        settings = ["pop"] + (["paper"] if tuple(skip) != tuple(paper_skip_set(llm.pop_metadata.n_layer)) else [])
    names = ["full"] + [s for s in settings if s != "full"]
    unknown = [s for s in names if s not in ("full", "pop", "paper")]
    if unknown:
        raise PopError(f"unknown answer settings {unknown}: use pop and paper")
    lengths = [len(llm.tokenize(i.prompt.encode(), add_bos=True)) for i in items]  # tokenized once
    longest = max(lengths)
    if longest + max_tokens + 64 > llm.n_ctx():  # 64: the chat template around the prompt
        raise PopError(f"the longest prompt has {longest} tokens; with {max_tokens} reply tokens it needs a context "
                       f"of {longest + max_tokens + 64}, the model was opened with {llm.n_ctx()}")
    switches = {name: _setting_switch(llm, name, skip) for name in names}
    was_enabled = llm.pop_enabled
    replies: Dict[str, List[str]] = {name: [] for name in names}
    total, done = len(items) * len(names), 0
    try:
        for item in items:
            for name in names:
                switches[name]()
                replies[name].append(greedy_reply(llm, item.prompt, max_tokens, item.images))
                done += 1
                if progress:
                    progress("answering", done, total)
    finally:
        switches["pop"]()
        llm.pop_enabled = was_enabled
        llm.reset()

    tok = lambda text: llm.tokenize(text.encode(), add_bos=False, special=False)  # noqa: E731
    groups = [g for g in GROUPS if any(i.group == g for i in items)]
    results: Dict[str, Any] = {}
    for name in names:
        results[name] = {}
        for group in groups:
            rows = [k for k, item in enumerate(items) if item.group == group]
            diffs = [first_difference(tok(replies[name][k]), tok(replies["full"][k])) for k in rows]
            differing = [d for d in diffs if d is not None]
            with_answer = [k for k in rows if items[k].answer]
            results[name][group] = {
                "prompts": len(rows),
                "identical": sum(d is None for d in diffs) / len(rows),
                "first_diff": sum(differing) / len(differing) if differing else None,
                "f1": sum(token_f1(replies[name][k], replies["full"][k]) for k in rows) / len(rows),
                "found": (sum(answer_found(replies[name][k], items[k].answer) for k in with_answer) / len(with_answer)
                          if with_answer else None),
            }
    return {
        "model": os.path.basename(llm.model_path),
        "skip_layers": format_layers(skip),
        "kv": llm.kv_used,  # what the "pop" setting's pruned layers used (kv_mode says what was asked)
        "min_tokens": llm.min_tokens,
        "data": data_name,
        "max_tokens": max_tokens,
        "settings": results,
        "prompt_tokens": {g: sorted(n for n, i in zip(lengths, items) if i.group == g) for g in groups},
        "replies": {name: {items[k].id: replies[name][k] for k in range(len(items))} for name in names},
    }


def format_answers_table(result: Dict[str, Any]) -> str:
    """A Markdown table of run_answers' result (what `pop-local eval --answers` prints)."""
    lines = ["| setting | prompts | identical to full | first difference (token) | F1 vs full | answer found |",
             "|---|---|---|---|---|---|"]
    for name, by_group in result["settings"].items():
        for group, r in by_group.items():
            diff = "-" if r["first_diff"] is None else f"{r['first_diff']:.1f}"
            found = "-" if r["found"] is None else f"{r['found']:.2f}"
            lines.append(f"| {name} | {group} ({r['prompts']}) | {r['identical']:.2f} | {diff} | {r['f1']:.2f} | "
                         f"{found} |")
    return "\n".join(lines)
