"""Who may use the server, checked before any route runs: the address it listens on and its key, the
web origins whose pages may call it, the Host a request names, the size of a request, and the images a
chat request carries (pop_local/apps/server_images.py).

The defaults follow Ollama's and llama.cpp's servers: listen on loopback; browser pages only from local
origins (`--allowed-origins` / POP_LOCAL_ORIGINS add others); a key required before listening beyond
this machine (`--insecure-no-key` is the explicit opt-out).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Tuple

from pop_local.errors import PopError

from .server_images import ImagePolicy, ImageRefused, localize_images

__all__ = ["AccessPolicy", "RequestGuard", "check_binding", "is_loopback", "parse_origins", "ORIGINS_ENV",
           "MAX_REQUEST_BYTES", "key_check", "token_id_problem"]

ORIGINS_ENV = "POP_LOCAL_ORIGINS"
MAX_REQUEST_BYTES = 64 * 2**20  # a chat request with a few images as data: URIs fits; 100 MB does not
_LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_ORIGIN = re.compile(r"^(https?|[a-z][a-z0-9+.-]*)://[^/\s?#]+$")


def _local_name(name: str) -> "bool | None":
    """Whether a host name or address (no brackets, lower case) is this machine's by its spelling alone:
    True for localhost names and loopback addresses, False for other addresses, None for other names."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address to listen on) reaches this machine only (a name is resolved)."""
    name = host.strip("[]").lower()
    local = _local_name(name)
    if local is not None:
        return local
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_binding(host: str, api_key: Optional[str], insecure_no_key: bool = False) -> None:
    """PopError when the server would listen beyond this machine without an API key (unless the caller
    opted out, knowingly)."""
    if not api_key and not insecure_no_key and not is_loopback(host):
        raise PopError(f"serve: --host {host} listens beyond this machine and no API key is set: give --api-key "
                       "(or POP_LOCAL_API_KEY), or --insecure-no-key to let anyone who reaches it use the model")


def parse_origins(text: "str | Sequence[str] | None") -> Tuple[str, ...]:
    """Web origins allowed beside the local ones: comma separated `scheme://host[:port]` (as a browser
    sends them), `null` (file: pages), or `*` (any page). PopError naming the first malformed one."""
    items = text.split(",") if isinstance(text, str) else list(text or ())
    origins = []
    for item in (i.strip().rstrip("/").lower() for i in items):
        if not item:
            continue
        if item not in ("*", "null") and not _ORIGIN.match(item):
            raise PopError(f"allowed origins: {item!r} is not an origin (scheme://host[:port], 'null' or '*')")
        origins.append(item)
    return tuple(origins)


def _local_origin(origin: str) -> bool:
    m = re.match(r"^https?://(\[[^\]]+\]|[^:/]+)(:\d+)?$", origin)
    return bool(m) and m.group(1).strip("[]").lower() in _LOCAL_NAMES


def _host_name(host_header: str) -> str:
    """The name in a Host header, without its port ("[::1]:8000" -> "::1")."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")].lower() if "]" in host_header else host_header.lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 else host_header.lower()


@dataclass(frozen=True)
class AccessPolicy:
    """What RequestGuard lets through. `host`: the address the server listens on (a loopback server
    answers only requests naming a local Host: a page that rebinds its DNS name to 127.0.0.1 is turned away)."""
    host: str = "127.0.0.1"
    origins: Tuple[str, ...] = ()  # beside the local ones (parse_origins)
    max_request_bytes: int = MAX_REQUEST_BYTES
    images: ImagePolicy = field(default_factory=ImagePolicy)
    # the model's own checks of a request's JSON (path, payload) -> why it cannot run, or None (server.py)
    check: Optional[Callable[[str, Any], Optional[str]]] = None

    def allows_origin(self, origin: str) -> bool:
        origin = origin.rstrip("/").lower()
        return _local_origin(origin) or "*" in self.origins or origin in self.origins

    @functools.cached_property
    def _on_loopback(self) -> bool:  # resolved once, not at every request
        return is_loopback(self.host)

    def allows_host(self, host_header: Optional[str]) -> bool:
        if not self._on_loopback or host_header is None:
            return True  # reachable by any name the network gives it (HTTP/1.0 sends no Host)
        name = _host_name(host_header)
        return bool(_local_name(name)) or name == self.host.strip("[]").lower()


def key_check(api_key: Optional[str]):
    """The API key dependency for the server's routes (upstream's signature): constant-time comparison,
    a 401 in OpenAI's error shape."""
    from fastapi import Depends, HTTPException, status
    from fastapi.security import HTTPBearer

    bearer = HTTPBearer(auto_error=False)

    async def authenticate(authorization=Depends(bearer)):  # noqa: B008 (FastAPI declares dependencies so)
        if api_key is None:
            return True
        if authorization is not None and hmac.compare_digest(authorization.credentials.encode(), api_key.encode()):
            return authorization.credentials
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="Invalid API key")

    return authenticate


async def _send_error(send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware in front of the app: Origin and Host checked (403), the body read up to the cap
    (413), and a chat request's images checked and fetched where allowed (400 for a refused one), all
    before the route waits for the model. CORS headers for allowed origins come from Starlette's
    CORSMiddleware inside it."""

    def __init__(self, app, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and not self.policy.allows_origin(origin):
            return await _send_error(send, 403, f"requests from web pages at {origin} are not allowed: start the "
                                     f"server with --allowed-origins {origin} (or set {ORIGINS_ENV}) to allow "
                                     "them", "forbidden_origin")
        if not self.policy.allows_host(headers.get("host")):
            return await _send_error(send, 403, f"this server answers requests to localhost, not to "
                                     f"{headers.get('host')!r}", "forbidden_host")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        cap = self.policy.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return await _send_error(send, 413, f"the request is {int(declared):,} bytes, over the server's "
                                     f"{cap:,}", "request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                return await _send_error(send, 413, f"the request is over the server's {cap:,} bytes",
                                         "request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:  # JSON is UTF-8 (RFC 8259); upstream's error path would fail on it
            return await _send_error(send, 400, f"the request body is not UTF-8 (byte {e.start})",
                                     "invalid_request_error")
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None  # the route's own validation answers it
        problem = request_problem(payload) or (self.policy.check(scope["path"], payload) if self.policy.check else None)
        if problem:
            return await _send_error(send, 400, problem, "invalid_request_error")
        changed = _nulls_to_defaults(payload)
        if scope["path"].rstrip("/").endswith("/chat/completions"):
            try:
                changed = payload is not None and await localize_images(payload, self.policy.images) or changed
            except ImageRefused as e:
                return await _send_error(send, 400, str(e), "invalid_request_error")
        if changed:
            body = json.dumps(payload).encode()
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
                     + [(b"content-length", str(len(body)).encode())]}
        return await self.app(scope, _replay(body, receive), send)


# fields upstream's request types allow as null but hand on to llama.cpp as numbers (a crash in ctypes):
# null means the default there, as in OpenAI's API
_NULL_MEANS_DEFAULT = ("presence_penalty", "frequency_penalty")


def _nulls_to_defaults(payload) -> bool:
    """Drop _NULL_MEANS_DEFAULT fields given as null (the route then uses their defaults); True if any was."""
    if not isinstance(payload, dict):
        return False
    nulls = [k for k in _NULL_MEANS_DEFAULT if k in payload and payload[k] is None]
    for k in nulls:
        del payload[k]
    return bool(nulls)


LOGPROBS_REFUSED = ("logprobs are not served: they need logits for every prompt token, and an output runs at "
                    "full depth, so nothing would be pruned")


def request_problem(payload) -> Optional[str]:
    """Why a request cannot run whatever the model (upstream would answer 500), or None: a tool_choice or
    function_call naming a function the request does not define; logprobs."""
    if not isinstance(payload, dict):
        return None
    tools = payload.get("tools") if isinstance(payload.get("tools"), list) else []
    functions = payload.get("functions") if isinstance(payload.get("functions"), list) else []
    names = {t["function"].get("name") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)}
    names |= {f.get("name") for f in functions if isinstance(f, dict)}
    for field_name in ("tool_choice", "function_call"):
        choice = payload.get(field_name)
        if isinstance(choice, dict):
            function = choice.get("function") if field_name == "tool_choice" else choice
            name = function.get("name") if isinstance(function, dict) else None
            if name not in names:
                return f"{field_name}: {str(name)[:40]!r} is not a function the request defines"
    if payload.get("logprobs") not in (None, False) or payload.get("top_logprobs") is not None:
        return LOGPROBS_REFUSED
    return None


def token_id_problem(path: str, payload, n_vocab: int) -> Optional[str]:
    """Why a request's token ids cannot be used (llama.cpp aborts the whole process on a token id outside the
    vocabulary, and upstream answers a malformed logit_bias with a 500), or None. Ids are checked where a
    request names them: /extras/detokenize's tokens and logit_bias keys (unless logit_bias_type is
    "tokens", whose keys are text)."""
    if not isinstance(payload, dict) or n_vocab <= 0:
        return None
    bad = f"is not a token id of this model (0 to {n_vocab - 1})"
    if path.rstrip("/").endswith("/detokenize"):
        tokens = payload.get("tokens")
        for token in tokens if isinstance(tokens, list) else ():
            if isinstance(token, int) and not isinstance(token, bool) and not 0 <= token < n_vocab:
                return f"tokens: {token} {bad}"
    bias = payload.get("logit_bias")
    if isinstance(bias, dict) and payload.get("logit_bias_type") != "tokens":
        for key, value in bias.items():
            if not (key.strip().isdigit() and int(key) < n_vocab):
                return f"logit_bias: {key[:40]!r} {bad}"
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value \
                    or abs(value) == float("inf"):
                return f"logit_bias: the bias of {key} must be a finite number"
    return None


def _replay(body: bytes, receive):
    """A receive() that gives the app the body already read, then passes on what the client sends next
    (a disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
