"""The default budget's answer check: does a candidate skip set find the facts the full model finds?

Held-out KL ranks deep skip sets as faithful while their answers fall apart (Qwen2.5-Coder-1.5B: 14-27
with fitted K/V has a third of the paper's KL and finds a fifth of the needles the full model finds; the
answers suite, docs/answers-suite.md). So the default budget asks each candidate questions whose answers
sit in a long prompt, greedily in llama.cpp as users run the model (POP prefill, full decode), and keeps
the fastest candidate that answers as the full model does:

- documents: needles in prose, a needle among needles and a staff report with distractors
  (pop_local.measure.needles and docqa, seeds of the converter's own: not the suite's items), kinds
  interleaved, CHECK_LENGTH tokens of the model's own tokenizer (less where its context is shorter),
  QUESTIONS_PER_DOC questions about each. The prompts of one document differ only after its question,
  so the cache keeps the document and each further question costs a few tokens: a 1k prompt took
  11 s on the 1.5B here, a further question 1 s. Each reply is scored right or wrong as the suite scores it;
- an answer counts as the full model's only when it stays right with the rounding moved: the question
  asked again, when the cache holds all of the prompt but its last token, which then runs alone instead
  of in the batch (POP runs it alone in the skipped layers too). A near-tie reply that flips there is no
  fact the model holds, and a candidate losing it measured rounding, not depth (SmolLM2 Q8_0: its last
  layer alone, exact but for rounding at a held-out KL of 6.5e-6, lost 2 of 35 answers);
- documents are added until the full model has answered TARGET_RIGHT right (at most MAX_DOCUMENTS):
  the rule allows no loss at all under 20 right answers, and one at 40 (interval low end -7.5 points),
  so a model that answers half the questions is not judged on a dozen;
- the rule: at least 95% of the full model's right answers kept and the paired 95% bootstrap interval
  of POP - full above -10 points (format.frontier.keeps_answers: the rule the suite's "kept" verdict
  applies, here over the items the full model answers). Questions about one document are not
  independent, so this interval is narrower than a per-document one: the suite is the judge;
- candidates answer only the items the full model answers right, so a wrong answer gained does not
  offset a right one lost (the suite's rule lets it): stricter than the suite, and cheap. Counting
  gains was measured: SmolLM2's candidates down to 22-29 lose 14-22 of the full model's 39 right
  answers and gain 0-7 of its 54 wrong ones, so no verdict changed, while a failing candidate then had
  to answer 52-75 questions (its remaining wrong ones might all turn right) instead of two;
- each candidate stops as soon as it cannot pass even with every remaining item right; the documents
  whose questions earlier candidates lost go first, so the deep sets that lose answers cost a question
  or two each, and only the chosen one answers them all.

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

__all__ = ["AnswerCheck", "check_document", "check_items", "check_length", "fits", "CHECK_LENGTH",
           "QUESTIONS_PER_DOC", "TARGET_RIGHT", "MAX_DOCUMENTS", "REPLY_TOKENS", "KINDS"]

CHECK_LENGTH = 1024   # prompt tokens per document (the suite's shortest length where deep sets lose answers)
QUESTIONS_PER_DOC = 4  # questions about each document (different facts, one cached document)
TARGET_RIGHT = 40     # the full model's right answers to collect: one loss then keeps the interval above -10
MAX_DOCUMENTS = 24    # at most 96 questions, for a model that answers few
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


def check_document(count_tokens: Callable[[str], int], length: int, number: int,
                   questions: int = QUESTIONS_PER_DOC, seed: int = CHECK_SEED) -> list:
    """The check's document `number` (kinds in turn): its questions (docqa.DocItem), differing only
    after "Question:"."""
    from pop_local.measure import docqa, needles

    makers = {"single": needles.make_single_document, "multi": needles.make_document, "docqa": docqa.make_document}
    kind = KINDS[number % len(KINDS)]
    return makers[kind](seed, length, number // len(KINDS), count_tokens, questions)


def check_items(count_tokens: Callable[[str], int], length: int, documents: int,
                questions: int = QUESTIONS_PER_DOC, seed: int = CHECK_SEED) -> list:
    """The questions of the check's first `documents` documents, in order."""
    return [item for d in range(documents) for item in check_document(count_tokens, length, d, questions, seed)]


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

    def __init__(self, src: str, meta, *, questions: int = QUESTIONS_PER_DOC, target_right: int = TARGET_RIGHT,
                 max_documents: int = MAX_DOCUMENTS, length: Optional[int] = None, seed: int = CHECK_SEED,
                 progress: Optional[Callable[[int, int], None]] = None, keep: Optional[str] = None):
        from pop_local.runtime.llama import PopLlama

        from .streaming import release_memory

        self.src, self.meta, self.progress = src, meta, progress
        self.keep = keep  # a folder: each fitted candidate's file is moved there, not removed (for measuring)
        self.length = length or check_length(meta.context_length)
        self._temp = tempfile.TemporaryDirectory(prefix="pop-local-answers-")
        release_memory()  # what the calibration freed, before llama.cpp loads the model
        # POP off for the references; min_tokens 0: every prompt here is long, and the rule is stated per set
        self._llm = PopLlama(src, pop=False, skip_layers=(), min_tokens=0, **self._load())

        def count(text: str) -> int:
            return len(self.llm.tokenize(text.encode(), add_bos=False, special=False))

        self.items: list = []
        self.document: List[int] = []  # per item: its document's number
        self.full: List[float] = []    # per item: 1.0 where the full model answers right in both roundings
        self.unstable = 0  # right for the full model in one rounding only: judged on no candidate
        planned = max_documents * questions
        for number in range(max_documents):
            for item in check_document(count, self.length, number, questions, seed):
                first = self._answer(self.llm, item)
                # asked again, the cache holds all of the prompt but its last token, which then runs alone
                # instead of in the batch: the same arithmetic, rounded otherwise
                kept = first and self._answer(self.llm, item)
                self.unstable += bool(first) and not kept
                self.items.append(item)
                self.document.append(number)
                self.full.append(kept)
                if progress:
                    progress(len(self.items), max(planned, len(self.items)))
            right = sum(self.full)
            if right >= target_right:
                break
            if right:  # the documents still needed at this rate, for the progress bar's total
                per_document = right / (number + 1)
                planned = len(self.items) + math.ceil((target_right - right) / per_document) * questions
        if progress:
            progress(len(self.items), len(self.items))
        self._lost = [0] * len(self.items)  # per item: how many candidates lost it so far

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(items, prompt tokens, the full model's right answers): what the file records."""
        return len(self.items), self.length, int(sum(self.full))

    def _load(self) -> dict:
        # room for the chat template's tokens and the reply beyond the item's own budget
        return {"n_ctx": self.length + 2 * REPLY_TOKENS + 64, "n_batch": 512, "verbose": False, "seed": 0}

    @staticmethod
    def _answer(llm, item) -> float:
        """Right (1.0) or wrong; the cache's prefix computed in the same setting (the document, when the
        previous question was about it) is reused (PopLlama never reuses another setting's)."""
        from pop_local.measure.answers import greedy_reply
        from pop_local.measure.docqa import score_reply

        return score_reply(greedy_reply(llm, item.prompt, REPLY_TOKENS, fresh=False), item.answer, item.distractors)

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

        Documents whose questions earlier candidates lost go first (the lost questions first within
        them; a document's questions stay together, so its cached prompt serves them all): candidates
        come fastest first and nested, so a deeper set's losses are the likeliest losses of the next,
        and a failing candidate stops soon. The verdict does not depend on the order."""
        right = [i for i, f in enumerate(self.full) if f]
        doc_lost: dict = {}
        for i in right:
            doc_lost[self.document[i]] = doc_lost.get(self.document[i], 0) + self._lost[i]
        order = sorted(right, key=lambda i: (-doc_lost[self.document[i]], self.document[i], -self._lost[i], i))
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
