"""The default budget's answer check: does a candidate skip set find the facts the full model finds?

Held-out KL ranks deep skip sets as faithful while their answers fall apart (Qwen2.5-Coder-1.5B: 14-27
with fitted K/V has a third of the paper's KL and finds a fifth of the needles the full model finds; the
answers suite, docs/answers-suite.md). So the default budget asks each candidate questions whose answers
sit in a long prompt, greedily in llama.cpp as users run the model (POP prefill, full decode), and keeps
the fastest candidate that answers as the full model does:

- items: a single needle in prose, a needle among needles and a document question with distractors
  (pop_local.measure.needles and docqa, seeds of the converter's own: not the suite's items), interleaved,
  CHECK_PER_KIND of each, at CHECK_LENGTH tokens of the model's own tokenizer (less where its context is
  shorter), each scored right or wrong as the suite scores it;
- the rule: at least 95% of the full model's right answers kept and the paired 95% bootstrap interval
  of POP - full above -10 points (format.frontier.keeps_answers: the rule the suite's "kept" verdict
  applies, here over the items the full model answers);
- candidates answer only the items the full model answers right (nothing can be lost on the others,
  and a "gain" there is a lucky guess at a question the model cannot answer), and stop as soon as they
  cannot pass even with every remaining item right; the items earlier candidates lost go first, so the
  deep sets that lose answers cost an item or two each, and only the chosen one answers them all.

Fitted K/V need their tensors in a file: a candidate with fitted K/V is measured on a temporary copy
of the model with that set's projections (removed afterwards). One model is loaded at a time (llama.cpp
holds its own copy of the weights): the source for the reference and own-K/V candidates, reloaded after
a fitted one.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Callable, List, Optional, Tuple

from pop_local.format.frontier import CheckResult

__all__ = ["AnswerCheck", "check_items", "check_length", "fits", "CHECK_LENGTH", "CHECK_PER_KIND", "REPLY_TOKENS"]

CHECK_LENGTH = 1024   # prompt tokens per item (the suite's shortest length where deep sets lose answers)
CHECK_PER_KIND = 8    # items per kind: 24 in all
REPLY_TOKENS = 24     # greedy reply tokens (the suite's cap for these tasks)
CHECK_SEED = 7919     # not the suite's seeds
MIN_LENGTH = 256      # below this a document question does not fit: no check
KINDS = ("single", "multi", "docqa")


def check_length(context_length: int) -> int:
    """The check's prompt length for a model trained on `context_length` tokens (0: unknown): CHECK_LENGTH,
    or what that context holds with the reply."""
    if not context_length:
        return CHECK_LENGTH
    return min(CHECK_LENGTH, context_length - REPLY_TOKENS - 32)


def fits(meta) -> bool:
    """Whether the model's trained context holds a check item and its reply."""
    return check_length(meta.context_length) >= MIN_LENGTH


def check_items(count_tokens: Callable[[str], int], length: int, per_kind: int = CHECK_PER_KIND,
                seed: int = CHECK_SEED) -> list:
    """The check's items (docqa.DocItem), kinds interleaved so that a stopped candidate has met each kind."""
    from pop_local.measure import docqa, needles

    makers = {"single": needles.make_single_item, "multi": needles.make_item, "docqa": docqa.make_item}
    return [makers[kind](seed, length, i, count_tokens) for i in range(per_kind) for kind in KINDS]


def _interval_low(lost: int, n: int) -> float:
    """The paired 95% interval's lower end of POP - full over n items the full model answers, `lost`
    of them answered wrong (the items in a fixed order: the bootstrap depends on the counts only)."""
    from pop_local.measure.suite import paired_interval

    return paired_interval([0.0] * lost + [1.0] * (n - lost), [1.0] * n)[1]


def _keeps(lost: int, n: int) -> bool:
    """Whether `lost` of n such items (or, for a candidate still answering, `lost` so far and none of
    the rest) still keep the answers."""
    from pop_local.format.frontier import keeps_answers

    return keeps_answers((n - lost) / n, 1.0, _interval_low(lost, n))


class AnswerCheck:
    """The full model's answers to the check's items, once; then `score(skip, fitted)` per candidate."""

    def __init__(self, src: str, meta, *, per_kind: int = CHECK_PER_KIND, length: Optional[int] = None,
                 seed: int = CHECK_SEED, progress: Optional[Callable[[int, int], None]] = None,
                 keep: Optional[str] = None):
        from pop_local.runtime.llama import PopLlama

        from .streaming import release_memory

        self.src, self.meta, self.progress = src, meta, progress
        self.keep = keep  # a folder: each fitted candidate's file is moved there, not removed (for measuring)
        self.length = length or check_length(meta.context_length)
        self._temp = tempfile.TemporaryDirectory(prefix="pop-local-answers-")
        release_memory()  # what the calibration freed, before llama.cpp loads the model
        # POP off for the references; min_tokens 0: every prompt here is long, and the rule is stated per set
        self._llm = PopLlama(src, pop=False, skip_layers=(), min_tokens=0, **self._load())
        self.items = check_items(lambda text: len(self.llm.tokenize(text.encode(), add_bos=False, special=False)),
                                 self.length, per_kind, seed)
        self.full: List[float] = []
        self._lost = [0] * len(self.items)  # per item: how many candidates lost it so far
        for n, item in enumerate(self.items):
            self.full.append(self._answer(self.llm, item))
            if progress:
                progress(n + 1, len(self.items))

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(items, prompt tokens, the full model's right answers): what the file records."""
        return len(self.items), self.length, int(sum(self.full))

    def _load(self) -> dict:
        # room for the chat template's tokens and the reply beyond the item's own budget
        return {"n_ctx": self.length + 2 * REPLY_TOKENS + 64, "n_batch": 512, "verbose": False, "seed": 0}

    @staticmethod
    def _answer(llm, item) -> float:
        from pop_local.measure.answers import greedy_reply
        from pop_local.measure.docqa import score_reply

        return score_reply(greedy_reply(llm, item.prompt, REPLY_TOKENS), item.answer, item.distractors)

    def score(self, skip: Tuple[int, ...], fitted=None, *, stop_early: bool = True) -> CheckResult:
        """`skip`'s answers (with `fitted` K/V: a FittedKV, else the layers' own), paired with the full
        model's; with `stop_early`, stopped once it cannot pass even with every remaining item right."""
        from pop_local.runtime.llama import PopLlama

        if fitted is None:
            llm = self.llm
            llm.skip_layers = skip
            llm.kv_mode = "own"
            llm.pop_enabled = True
            try:
                return self.score_loaded(llm, stop_early=stop_early)
            finally:
                llm.pop_enabled = False
        if self._llm is not None:  # one model in memory at a time
            self._llm.close()
            self._llm = None
        path = self._fitted_copy(skip, fitted)
        llm = PopLlama(path, min_tokens=0, **self._load())
        try:
            return self.score_loaded(llm, stop_early=stop_early)
        finally:
            llm.close()
            if self.keep:
                from pop_local.format.layers import format_layers

                os.replace(path, os.path.join(self.keep, f"{format_layers(skip)}-fitted.pop.gguf"))
            else:
                os.remove(path)

    @property
    def llm(self):
        """The source model, POP off unless a candidate is being scored (loaded again after a fitted one)."""
        from pop_local.runtime.llama import PopLlama

        if self._llm is None:
            self._llm = PopLlama(self.src, pop=False, skip_layers=(), min_tokens=0, **self._load())
        return self._llm

    def score_loaded(self, llm, *, stop_early: bool = True) -> CheckResult:
        """The answers of a loaded model in the setting it is in (the same weights as the reference), to
        the items the full model answers right.

        Items earlier candidates lost go first: candidates come fastest first and nested, so a deeper
        set's losses are the likeliest losses of the next, and a failing candidate stops soon. The
        verdict does not depend on the order."""
        right = [i for i, f in enumerate(self.full) if f]
        order = sorted(right, key=lambda i: (-self._lost[i], i))
        lost: List[int] = []
        for done, i in enumerate(order, 1):
            if not self._answer(llm, self.items[i]):
                lost.append(i)
            if self.progress:
                self.progress(done, len(order))
            if stop_early and done < len(order) and not _keeps(len(lost), len(order)):
                break
        for i in lost:
            self._lost[i] += 1
        answered = done if order else 0
        low = _interval_low(len(lost), len(order)) if order and answered == len(order) else math.nan
        return CheckResult(answered, len(lost), low)

    def _fitted_copy(self, skip: Tuple[int, ...], fitted) -> str:
        from .convert import kv_metadata
        from .kv_tensors import fitted_kv_tensors
        from .writer import write_pop_gguf

        tensors, extra = fitted_kv_tensors(self.src, self.meta, skip, fitted)
        path = os.path.join(self._temp.name, "candidate.pop.gguf")
        write_pop_gguf(self.src, path, skip, extra={**kv_metadata(skip), **extra}, force=True, extra_tensors=tensors)
        return path

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        self._temp.cleanup()
