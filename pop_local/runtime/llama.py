"""PopLlama: llama_cpp.Llama with prefill-only pruning controls.

Completion, chat completion, streaming and embeddings are llama_cpp.Llama's own; the native patch
decides per micro-batch which graph runs (non-output prompt tokens pruned, output tokens full).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Hashable, Iterable, Iterator, List, Optional, Sequence, Tuple

import llama_cpp

if TYPE_CHECKING:
    import numpy as np

from pop_local.errors import PopSettingError
from pop_local.format.layers import check_range, parse_layers
from pop_local.format.metadata import PopMetadata, check_token_count, read_pop_metadata, resolve_runtime_metadata

from . import devices, multimodal, native as _native, upstream
from .rpc import devices_for_load, use_servers
from .settings import LoadSettings, PopSettings, build

__all__ = ["PopLlama"]

_UNKNOWN = object()  # the label of a cached position whose settings are not known: reusable by none
# labels a position that ran at full depth while prompts are pruned (an output: the prompt's last token,
# a decoded token; a full-depth tail; a prompt under the minimum), with the pruned label it ran under: a
# fresh run of a longer prompt would have pruned it, so no request reuses it (a later prompt evaluates it
# again), except the very prompt it ended (_exact_hit)
_RAN_FULL = "ran full"
_LORA_FITTED = ("the file's fitted K/V projections were fitted to the base weights, which a LoRA adapter (lora_path) "
                "changes: pass kv_mode=\"own\" (the pruned layers' own, adapted projections)")


@dataclass
class _MultimodalPrompt:
    """One multimodal prompt while its chunks are evaluated: what the settings decided for all of them."""
    plan: "multimodal.PromptPlan"
    started: float   # when its chunks were planned (image encoding counts as prefill)
    short: bool      # under the prompt minimum: the full model runs every chunk
    label: Hashable  # the cache label of its positions


class PopLlama(llama_cpp.Llama):
    """A llama_cpp.Llama whose prompt processing skips the layers in `skip_layers`.

    Args:
        model_path: a GGUF file; its pop.* keys give the default skip set and switch.
        pop: None follows the file (pop.prefill.enabled, default on); True/False forces POP on/off.
        skip_layers: None follows the file; otherwise layer indices (iterable of int or "20-29").
        kv_mode: None: "fitted" (fitted K/V where the file has them); "own": the layers' own projections.
        min_tokens: None follows the file (pop.prefill.min_tokens, else 128); a prompt of fewer tokens than
            this (a reused prefix counted, as a fresh run counts it) runs the full model (0: prune every
            prompt of two tokens or more).
        full_tail: None follows the file (pop.prefill.full_tail, else 1); the last `full_tail` tokens of a
            pruned prompt run the full model (the question after a long document), not only the last one.
        exact_prefill: KV-sharing models (gemma4): skip the layers that store no K/V of their own for
            prompt tokens without outputs, with identical results (default True; independent of `pop`).
        reuse_cache_across_settings: False (default): a cached prompt prefix is reused only as far as a
            fresh run under the current settings would have computed it the same way (same POP settings,
            and pruned where the fresh run prunes: an earlier reply and the token before it ran at full
            depth, so they are evaluated again), so every output equals a fresh run with its settings.
            True: any cached prefix is reused (e.g. a chat that switches POP on for later turns keeps the
            earlier turns' cache, computed under the earlier setting).
        metadata: the file's PopMetadata when the caller has read it already (the header is read once).
        rpc_servers: "HOST:PORT[,HOST:PORT...]" (or a list) of `pop-local rpc-server`s whose devices the
            model is split over too (runtime/rpc.py); rpc_timeout: seconds each may take to answer.
        mmproj: a multimodal projector GGUF (llama.cpp's clip format) for image_url parts in chat messages:
            upstream's MTMDChatHandler on the model's own chat template (or the multimodal handler
            `chat_format` names). A chat_handler passed in is used as it is; either way image tokens are
            pruned like prompt text (runtime/multimodal.py).
        settings: (LoadSettings, PopSettings) already checked, instead of the arguments above (use
            PopLlama.from_settings).
        **llama_kwargs: passed to llama_cpp.Llama unchanged (n_ctx, n_batch, kv_overrides, ...).

    Raises:
        PopNativeError: the loaded libllama was built without pop-local's patch.
        PopMetadataError: a pop.* key in the file or in kv_overrides is invalid.
        PopSettingError: an argument is invalid (the error names it).
    """

    def __init__(self, model_path: str, *, pop: Optional[bool] = None,
                 skip_layers: "Optional[Iterable[int] | str]" = None, kv_mode: Optional[str] = None,
                 min_tokens: Optional[int] = None, full_tail: Optional[int] = None, exact_prefill: bool = True,
                 reuse_cache_across_settings: bool = False, metadata: Optional[PopMetadata] = None,
                 rpc_servers: "Optional[str | Sequence[str]]" = None, rpc_timeout: int = 300,
                 mmproj: Optional[str] = None, settings: "Optional[Tuple[LoadSettings, PopSettings]]" = None,
                 **llama_kwargs: Any):
        self._pop = _native.lib()  # fail before loading anything when the build lacks POP
        if settings is None:  # the library's own entry point: the arguments are checked here, once
            load = build(LoadSettings, {"rpc_servers": rpc_servers, "rpc_timeout": rpc_timeout, "mmproj": mmproj,
                                        "reuse_cache_across_settings": reuse_cache_across_settings})
            pop_settings = build(PopSettings, {"pop": pop, "skip_layers": skip_layers, "kv_mode": kv_mode,
                                               "min_tokens": min_tokens, "full_tail": full_tail})
        else:  # from_settings: checked where they entered
            load, pop_settings = settings
        if llama_kwargs.get("draft_model") is not None and pop_settings.pop is not False:
            raise PopSettingError("draft_model", "speculative decoding makes every prompt token an output, and "
                                  "outputs run at full depth: POP would prune nothing (pass pop=False to use it)")
        self._lora = bool(llama_kwargs.get("lora_path"))
        if metadata is None or os.path.abspath(metadata.path) != os.path.abspath(model_path):
            metadata = read_pop_metadata(model_path)
        # same checks as the native loader, but as a Python error naming the key
        self.pop_metadata: PopMetadata = resolve_runtime_metadata(metadata, llama_kwargs.get("kv_overrides"))
        if pop_settings.skip_layers is not None:  # parsed by the settings; the range needs the model
            check_range(pop_settings.skip_layers, self.pop_metadata.n_layer, key="skip_layers")
        self._last_prefill_ms: Optional[float] = None
        self._last_prefill_tokens = 0
        self._min_tokens = self.pop_metadata.min_tokens if pop_settings.min_tokens is None else pop_settings.min_tokens
        self._full_tail = self.pop_metadata.full_tail if pop_settings.full_tail is None else pop_settings.full_tail
        self._short_prompts = self._short_prompt_tokens = 0  # evaluations run full for being short
        self._image_tokens = self._image_pruned_tokens = 0  # image (or audio) chunks' tokens, and those run pruned
        self._prompt: Optional[_MultimodalPrompt] = None  # the multimodal prompt being evaluated
        self.reuse_cache_across_settings = load.reuse_cache_across_settings
        # the POP settings each cached position was computed under (_cache_label); see generate()
        self._position_labels: List[Hashable] = []
        self._stats_snapshot: Dict[str, Any] = {}
        # llama-cpp-python takes rpc_servers and ignores it (its llama.cpp removed the model parameter):
        # the remote devices are registered here, before the load
        endpoints = list(load.rpc_servers or ())
        if endpoints:
            use_servers(endpoints, timeout_s=load.rpc_timeout)
        if llama_kwargs.get("n_threads") is None:
            llama_kwargs["n_threads"] = devices.physical_cores()
        if load.mmproj and llama_kwargs.get("chat_handler") is None:
            llama_kwargs["chat_handler"] = upstream.multimodal_chat_handler(
                load.mmproj, llama_kwargs.get("chat_format"), verbose=bool(llama_kwargs.get("verbose")))
        if (llama_kwargs.get("chat_handler") is not None
                and (llama_kwargs.get("chat_format") or "mtmd") in upstream.MULTIMODAL_CHAT_FORMATS):
            llama_kwargs["chat_format"] = None  # a handler's name, not a text template llama_cpp.Llama knows
        with devices_for_load(endpoints):  # only this model's servers, once any is registered
            super().__init__(model_path=model_path, **llama_kwargs)
        self.multimodal = self.chat_handler is not None and multimodal.attach(self, self.chat_handler)
        if load.mmproj:  # load the projector now, so that a bad file fails here and not at the first image
            upstream.load_projector(self.chat_handler, self, load.mmproj)

        if pop_settings.skip_layers is not None:
            self._set_skip_layers(pop_settings.skip_layers)
        if pop_settings.pop is not None:
            self.pop_enabled = pop_settings.pop
        if self._lora and (pop_settings.kv_mode or self.kv_mode) == "fitted" and self.n_fitted_layers > 0:
            self.close()
            raise PopSettingError("kv_mode", _LORA_FITTED)
        if pop_settings.kv_mode is not None:
            self.kv_mode = pop_settings.kv_mode
        self.exact_prefill = exact_prefill
        self.pop_stats()  # the first snapshot

    @classmethod
    def from_settings(cls, model: "str | PopMetadata", load: Optional[LoadSettings] = None,
                      pop: Optional[PopSettings] = None, **llama_kwargs: Any) -> "PopLlama":
        """A PopLlama from typed settings (checked where they entered: the CLI, a server request, an
        integration's fields). `model`: a path, or its PopMetadata when the caller has read the header.
        llama_kwargs: further llama_cpp.Llama arguments (n_ubatch, rope scaling, a chat handler, ...)."""
        load = load or LoadSettings()
        meta = model if isinstance(model, PopMetadata) else None
        path = meta.path if meta is not None else model
        return cls(path, metadata=meta, settings=(load, pop or PopSettings()),
                   **{**load.llama_params(), **llama_kwargs})

    def close(self) -> None:
        # __init__ may stop before llama_cpp.Llama.__init__ ran (bad metadata); nothing to close then
        if upstream.initialised(self):
            super().close()

    # --- POP controls -------------------------------------------------------------------------

    @property
    def _ctx_ptr(self) -> ctypes.c_void_p:
        return upstream.context_pointer(self)

    @property
    def pop_supported(self) -> bool:
        """Whether this build can run the model's architecture with skipped layers."""
        return bool(self._pop.pop_llama_arch_supported(upstream.model_pointer(self)))

    @property
    def pop_enabled(self) -> bool:
        """POP on/off for this context (settable at any time; the next prompt follows it)."""
        return bool(self._pop.pop_llama_get_enabled(self._ctx_ptr))

    @pop_enabled.setter
    def pop_enabled(self, value: bool) -> None:
        self._pop.pop_llama_set_enabled(self._ctx_ptr, bool(value))
        self.pop_stats()

    @property
    def pop_active(self) -> bool:
        """True when prompts are really pruned: enabled, non-empty skip set, supported architecture."""
        return bool(self._pop.pop_llama_is_active(self._ctx_ptr))

    def _layer_list(self, get) -> Tuple[int, ...]:
        """A layer list from a native getter (ctx, out, capacity) -> count: asked for its size, then filled."""
        n = get(self._ctx_ptr, None, 0)
        buf = (ctypes.c_int32 * max(n, 1))()
        get(self._ctx_ptr, buf, n)
        return tuple(buf[i] for i in range(n))

    @property
    def skip_layers(self) -> Tuple[int, ...]:
        """Layers skipped during prompt processing (ascending)."""
        return self._layer_list(self._pop.pop_llama_get_skip_layers)

    @skip_layers.setter
    def skip_layers(self, layers: "Iterable[int] | str") -> None:
        self._set_skip_layers(parse_layers(layers, self.pop_metadata.n_layer, key="skip_layers"))

    @property
    def min_tokens(self) -> int:
        """Prompt evaluations of fewer new tokens than this run the full model (settable; 0: prune all)."""
        return self._min_tokens

    @min_tokens.setter
    def min_tokens(self, value: int) -> None:
        self._min_tokens = check_token_count(value, "min_tokens")
        self.pop_stats()

    @property
    def full_tail(self) -> int:
        """The last tokens of a pruned prompt that run the full model (settable; 0 or 1: only the last)."""
        return self._full_tail

    @full_tail.setter
    def full_tail(self, value: int) -> None:
        self._full_tail = check_token_count(value, "full_tail")
        self.pop_stats()

    def apply_pop_settings(self, pop: PopSettings) -> None:
        """Typed POP settings (checked where they entered), e.g. per request; None follows the file."""
        meta = self.pop_metadata
        skip = pop.skip_layers if pop.skip_layers is not None else meta.skip_layers
        check_range(skip, meta.n_layer, key="skip_layers")
        self._set_skip_layers(skip)
        self.pop_enabled = pop.pop if pop.pop is not None else meta.enabled
        self.kv_mode = pop.kv_mode or "fitted"  # "fitted" uses fitted K/V only where the file has them
        self.min_tokens = pop.min_tokens if pop.min_tokens is not None else meta.min_tokens
        self.full_tail = pop.full_tail if pop.full_tail is not None else meta.full_tail

    def _set_skip_layers(self, layers: Tuple[int, ...]) -> None:
        """A parsed skip set, in range, to the runtime."""
        arr = (ctypes.c_int32 * max(len(layers), 1))(*layers)
        if self._pop.pop_llama_set_skip_layers(self._ctx_ptr, arr, len(layers)) != 0:
            raise PopSettingError("skip_layers", f"the runtime rejected {list(layers)}")
        self.pop_stats()

    @property
    def exact_layers(self) -> Tuple[int, ...]:
        """Layers a KV-sharing model skips exactly for prompt tokens without outputs (() for other models)."""
        return self._layer_list(self._pop.pop_llama_get_exact_layers)

    @property
    def exact_prefill(self) -> bool:
        """The exact KV-sharing skip on/off (settable; results are identical either way, only speed differs)."""
        return bool(self._pop.pop_llama_get_exact_prefill(self._ctx_ptr))

    @exact_prefill.setter
    def exact_prefill(self, value: bool) -> None:
        self._pop.pop_llama_set_exact_prefill(self._ctx_ptr, bool(value))

    @property
    def kv_mode(self) -> str:
        """"fitted" (default: the file's fitted K/V projections, where it has them) or "own" (the paper's)."""
        return "fitted" if self._pop.pop_llama_get_kv_mode(self._ctx_ptr) == _native.KV_FITTED else "own"

    @kv_mode.setter
    def kv_mode(self, mode: str) -> None:
        if mode not in ("fitted", "own"):
            raise PopSettingError("kv_mode", f'expected "fitted" or "own", got {mode!r}')
        if mode == "fitted" and getattr(self, "_lora", False) and self.n_fitted_layers > 0:
            raise PopSettingError("kv_mode", _LORA_FITTED)
        self._pop.pop_llama_set_kv_mode(self._ctx_ptr, _native.KV_FITTED if mode == "fitted" else _native.KV_OWN)
        self.pop_stats()

    @property
    def n_fitted_layers(self) -> int:
        """Layers the file has fitted K/V projections for (0: none, POP uses each layer's own)."""
        return int(self._pop.pop_llama_n_fitted_layers(self._ctx_ptr))

    @property
    def fitted_active(self) -> bool:
        """True when pruned prompts use fitted K/V: kv_mode "fitted", the file's skip set, tensors present."""
        return bool(self._pop.pop_llama_fitted_active(self._ctx_ptr))

    @property
    def kv_used(self) -> str:
        """The K/V pruned prompts use: "fitted" (fitted_active) or "own" (whatever kv_mode asks)."""
        return "fitted" if self.fitted_active else "own"

    def _set_stage_mode(self, mode: int) -> None:
        """Evaluation baselines only (see native/pop_api.h); not a product feature."""
        if self._pop.pop_llama_set_stage_mode(self._ctx_ptr, int(mode)) != 0:
            raise ValueError(f"unknown stage mode {mode}")
        self.pop_stats()

    def pop_stats(self) -> Dict[str, Any]:
        """Token counters since load (or reset_pop_stats) and the last prompt's prefill time.

        Reads the context: call it from the thread that runs requests (or under its lock). Other
        threads read pop_stats_snapshot()."""
        s = _native.PopStats()
        self._pop.pop_llama_get_stats(self._ctx_ptr, ctypes.byref(s))
        self._stats_snapshot = snapshot = {
            "pruned_tokens": int(s.pruned_tokens),
            "full_tokens": int(s.full_tokens),
            "pruned_ubatches": int(s.pruned_ubatches),
            "full_ubatches": int(s.full_ubatches),
            "last_prefill_ms": self._last_prefill_ms,
            "last_prefill_tokens": self._last_prefill_tokens,
            "enabled": self.pop_enabled,
            "active": self.pop_active,
            "skip_layers": self.skip_layers,
            "kv": self.kv_used,
            "exact_layers": self.exact_layers if self.exact_prefill else (),
            "min_tokens": self._min_tokens,
            "full_tail": self._full_tail,
            "short_prompts": self._short_prompts,
            "short_prompt_tokens": self._short_prompt_tokens,
            "image_tokens": self._image_tokens,
            "image_pruned_tokens": self._image_pruned_tokens,
        }
        return dict(snapshot)

    def pop_stats_snapshot(self) -> Dict[str, Any]:
        """pop_stats() as of the last evaluation or settings change, without touching the context:
        safe from any thread while a request runs (it never waits for, nor disturbs, the request)."""
        return dict(self._stats_snapshot)

    def reset_pop_stats(self) -> None:
        self._pop.pop_llama_reset_stats(self._ctx_ptr)
        self._last_prefill_ms = None
        self._last_prefill_tokens = 0
        self._short_prompts = self._short_prompt_tokens = 0
        self._image_tokens = self._image_pruned_tokens = 0
        self.pop_stats()

    # --- which cached prefix a request may reuse ----------------------------------------------------

    @property
    def _pruning(self) -> bool:
        """Whether prompts are pruned by POP's own skip set now (a KV-sharing model's exact skip, on while
        POP is off, gives the full model's results and does not count)."""
        return self.pop_enabled and bool(self.skip_layers) and self.pop_active

    def _cache_label(self) -> Hashable:
        """What decides the K/V a pruned prompt position leaves in the cache: "full" when nothing is
        pruned, else the pruned configuration. Positions that run at full depth under it are labelled
        otherwise (_ran_full)."""
        if not self._pruning:
            return "full"
        return (self.skip_layers, self.fitted_active, int(self._pop.pop_llama_get_stage_mode(self._ctx_ptr)),
                self._min_tokens, max(self._full_tail, 1))

    def _ran_full(self, label: Hashable = None) -> Hashable:
        """The label of a position computed at full depth under `label` (default: the current one)."""
        label = self._cache_label() if label is None else label
        return label if label == "full" or (isinstance(label, tuple) and label[:1] == (_RAN_FULL,)) \
            else (_RAN_FULL, label)

    def _exact_hit(self, tokens: Sequence[int]) -> bool:
        """Whether the cache holds exactly `tokens` as one prompt computed under the current settings: pruned
        but its last token or full-depth tail (or all of it, under the prompt minimum), as a fresh run of it
        computes. Upstream may then answer from the logits in hand (a multimodal handler relies on that:
        its image positions cannot be evaluated again from token ids)."""
        n = self.n_tokens
        if n != len(tokens) or n == 0 or list(self.input_ids[:n]) != list(tokens):
            return False
        label, full = self._cache_label(), self._ran_full()
        labels = self._position_labels[:n]
        k = n - next((i for i in range(n - 1, -1, -1) if labels[i] != full), -1) - 1  # the full-depth suffix
        if any(have != label for have in labels[: n - k]):
            return False
        return n < self._min_tokens if k == n else 1 <= k <= max(self._full_tail, 1)

    def _label_positions(self, start: int, end: int, label: Hashable = None) -> None:
        labels = self._position_labels
        del labels[start:]
        labels.extend([_UNKNOWN] * (start - len(labels)))  # positions filled by a path that did not label
        labels.extend([self._cache_label() if label is None else label] * (end - start))

    def reusable_prefix(self) -> int:
        """How many cached tokens a request under the current settings may reuse: the leading
        positions computed under these same settings (all of them with reuse_cache_across_settings)."""
        if self.reuse_cache_across_settings:
            return self.n_tokens
        label = self._cache_label()
        n = 0
        for have in self._position_labels[: self.n_tokens]:
            if have != label:
                break
            n += 1
        return n

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        """llama_cpp.Llama.generate, reusing only the cached prefix computed under the current POP
        settings (upstream reuses any matching prefix, whatever computed it)."""
        self._prompt = None  # a multimodal prompt ends where generation starts
        if kwargs.get("reset", True) and self.n_tokens > 0:
            valid = self.reusable_prefix()
            if valid < self.n_tokens and not self._exact_hit(tokens):
                self.n_tokens = valid
                upstream.invalidate_logits(self)
        yield from super().generate(tokens, *args, **kwargs)

    def save_state(self) -> llama_cpp.LlamaState:
        state = super().save_state()
        state.pop_labels = list(self._position_labels[: self.n_tokens])
        return state

    def load_state(self, state: llama_cpp.LlamaState) -> None:
        super().load_state(state)
        # a state saved without labels (not by a PopLlama) is reusable by no setting
        self._position_labels = list(getattr(state, "pop_labels", [_UNKNOWN] * state.n_tokens))

    # --- prompt evaluation ------------------------------------------------------------------------

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate tokens; only the final token of a prompt asks for logits.

        llama_cpp.Llama.eval requests logits for the last token of every n_batch chunk, which would
        run those tokens at full depth; without logits_all nothing reads them, so here only the very
        last token is an output. The KV cache then matches one POP pass over the whole prompt. Within a
        multimodal prompt (runtime/multimodal.py) the prompt is all of its chunks: only the chunk that
        ends it has an output, and the prompt minimum weighs all of its tokens. With full_tail > 1 the
        prompt's last tokens (of the chunk that ends it) run the full model after the pruned rest.
        """
        prompt = self._prompt
        if upstream.logits_all(self) or (len(tokens) <= 1 and prompt is None):  # outputs: full depth
            start = self.n_tokens
            super().eval(tokens)
            self._label_positions(start, self.n_tokens, self._ran_full())
            self.pop_stats()
            return
        if prompt is None:
            started = time.perf_counter()
            # the prompt's size as a fresh run sees it: a reused prefix counts
            short = self._count_short(len(tokens), self.n_tokens + len(tokens))
            ends, label = True, self._cache_label()
        else:
            started, short, label = prompt.started, prompt.short, prompt.label
            ends = self.n_tokens + len(tokens) >= prompt.plan.positions
        upstream.forget_after(self, self.n_tokens)
        tail = 0
        if ends and not short and self._full_tail > 1 and self._pruning:
            tail = min(self._full_tail, len(tokens))
        with self._full_model_if(short):
            self._decode_chunks(tokens[: len(tokens) - tail], output=ends and not tail,
                                label=self._ran_full(label) if short else label)
        with self._full_model_if(tail > 0):
            self._decode_chunks(tokens[len(tokens) - tail:], output=True, label=self._ran_full(label))
        if ends:
            self._prompt_done(started, len(tokens) if prompt is None else prompt.plan.tokens)
        self.pop_stats()

    def _prompt_done(self, started: float, n_tokens: int) -> None:
        """A prompt's last token is in: its prefill time and size for pop_stats()."""
        self._last_prefill_ms = (time.perf_counter() - started) * 1000.0
        self._last_prefill_tokens = n_tokens
        self._prompt = None

    def _count_short(self, n_tokens: int, prompt_tokens: int) -> bool:
        """Whether evaluating n_tokens new tokens of a prompt of prompt_tokens runs the full model (a prompt
        under the minimum, with POP pruning), counted as a short prompt when it does."""
        short = prompt_tokens < self._min_tokens and self._pruning
        if short:
            self._short_prompts += 1
            self._short_prompt_tokens += n_tokens
        return short

    @contextlib.contextmanager
    def _full_model_if(self, full: bool):
        """POP off for the evaluations inside (a short prompt, or a prompt's full-depth tail, runs the full
        model under the settings' own cache label: the settings say so)."""
        if not full:
            yield
            return
        was = self._pop.pop_llama_get_enabled(self._ctx_ptr)  # off already on KV-sharing models' exact skip
        self._pop.pop_llama_set_enabled(self._ctx_ptr, False)
        try:
            yield
        finally:
            self._pop.pop_llama_set_enabled(self._ctx_ptr, bool(was))

    # --- multimodal prompts (runtime/multimodal.py calls these from a chat handler's mtmd calls) ------

    def _begin_multimodal_prompt(self, plan: "multimodal.PromptPlan") -> None:
        """A chat handler has split a prompt into chunks; it evaluates them from position 0 next."""
        short = self._count_short(plan.tokens, plan.tokens)
        label = self._cache_label()
        self._prompt = _MultimodalPrompt(plan, time.perf_counter(), short, self._ran_full(label) if short else label)

    def _eval_image_chunk(self, run, *, n_tokens: int, start: int, end) -> int:
        """Run one image chunk's evaluation (`run`: mtmd's encode + llama_decode, no outputs, returns its
        status); `end()` is the position after it once it ran."""
        prompt = self._prompt
        pruned_before = self.pop_stats()["pruned_tokens"]
        upstream.forget_after(self, start)
        with self._full_model_if(prompt is not None and prompt.short):
            status = run()
        if status == 0:
            stop = end()
            self._label_positions(start, stop, None if prompt is None else prompt.label)
            self._image_tokens += n_tokens
            self._image_pruned_tokens += self.pop_stats()["pruned_tokens"] - pruned_before
            if prompt is not None and stop >= prompt.plan.positions:  # an image ends the prompt (no logits)
                self._prompt_done(prompt.started, prompt.plan.tokens)
        self.pop_stats()
        return status

    def _decode_chunks(self, tokens: Sequence[int], *, output: bool, label: Hashable) -> None:
        """`tokens` in n_batch chunks; `output`: the last token is an output."""
        for i in range(0, len(tokens), self.n_batch):
            chunk = tokens[i: i + self.n_batch]
            self._decode_chunk(chunk, last_is_output=output and i + len(chunk) == len(tokens), label=label)

    def _decode_chunk(self, chunk: Sequence[int], *, last_is_output: bool, all_outputs: bool = False,
                      label: Hashable = None) -> None:
        """llama_decode one chunk (at most n_batch tokens) after the cache; outputs: all, the last, or none."""
        n_past = self.n_tokens
        upstream.decode(self, chunk, n_past, outputs="all" if all_outputs else "last" if last_is_output else "none")
        self.input_ids[n_past: n_past + len(chunk)] = chunk
        self.n_tokens += len(chunk)
        label = self._cache_label() if label is None else label
        outputs = len(chunk) if all_outputs else int(last_is_output)
        self._label_positions(n_past, self.n_tokens - outputs, label)
        self._label_positions(self.n_tokens - outputs, self.n_tokens, self._ran_full(label))

    def eval_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Evaluate tokens after the cache with every token an output (so each runs at full depth, like
        a decode step); returns their logits [len(tokens), n_vocab] (used by `pop-local eval`)."""
        import numpy as np

        rows = []
        for i in range(0, len(tokens), self.n_batch):
            chunk = list(tokens[i: i + self.n_batch])
            self._decode_chunk(chunk, last_is_output=True, all_outputs=True)
            rows.append(upstream.output_logits(self, len(chunk)))
        self.pop_stats()
        return np.concatenate(rows) if rows else np.zeros((0, self.n_vocab()), dtype=np.float32)

    def last_logits(self) -> np.ndarray:
        """Logits of the last output of the latest decode (a copy)."""
        return upstream.output_logits(self)
