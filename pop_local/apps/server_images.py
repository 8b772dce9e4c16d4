"""Images that clients send the server: checked before the request reaches the model.

By default only data: URIs are accepted; http(s) URLs are fetched only when the server was started
with `--fetch-image-urls`, by the server before the request waits for the model (bounded in time,
bytes and redirects), and handed on as data: URIs; any other scheme (file: above all) is refused,
so no client can make the server read its own files. Every image's width and height are read from its
header before anything decodes it. Each refusal is an ImageRefused with one line for the client (a 400).
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass
from typing import Any, Optional, Tuple
from urllib.parse import urljoin, urlsplit

__all__ = ["ImagePolicy", "ImageRefused", "image_size", "localize_images", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS"]

MAX_IMAGE_BYTES = 20 * 2**20  # one image, encoded
MAX_IMAGE_PIXELS = 64 * 2**20  # decoded to RGB that is 192 MiB: any camera's photo, not a decompression bomb
FETCH_TIMEOUT_S = 10.0  # the whole fetch, redirects included
MAX_REDIRECTS = 3
FORMATS = "PNG, JPEG, GIF or BMP"  # what llama.cpp's image loader (stb_image) decodes and image_size reads


class ImageRefused(ValueError):
    """An image the server will not take; the message is for the client."""


@dataclass(frozen=True)
class ImagePolicy:
    fetch_urls: bool = False  # http(s) image URLs fetched by the server (--fetch-image-urls)
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS
    timeout_s: float = FETCH_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS


def image_size(data: bytes) -> Tuple[str, int, int]:
    """(MIME type, width, height) from the image's header, without decoding it; ImageRefused when it is
    not a PNG, JPEG, GIF or BMP file or its header is cut short."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return "image/png", width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return "image/gif", width, height
        if data.startswith(b"BM"):
            (header,) = struct.unpack("<I", data[14:18])
            if header == 12:  # OS/2 core header: 16-bit sizes
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return "image/bmp", abs(width), abs(height)
        if data.startswith(b"\xff\xd8"):
            return ("image/jpeg", *_jpeg_size(data))
    except struct.error:
        raise ImageRefused("the image's header is cut short") from None
    raise ImageRefused(f"the image is not a {FORMATS} file")


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    """Width and height from a JPEG's first frame header (SOF0-SOF15 but DHT, JPG and DAC)."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ImageRefused("the JPEG's markers are damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xDA)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    raise ImageRefused("the JPEG has no frame header")


def _too_large(what: str, policy: ImagePolicy) -> ImageRefused:
    return ImageRefused(f"{what} is over the server's {policy.max_bytes / 2**20:.0f} MiB per image")


def check_image(data: bytes, policy: ImagePolicy) -> str:
    """The image's MIME type, after its size and pixel count are checked (ImageRefused otherwise)."""
    if len(data) > policy.max_bytes:
        raise _too_large(f"the image ({len(data) / 2**20:.1f} MiB)", policy)
    mime, width, height = image_size(data)
    if width <= 0 or height <= 0:
        raise ImageRefused(f"the image claims {width}x{height} pixels")
    if width * height > policy.max_pixels:
        raise ImageRefused(f"the image is {width}x{height} pixels, over the server's {policy.max_pixels:,} "
                           "pixels per image")
    return mime


def _data_uri_bytes(url: str, policy: ImagePolicy) -> bytes:
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ImageRefused("a data: image URL must be base64 (data:image/png;base64,...)")
    if len(payload) > policy.max_bytes * 4 // 3 + 4:
        raise _too_large("the image", policy)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("the data: image URL is not valid base64") from None


async def _fetch(url: str, policy: ImagePolicy) -> bytes:
    """The bytes at an http(s) URL: redirects followed to http(s) only, at most policy.max_redirects,
    the whole fetch within policy.timeout_s, never more than policy.max_bytes read."""
    import anyio
    import httpx

    shown = url if len(url) <= 120 else url[:117] + "..."
    try:
        with anyio.fail_after(policy.timeout_s):
            async with httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout_s) as client:
                for _ in range(policy.max_redirects + 1):
                    if urlsplit(url).scheme not in ("http", "https"):
                        raise ImageRefused(f"the image URL {shown} redirects to a {urlsplit(url).scheme}: URL")
                    async with client.stream("GET", url) as reply:
                        if reply.is_redirect:
                            url = urljoin(url, reply.headers.get("location", ""))
                            continue
                        if reply.status_code != 200:
                            raise ImageRefused(f"fetching the image {shown} gave HTTP {reply.status_code}")
                        declared = reply.headers.get("content-length", "")
                        if declared.isdigit() and int(declared) > policy.max_bytes:
                            raise _too_large(f"the image at {shown}", policy)
                        data = bytearray()
                        async for chunk in reply.aiter_bytes():
                            data += chunk
                            if len(data) > policy.max_bytes:
                                raise _too_large(f"the image at {shown}", policy)
                        return bytes(data)
                raise ImageRefused(f"the image URL {shown} redirects more than {policy.max_redirects} times")
    except TimeoutError:
        raise ImageRefused(f"the image at {shown} did not arrive within {policy.timeout_s:g} s") from None
    except httpx.HTTPError as e:
        raise ImageRefused(f"cannot fetch the image {shown}: {e.__class__.__name__}") from None


async def _localized(url: Any, policy: ImagePolicy) -> str:
    """A data: URI for one image part's URL, after every check."""
    if not isinstance(url, str):
        raise ImageRefused("an image_url part needs a URL string")
    scheme = urlsplit(url).scheme.lower() if ":" in url else ""
    if scheme == "data":
        data = _data_uri_bytes(url, policy)
        check_image(data, policy)
        return url
    if scheme in ("http", "https"):
        if not policy.fetch_urls:
            raise ImageRefused("this server does not fetch image URLs: send the image as a data: URI "
                               "(data:image/png;base64,...), or start it with --fetch-image-urls")
        data = await _fetch(url, policy)
    else:
        accepted = "data: URIs and http(s) URLs" if policy.fetch_urls else "data: URIs"
        raise ImageRefused(f"image URLs of scheme {scheme or '(none)'!r} are not accepted: this server takes "
                           f"{accepted} (a local file goes as a data: URI)")
    mime = check_image(data, policy)
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def localize_images(payload: Any, policy: ImagePolicy) -> bool:
    """Every image_url part of a chat request's messages checked, and fetched where allowed, in place (each
    becomes a data: URI the model's loader decodes without reading anything); True if any changed.
    ImageRefused for the first one refused. A payload that is not a chat request is left to the route's
    own validation."""
    messages = payload.get("messages") if isinstance(payload, dict) else None
    changed = False
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not (isinstance(part, dict) and part.get("type") == "image_url"):
                continue
            holder: Optional[dict] = part["image_url"] if isinstance(part.get("image_url"), dict) else None
            url = holder.get("url") if holder is not None else part.get("image_url")
            local = await _localized(url, policy)
            if local != url:
                if holder is not None:
                    holder["url"] = local
                else:
                    part["image_url"] = local
                changed = True
    return changed


def data_uri_loader(image_url: str) -> bytes:
    """The model's image loader behind the server: data: URIs only (the request was checked before; this
    keeps any other path from reading a URL or a file)."""
    if not image_url.startswith("data:"):
        raise ImageRefused("this server loads data: image URIs only")
    return _data_uri_bytes(image_url, ImagePolicy())
