"""Greedy answer agreement of candidate skip sets, for the budget's choice (pop_local.format.frontier.choose).

KL over teacher-forced responses can rank a skip set above the paper's while its replies fall apart
(SmolLM2-135M, 13 of 30 layers with fitted K/V: lower KL than the paper's set, but no pass key found
where the paper's set finds 7 of 8). So the default budget also asks each candidate it would pick to
answer as the full model does, greedily in llama.cpp as users run the model (POP prefill, full decode):
- held-out long-context prompts (converter/data/answer_prompts.jsonl: documents with a question whose
  answer they state, written for the project; disjoint from the calibration prompts and from `pop-local
  eval --answers`'s set), each reply compared token by token with the full model's reply, and searched
  for the reference answer (a set can keep the full model's meaning in other words, or keep its first
  tokens and lose the answer: on Qwen2.5-Coder-1.5B, 14-27 fitted matched the wording of more replies
  than the paper's set but found the answer in fewer);
- pass-key retrieval: a five-digit key hidden at several depths of 512 tokens of filler (sentences of
  its own, keys of its own seed: not the prompts `pop-local eval` scores).

Fitted K/V need their tensors in a file: a candidate with fitted K/V is measured on a temporary copy
of the model with that set's projections (removed afterwards). Own-K/V candidates reuse one loaded model.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["AnswerScore", "AnswerCheck", "ANSWER_TOKENS", "answer_prompts", "answer_references", "fits"]

ANSWER_TOKENS = 32  # reply tokens compared per prompt
PASSKEY_TOKENS = 512  # pass-key prompt length (capped by the model's context)
PASSKEY_TRIALS = 4    # keys, at depths spread over the filler
PASSKEY_SEED = 7919   # not `pop-local eval`'s seed
_FILLER = ("The tram stops twice at the market. A kettle whistles in the kitchen upstairs. Gulls circle over the "
           "harbour wall. The clock above the station is five minutes fast. Leaves gather under the bench. ")
_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "answer_prompts.jsonl")


@dataclass(frozen=True)
class AnswerScore:
    identical: float  # share of prompts whose greedy reply equals the full model's
    agree: float      # mean share of reply tokens before the first difference (1.0: identical)
    passkeys: float   # share of pass keys retrieved
    found: float      # share of replies that contain the prompt's reference answer (NaN: no prompt has one)


def answer_prompts() -> List[str]:
    return [item.prompt for item in _answer_items()]


def answer_references() -> List[str]:
    """The reference answer of each of answer_prompts() ("" where an item has none)."""
    return [item.answer for item in _answer_items()]


def _answer_items():
    from pop_local.measure.answers import load_answer_set

    return load_answer_set(_DATA)


def _agreeing(reply: Sequence[int], reference: Sequence[int]) -> int:
    """Leading tokens the two replies share."""
    n = 0
    for a, b in zip(reply, reference):
        if a != b:
            break
        n += 1
    return n


def fits(meta, prompts: Optional[Sequence[str]] = None) -> bool:
    """Whether the model's trained context holds the longest prompt and its reply (about 4 characters
    per token, generously; a file that does not say its context is assumed to hold it)."""
    longest = max(len(p) for p in (prompts if prompts is not None else answer_prompts()))
    return not meta.context_length or longest / 4 + 64 + ANSWER_TOKENS <= meta.context_length


class AnswerCheck:
    """Full-model replies to the held-out prompts, once; then `score(skip, fitted)` per candidate."""

    def __init__(self, src: str, meta, prompts: Optional[Sequence[str]] = None, reply_tokens: int = ANSWER_TOKENS,
                 progress: Optional[Callable[[int, int], None]] = None, answers: Optional[Sequence[str]] = None):
        from pop_local.runtime.llama import PopLlama

        self.src, self.meta, self.reply_tokens = src, meta, reply_tokens
        if prompts is None:  # the bundled prompts, with their reference answers
            items = _answer_items()
            prompts = [i.prompt for i in items]
            if answers is None:
                answers = [i.answer for i in items]
        self.prompts = list(prompts)
        # reference answers, one per prompt ("" = none)
        self.answers = list(answers) if answers is not None else [""] * len(self.prompts)
        if len(self.answers) != len(self.prompts):
            raise ValueError(f"{len(self.answers)} reference answers for {len(self.prompts)} prompts")
        self.progress = progress
        self._temp = tempfile.TemporaryDirectory(prefix="pop-local-answers-")
        # POP off for the references; min_tokens 0: every prompt here is long, and the rule is stated per set
        self.llm = PopLlama(src, pop=False, skip_layers=(), min_tokens=0, **self._load())
        self.passkeys = self._passkey_prompts()
        self.reference = []
        for n, prompt in enumerate(self.prompts):
            self.reference.append(self._reply(self.llm, prompt)[0])
            if progress:
                progress(n + 1, len(self.prompts))
        self.scores: Dict[Tuple[Tuple[int, ...], str], AnswerScore] = {}

    def _load(self) -> dict:
        n_ctx = 4096 if not self.meta.context_length else min(4096, self.meta.context_length)
        return {"n_ctx": n_ctx, "n_batch": 512, "verbose": False, "seed": 0}

    def _passkey_prompts(self) -> List[Tuple[List[int], str]]:
        import random

        from pop_local.measure.evaluate import passkey_prompt

        rng = random.Random(PASSKEY_SEED)
        n = min(PASSKEY_TOKENS, self.llm.n_ctx() - 16)
        out = []
        for t in range(PASSKEY_TRIALS):
            key = f"{rng.randrange(10000, 100000)}"
            out.append((passkey_prompt(self.llm, n, key, (t + 0.5) / PASSKEY_TRIALS, _FILLER), key))
        return out

    @staticmethod
    def _finds_key(llm, prompt: List[int], key: str) -> bool:
        import re

        llm.reset()
        out = llm.create_completion(prompt, max_tokens=8, temperature=0.0, top_k=1, seed=0)
        found = re.search(r"\d+", out["choices"][0]["text"])
        return bool(found) and found.group(0) == key

    def _reply(self, llm, prompt: str) -> Tuple[List[int], str]:
        from pop_local.measure.answers import greedy_reply

        text = greedy_reply(llm, prompt, self.reply_tokens)
        return llm.tokenize(text.encode(), add_bos=False, special=False), text

    def score(self, skip: Tuple[int, ...], fitted=None) -> AnswerScore:
        """How often `skip` (with `fitted` K/V: a FittedKV, else the layers' own) answers as the full model."""
        kv = "own" if fitted is None else "fitted"
        measured = (tuple(skip), kv)
        if measured in self.scores:
            return self.scores[measured]
        from pop_local.measure.answers import answer_found
        from pop_local.runtime.llama import PopLlama

        if fitted is None:
            llm, owned = self.llm, False
            llm.skip_layers = skip
            llm.kv_mode = "own"
        else:
            path = self._fitted_copy(skip, fitted)
            llm, owned = PopLlama(path, min_tokens=0, **self._load()), True
        llm.pop_enabled = True
        total = len(self.prompts) + len(self.passkeys)
        try:
            identical, agree, found = 0, 0.0, 0
            for n, (prompt, ref, answer) in enumerate(zip(self.prompts, self.reference, self.answers)):
                reply, text = self._reply(llm, prompt)
                same = _agreeing(reply, ref)
                identical += reply == ref
                agree += 1.0 if reply == ref else same / max(1, len(ref))
                found += bool(answer) and answer_found(text, answer)
                if self.progress:
                    self.progress(n + 1, total)
            keys = 0
            for n, (prompt, key) in enumerate(self.passkeys):
                keys += self._finds_key(llm, prompt, key)
                if self.progress:
                    self.progress(len(self.prompts) + n + 1, total)
        finally:
            llm.pop_enabled = False
            if owned:
                llm.close()
                os.remove(path)
        with_answer = sum(1 for a in self.answers if a)
        result = AnswerScore(identical / len(self.prompts), agree / len(self.prompts), keys / len(self.passkeys),
                             found / with_answer if with_answer else math.nan)
        self.scores[measured] = result
        return result

    def _fitted_copy(self, skip: Tuple[int, ...], fitted) -> str:
        from .convert import kv_metadata
        from .kv_tensors import fitted_kv_tensors
        from .writer import write_pop_gguf

        tensors, extra = fitted_kv_tensors(self.src, self.meta, skip, fitted)
        path = os.path.join(self._temp.name, "candidate.pop.gguf")
        write_pop_gguf(self.src, path, skip, extra={**kv_metadata(skip), **extra}, force=True, extra_tensors=tensors)
        return path

    def close(self) -> None:
        self.llm.close()
        self._temp.cleanup()
