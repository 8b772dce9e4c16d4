"""What the LangChain and LlamaIndex backends share.

- Loaded models are shared: every wrapper instance that names the same file with the same load
  settings uses one PopLlama, loaded on first use (so constructing a wrapper is cheap).
- A llama.cpp context runs one request at a time: each model has a lock held for a whole request,
  streaming included, and the wrapper's POP settings are applied under it, per request. (A plain
  Lock: async streams advance on worker threads, so it may be released by another thread.)
- Tool calls: llama-cpp-python's chat handlers only produce tool calls for a forced tool. A forced
  choice ("any"/"required" or a tool's name) is generated under a JSON-schema grammar: the arguments
  of one tool, or {"name": ..., "arguments": ...} over several. Under "auto" (or no choice) the model
  answers in text: a grammar admitting text or a marked call was tried, and SmolLM2-135M never chose
  the call, so that path could not be tested and is not shipped.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from pop_local.errors import PopError
from pop_local.runtime.settings import LoadSettings, PopSettings

__all__ = ["Target", "shared_model", "chat", "stream_chat", "complete", "stream_complete",
           "forced_tool", "model_label", "DEFAULT_MODEL_LABEL"]

DEFAULT_MODEL_LABEL = "smollm2-135m-instruct"  # the embedded default (model=None)
FORCED_CALL_MIN_TOKENS = 256   # a tool call's JSON is never cut shorter than this (+ its strings)
MAX_STRING_ARGUMENT = 200      # characters, for tool-call string arguments whose schema sets no maxLength


@dataclass(frozen=True)
class Target:
    """A model file and how it is loaded (pop_local.runtime.settings.LoadSettings): the key it is shared under."""
    path: str
    load: LoadSettings
    meta: Any = None  # the file's PopMetadata when already read (not part of the key)

    def __hash__(self) -> int:
        return hash((self.path, self.load.key()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.path, self.load.key()) == (other.path, other.load.key())


_registry_lock = threading.Lock()
_models: Dict[Target, Tuple[Any, threading.Lock]] = {}


_default_meta: List[Any] = []  # the default model's metadata, resolved (and made POP-ready) once


def resolve_target(model: Optional[str], load: LoadSettings) -> Target:
    """The Target for a wrapper's `model` (None: the default model). A local path costs a stat; the
    header is read once, when the model loads."""
    if model is None:
        with _registry_lock:
            if not _default_meta:
                from pop_local.converter.default_model import default_model

                _default_meta.append(default_model())
        return Target(_default_meta[0].path, load, _default_meta[0])
    from pop_local.runtime.models import resolve_model_ref

    return Target(resolve_model_ref(model), load)


def model_label(model: Optional[str]) -> str:
    """What a wrapper reports as its model name (no file access)."""
    import os

    if not model:
        return DEFAULT_MODEL_LABEL
    return os.path.basename(model) if model.endswith(".gguf") else model


def shared_model(target: Target) -> Tuple[Any, threading.Lock]:
    """The PopLlama for `target` (loaded on first call) and the lock that serialises its requests."""
    with _registry_lock:
        entry = _models.get(target)
        if entry is None:
            from pop_local.format.metadata import read_pop_metadata
            from pop_local.runtime.models import open_model

            loaded = open_model(target.meta or read_pop_metadata(target.path), target.load)
            entry = (loaded.llm, threading.Lock())
            _models[target] = entry
        return entry


def _apply(llm, pop: PopSettings) -> None:
    llm.apply_pop_settings(pop)


def forced_tool(tools: Optional[Sequence[dict]], tool_choice: Any) -> Optional[List[dict]]:
    """The tools a call must choose from, or None when the model may answer in text."""
    if not tools or tool_choice in (None, "auto", "none", False):
        return None
    if tool_choice in ("any", "required", True):
        return list(tools)
    name = tool_choice["function"]["name"] if isinstance(tool_choice, dict) else str(tool_choice)
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise ValueError(f"tool_choice names {name!r}, which is not among the bound tools")
    return chosen


def _cap_strings(schema: Any) -> Any:
    """The schema with maxLength on every string that has none: small models can loop inside a string
    under a grammar (greedy "it was a cat, and it was a cat, ..."), and an unbounded string never closes."""
    if isinstance(schema, list):
        return [_cap_strings(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _cap_strings(v) for k, v in schema.items()}
    if out.get("type") == "string" and "maxLength" not in out and "enum" not in out and "const" not in out:
        out["maxLength"] = MAX_STRING_ARGUMENT
    return out


def _call_token_budget(tools: Sequence[dict]) -> int:
    """Tokens that always fit a call: each capped string can take 4 tokens per character (byte-level BPE
    on CJK text), plus the JSON around it."""
    n_strings = json.dumps(_tool_schema(tools)).count('"maxLength"')
    return FORCED_CALL_MIN_TOKENS + 4 * MAX_STRING_ARGUMENT * n_strings


def _tool_schema(tools: Sequence[dict]) -> dict:
    def params(t):
        p = _cap_strings(dict(t["function"].get("parameters") or {"type": "object", "properties": {}}))
        p.setdefault("type", "object")
        return p

    if len(tools) == 1:
        return params(tools[0])
    return {"anyOf": [{"type": "object",
                       "properties": {"name": {"const": t["function"]["name"]}, "arguments": params(t)},
                       "required": ["name", "arguments"]} for t in tools]}


def _tool_call(tools: Sequence[dict], text: str) -> dict:
    """An OpenAI-style tool call from the grammar-constrained output."""
    data = json.loads(text, strict=False)  # the length-capped string rule admits raw newlines
    if len(tools) == 1:
        return _call(tools[0]["function"]["name"], data)
    return _call(data["name"], data["arguments"])


def _call(name: str, args: Any) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)}}


def _sampling(params: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "stop", "seed",
            "presence_penalty", "frequency_penalty")
    out = {k: params[k] for k in keys if params.get(k) is not None}
    if out.get("seed", 0) < 0:  # -1: random, i.e. no seed for this request
        del out["seed"]
    return out


def _tool_line(t: dict) -> str:
    f = t["function"]
    args = ", ".join(f"{k} ({v.get('type', 'any')}{': ' + v['description'] if v.get('description') else ''})"
                     for k, v in ((f.get("parameters") or {}).get("properties") or {}).items())
    return f"- {f['name']}: {f.get('description', '')} Arguments: {args or 'none'}."


def _with_tool_instructions(messages: List[dict], tools: Sequence[dict]) -> List[dict]:
    """Tell the model which tool it is calling: the grammar fixes the form, the prompt the content."""
    desc = "\n".join(_tool_line(t) for t in tools)
    note = ("Respond with the arguments of a call to one of these tools, as JSON, copying names and values "
            "from the conversation exactly:\n" + desc)
    if messages and messages[0].get("role") == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{note}"}] + messages[1:]
    return [{"role": "system", "content": note}] + messages


def chat(target: Target, pop: PopSettings, messages: List[dict], *, tools: Optional[Sequence[dict]] = None,
         tool_choice: Any = None, response_format: Optional[dict] = None, **params: Any) -> Dict[str, Any]:
    """One chat completion: {"content", "tool_calls", "finish_reason", "usage", "pop", "model"}."""
    llm, lock = shared_model(target)
    _check_images(llm, messages)
    forced = forced_tool(tools, tool_choice)
    kwargs = _sampling(params)
    with lock:
        _apply(llm, pop)
        before = llm.pop_stats()
        if forced:
            from llama_cpp import LlamaGrammar

            kwargs["grammar"] = LlamaGrammar.from_json_schema(json.dumps(_tool_schema(forced)), verbose=False)
            kwargs.pop("stop", None)  # a stop string inside the JSON would cut it
            # nor may a short limit
            kwargs["max_tokens"] = max(kwargs.get("max_tokens") or 0, _call_token_budget(forced))
            out = llm.create_chat_completion(messages=_with_tool_instructions(messages, forced), **kwargs)
        else:
            out = llm.create_chat_completion(messages=messages, response_format=response_format, **kwargs)
        after = llm.pop_stats()
    choice = out["choices"][0]
    content = choice["message"].get("content") or ""
    tool_calls: List[dict] = []
    if forced:
        tool_calls = [_tool_call(forced, content)]
        content = ""
    return {"content": content, "tool_calls": tool_calls,
            "finish_reason": "tool_calls" if tool_calls else choice.get("finish_reason"),
            "usage": out.get("usage") or {}, "pop": _pop_delta(before, after), "model": llm.pop_metadata.path}


def stream_chat(target: Target, pop: PopSettings, messages: List[dict], *, tools: Optional[Sequence[dict]] = None,
                tool_choice: Any = None, response_format: Optional[dict] = None,
                **params: Any) -> Iterator[Dict[str, Any]]:
    """Chunks {"content": text} while generating, then one {"finish_reason", "usage", "pop", "model"}.
    Forced tool calls come whole in the last chunk ({"tool_calls": [...]})."""
    if forced_tool(tools, tool_choice):  # a forced call comes whole
        yield chat(target, pop, messages, tools=tools, tool_choice=tool_choice, **params)
        return
    llm, lock = shared_model(target)
    _check_images(llm, messages)
    with lock:
        _apply(llm, pop)
        before = llm.pop_stats()
        prompt_len, finish, n_chunks = None, None, 0
        stream = llm.create_chat_completion(messages=messages, response_format=response_format, stream=True,
                                            **_sampling(params))
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if prompt_len is None and (text or choice.get("finish_reason")):
                    prompt_len = llm.n_tokens  # the prompt is in the cache, the first token not yet
                if text:
                    n_chunks += 1
                    yield {"content": text}
                finish = choice.get("finish_reason") or finish
        finally:
            stream.close()
        after = llm.pop_stats()
        prompt_len = prompt_len if prompt_len is not None else llm.n_tokens
        # every generated token but the last was evaluated; an end-of-sequence is not a token
        completion = max(n_chunks, llm.n_tokens - prompt_len + (0 if finish == "stop" else 1)) if n_chunks else 0
    yield {"content": "", "finish_reason": finish, "pop": _pop_delta(before, after), "model": llm.pop_metadata.path,
           "usage": {"prompt_tokens": prompt_len, "completion_tokens": completion,
                     "total_tokens": prompt_len + completion}}


def complete(target: Target, pop: PopSettings, prompt: str, **params: Any) -> Dict[str, Any]:
    """Plain text completion of `prompt` (no chat template)."""
    llm, lock = shared_model(target)
    with lock:
        _apply(llm, pop)
        before = llm.pop_stats()
        out = llm.create_completion(prompt=prompt, **_sampling(params))
        after = llm.pop_stats()
    choice = out["choices"][0]
    return {"content": choice["text"], "finish_reason": choice.get("finish_reason"), "usage": out.get("usage") or {},
            "pop": _pop_delta(before, after), "model": llm.pop_metadata.path}


def stream_complete(target: Target, pop: PopSettings, prompt: str, **params: Any) -> Iterator[Dict[str, Any]]:
    llm, lock = shared_model(target)
    with lock:
        _apply(llm, pop)
        before = llm.pop_stats()
        finish = None
        stream = llm.create_completion(prompt=prompt, stream=True, **_sampling(params))
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                if choice.get("text"):
                    yield {"content": choice["text"]}
                finish = choice.get("finish_reason") or finish
        finally:
            stream.close()
        after = llm.pop_stats()
    yield {"content": "", "finish_reason": finish, "pop": _pop_delta(before, after), "model": llm.pop_metadata.path}


def _check_images(llm, messages: List[dict]) -> None:
    """PopError before anything runs when messages carry images and the model has no projector."""
    has_image = any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                               for p in m["content"]) for m in messages)
    if has_image and not llm.multimodal:
        raise PopError("the messages have images, and the model was loaded without a projector: set mmproj "
                       "to the model's projector GGUF")


def _pop_delta(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    return {"pruned_tokens": after["pruned_tokens"] - before["pruned_tokens"],
            "full_tokens": after["full_tokens"] - before["full_tokens"],
            "image_tokens": after["image_tokens"] - before["image_tokens"],
            "image_pruned_tokens": after["image_pruned_tokens"] - before["image_pruned_tokens"],
            "active": after["active"], "skip_layers": list(after["skip_layers"]), "kv": after["kv"]}
