"""LangChain chat model on pop-local: prompts prefill with POP, replies come from the full model.

    from pop_local.integrations.langchain import ChatPopLocal
    chat = ChatPopLocal(model="model.pop.gguf", temperature=0)
    chat.invoke("What is the capital of France?")

Needs langchain-core (`pip install "pop-local[langchain]"`). The model loads on first use and is
shared by every ChatPopLocal with the same file and load settings.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, convert_to_openai_messages
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable
    from langchain_core.tools import BaseTool
    from langchain_core.utils.function_calling import convert_to_openai_tool
except ImportError as e:  # pragma: no cover - depends on the extra
    raise ImportError('ChatPopLocal needs langchain-core: pip install "pop-local[langchain]"') from e
from pydantic import ConfigDict, Field

from pop_local.runtime.settings import LoadFields, PopFields, PopSettings, build

from . import _backend

__all__ = ["ChatPopLocal"]


class ChatPopLocal(BaseChatModel, LoadFields, PopFields):
    """A local GGUF model through pop-local's PopLlama (prefill-only pruning).

    Standard parameters: `model` (a GGUF path or hub file `org/repo/file.gguf`; None: the embedded
    SmolLM2-135M-Instruct default), `temperature`, `max_tokens`, `stop`. POP controls: `pop` (None
    follows the file), `skip_layers` ("20-29"), `kv_mode` ("fitted" or "own"); they may also be given
    per call. Images: with `mmproj` (the model's projector GGUF), image blocks of a message (LangChain's
    standard image blocks or OpenAI image_url parts) go to the model, their tokens pruned like prompt text.
    Load settings (`n_ctx`, `n_batch`, `n_threads`, `n_gpu_layers`, `flash_attn`, `mmproj`,
    `chat_format`, `kv_overrides`, `seed`, ...): pop_local.runtime.settings.LoadFields, the same as the CLI's
    and the server's.

    Tool calling: `bind_tools(tools, tool_choice="any" | "required" | name)` produces a grammar-
    constrained call of the chosen tool (or of one of several); `tool_choice="auto"` or None lets
    the model answer in text (llama.cpp's chat templates do not parse free-form tool calls).
    `with_structured_output` works through that forced call.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model: Optional[str] = Field(default=None, alias="model_name")
    temperature: float = 0.8
    max_tokens: Optional[int] = 512
    stop: Optional[List[str]] = Field(default=None, alias="stop_sequences")
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.0
    streaming: bool = False

    @property
    def _llm_type(self) -> str:
        return "pop-local"

    @property
    def _identifying_params(self) -> Dict[str, Any]:
        return {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                "pop": self.pop, "skip_layers": self.skip_layers, "kv_mode": self.kv_mode, "n_ctx": self.n_ctx}

    def _get_ls_params(self, stop: Optional[List[str]] = None, **kwargs: Any) -> Dict[str, Any]:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "pop-local"
        params["ls_model_name"] = _backend.model_label(kwargs.get("model") or self.model)
        return params

    # --- requests ---------------------------------------------------------------------------------

    def _target(self, model: Optional[str]) -> _backend.Target:
        return _backend.resolve_target(model, self.load_settings())

    def _request(self, messages: List[BaseMessage], stop: Optional[List[str]], kwargs: Dict[str, Any]):
        """Model settings, POP settings, messages, sampling parameters and tool/format arguments of one
        call: per-call kwargs (from invoke or bind) over the instance's fields."""
        model = kwargs.pop("model", None) or self.model
        pop = build(PopSettings, {name: kwargs.pop(name, getattr(self, name)) for name in PopFields.model_fields})
        extra = {k: v for k in ("tools", "tool_choice", "response_format") if (v := kwargs.pop(k, None)) is not None}
        kwargs.pop("ls_structured_output_format", None)  # tracing metadata from with_structured_output
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                  "top_k": self.top_k, "repeat_penalty": self.repeat_penalty, "seed": self.seed,
                  "stop": stop if stop is not None else self.stop, **kwargs}
        return self._target(model), pop, _to_openai(messages), params, extra

    def _generate(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                  run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            chunks = list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
            merged = chunks[0]
            for c in chunks[1:]:
                merged += c
            return ChatResult(generations=[ChatGeneration(message=_chunk_to_message(merged.message))])
        settings, pop, msgs, params, extra = self._request(messages, stop, dict(kwargs))
        out = _backend.chat(settings, pop, msgs, **extra, **params)
        message = AIMessage(content=out["content"], tool_calls=[_lc_tool_call(c) for c in out["tool_calls"]],
                            usage_metadata=_usage(out["usage"]),
                            response_metadata=_metadata(out, kwargs.get("model") or self.model))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: List[BaseMessage], stop: Optional[List[str]] = None,
                run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        settings, pop, msgs, params, extra = self._request(messages, stop, dict(kwargs))
        for part in _backend.stream_chat(settings, pop, msgs, **extra, **params):
            if "finish_reason" not in part:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=part["content"]))
                if run_manager:
                    run_manager.on_llm_new_token(part["content"], chunk=chunk)
                yield chunk
                continue
            calls = part.get("tool_calls") or []
            yield ChatGenerationChunk(message=AIMessageChunk(
                content=part.get("content", ""),
                tool_call_chunks=[{"name": c["function"]["name"], "args": c["function"]["arguments"], "id": c["id"],
                                   "index": i, "type": "tool_call_chunk"} for i, c in enumerate(calls)],
                usage_metadata=_usage(part["usage"]),
                response_metadata=_metadata(part, kwargs.get("model") or self.model),
                chunk_position="last"))

    # --- tools ------------------------------------------------------------------------------------

    def bind_tools(self, tools: Sequence[Union[Dict[str, Any], type, Callable, BaseTool]], *,
                   tool_choice: Optional[Union[dict, str, bool]] = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; `tool_choice` "any"/"required"/True or a tool's name forces a call."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "any", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        _backend.forced_tool(formatted, tool_choice)  # unknown names fail here, not at the first call
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)


def _to_openai(messages: List[BaseMessage]) -> List[dict]:
    out = []
    for m in convert_to_openai_messages(messages):
        content = m.get("content")
        if isinstance(content, list):  # text, and images for a model with a projector (mmproj)
            parts = [b for b in content if isinstance(b, dict) and b.get("type") in ("text", "image_url")]
            m["content"] = (parts if any(b["type"] == "image_url" for b in parts)
                            else "".join(b.get("text", "") for b in parts))
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def _lc_tool_call(call: dict) -> dict:
    return {"name": call["function"]["name"], "args": json.loads(call["function"]["arguments"] or "{}"),
            "id": call["id"], "type": "tool_call"}


def _usage(usage: Dict[str, Any]) -> UsageMetadata:
    i, o = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return UsageMetadata(input_tokens=i, output_tokens=o, total_tokens=i + o)


def _metadata(out: Dict[str, Any], model: Optional[str]) -> Dict[str, Any]:
    """model_name: the model as the caller named it (the default's label for None)."""
    return {"model_name": model or _backend.DEFAULT_MODEL_LABEL, "model_path": out["model"],
            "model_provider": "pop-local", "finish_reason": out.get("finish_reason"), "pop": out.get("pop")}


def _chunk_to_message(chunk: AIMessageChunk) -> AIMessage:
    return AIMessage(content=chunk.content, tool_calls=chunk.tool_calls, usage_metadata=chunk.usage_metadata,
                     response_metadata=chunk.response_metadata, id=chunk.id)
