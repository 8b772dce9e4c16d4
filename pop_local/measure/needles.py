"""A needle among needles, generated from a seed: the retrieval a deep skip set loses first.

The prompt is nothing but key-number records ("The access number for the amber falcon is 4817263."),
as many as fill the asked length in the model's tokens, and one question about one key. Every other
record is a distractor of the same kind, so a model that half-remembers the list names a wrong number
with confidence. Modelled on RULER's multi-key needle task (lm-evaluation-harness `niah_multikey_2`),
written for the project so that the converter can check a skip set without lm_eval, and with seeds of
its own (the suite's items are not the converter's).

Items depend only on (seed, length, index); a reply is scored like a document question (first line,
the answer and none of the other numbers: pop_local.measure.docqa.score_reply).
"""

from __future__ import annotations

import random
from typing import Callable, List

from .docqa import DocItem

__all__ = ["make_item", "make_items", "PROMPT_HEAD"]

PROMPT_HEAD = ("Below is a list of access numbers. Memorize them: you will be asked for the number of one "
               "of them, and must answer with that exact number.")

_ADJECTIVES = ("amber", "silent", "brisk", "copper", "hollow", "lunar", "misty", "northern", "pale", "quiet",
               "rusty", "scarlet", "tidal", "velvet", "wooden", "golden", "frozen", "crimson", "dusty", "eager",
               "gentle", "hidden", "iron", "jagged", "mellow", "narrow", "olive", "proud", "sandy", "twisted")
_NOUNS = ("falcon", "lantern", "harbor", "orchard", "compass", "glacier", "meadow", "violin", "anchor", "beacon",
          "canyon", "dragon", "ember", "fountain", "garnet", "hammer", "island", "jasmine", "kettle", "ladder",
          "marble", "nutmeg", "otter", "pepper", "quarry", "raven", "saddle", "thistle", "walrus", "zephyr")


def make_item(seed: int, length: int, index: int, count_tokens: Callable[[str], int], reserve: int = 64) -> DocItem:
    """The item `index` of a set whose prompts fill `length` tokens less `reserve` (the reply's room)."""
    rng = random.Random(f"pop-local-needles-{seed}-{length}-{index}")
    keys = [f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(keys)
    numbers = rng.sample(range(1_000_000, 10_000_000), len(keys))
    records = [f"The access number for the {k} is {v}." for k, v in zip(keys, numbers)]
    depth = rng.random()  # where the asked record sits in the list, whatever its length
    def question(key: str) -> str:
        return f"What is the access number for the {key}?"

    def render(lines: List[str], key: str) -> str:
        return f"{PROMPT_HEAD}\n\n" + "\n".join(lines) + f"\n\nQuestion: {question(key)}"

    budget = length - reserve

    def fits(n: int) -> bool:
        return count_tokens(render(records[:n], keys[0])) <= budget

    if not fits(2):
        raise ValueError(f"a needle question does not fit {length} tokens (give a length of 128 or more)")
    low, high = 2, len(records)  # the most records that fit: fits(low), and high + 1 does not
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    n = low
    while True:  # the asked key's own words may take a token more than keys[0]'s
        target = min(int(depth * n), n - 1)
        text = render(records[:n], keys[target])
        if count_tokens(text) <= budget or n == 2:
            break
        n -= 1
    distractors = tuple(str(v) for i, v in enumerate(numbers[:n]) if i != target)
    return DocItem(f"needle-{length}-{index}", text, question(keys[target]), str(numbers[target]), distractors,
                   "needle")


def make_items(seed: int, length: int, n: int, count_tokens: Callable[[str], int], reserve: int = 64) -> List[DocItem]:
    return [make_item(seed, length, i, count_tokens, reserve) for i in range(n)]
