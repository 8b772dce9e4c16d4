"""Text shipped with pop-local for benchmarks and evaluation (written for the project; not calibration text)."""

from __future__ import annotations

import functools
import os

__all__ = ["passage", "repeat_to", "json_lines"]

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


@functools.lru_cache(maxsize=None)
def passage() -> str:
    """An original story of about 2,100 tokens (SmolLM2 tokenizer): long prompts for bench and eval."""
    with open(os.path.join(_DATA, "passage.txt"), encoding="utf-8") as f:
        return f.read()


def json_lines(text: str, where: str):
    """(line number, object) for each non-blank line of a JSON Lines text; PopError naming `where`:line."""
    import json

    from pop_local.errors import PopError

    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            raise PopError(f"{where}:{number}: not JSON ({e.msg})") from None


def repeat_to(tokens, n: int):
    """`tokens` (starting with BOS) extended to exactly n by repeating everything after BOS."""
    out = list(tokens)
    while len(out) < n:
        out += tokens[1:]
    return out[:n]
