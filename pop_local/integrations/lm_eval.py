"""lm-evaluation-harness model on pop-local: `lm_eval --model pop-local`.

    lm_eval --model pop-local --model_args model=m.pop.gguf,pop=True,n_ctx=2048 --tasks hellaswag
    lm_eval run --model pop-local --model_args model=m.gguf,skip_layers=20-29 --tasks my_task --include_path tasks/

The stock `lm_eval` command finds "pop-local" through a startup hook that install.sh puts in the
virtual environment (pop_local_lm_eval.pth, see lm_eval_hook.py); without it, import this module first:

    import lm_eval
    import pop_local.integrations.lm_eval  # registers "pop-local"
    lm_eval.simple_evaluate(model="pop-local", model_args="model=m.pop.gguf,pop=True", tasks=["arc_easy"])

Needs lm-evaluation-harness (`pip install "pop-local[eval]"`, lm_eval 0.4.13).

model_args:
    model         a local GGUF, or what the rest of pop-local accepts (a hub file org/repo/file.gguf);
                  omitted: the embedded default model (SmolLM2-135M-Instruct, made POP-ready once)
    max_gen_toks  generate_until's token limit when a task sets none (default 256)
    every load and POP setting by its name (pop_local.runtime.settings.LoadFields / PopFields: n_ctx,
    n_batch, n_threads, n_gpu_layers, flash_attn, chat_format, seed, pop, skip_layers, kv_mode,
    min_tokens, ...), checked once; a bad value is a PopSettingError naming the setting. lm_eval splits model_args on
    commas and the skip-set syntax has no comma-free spelling of a set with gaps, so on the command
    line `skip_layers` is one range ("20-29") or one layer ("25"); from Python, pass model_args as a
    dict for any set ({"skip_layers": "20-24,28"}) and for kv_overrides. batch_size, max_batch_size and
    device (which lm_eval always passes) are accepted and unused: requests run one at a time, and the
    devices are the load settings' (n_gpu_layers, tensor_split, rpc_servers).

Semantics, the same as `pop-local eval` (pop_local/measure/evaluate.py):
    loglikelihood  the context (BOS per the model) is prefilled as a prompt, i.e. with POP: every
                   context token but the last runs with the skip set pruned; the last one, an output,
                   runs at full depth and predicts the continuation's first token; the continuation is
                   teacher-forced with every token an output (full depth, as decode steps). Tokens as
                   lm_eval's own models split them (continuation = tokens of context+continuation after
                   the context's); a context that does not fit n_ctx loses its oldest tokens; requests
                   sharing a context reuse its prefill (the cache is cut back to the context, exactly).
    loglikelihood_rolling  lm_eval's rolling windows (n_ctx tokens, BOS first), each scored as above.
    generate_until greedy completion (temperature 0) through create_completion, the product's own
                   path (POP prefill, full-depth decoding), from a fresh cache per request, with the
                   request's `until` stops and `max_gen_toks`; other generation kwargs are ignored.
With POP off (pop=False, or a file without a skip set) every token runs the full model. A context
shorter than `min_tokens` (the file's pop.prefill.min_tokens, else 128) runs the full model too, as
every short prompt does: many tasks' contexts are that short; `min_tokens=0` prunes every context.

apply_chat_template renders the model's own chat template (GGUF tokenizer.chat_template) with
llama-cpp-python's Jinja2 formatter; with a named `chat_format` it is not available.
"""

from __future__ import annotations

import logging
import os
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # pragma: no cover - depends on the extra
    raise ImportError('PopLocalLM needs lm-evaluation-harness: pip install "pop-local[eval]"') from e
from tqdm import tqdm

from pop_local.errors import PopError, PopSettingError
from pop_local.runtime.settings import LoadFields, LoadSettings, PopFields, PopSettings, build

from . import _backend

__all__ = ["PopLocalLM", "MODEL_NAME", "split_model_args"]

MODEL_NAME = "pop-local"
DEFAULT_MAX_GEN_TOKS = 256

eval_logger = logging.getLogger("lm_eval.pop_local")  # shown by lm_eval's own log handler


def _is_tuple_field(field) -> bool:
    """Whether a settings field holds a sequence (a skip set, RPC servers, shares), Optional or not."""
    ann = field.annotation
    args = typing.get_args(ann) if typing.get_origin(ann) is typing.Union else (ann,)
    return any(typing.get_origin(a) is tuple or a is tuple for a in args)


def split_model_args(args: Dict[str, Any]) -> Tuple[LoadSettings, PopSettings]:
    """model_args (as lm_eval parsed them: strings, numbers, booleans, None) -> checked settings.

    Every LoadFields / PopFields field is taken by its name; anything else is a PopSettingError naming
    it. lm_eval turns "20" into a number: a sequence field given one number gets it back as text."""
    load_fields, pop_fields = LoadFields.model_fields, PopFields.model_fields
    unknown = [k for k in args if k not in load_fields and k not in pop_fields]
    if unknown:
        known = ", ".join(["model", "max_gen_toks", *load_fields, *pop_fields])
        raise PopSettingError(unknown[0], f"not a pop-local model_arg (known: {known})")

    def value(name: str, field) -> Any:
        v = args[name]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_tuple_field(field):
            return str(v)
        return v

    load = build(LoadSettings, {k: value(k, f) for k, f in load_fields.items() if k in args})
    pop = build(PopSettings, {k: value(k, f) for k, f in pop_fields.items() if k in args})
    return load, pop


_closing: Dict[int, Any] = {}


def _close_at_exit(llm) -> None:
    """Close the model before the interpreter tears down llama_cpp's module (lm_eval's CLI ends with
    the shared model still loaded; freeing it during teardown prints an ignored exception)."""
    if id(llm) not in _closing:
        import atexit

        _closing[id(llm)] = llm
        atexit.register(llm.close)


def _log_softmax(x):
    import numpy as np

    x = x.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@register_model(MODEL_NAME)
class PopLocalLM(TemplateLM):
    """An lm_eval model (lm_eval.api.model.LM, through lm_eval's TemplateLM for its request encoding)
    running a GGUF through pop-local's PopLlama. See the module docstring for model_args and semantics.

    `llm` is the PopLlama (shared with every pop-local integration that loads the same file with the
    same load settings); this instance's POP settings are applied to it for each batch of requests."""

    def __init__(self, model: Optional[str] = None, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
                 batch_size: Any = None, max_batch_size: Any = None, device: Any = None, **settings: Any):
        # batch_size, max_batch_size, device: what lm_eval passes every model besides model_args
        super().__init__()
        self.load, self.pop = split_model_args(settings)  # checked before anything loads
        if isinstance(max_gen_toks, bool) or not isinstance(max_gen_toks, int) or max_gen_toks < 1:
            raise PopSettingError("max_gen_toks", f"expected a positive whole number, got {max_gen_toks!r}")
        self._max_gen_toks = max_gen_toks
        if batch_size not in (None, 1, "1"):
            eval_logger.info("pop-local runs requests one at a time; batch_size=%s is not used", batch_size)
        self.model = model = None if model is None else os.fspath(model)
        target = _backend.resolve_target(model, self.load)
        self.llm, self._lock = _backend.shared_model(target)
        _close_at_exit(self.llm)
        with self._lock:
            self.llm.apply_pop_settings(self.pop)  # a skip set out of the model's range fails here
            from pop_local.runtime.models import pop_notes, pop_state_text

            self.notes = pop_notes(self.llm, self.llm.pop_metadata)
            eval_logger.info("pop-local: %s, %s", os.path.basename(target.path), pop_state_text(self.llm))
        for note in self.notes:
            eval_logger.info("pop-local: %s", note)
        self.model_path = target.path

    # --- what lm_eval asks of a model -----------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.llm.token_eos()

    @property
    def prefix_token_id(self) -> int:
        """The context of a request whose context is empty: BOS, else EOS (as lm_eval's HF model)."""
        bos = self.llm.token_bos()
        return bos if bos >= 0 else self.llm.token_eos()

    @property
    def max_length(self) -> int:
        """Tokens a request may fill: n_ctx as loaded (llama.cpp may round its own context up; the
        Llama's token buffer keeps the size asked for)."""
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return f"pop-local/{os.path.basename(self.model_path)}"

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> List[int]:
        """Tokens of `string`, special tokens parsed (as create_completion does); BOS as the model adds
        it (add_special_tokens None or True), not when False or when the text already starts with it."""
        add_bos = add_special_tokens is not False
        if add_special_tokens is None:
            bos_text = self._bos_text()
            if bos_text and string.startswith(bos_text):
                add_bos = False
        return list(self.llm.tokenize(string.encode("utf-8"), add_bos=add_bos, special=True))

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def _bos_text(self) -> str:
        bos = self.llm.token_bos()
        return self.llm.detokenize([bos], special=True).decode("utf-8", errors="replace") if bos >= 0 else ""

    # --- scoring -------------------------------------------------------------------------------

    def _fit(self, context: List[int], continuation: List[int]) -> List[int]:
        """The context, left-truncated so that context + continuation[:-1] fits n_ctx."""
        room = self.max_length - (len(continuation) - 1)
        if room < 1:
            raise PopError(f"a continuation of {len(continuation)} tokens does not fit n_ctx={self.max_length} "
                           "(load with a larger n_ctx)")
        return context[-room:]

    def _score_group(self, context: List[int], continuations: List[List[int]]) -> List[Tuple[float, bool]]:
        """(log-likelihood, is_greedy) of each continuation after one context: the context prefilled as
        a prompt (POP), each continuation teacher-forced at full depth after it."""
        import numpy as np

        from pop_local.runtime import upstream

        llm = self.llm
        llm.reset()
        llm.eval(context)
        first = llm.last_logits()
        out = []
        for cont in continuations:
            if not cont:
                out.append((0.0, True))
                continue
            if llm.n_tokens > len(context):  # cut the cache back to the context (its K/V untouched)
                upstream.forget_after(llm, len(context))
                llm.n_tokens = len(context)
            rest = llm.eval_logits(cont[:-1])
            logprobs = _log_softmax(np.concatenate([first[None, :], rest]))
            picked = logprobs[np.arange(len(cont)), cont]
            greedy = bool((logprobs.argmax(axis=-1) == np.asarray(cont)).all())
            out.append((float(picked.sum()), greedy))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> List[Tuple[float, bool]]:
        """requests: ((context, continuation), context tokens, continuation tokens), from TemplateLM."""
        # requests with the same (fitted) context are scored together: one prefill each
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, (_, ctx, cont) in enumerate(requests):
            ctx = self._fit(list(ctx), list(cont))
            groups.setdefault(tuple(ctx), []).append(i)
        results: List[Optional[Tuple[float, bool]]] = [None] * len(requests)
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="pop-local loglikelihood") as bar, self._lock:
            self.llm.apply_pop_settings(self.pop)
            for ctx, members in groups.items():
                scores = self._score_group(list(ctx), [list(requests[i][2]) for i in members])
                for i, score in zip(members, scores):
                    results[i] = score
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], score)
                bar.update(len(members))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Sum of log-probabilities of each text, over lm_eval's rolling windows of n_ctx tokens."""
        out = []
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="pop-local loglikelihood_rolling") as bar:
            for req in requests:
                (string,) = req.args
                windows = [lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]
                scores = self._loglikelihood_tokens([(None, ctx, cont) for ctx, cont in windows], disable_tqdm=True)
                total = float(sum(s for s, _ in scores))
                self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
                out.append(total)
                bar.update(1)
        return out

    # --- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        out = []
        ignored = set()
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                  desc="pop-local generate_until") as bar, self._lock:
            self.llm.apply_pop_settings(self.pop)
            for req in requests:
                context, gen_kwargs = req.args
                kwargs = dict(gen_kwargs or {})
                until = kwargs.pop("until", None)
                until = [until] if isinstance(until, str) else list(until or [])
                max_toks = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
                ignored.update(k for k, v in kwargs.items() if k not in ("do_sample", "temperature") or v)
                text = self._generate(context, until, max_toks)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                out.append(text)
                bar.update(1)
        if ignored:
            eval_logger.warning("pop-local decodes greedily; generation kwargs %s were ignored", sorted(ignored))
        return out

    def _generate(self, context: str, until: List[str], max_tokens: int) -> str:
        tokens = self.tok_encode(context) or [self.prefix_token_id]
        max_tokens = max(1, min(max_tokens, self.max_length - 1))
        tokens = tokens[-(self.max_length - max_tokens):]  # the oldest context goes, as lm_eval's models do
        self.llm.reset()  # a fresh prompt: the result does not depend on the requests before it
        done = self.llm.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0,
                                          stop=[s for s in until if s])
        text = done["choices"][0]["text"]
        for stop in until:  # create_completion drops the stop itself; cut any it let through
            if stop and stop in text:
                text = text.split(stop)[0]
        return text

    # --- chat templates ------------------------------------------------------------------------

    def chat_template(self, chat_template: "bool | str" = False) -> Optional[str]:
        if chat_template is False or chat_template is None:
            return None
        return self.llm.metadata.get("tokenizer.chat_template", "")

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The model's own chat template (GGUF tokenizer.chat_template), rendered by llama-cpp-python.
        add_generation_prompt=False with an assistant message last (lm_eval's gen_prefix): that message
        is the reply's start, left open for the model to continue."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if self.load.chat_format is not None or not template:
            why = (f"chat_format={self.load.chat_format!r} is set" if self.load.chat_format is not None
                   else f"{os.path.basename(self.model_path)} has no tokenizer.chat_template")
            raise NotImplementedError(f"pop-local renders only the model's own chat template ({why})")
        llm = self.llm

        def text(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

        formatter = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                                        bos_token=text(llm.token_bos()), add_generation_prompt=add_generation_prompt)
        if add_generation_prompt or not chat_history or chat_history[-1].get("role") != "assistant":
            return formatter(messages=chat_history).prompt
        # lm_eval's answer prefix (gen_prefix) as the start of the reply: the final assistant message is
        # continued, not closed (transformers' continue_final_message); a marker finds where it begins
        marker = "\x00pop-local-reply\x00"
        rendered = formatter(messages=chat_history[:-1] + [{"role": "assistant", "content": marker}]).prompt
        if marker not in rendered:
            raise NotImplementedError("the model's chat template drops the assistant message: an answer prefix "
                                      "cannot open the reply")
        return rendered[:rendered.index(marker)] + chat_history[-1]["content"]
