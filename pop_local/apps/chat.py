"""A multi-turn chat on one PopLlama, with per-reply timing and POP counters.

The conversation is re-rendered with the model's chat template every turn; llama-cpp-python keeps
the KV cache of the longest common prefix, so only the new turn's tokens are evaluated (pruned).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

from pop_local.runtime.multimodal import image_content

__all__ = ["ChatSession", "ReplyStats"]


@dataclass
class ReplyStats:
    prompt_tokens: int = 0      # the whole rendered conversation
    reused_tokens: int = 0      # of those, already in the KV cache from earlier turns
    pruned_tokens: int = 0      # evaluated this turn with the skip set pruned
    short: bool = False         # this turn's new tokens were under the prompt minimum: the full model ran
    image_tokens: int = 0       # of the evaluated tokens, image tokens (the projector's output)
    image_pruned_tokens: int = 0
    min_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float = 0.0         # request to first streamed text
    decode_tps: float = 0.0     # generated tokens per second after the first
    finish_reason: Optional[str] = None  # "stop", "length" or "interrupted"

    @property
    def evaluated_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    def summary(self) -> str:
        images = (f", {self.image_pruned_tokens} of {self.image_tokens} image tokens pruned" if self.image_tokens
                  else "")
        return (f"{self.ttft_s * 1000:.0f} ms to first token, {self.decode_tps:.1f} tok/s, "
                f"prompt {self.prompt_tokens} tokens ({self.reused_tokens} cached, {self.evaluated_tokens} evaluated, "
                f"{self.pruned_tokens} pruned" + images + (f": under the {self.min_tokens}-token minimum, full model"
                                                            if self.short else "") + ")")


@dataclass
class ChatSession:
    llm: Any                          # PopLlama
    system: Optional[str] = None
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    messages: List[Dict[str, Any]] = field(default_factory=list)
    history: List[ReplyStats] = field(default_factory=list)
    last: Optional[ReplyStats] = None

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages.clear()

    def _prompt_messages(self, user_content: Any) -> List[Dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages + [{"role": "user", "content": user_content}]

    def reply(self, user_text: str, images: Sequence[Any] = ()) -> Iterator[str]:
        """Stream the assistant's reply to `user_text` (after `images`: paths, URLs or bytes, for a model
        loaded with a projector); `last` holds its ReplyStats afterwards. The images stay in the
        conversation, so later turns see them too.

        Closing the iterator early (Ctrl-C in the REPL) ends the reply: the partial text stays in the
        conversation and finish_reason is "interrupted".
        """
        llm = self.llm
        stats = ReplyStats()
        before = llm.pop_stats()
        start = time.perf_counter()
        first_at = None
        parts: List[str] = []
        prompt_len = 0
        finished = False
        content = image_content(user_text, images)  # a bad image fails here, before anything runs
        stream = llm.create_chat_completion(messages=self._prompt_messages(content), stream=True,
                                            max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p)
        try:
            for chunk in stream:
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if first_at is None and llm.n_tokens > 0 and (text or choice.get("finish_reason")):
                    # the prompt is evaluated and the first token sampled (not yet evaluated)
                    first_at = time.perf_counter()
                    prompt_len = llm.n_tokens
                    now = llm.pop_stats()
                    evaluated = ((now["pruned_tokens"] + now["full_tokens"])
                                 - (before["pruned_tokens"] + before["full_tokens"]))
                    stats.prompt_tokens = prompt_len
                    stats.reused_tokens = max(0, prompt_len - evaluated)
                    stats.pruned_tokens = now["pruned_tokens"] - before["pruned_tokens"]
                    stats.short = now["short_prompts"] > before["short_prompts"]
                    stats.image_tokens = now["image_tokens"] - before["image_tokens"]
                    stats.image_pruned_tokens = now["image_pruned_tokens"] - before["image_pruned_tokens"]
                    stats.min_tokens = now["min_tokens"]
                if text:
                    parts.append(text)
                    yield text
                if choice.get("finish_reason"):
                    stats.finish_reason = choice["finish_reason"]
            finished = True
        finally:
            if not finished:
                stream.close()
                stats.finish_reason = "interrupted"
            end = time.perf_counter()
            if first_at is not None:
                stats.ttft_s = first_at - start
                # every generated token but the last was evaluated; an EOS end is not counted as a token
                generated = llm.n_tokens - prompt_len + (0 if stats.finish_reason == "stop" else 1)
                stats.completion_tokens = max(0, generated)
                if stats.completion_tokens > 1 and end > first_at:
                    stats.decode_tps = (stats.completion_tokens - 1) / (end - first_at)
            self.messages.append({"role": "user", "content": content})
            self.messages.append({"role": "assistant", "content": "".join(parts)})
            self.last = stats
            self.history.append(stats)

    def totals(self) -> Dict[str, Any]:
        """Counters over the whole session, for /stats."""
        turns = len(self.history)
        return {
            "turns": turns,
            "prompt_tokens_evaluated": sum(s.evaluated_tokens for s in self.history),
            "prompt_tokens_cached": sum(s.reused_tokens for s in self.history),
            "pruned_tokens": sum(s.pruned_tokens for s in self.history),
            "image_tokens": sum(s.image_tokens for s in self.history),
            "image_pruned_tokens": sum(s.image_pruned_tokens for s in self.history),
            "completion_tokens": sum(s.completion_tokens for s in self.history),
            "mean_ttft_ms": (sum(s.ttft_s for s in self.history) / turns * 1000) if turns else 0.0,
        }
