"""A needle among needles, generated from a seed: the retrieval a deep skip set loses first.

The prompt is nothing but key-number records ("The access number for the amber falcon is 4817263."),
as many as fill the asked length in the model's tokens, and one question about one key. Every other
record is a distractor of the same kind, so a model that half-remembers the list names a wrong number
with confidence. Modelled on RULER's multi-key needle task (lm-evaluation-harness `niah_multikey_2`),
written for the project so that the converter can check a skip set without lm_eval, and with seeds of
its own (the suite's items are not the converter's).

`make_single_item` hides one such record in plain prose instead (RULER's `niah_single_1` kind): the
retrieval even the smallest models here do at 1k-8k, and the one the paper's set loses on Gemma-3-270M.

Items depend only on (seed, length, index); a reply is scored like a document question (first line,
the answer and none of the other numbers: pop_local.measure.docqa.score_reply).
"""

from __future__ import annotations

import random
from typing import Callable, List

from .docqa import DocItem

__all__ = ["make_item", "make_items", "make_document", "make_single_item", "make_single_document", "PROMPT_HEAD",
           "SINGLE_HEAD"]

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
    return make_document(seed, length, index, count_tokens, 1, reserve)[0]


def make_document(seed: int, length: int, index: int, count_tokens: Callable[[str], int], questions: int = 1,
                  reserve: int = 64) -> List[DocItem]:
    """Up to `questions` questions about one list (each about a different record): the prompts differ
    only after "Question:", so a cache holding the list answers the rest for a few tokens each. The
    first is `make_item`'s item; the others are drawn from a generator of their own."""
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
    others = [i for i in range(n) if i != target]
    random.Random(f"pop-local-needles-{seed}-{length}-{index}-more").shuffle(others)
    items = []
    for t in [target] + others:
        if len(items) == questions:
            break
        text = render(records[:n], keys[t])
        if t != target and count_tokens(text) > budget:
            continue
        distractors = tuple(str(v) for i, v in enumerate(numbers[:n]) if i != t)
        suffix = f"-q{len(items)}" if items else ""
        items.append(DocItem(f"needle-{length}-{index}{suffix}", text, question(keys[t]), str(numbers[t]),
                             distractors, "needle"))
    return items


def make_items(seed: int, length: int, n: int, count_tokens: Callable[[str], int], reserve: int = 64) -> List[DocItem]:
    return [make_item(seed, length, i, count_tokens, reserve) for i in range(n)]


SINGLE_HEAD = ("A special access number is hidden in the text below. Read the text, then answer the question "
               "after it with that exact number.")
_PROSE = ("The tram stops twice at the market before it turns toward the river.",
          "A kettle whistles in the kitchen upstairs while the radio plays an old song.",
          "Gulls circle over the harbour wall and the fishing boats come in one by one.",
          "The clock above the station has been five minutes fast for as long as anyone remembers.",
          "Leaves gather under the bench where the postman eats his lunch on Fridays.",
          "In the afternoon the library fills with students who whisper about their exams.",
          "The baker leaves a tray of rolls by the window to cool in the breeze.",
          "A dog sleeps in the shade of the fountain, ignoring the pigeons around it.",
          "Rain is expected later in the week, and the farmers hope it will be gentle.",
          "The old bridge was painted green last spring and already needs another coat.",
          "Children chalk drawings on the pavement outside the school after the bell.",
          "At night the lighthouse sweeps its beam across the quiet bay.")


def make_single_item(seed: int, length: int, index: int, count_tokens: Callable[[str], int],
                     reserve: int = 64) -> DocItem:
    """The item `index` of a set of single needles: one access-number record at a random depth of prose
    that fills `length` tokens less `reserve`; no distractors."""
    return make_single_document(seed, length, index, count_tokens, 1, reserve)[0]


def make_single_document(seed: int, length: int, index: int, count_tokens: Callable[[str], int],
                         questions: int = 1, reserve: int = 64) -> List[DocItem]:
    """`questions` records for different keys, each at a random depth of one prose text, and a question
    about each (RULER's multi-key needle in a haystack; the other records' numbers are its distractors).
    With one, `make_single_item`'s item; the further records are drawn from a generator of their own."""
    rng = random.Random(f"pop-local-single-needle-{seed}-{length}-{index}")
    more = random.Random(f"pop-local-single-needle-{seed}-{length}-{index}-more")
    keys = [f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)}"]
    numbers = [str(rng.randrange(1_000_000, 10_000_000))]
    while len(keys) < questions:
        key = f"{more.choice(_ADJECTIVES)} {more.choice(_NOUNS)}"
        number = str(more.randrange(1_000_000, 10_000_000))
        if key not in keys and number not in numbers:
            keys.append(key)
            numbers.append(number)
    records = [f"The special access number for the {k} is {v}." for k, v in zip(keys, numbers)]
    asked = [f"What is the special access number for the {k}?" for k in keys]

    def render(sentences: List[str], question: str = max(asked, key=len)) -> str:
        return f"{SINGLE_HEAD}\n\n" + " ".join(sentences) + f"\n\nQuestion: {question}"

    budget = length - reserve
    prose = [rng.choice(_PROSE) for _ in range(8)]
    if count_tokens(render(records)) > budget:
        raise ValueError(f"a needle question does not fit {length} tokens (give a length of 128 or more)")
    per = max(1, count_tokens(" ".join(prose)) // len(prose))
    n = max(0, (budget - count_tokens(render(records))) // per)
    prose = [rng.choice(_PROSE) for _ in range(n + 8)]
    depths = [rng.random()] + [more.random() for _ in records[1:]]
    while True:  # the most prose sentences that fit around the records
        body = prose[:n]
        # deepest first, so that each insertion leaves the earlier slots where they were
        for slot, record in sorted(((min(int(d * (n + 1)), n), r) for d, r in zip(depths, records)), reverse=True):
            body.insert(slot, record)
        text = render(body)
        if count_tokens(text) <= budget or n == 0:
            break
        n -= max(1, (count_tokens(text) - budget) // per)
        n = max(0, n)
    return [DocItem(f"single-{length}-{index}" + (f"-q{j}" if j else ""), render(body, asked[j]), asked[j],
                    numbers[j], tuple(v for v in numbers if v != numbers[j]), "single") for j in range(len(keys))]
