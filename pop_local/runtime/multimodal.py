"""Images through llama.cpp's mtmd, with POP: what PopLlama sees of a multimodal prompt.

llama-cpp-python's multimodal chat handlers (MTMDChatHandler and the LLaVA-style ones) render the chat,
split it into text and image chunks (mtmd_tokenize), and evaluate them in order: text through
Llama.eval, an image through mtmd_helper_eval_chunk_single, which encodes it with the projector and
llama_decodes the embeddings without requesting outputs. The native patch prunes every ubatch without
outputs, so image tokens run pruned like prompt text; the last prompt token (text after the image, in
every chat template) is the only output and runs at full depth.

PopLlama treats the chunks of one request as one prompt: the prompt minimum (min_tokens) is weighed
against all of its tokens, images included, and decides for all of them; text chunks before the last
request no output (upstream's eval would make the last token of every chunk one, at full depth); the
prompt's positions carry the cache label of the settings that computed them; the prefill time covers
the whole prompt, image encoding included. `MtmdBindings` stands between a handler and the mtmd
bindings to see the chunk plan and the image evaluations; everything else passes through unchanged.
"""

from __future__ import annotations

import base64
import os
import random
import re
import struct
import weakref
import zlib
from dataclasses import dataclass
from typing import Any, Sequence

from pop_local.errors import PopError

__all__ = ["PromptPlan", "MtmdBindings", "image_url", "image_content", "synthetic_png", "parse_image_arg",
           "IMAGE_TYPES"]

# magic bytes of the formats mtmd decodes (stb_image) -> MIME type
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF87a": "image/gif",
               b"GIF89a": "image/gif", b"BM": "image/bmp"}


@dataclass(frozen=True)
class PromptPlan:
    """The chunks of one multimodal prompt: positions it fills (M-RoPE images fill fewer positions than
    they have tokens), its tokens, and of those the image (or audio) tokens."""
    positions: int
    tokens: int
    image_tokens: int
    images: int

    @classmethod
    def of(cls, mtmd, chunks) -> "PromptPlan":
        positions = tokens = image_tokens = images = 0
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if chunk is None:
                continue
            n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            positions += mtmd.mtmd_input_chunk_get_n_pos(chunk)
            tokens += n
            if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                image_tokens += n
                images += 1
        return cls(positions, tokens, image_tokens, images)


class MtmdBindings:
    """llama-cpp-python's mtmd bindings as one chat handler calls them, telling a PopLlama (held weakly:
    a handler may outlive it) where a prompt's chunks are planned and where an image is evaluated."""

    def __init__(self, bindings, llm):
        self.__wrapped__ = bindings
        self._llm = weakref.ref(llm)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__wrapped__, name)

    def mtmd_tokenize(self, *args: Any) -> int:
        result = self.__wrapped__.mtmd_tokenize(*args)
        llm = self._llm()
        if result == 0 and llm is not None:
            llm._begin_multimodal_prompt(PromptPlan.of(self.__wrapped__, args[1]))
        return result

    def mtmd_helper_eval_chunk_single(self, mtmd_ctx, llama_ctx, chunk, n_past, seq_id, n_batch, logits_last,
                                      new_n_past) -> int:
        def run() -> int:
            return self.__wrapped__.mtmd_helper_eval_chunk_single(mtmd_ctx, llama_ctx, chunk, n_past, seq_id,
                                                                  n_batch, logits_last, new_n_past)

        llm = self._llm()
        if llm is None:
            return run()
        # new_n_past is ctypes.byref(a llama_pos): its object holds the position after the chunk
        return llm._eval_image_chunk(run, n_tokens=self.__wrapped__.mtmd_input_chunk_get_n_tokens(chunk),
                                     start=_value(n_past), end=lambda: _value(getattr(new_n_past, "_obj", new_n_past)))


def _value(x: Any) -> int:
    return int(getattr(x, "value", x))


def image_url(source: "str | os.PathLike[str] | bytes") -> str:
    """An image for a chat message's image_url part: a local file (or its bytes) as a data: URI; a data:,
    http(s): or file: URL as it is. PopError naming the file when it is missing or not an image."""
    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), "image bytes"
    else:
        text = os.fspath(source)
        if text.startswith(("data:", "http://", "https://", "file://")):
            return text
        try:
            with open(text, "rb") as f:
                data = f.read()
        except OSError as e:
            raise PopError(f"{text}: cannot read the image ({e.strerror or e})") from None
        where = text
    mime = next((m for magic, m in IMAGE_TYPES.items() if data.startswith(magic)), None)
    if mime is None:
        raise PopError(f"{where}: not a PNG, JPEG, GIF or BMP image")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def image_content(text: str, images: Sequence["str | os.PathLike[str] | bytes"]) -> "str | list":
    """A user message's content: `text` alone, or the images (image_url parts) followed by the text."""
    if not images:
        return text
    return ([{"type": "image_url", "image_url": {"url": image_url(i)}} for i in images]
            + [{"type": "text", "text": text}])


def synthetic_png(width: int, height: int, seed: int = 0) -> bytes:
    """A PNG of seeded random colours, `width` x `height` (for benchmarks without a picture at hand:
    the projector resizes every image to its own input size, so the content sets no token count)."""
    rng = random.Random(seed)
    rows = b"".join(b"\x00" + rng.randbytes(3 * width) for _ in range(height))  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def parse_image_arg(text: str) -> "str | bytes":
    """A command line's image: a file, a URL, or WIDTHxHEIGHT for a synthetic picture (synthetic_png)."""
    size = re.fullmatch(r"(\d{1,5})x(\d{1,5})", text.strip())
    if size and not os.path.exists(text):
        width, height = int(size.group(1)), int(size.group(2))
        if not (1 <= width <= 8192 and 1 <= height <= 8192):
            raise PopError(f"{text}: a synthetic image is 1x1 to 8192x8192 pixels")
        return synthetic_png(width, height)
    return text


def attach(llm, handler) -> bool:
    """Route `handler`'s mtmd calls through MtmdBindings for `llm` (False: not a multimodal handler)."""
    from . import upstream

    return upstream.observe_mtmd(handler, lambda bindings: MtmdBindings(bindings, llm))

