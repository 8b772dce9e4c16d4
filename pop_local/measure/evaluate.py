"""Quality of POP against the full model and the baselines the paper compares with, in one run.

Modes (one loaded model, switched per measurement):
    full             every layer in every step
    pop              skip set pruned in prefill (K/V still written), boundary token and decode full
    pop_fitted       as pop, with the file's fitted K/V projections for the pruned layers (files
                     converted with `kv=fitted`; `pop` then means the paper's own projections)
    pop_no_boundary  as pop, but the last prompt token is pruned too (the paper's ablation)
    static_removal   skip set removed in prefill and decode, no K/V written (ShortGPT-style)
    paper            the paper's setting on the same model: the last third of the layers, own K/V
                     (shown when the run's skip set is another one, e.g. a budgeted file's choice)

Metrics:
    perplexity of a continuation given a context (the context is prefilled in the mode; the
    continuation is scored teacher-forced as decode steps, i.e. full depth except static_removal),
    top-1 agreement and KL(full || mode) over the same positions, and passkey-retrieval accuracy:
    a five-digit key hidden in filler text at several depths, answered greedily.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from pop_local.errors import PopError

__all__ = ["MODES", "run_eval", "format_eval_table", "passkey_prompt"]

MODES = ("full", "pop", "pop_fitted", "paper", "pop_no_boundary", "static_removal")

# filler for passkey prompts, written for the project
_FILLER = ("The river runs past the old mill. The baker opens his shop at six. A cart rolls slowly down the hill. "
           "The bell in the square rings at noon. Rain falls on the slate roofs. The market closes before dark. ")
_INTRO = ("There is a pass key hidden inside a lot of unrelated text. Find it and remember it; "
          "you will be asked for it at the end.\n\n")
_QUESTION = "\n\nWhat is the pass key? The pass key is"


def _configure(llm, mode: str, skip: Optional[Sequence[int]] = None) -> None:
    """Switch `llm` to `mode`; `skip` is the run's skip set (default: the one it has), "paper" the paper's."""
    from pop_local.format.frontier import paper_skip_set
    from pop_local.runtime.native import STAGE_ALL, STAGE_PREFILL, STAGE_PREFILL_NO_BOUNDARY

    stage = {"full": STAGE_PREFILL, "pop": STAGE_PREFILL, "pop_fitted": STAGE_PREFILL, "paper": STAGE_PREFILL,
             "pop_no_boundary": STAGE_PREFILL_NO_BOUNDARY, "static_removal": STAGE_ALL}[mode]
    want = paper_skip_set(llm.pop_metadata.n_layer) if mode == "paper" else skip
    if want is not None and tuple(want) != llm.skip_layers:
        llm.skip_layers = want
    llm._set_stage_mode(stage)
    llm.kv_mode = "fitted" if mode == "pop_fitted" else "own"
    llm.pop_enabled = mode != "full"


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def continuation_logprobs(llm, mode: str, context: Sequence[int], continuation: Sequence[int],
                          skip: Optional[Sequence[int]] = None) -> np.ndarray:
    """Log-probabilities [len(continuation), n_vocab] predicting each continuation token in `mode`."""
    _configure(llm, mode, skip)
    llm.reset()
    llm.eval(list(context))  # the prefill, in the mode; only its last token is an output
    first = llm.last_logits()
    if mode != "static_removal":
        llm.pop_enabled = False  # decode steps run the full model in every POP variant
    # teacher-forced decode steps as batches of all-output tokens (each runs at decode depth)
    rest = llm.eval_logits(list(continuation[:-1]))
    return _log_softmax(np.concatenate([first[None, :], rest]))


def passkey_prompt(llm, n_tokens: int, key: str, depth: float, filler_text: str = _FILLER) -> List[int]:
    """About n_tokens tokens: intro, filler with the key at `depth` (0..1), then the question
    (`filler_text`: other sentences to hide the key in; the converter's own check uses its own)."""
    tok = lambda s: llm.tokenize(s.encode(), add_bos=False)  # noqa: E731
    needle = tok(f" The pass key is {key}. Remember it: {key} is the pass key. ")
    head, question, filler = tok(_INTRO), tok(_QUESTION), tok(filler_text)
    room = n_tokens - 1 - len(head) - len(needle) - len(question)
    if room < len(filler):
        raise PopError(f"passkey length {n_tokens} is too short (at least {n_tokens - room + len(filler)} tokens)")
    hay = (filler * (room // len(filler) + 1))[:room]
    cut = int(round(depth * room))
    # cut at a sentence end so the key sits between sentences
    ends = [i + 1 for i, t in enumerate(hay) if llm.detokenize([t]).strip().endswith(b".")]
    if ends:
        cut = min(ends, key=lambda i: abs(i - cut))
    return [llm.token_bos()] + head + hay[:cut] + needle + hay[cut:] + question


def _passkey_trial(llm, mode: str, prompt: List[int], key: str, skip: Optional[Sequence[int]] = None) -> bool:
    _configure(llm, mode, skip)
    llm.reset()
    out = llm.create_completion(prompt, max_tokens=8, temperature=0.0, top_k=1)
    found = re.search(r"\d+", out["choices"][0]["text"])
    return bool(found) and found.group(0) == key


def _windows(tokens: Sequence[int], n_ctx: int, n_cont: int, count: int, bos: int):
    """Up to `count` (context, continuation) pairs spread evenly over `tokens` (BOS first in each context)."""
    body = list(tokens[1:]) if tokens and tokens[0] == bos else list(tokens)
    span = (n_ctx - 1) + n_cont
    if len(body) < span:
        raise PopError(f"the evaluation text has {len(body) + 1} tokens; context {n_ctx} with a {n_cont}-token "
                       f"continuation needs {span + 1} (use a longer `data` text or a smaller `ctx`)")
    last = len(body) - span
    starts = sorted({round(last * i / max(1, count - 1)) for i in range(count)}) if count > 1 else [0]
    return [([bos] + body[s:s + n_ctx - 1], body[s + n_ctx - 1:s + span]) for s in starts]


def run_eval(llm, *, ctx: Sequence[int] = (512, 1024), continuation: int = 64, windows: int = 2,
             passkey_lengths: Sequence[int] = (512, 1024), passkey_trials: int = 4, text: Optional[str] = None,
             text_name: str = "bundled passage", modes: Optional[Sequence[str]] = None, seed: int = 0,
             progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """Compare `modes` on `llm` (a PopLlama with a skip set). Returns a JSON-ready dict (docs/commands.md)."""
    # Long: one pass that switches the one loaded context through every mode per window, restoring its
    # settings in one finally; split up, each part would need the whole state passed in and back.
    from pop_local.format.layers import format_layers

    from .bench import require_pop
    from .texts import passage

    require_pop(llm)
    if continuation < 2:
        raise PopError("`continuation` must be at least 2 tokens")
    # fitted projections apply only to the skip set they were fitted for: the file's
    fitted_ok = llm.n_fitted_layers > 0 and tuple(llm.skip_layers) == tuple(llm.pop_metadata.skip_layers)
    from pop_local.format.frontier import paper_skip_set

    skip = llm.skip_layers
    paper_differs = tuple(skip) != paper_skip_set(llm.pop_metadata.n_layer)
    if modes is None:
        modes = [m for m in MODES if (m != "pop_fitted" or fitted_ok) and (m != "paper" or paper_differs)]
    if "pop_fitted" in modes and not fitted_ok:
        raise PopError("pop_fitted needs fitted K/V projections (convert with `kv=fitted`) and the file's own skip set")
    unknown = [m for m in modes if m not in MODES]
    if unknown or "full" not in modes:
        raise PopError(f"modes must include full and come from {', '.join(MODES)}")
    need = max(list(ctx) + [c + continuation for c in ctx] + list(passkey_lengths) + [0]) + 8
    if need > llm.n_ctx():
        raise PopError(f"evaluation needs {need} tokens of context, the model was opened with {llm.n_ctx()}")

    text_tokens = llm.tokenize((text if text is not None else passage()).encode(), add_bos=True)
    plan = [(n, w) for n in ctx for w in _windows(text_tokens, n, continuation, windows, llm.token_bos())]
    rng = random.Random(seed)
    trials = [(n, f"{rng.randrange(10000, 100000)}", (t + 0.5) / passkey_trials)
              for n in passkey_lengths for t in range(passkey_trials)]
    total = len(plan) * len(modes) + len(trials) * len(modes)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress("evaluating", done, total)

    was_enabled, was_kv = llm.pop_enabled, llm.kv_mode
    per_ctx: Dict[int, Dict[str, Dict[str, List[float]]]] = {n: {m: {"nll": [], "top1": [], "kl": []} for m in modes}
                                                             for n in ctx}
    passkey: Dict[str, Dict[int, List[bool]]] = {m: {n: [] for n in passkey_lengths} for m in modes}
    try:
        if progress:
            progress("evaluating", 0, total)
        for n, (context, cont) in plan:
            ref = continuation_logprobs(llm, "full", context, cont, skip)
            tick()
            ref_top = ref.argmax(axis=-1)
            p_ref = np.exp(ref)
            for mode in modes:
                lp = ref if mode == "full" else continuation_logprobs(llm, mode, context, cont, skip)
                if mode != "full":
                    tick()
                acc = per_ctx[n][mode]
                acc["nll"].extend(-lp[np.arange(len(cont)), cont])
                acc["top1"].extend(lp.argmax(axis=-1) == ref_top)
                acc["kl"].extend((p_ref * (ref - lp)).sum(axis=-1))
        for n, key, depth in trials:
            prompt = passkey_prompt(llm, n, key, depth)
            for mode in modes:
                passkey[mode][n].append(_passkey_trial(llm, mode, prompt, key, skip))
                tick()
    finally:
        _configure(llm, "pop", skip)
        llm.kv_mode = was_kv
        llm.pop_enabled = was_enabled
        llm.reset()

    def summary(acc):
        return {"perplexity": float(np.exp(np.mean(acc["nll"]))), "top1_agreement": float(np.mean(acc["top1"])),
                "kl_to_full": float(np.mean(acc["kl"]))}

    results = {}
    for mode in modes:
        merged = {k: [v for n in ctx for v in per_ctx[n][mode][k]] for k in ("nll", "top1", "kl")}
        results[mode] = {
            **summary(merged),
            "by_context": {str(n): summary(per_ctx[n][mode]) for n in ctx},
            "passkey_accuracy": {str(n): float(np.mean(v)) for n, v in passkey[mode].items()},
        }
    return {
        "model": os.path.basename(llm.model_path),
        "skip_layers": format_layers(skip),
        # the mode that runs the file as converted (its skip set, with fitted K/V where it has them)
        "file_choice": "pop_fitted" if "pop_fitted" in modes else "pop",
        "text": text_name,
        "contexts": list(ctx),
        "continuation_tokens": continuation,
        "windows_per_context": len(plan) // max(1, len(ctx)),
        "passkey_trials": passkey_trials,
        "modes": results,
    }


def format_eval_table(result: Dict[str, Any]) -> str:
    """A Markdown table of `run_eval`'s result (what `pop-local eval` prints)."""
    first = next(iter(result["modes"].values()))
    lengths = list(first["passkey_accuracy"])
    head = "| mode | perplexity | top-1 vs full | KL vs full |" + "".join(f" passkey@{n} |" for n in lengths)
    lines = [head, "|---" * (4 + len(lengths)) + "|"]
    for mode, r in result["modes"].items():
        lines.append(f"| {mode} | {r['perplexity']:.4g} | {r['top1_agreement']:.3f} | {r['kl_to_full']:.4f} |"
                     + "".join(f" {r['passkey_accuracy'][n]:.2f} |" for n in lengths))
    return "\n".join(lines)
