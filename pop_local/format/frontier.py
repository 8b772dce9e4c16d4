"""The quality/speed frontier a budgeted conversion stores in the file: rows, the choice, the table.

No torch here: `inspect`, `bench` and `eval` read it; the converter (converter/frontier.py) measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pop_local.errors import PopError, PopMetadataError, PopSettingError

from . import keys
from .layers import format_layers, parse_layers

__all__ = ["FrontierRow", "Frontier", "Budget", "parse_budget", "choose", "within_budget", "budget_options",
           "first_passing", "max_skipped", "CheckResult", "keeps_answers", "KEEP_RETENTION", "KEEP_MARGIN",
           "paper_skip_set", "frontier_fields", "read_frontier", "frontier_table",
           "KV_CHOICES"]

KV_CHOICES = ("auto", "own", "fitted")


KEEP_RETENTION = 0.95  # "keeps answers": at least 95% of the full model's score ...
KEEP_MARGIN = 0.10     # ... and the paired 95% interval of POP - full above -10 points


def keeps_answers(score: float, full_score: float, low: float) -> bool:
    """The rule the default holds to, on the converter's check and on the answers suite alike."""
    return score >= KEEP_RETENTION * full_score and low > -KEEP_MARGIN


@dataclass(frozen=True)
class CheckResult:
    """One candidate's answers on the converter's check: the items the full model answers right, each
    paired with the full model's answer (nothing can be lost on the others)."""
    scored: int   # items answered (fewer than the full model's right answers: stopped, it could not pass)
    lost: int     # right for the full model, wrong here
    low: float    # the paired 95% interval's lower end of POP - full, a share (NaN: stopped early)

    def retention(self, full_right: int) -> float:
        return (full_right - self.lost) / full_right if full_right else math.nan

    def passed(self, full_right: int) -> bool:
        if full_right == 0 or self.scored < full_right or math.isnan(self.low):
            return False
        return keeps_answers((full_right - self.lost) / full_right, 1.0, self.low)

    def text(self, full_right: int) -> str:
        if self.scored < full_right:
            return f"stopped at {self.scored}: {self.lost} lost"
        verdict = "keeps" if self.passed(full_right) else "fails"
        return f"{verdict} {self.retention(full_right):.0%} [{100 * self.low:+.0f}]"


@dataclass(frozen=True)
class FrontierRow:
    skip: Tuple[int, ...]
    kl_own: float
    kl_fitted: float
    top1_own: float
    top1_fitted: float
    speedup_512: float
    speedup_2048: float
    # the answer check (converter/answer_check.py); None where the budget did not measure it
    check_own: Optional["CheckResult"] = None
    check_fitted: Optional["CheckResult"] = None

    def check(self, kv: str = "auto") -> Optional["CheckResult"]:
        return self.check_fitted if self.kv_for(kv) == "fitted" else self.check_own

    def kv_for(self, kv: str = "auto") -> str:
        """The K/V a budget uses for this set: the requested one, or (auto) the lower held-out KL."""
        if kv != "auto":
            return kv
        return "fitted" if self.kl_fitted < self.kl_own else "own"

    def kl(self, kv: str = "auto") -> float:
        return self.kl_fitted if self.kv_for(kv) == "fitted" else self.kl_own

    def top1(self, kv: str = "auto") -> float:
        return self.top1_fitted if self.kv_for(kv) == "fitted" else self.top1_own


@dataclass(frozen=True)
class Budget:
    """What the user accepts: a held-out KL ceiling (a number, or "paper" = the KL of the paper's own
    setting on the same model), or an ideal prefill speedup at 2048 tokens to reach."""
    max_kl: "Optional[float | str]" = None
    target_speedup: Optional[float] = None

    def text(self) -> str:
        if self.target_speedup is not None:
            return f"target_speedup={self.target_speedup:g}"
        return f"max_kl={self.max_kl if isinstance(self.max_kl, str) else format(self.max_kl, 'g')}"


def parse_budget(max_kl: "Optional[str | float]", target_speedup: Optional[float]) -> Budget:
    """A Budget from the options (default: max_kl=paper); PopError naming the bad value."""
    if max_kl is not None and target_speedup is not None:
        raise PopError("give `max_kl` or `target_speedup`, not both")
    if target_speedup is not None:
        if not (isinstance(target_speedup, (int, float)) and math.isfinite(target_speedup) and target_speedup > 1):
            raise PopSettingError("target_speedup", f"an ideal prefill speedup above 1, got {target_speedup}")
        return Budget(target_speedup=float(target_speedup))
    if max_kl is None or max_kl == "paper":
        return Budget(max_kl="paper")
    try:
        value = float(max_kl)
    except (TypeError, ValueError):
        raise PopSettingError("max_kl", f'a positive number or "paper", got {max_kl!r}') from None
    if not (math.isfinite(value) and value > 0):
        raise PopSettingError("max_kl", f'a positive number or "paper", got {max_kl!r}')
    return Budget(max_kl=value)


def check_max_ratio(max_ratio: float) -> float:
    """The largest fraction of layers a budget may skip: PopSettingError unless strictly between 0 and 1."""
    if not (isinstance(max_ratio, (int, float)) and 0 < max_ratio < 1):
        raise PopSettingError("max_ratio", f"a fraction between 0 and 1, got {max_ratio}")
    return float(max_ratio)


def max_skipped(n_layer: int, max_ratio: float) -> int:
    """The most layers a candidate may skip: floor(max_ratio * n_layer), at most n_layer - 1."""
    return min(n_layer - 1, int(math.floor(max_ratio * n_layer + 1e-9)))


def paper_skip_set(n_layer: int) -> Tuple[int, ...]:
    """The paper's setting: the last round(n_layer / 3) layers."""
    k = max(1, min(n_layer - 1, int(round(n_layer / 3))))
    return tuple(range(n_layer - k, n_layer))


def choose(rows: Sequence[FrontierRow], budget: Budget, kv: str = "auto",
           paper_kl: Optional[float] = None) -> int:
    """Index of the row the budget picks: the fastest (ideal speedup at 2048 tokens) whose held-out KL
    is within max_kl, or the most faithful whose speedup reaches target_speedup. PopError if none."""
    if not rows:
        raise PopError("no candidate skip set was measured")
    if budget.target_speedup is not None:
        ok = [i for i, r in enumerate(rows) if r.speedup_2048 >= budget.target_speedup]
        if not ok:
            best = max(rows, key=lambda r: r.speedup_2048)
            raise PopError(f"no skip set reaches an ideal speedup of {budget.target_speedup:g}x at 2048 tokens; the "
                           f"fastest measured is {best.speedup_2048:.2f}x ({format_layers(best.skip)}): "
                           "lower `target_speedup` or raise `max_ratio`")
        return min(ok, key=lambda i: (rows[i].kl(kv), -rows[i].speedup_2048))
    return within_budget(rows, budget, kv, paper_kl)[0]


def within_budget(rows: Sequence[FrontierRow], budget: Budget, kv: str = "auto",
                  paper_kl: Optional[float] = None) -> List[int]:
    """The rows whose held-out KL is within a max_kl budget, fastest first (then the lower KL); PopError if none."""
    limit = paper_kl if budget.max_kl == "paper" else budget.max_kl
    if limit is None:
        raise PopError("the paper's setting was not measured, so `max_kl=paper` has no reference")
    ok = [i for i, r in enumerate(rows) if r.kl(kv) <= limit]
    if not ok:
        best = min(rows, key=lambda r: r.kl(kv))
        raise PopError(f"no skip set keeps the held-out KL within {limit:.4g}; the best reached is "
                       f"{best.kl(kv):.4g} ({format_layers(best.skip)}, {best.kv_for(kv)} K/V): "
                       "raise `max_kl` or calibrate on more `samples`")
    return sorted(ok, key=lambda i: (-rows[i].speedup_2048, rows[i].kl(kv)))


def budget_options(rows: Sequence[FrontierRow], budget: Budget, kv: str = "auto",
                   paper_kl: Optional[float] = None) -> List[Tuple[int, str]]:
    """(row, K/V) pairs within a max_kl budget, fastest row first and, per row, the lower-KL K/V first:
    with kv "auto" both K/V of a row are options when both are within the budget (the answer check may
    reject the one with the lower KL). PopError if none."""
    limit = paper_kl if budget.max_kl == "paper" else budget.max_kl
    kinds = ("own", "fitted") if kv == "auto" else (kv,)
    out = []
    for i in within_budget(rows, budget, kv, paper_kl):
        r = rows[i]
        options = sorted((k for k in kinds if (r.kl_fitted if k == "fitted" else r.kl_own) <= limit),
                         key=lambda k: (r.kl_fitted if k == "fitted" else r.kl_own, k != r.kv_for(kv)))
        out += [(i, k) for k in options]
    return out


def first_passing(options: Sequence[Tuple[int, str]], check) -> Optional[Tuple[int, str]]:
    """The first (row, K/V) of `options` (fastest first) for which check(option) says it keeps the
    answers; None when none does. Options after it are not checked."""
    for option in options:
        if check(option):
            return option
    return None


_CHECK_COLUMNS = tuple((name, attr, kv) for name, (attr, kv) in zip(
    keys.FRONTIER_CHECK_ARRAYS, [(a, k) for a in ("scored", "lost", "low") for k in ("own", "fitted")]))


def frontier_fields(rows: Sequence[FrontierRow], chosen: int, budget: Budget, paper_kl: Optional[float],
                    held_out: Tuple[int, int], check: Optional[Tuple[int, int, int]] = None) -> Dict[str, Any]:
    """The pop.* keys that store a frontier (see pop_local/format/keys.py); the answer check's arrays when
    the budget checked answers (`check`: items, prompt tokens, the full model's right answers)."""
    fields = {
        keys.BUDGET: budget.text(),
        keys.FRONTIER_SKIP_LAYERS: [format_layers(r.skip) for r in rows],
        keys.FRONTIER_KL_OWN: [float(r.kl_own) for r in rows],
        keys.FRONTIER_KL_FITTED: [float(r.kl_fitted) for r in rows],
        keys.FRONTIER_TOP1_OWN: [float(r.top1_own) for r in rows],
        keys.FRONTIER_TOP1_FITTED: [float(r.top1_fitted) for r in rows],
        keys.FRONTIER_SPEEDUP_512: [float(r.speedup_512) for r in rows],
        keys.FRONTIER_SPEEDUP_2048: [float(r.speedup_2048) for r in rows],
        keys.FRONTIER_CHOSEN: int(chosen),
        keys.FRONTIER_HELD_OUT: [int(held_out[0]), int(held_out[1])],
    }
    if paper_kl is not None:
        fields[keys.FRONTIER_PAPER_KL] = float(paper_kl)
    if check is not None:
        fields[keys.FRONTIER_CHECK] = [int(x) for x in check]
        for name, attr, kv in _CHECK_COLUMNS:
            results = [getattr(r, f"check_{kv}") for r in rows]
            if attr == "low":
                fields[name] = [math.nan if c is None else float(c.low) for c in results]
            else:
                fields[name] = [0 if c is None else int(getattr(c, attr)) for c in results]
    return fields


@dataclass(frozen=True)
class Frontier:
    rows: Tuple[FrontierRow, ...]
    chosen: int
    budget: str
    paper_kl: Optional[float]
    held_out: Tuple[int, int]
    check: Optional[Tuple[int, int, int]] = None  # answer check: items, prompt tokens, full right (None: none)

    @property
    def choice(self) -> FrontierRow:
        return self.rows[self.chosen]

    def passed(self, result: Optional[CheckResult]) -> bool:
        return result is not None and self.check is not None and result.passed(self.check[2])


def read_frontier(extra: Mapping[str, Any], n_layer: int, skip_layers: Tuple[int, ...]) -> Optional[Frontier]:
    """The frontier stored in a file's pop.* keys (None when it has none); PopMetadataError naming the
    key for anything malformed or inconsistent."""
    present = [k for k in keys.FRONTIER_ARRAYS + (keys.FRONTIER_CHOSEN, keys.BUDGET) if k in extra]
    if not present:
        return None
    missing = [k for k in keys.FRONTIER_ARRAYS + (keys.FRONTIER_CHOSEN, keys.BUDGET) if k not in extra]
    if missing:
        raise PopMetadataError(missing[0], "missing (the file has a partial quality frontier)")
    n = None
    columns: Dict[str, List[Any]] = {}
    for name in keys.FRONTIER_ARRAYS:
        value = extra[name]
        if not isinstance(value, list) or not value:
            raise PopMetadataError(name, f"expected a non-empty array, got {value!r}"[:200])
        if n is not None and len(value) != n:
            raise PopMetadataError(name, f"{len(value)} entries, but {keys.FRONTIER_SKIP_LAYERS} has {n}")
        n = len(value)
        columns[name] = value
    sets = []
    for text in columns[keys.FRONTIER_SKIP_LAYERS]:
        if not isinstance(text, str):
            raise PopMetadataError(keys.FRONTIER_SKIP_LAYERS, f"expected strings, got {text!r}"[:200])
        layers = parse_layers(text, n_layer, key=keys.FRONTIER_SKIP_LAYERS)
        if not layers:
            raise PopMetadataError(keys.FRONTIER_SKIP_LAYERS, "an empty skip set")
        sets.append(layers)
    bounds = {keys.FRONTIER_KL_OWN: (0, math.inf), keys.FRONTIER_KL_FITTED: (0, math.inf),
              keys.FRONTIER_TOP1_OWN: (0, 1), keys.FRONTIER_TOP1_FITTED: (0, 1),
              keys.FRONTIER_SPEEDUP_512: (0.5, 1000), keys.FRONTIER_SPEEDUP_2048: (0.5, 1000)}
    for name, (lo, hi) in bounds.items():
        for v in columns[name]:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                raise PopMetadataError(name, f"{v!r} is not a number in [{lo}, {hi}]")
    chosen = extra[keys.FRONTIER_CHOSEN]
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < n:
        raise PopMetadataError(keys.FRONTIER_CHOSEN, f"{chosen!r} is not an index of the {n} candidates")
    if tuple(sets[chosen]) != tuple(skip_layers):
        raise PopMetadataError(keys.FRONTIER_CHOSEN, f"the chosen set {format_layers(sets[chosen])} is not the "
                               f"file's skip set {format_layers(skip_layers) or '(none)'}")
    budget = extra[keys.BUDGET]
    if not isinstance(budget, str) or not budget:
        raise PopMetadataError(keys.BUDGET, f"expected a string, got {budget!r}"[:200])
    paper_kl = extra.get(keys.FRONTIER_PAPER_KL)
    if paper_kl is not None and (isinstance(paper_kl, bool) or not isinstance(paper_kl, (int, float))
                                 or not math.isfinite(paper_kl) or paper_kl < 0):
        raise PopMetadataError(keys.FRONTIER_PAPER_KL, f"{paper_kl!r} is not a non-negative number")
    held = extra.get(keys.FRONTIER_HELD_OUT, [0, 0])
    if not (isinstance(held, list) and len(held) == 2 and all(isinstance(x, int) and x >= 0 for x in held)):
        raise PopMetadataError(keys.FRONTIER_HELD_OUT, f"expected two counts, got {held!r}"[:200])
    check, results = _read_check(extra, n)
    rows = tuple(FrontierRow(sets[i], float(columns[keys.FRONTIER_KL_OWN][i]),
                             float(columns[keys.FRONTIER_KL_FITTED][i]),
                             float(columns[keys.FRONTIER_TOP1_OWN][i]), float(columns[keys.FRONTIER_TOP1_FITTED][i]),
                             float(columns[keys.FRONTIER_SPEEDUP_512][i]),
                             float(columns[keys.FRONTIER_SPEEDUP_2048][i]),
                             results["own"][i], results["fitted"][i])
                 for i in range(n))
    return Frontier(rows, chosen, budget, None if paper_kl is None else float(paper_kl), (held[0], held[1]), check)


def _read_check(extra: Mapping[str, Any], n: int):
    """The answer check's keys: (items, prompt tokens, full right) and, per K/V, one CheckResult or None
    per candidate; all of them or none (files converted without the check, or before it)."""
    names = (keys.FRONTIER_CHECK,) + keys.FRONTIER_CHECK_ARRAYS
    present = [k for k in names if k in extra]
    if not present:
        return None, {"own": [None] * n, "fitted": [None] * n}
    missing = [k for k in names if k not in extra]
    if missing:
        raise PopMetadataError(missing[0], "missing (the file has a partial answer check)")
    check = extra[keys.FRONTIER_CHECK]
    if not (isinstance(check, list) and len(check) == 3 and all(type(x) is int and x >= 0 for x in check)
            and check[0] > 0 and check[2] <= check[0]):
        raise PopMetadataError(keys.FRONTIER_CHECK,
                               f"expected [items, prompt tokens, right answers], got {check!r}"[:200])
    items, _, right = check
    columns: Dict[Tuple[str, str], List[Any]] = {}
    for name, attr, kv in _CHECK_COLUMNS:
        value = extra[name]
        if not isinstance(value, list) or len(value) != n:
            raise PopMetadataError(name, f"expected {n} entries, one per candidate, got {value!r}"[:200])
        for v in value:
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and (math.isnan(v) or -1 <= v <= 1)
                  if attr == "low" else type(v) is int and 0 <= v <= items)
            if not ok:
                what = "a share in [-1, 1]" if attr == "low" else "a count of items"
                raise PopMetadataError(name, f"{v!r} is not {what}")
        columns[(attr, kv)] = value
    results = {}
    for kv in ("own", "fitted"):
        results[kv] = [None if columns[("scored", kv)][i] == 0 else
                       CheckResult(columns[("scored", kv)][i], columns[("lost", kv)][i], float(columns[("low", kv)][i]))
                       for i in range(n)]
        if any(r is not None and r.lost > r.scored for r in results[kv]) or any(
                r is not None and r.scored > right for r in results[kv]):
            raise PopMetadataError(keys.FRONTIER_CHECK, f"a candidate answered or lost more than the {right} items "
                                   "the full model answers")
    return (items, check[1], right), results


def frontier_table(frontier: Frontier, n_layer: int) -> str:
    """A Markdown table of the frontier, the chosen row and the paper's row marked (with the answer check's
    results where the budget measured them)."""
    paper = paper_skip_set(n_layer)
    check = frontier.check
    head = "| skip set | layers | KL own | KL fitted | top-1 own | top-1 fitted | ideal @512 | ideal @2048 |"
    head += " answers own | answers fitted | |" if check else " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]

    def shown(result: Optional[CheckResult]) -> str:
        return "-" if result is None or check is None else result.text(check[2])

    for i, r in enumerate(frontier.rows):
        mark = ", ".join(m for m, on in (("chosen", i == frontier.chosen), ("paper's set", r.skip == paper)) if on)
        answers = f" {shown(r.check_own)} | {shown(r.check_fitted)} |" if check else ""
        lines.append(f"| {format_layers(r.skip)} | {len(r.skip)} | {r.kl_own:.4f} | {r.kl_fitted:.4f} | "
                     f"{r.top1_own:.3f} | {r.top1_fitted:.3f} | {r.speedup_512:.2f}x | {r.speedup_2048:.2f}x |"
                     f"{answers} {mark} |")
    if check:
        lines.append(f"\nAnswers: {check[0]} generated needle and document questions of {check[1]} tokens, of which "
                     f"the full model answers {check[2]}, asked of each candidate; its share of those and the paired "
                     "95% interval's lower end in points. A candidate keeps the answers with at least "
                     f"{KEEP_RETENTION:.0%} of the full model's score and a lower end above "
                     f"-{100 * KEEP_MARGIN:.0f} points; the budget keeps the fastest that does, stopping each "
                     "candidate once it can no longer (- : not measured).")
    return "\n".join(lines)
