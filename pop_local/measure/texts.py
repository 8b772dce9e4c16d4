"""Text shipped with pop-local for benchmarks and evaluation (written for the project; not calibration text)."""

from __future__ import annotations

import functools
import os

__all__ = ["passage", "repeat_to"]

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@functools.lru_cache(maxsize=None)
def passage() -> str:
    """An original story of about 2,100 tokens (SmolLM2 tokenizer): long prompts for bench and eval."""
    with open(os.path.join(_DATA, "passage.txt"), encoding="utf-8") as f:
        return f.read()


def repeat_to(tokens, n: int):
    """`tokens` (starting with BOS) extended to exactly n by repeating everything after BOS."""
    out = list(tokens)
    while len(out) < n:
        out += tokens[1:]
    return out[:n]
