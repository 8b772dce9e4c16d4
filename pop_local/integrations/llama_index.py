"""LlamaIndex LLM on pop-local: prompts prefill with POP, replies come from the full model.

    from llama_index.core import Settings
    from pop_local.integrations.llama_index import PopLocalLLM
    Settings.llm = PopLocalLLM(model="model.pop.gguf", temperature=0)

Needs llama-index-core (`pip install "pop-local[llama-index]"`). The model loads on first use and
is shared by every instance (and every LangChain ChatPopLocal) with the same file and load settings.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, Iterator, Optional, Sequence

try:
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        ChatResponseAsyncGen,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseAsyncGen,
        CompletionResponseGen,
        ImageBlock,
        LLMMetadata,
        MessageRole,
        TextBlock,
    )
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.llms.llm import LLM
except ImportError as e:  # pragma: no cover - depends on the extra
    raise ImportError('PopLocalLLM needs llama-index-core: pip install "pop-local[llama-index]"') from e

from pop_local.runtime.multimodal import image_url
from pop_local.runtime.settings import LoadFields, PopFields, PopSettings

from . import _backend

__all__ = ["PopLocalLLM"]


class PopLocalLLM(LLM, LoadFields, PopFields):
    """A local GGUF model through pop-local's PopLlama (prefill-only pruning).

    `model`: a GGUF path or hub file `org/repo/file.gguf`; None: the embedded SmolLM2-135M-Instruct
    default. `chat` uses the model's chat template; `complete` continues the raw text (no template).
    POP controls: `pop` (None follows the file), `skip_layers` ("20-29"), `kv_mode` ("fitted"/"own").
    Images: with `mmproj` (the model's projector GGUF), a ChatMessage's ImageBlocks (bytes, path or URL)
    go to the model, their tokens pruned like prompt text.
    Load settings (`n_ctx`, `n_batch`, `n_threads`, `n_gpu_layers`, `flash_attn`, `chat_format`,
    `kv_overrides`, `seed`, ...): pop_local.runtime.settings.LoadFields, the same as the CLI's and the server's.
    """

    model: Optional[str] = Field(default=None, description="GGUF path or hub file; None: the default model")
    temperature: float = Field(default=0.8)
    max_tokens: int = Field(default=512, description="tokens to generate at most")
    top_p: float = Field(default=0.95)
    top_k: int = Field(default=40)
    repeat_penalty: float = Field(default=1.0)
    stop: Optional[list] = Field(default=None)

    _resolved: Optional[_backend.Target] = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "PopLocalLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.n_ctx, num_output=self.max_tokens, is_chat_model=True,
                           is_function_calling_model=False, model_name=_backend.model_label(self.model),
                           system_role=MessageRole.SYSTEM)

    # --- plumbing -----------------------------------------------------------------------------

    def _target(self) -> _backend.Target:
        load = self.load_settings()
        if self._resolved is None:
            self._resolved = _backend.resolve_target(self.model, load)
        return _backend.Target(self._resolved.path, load, self._resolved.meta)  # fields may have changed

    def _pop(self) -> PopSettings:
        return self.pop_settings()

    def _params(self, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        params = {"temperature": self.temperature, "max_tokens": self.max_tokens, "top_p": self.top_p,
                  "top_k": self.top_k, "repeat_penalty": self.repeat_penalty, "seed": self.seed, "stop": self.stop}
        params.update({k: v for k, v in kwargs.items() if k in params})
        return params

    @staticmethod
    def _messages(messages: Sequence[ChatMessage]) -> list:
        """OpenAI-style messages; a message with image blocks gets image_url parts (for a model with mmproj)."""
        return [{"role": m.role.value, "content": _content(m)} for m in messages]

    @staticmethod
    def _raw(out: Dict[str, Any]) -> Dict[str, Any]:
        return {k: out.get(k) for k in ("finish_reason", "usage", "pop", "model")}

    # --- chat ---------------------------------------------------------------------------------

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        out = _backend.chat(self._target(), self._pop(), self._messages(messages), **self._params(kwargs))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=out["content"]), raw=self._raw(out))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        parts = _backend.stream_chat(self._target(), self._pop(), self._messages(messages), **self._params(kwargs))

        def gen() -> Iterator[ChatResponse]:
            text = ""
            for part in parts:
                text += part["content"]
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=part["content"],
                                   raw=self._raw(part) if "finish_reason" in part else None)

        return gen()

    # --- completion ---------------------------------------------------------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        out = _backend.complete(self._target(), self._pop(), prompt, **self._params(kwargs))
        return CompletionResponse(text=out["content"], raw=self._raw(out))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        parts = _backend.stream_complete(self._target(), self._pop(), prompt, **self._params(kwargs))

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            for part in parts:
                text += part["content"]
                yield CompletionResponse(text=text, delta=part["content"],
                                         raw=self._raw(part) if "finish_reason" in part else None)

        return gen()

    # --- async: the same work on a worker thread (llama.cpp calls block) -------------------------

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self.complete, prompt, formatted, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _aiter(lambda: self.stream_chat(messages, **kwargs))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return _aiter(lambda: self.stream_complete(prompt, formatted, **kwargs))


async def _aiter(make: Any) -> AsyncIterator[Any]:
    """An async generator over a blocking one, each step on a worker thread."""
    it = await asyncio.to_thread(make)
    done = object()
    while True:
        item = await asyncio.to_thread(next, it, done)
        if item is done:
            return
        yield item


def _content(message: ChatMessage) -> Any:
    """A message's text, or its blocks as text and image_url parts when it has images (in block order)."""
    if not any(isinstance(b, ImageBlock) for b in message.blocks):
        return message.content or ""
    parts = []
    for block in message.blocks:
        if isinstance(block, ImageBlock):
            source = str(block.url) if block.url is not None and block.image is None and block.path is None else (
                block.resolve_image().read())
            parts.append({"type": "image_url", "image_url": {"url": image_url(source)}})
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
    return parts
