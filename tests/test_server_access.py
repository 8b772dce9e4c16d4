"""A server that lets no one in it should not: web origins, the Host a request names, keys and the
address it listens on, CONFIG_FILE, two apps in one process, and the images a chat request carries (data:
by default, http(s) only when asked, bounded and off the model lock, file: never). Every request goes over
real HTTP to uvicorn serving real models (SmolLM2 and Gemma-3-270M)."""

import base64
import contextlib
import http.server
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import warnings
import zlib

import pytest
from click.testing import CliRunner

from helpers.serve_process import free_port
from pop_local.apps.cli import cli
from pop_local.apps.server_access import check_binding, is_loopback, parse_origins
from pop_local.apps.server_images import ImagePolicy, ImageRefused, image_size
from pop_local.errors import PopError
from pop_local.runtime.settings import LoadSettings

pytestmark = pytest.mark.slow

KEY_A, KEY_B = "key-of-a", "key-of-b"


@contextlib.contextmanager
def running(app):
    """`app` served by uvicorn on a free loopback port in this process; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def call(url, body=None, *, key=None, headers=None, method=None, timeout=120):
    """(status, parsed JSON or text, headers) of one request; HTTP errors are answers too."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw, got = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, raw, got = e.code, e.read(), e.headers
    try:
        return status, json.loads(raw), got
    except ValueError:
        return status, raw.decode(errors="replace"), got


@pytest.fixture(scope="module")
def servers(smollm2, gemma3, tmp_path_factory):
    """Two apps in this one process: A (SmolLM2, KEY_A, defaults) and B (Gemma-3, KEY_B, image URLs fetched,
    one extra origin)."""
    from pop_local.apps.server import create_pop_app
    from pop_local.converter.writer import write_pop_gguf

    pop_model = str(write_pop_gguf(smollm2, tmp_path_factory.mktemp("access") / "smollm2.pop.gguf", "20-29"))
    a = create_pop_app(pop_model, LoadSettings(n_ctx=512), api_key=KEY_A, model_alias="model-a")
    b = create_pop_app(gemma3, LoadSettings(n_ctx=512), api_key=KEY_B, model_alias="model-b",
                       fetch_image_urls=True, allowed_origins="https://tool.example")
    with running(a) as url_a, running(b) as url_b:
        yield url_a, url_b
    for app in (a, b):
        app.state.pop_llm.close()


# --- origins and hosts --------------------------------------------------------------------------------

def preflight(url, origin):
    return call(f"{url}/v1/chat/completions", method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})


def test_a_foreign_origin_is_refused_and_a_local_one_accepted(servers):
    a, b = servers
    status, body, _ = preflight(a, "http://evil.example")
    assert status == 403 and "--allowed-origins http://evil.example" in body["error"]["message"]
    status, body, _ = call(f"{a}/v1/models", key=KEY_A, headers={"Origin": "http://evil.example"})
    assert status == 403  # a simple request from that page is not answered either
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080"):
        status, _, headers = preflight(a, origin)
        assert status == 200 and headers["access-control-allow-origin"] == origin, origin
        assert headers.get("access-control-allow-credentials") is None  # no cookies ride along
    status, _, headers = preflight(b, "https://tool.example")  # --allowed-origins extends the list
    assert status == 200 and headers["access-control-allow-origin"] == "https://tool.example"
    assert preflight(a, "https://tool.example")[0] == 403  # for the app that was told so only


def test_a_page_that_rebinds_its_name_to_loopback_is_turned_away(servers):
    a, _ = servers
    status, body, _ = call(f"{a}/v1/models", key=KEY_A, headers={"Host": "attacker.example:8000"})
    assert status == 403 and "localhost" in body["error"]["message"]
    assert call(f"{a}/v1/models", key=KEY_A, headers={"Host": "localhost:8000"})[0] == 200


def test_origins_are_checked_where_they_enter(monkeypatch):
    assert parse_origins("https://a.example, http://b.example:8080/,null") == (
        "https://a.example", "http://b.example:8080", "null")
    with pytest.raises(PopError, match="not an origin"):
        parse_origins("a.example")
    result = CliRunner().invoke(cli, ["serve", "--allowed-origins", "a.example,https://b.example", "x.gguf"])
    assert result.exit_code == 2 and "--allowed-origins" in result.output


# --- keys, binding, CONFIG_FILE, two apps -----------------------------------------------------------

def test_two_apps_in_one_process_keep_their_models_and_keys(servers):
    a, b = servers
    for url, key, other, alias in ((a, KEY_A, KEY_B, "model-a"), (b, KEY_B, KEY_A, "model-b")):
        assert call(f"{url}/v1/models")[0] == 401
        assert call(f"{url}/v1/models", key=other)[0] == 401
        status, body, _ = call(f"{url}/v1/models", key=key)
        assert status == 200 and [m["id"] for m in body["data"]] == [alias]
        assert call(f"{url}/pop/stats")[0] == 401 and call(f"{url}/pop/stats", key=key)[0] == 200
    # each answers with its own model: SmolLM2 has 30 layers, Gemma-3-270M 18
    assert call(f"{a}/pop/stats", key=KEY_A)[1]["skip_layers"] == list(range(20, 30))
    status, body, _ = call(f"{b}/v1/completions", {"prompt": "Hello", "max_tokens": 2}, key=KEY_B)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


def test_listening_beyond_loopback_needs_a_key_or_the_explicit_opt_out():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    with pytest.raises(PopError, match="--api-key.*--insecure-no-key"):
        check_binding("0.0.0.0", None)
    check_binding("0.0.0.0", "k")
    check_binding("0.0.0.0", None, insecure_no_key=True)
    check_binding("127.0.0.1", None)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "no-such-model.gguf"])
    assert result.exit_code == 1 and "--insecure-no-key" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_config_file_never_replaces_the_servers_settings(smollm2, tmp_path, monkeypatch):
    from pop_local.apps.server import create_pop_app

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_key": "from-config", "models": [{"model": "/elsewhere.gguf"}]}))
    monkeypatch.setenv("CONFIG_FILE", str(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = create_pop_app(smollm2, LoadSettings(n_ctx=256), api_key="given", model_alias="given-model")
    assert any("CONFIG_FILE" in str(w.message) for w in caught)
    try:
        with running(app) as url:
            assert call(f"{url}/v1/models", key="from-config")[0] == 401
            status, body, _ = call(f"{url}/v1/models", key="given")
            assert status == 200 and body["data"][0]["id"] == "given-model"
    finally:
        app.state.pop_llm.close()


# --- requests and images ------------------------------------------------------------------------------

def png(width, height):
    """A PNG header (signature and IHDR) claiming width x height; enough for the size check, which runs first."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def chat_with_image(url):
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What is this?"}]}],
            "max_tokens": 2}


def data_uri(raw):
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def test_image_urls_other_than_data_are_refused_by_default(servers, tmp_path):
    a, _ = servers
    secret = tmp_path / "photo.png"
    secret.write_bytes(png(8, 8))
    for url, words in ((secret.as_uri(), "scheme 'file'"), ("http://127.0.0.1:9/x.png", "--fetch-image-urls"),
                       ("ftp://host/x.png", "scheme 'ftp'")):
        status, body, _ = call(f"{a}/v1/chat/completions", chat_with_image(url), key=KEY_A)
        assert status == 400 and words in body["error"]["message"], (url, body)
    status, body, _ = call(f"{a}/v1/chat/completions", chat_with_image(data_uri(png(20000, 20000))), key=KEY_A)
    assert status == 400 and "20000x20000 pixels" in body["error"]["message"]
    big = data_uri(png(64, 64) + bytes(21 * 2**20))  # 21 MiB: under the request cap, over the image cap
    status, body, _ = call(f"{a}/v1/chat/completions", chat_with_image(big), key=KEY_A)
    assert status == 400 and "MiB per image" in body["error"]["message"]


def raw_post(url, head: bytes, chunks) -> bytes:
    """The status line of a POST written by hand (`chunks`: the body's pieces, sent until the server stops
    reading): a refused body must not have to be sent whole."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nAuthorization: Bearer "
                  + KEY_A.encode() + b"\r\nContent-Type: application/json\r\n" + head + b"\r\n")
        with contextlib.suppress(OSError):  # the server may answer and close while this still sends
            for chunk in chunks:
                s.sendall(chunk)
        reply = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in reply:
                more = s.recv(4096)
                if not more:
                    break
                reply += more
    return reply.split(b"\r\n")[0]


def test_a_request_over_the_size_cap_is_refused_without_reading_it_whole(servers):
    a, _ = servers
    line = raw_post(a, b"Content-Length: 104857600\r\n", [b"{"])  # 100 MB announced, 1 byte sent
    assert b" 413 " in line, line
    mib = b"%x\r\n" % 2**20 + b" " * 2**20 + b"\r\n"  # chunked, no length: the cap holds while reading
    line = raw_post(a, b"Transfer-Encoding: chunked\r\n", [b"1\r\n{\r\n"] + [mib] * 70 + [b"0\r\n\r\n"])
    assert b" 413 " in line, line
    assert call(f"{a}/v1/models", key=KEY_A)[0] == 200


class _Site(http.server.BaseHTTPRequestHandler):
    """A local web site for the fetch tests: an image, a redirect loop, a redirect to a file: URL, a large
    image, and a page that never answers (its handler waits until the test ends)."""
    release = threading.Event()

    def do_GET(self):
        if self.path == "/hang":
            self.release.wait(60)
            return
        if self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
            return
        if self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
            return
        body = png(32, 32) if self.path == "/small.png" else png(64, 64) + bytes(21 * 2**20)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()  # no length: the cap must hold while reading
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Site.release.set()
    server.shutdown()


def test_fetched_images_are_bounded_and_never_hold_up_other_requests(servers, site):
    _, b = servers
    for path, words in (("/loop", "redirects more than 3 times"), ("/to-file", "redirects to a file: URL"),
                        ("/large.png", "MiB per image")):
        status, body, _ = call(f"{b}/v1/chat/completions", chat_with_image(site + path), key=KEY_B)
        assert status == 400 and words in body["error"]["message"], (path, body)
    result = {}
    hung = threading.Thread(target=lambda: result.setdefault("hang", call(
        f"{b}/v1/chat/completions", chat_with_image(site + "/hang"), key=KEY_B)))
    started = time.perf_counter()
    hung.start()
    time.sleep(0.5)
    status, body, _ = call(f"{b}/v1/completions", {"prompt": "Hi", "max_tokens": 2}, key=KEY_B)
    other = time.perf_counter() - started
    hung.join(60)
    status_hang, body_hang, _ = result["hang"]
    assert status == 200 and other < ImagePolicy().timeout_s  # answered while the fetch still waited
    assert status_hang == 400 and "did not arrive within 10 s" in body_hang["error"]["message"]
    assert time.perf_counter() - started < ImagePolicy().timeout_s + 15


def test_image_sizes_are_read_from_headers_only():
    import io

    from pop_local.runtime.multimodal import synthetic_png

    assert image_size(synthetic_png(40, 30)) == ("image/png", 40, 30)
    assert image_size(b"GIF89a" + struct.pack("<HH", 7, 9) + bytes(10)) == ("image/gif", 7, 9)
    bmp = b"BM" + bytes(12) + struct.pack("<Iii", 40, 5, -6) + bytes(20)
    assert image_size(bmp) == ("image/bmp", 5, 6)
    jpeg = (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", 16) + bytes(14)
            + b"\xff\xc0" + struct.pack(">HBHH", 17, 8, 480, 640) + bytes(10))
    assert image_size(jpeg) == ("image/jpeg", 640, 480)
    for bad in (b"RIFF....WEBP", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xd9", io.BytesIO().getvalue()):
        with pytest.raises(ImageRefused):
            image_size(bad)


def test_a_fetched_image_becomes_a_data_uri_the_model_reads_without_fetching(site):
    import anyio

    from pop_local.apps.server_images import data_uri_loader, localize_images

    request = chat_with_image(site + "/small.png")
    assert anyio.run(localize_images, request, ImagePolicy(fetch_urls=True))
    url = request["messages"][0]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and data_uri_loader(url) == png(32, 32)
    with pytest.raises(ImageRefused, match="data: image URIs only"):
        data_uri_loader(site + "/small.png")
    plain = chat_with_image(data_uri(png(4, 4)))
    assert not anyio.run(localize_images, plain, ImagePolicy())  # a data: URI passes as it is


def test_a_port_nobody_listens_on_is_a_clear_refusal_too(servers):
    _, b = servers
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    status, body, _ = call(f"{b}/v1/chat/completions", chat_with_image(f"http://127.0.0.1:{port}/x.png"), key=KEY_B)
    assert status == 400 and "cannot fetch the image" in body["error"]["message"]


def test_requests_that_would_crash_or_fail_the_model_are_refused_first(servers):
    """What the fuzzer found: each was a crash (a token id outside the vocabulary aborted the process, a
    grammar llama.cpp cannot parse gave a null sampler) or a 500; now a 4xx naming the field."""
    a, _ = servers
    cases = [
        ("/extras/detokenize", {"tokens": [1, -1]}, 400, "tokens: -1"),
        ("/extras/detokenize", {"tokens": [10**9]}, 400, "is not a token id"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "logit_bias": {"99999999": 1.0}}, 400, "logit_bias"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "grammar": "root ::= ("}, 400, "grammar"),
        ("/v1/completions", {"prompt": "", "max_tokens": 2}, 400, "prompt: empty"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "logprobs": 3}, 400, "logprobs are not served"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "tools": [],
                                  "tool_choice": {"type": "function", "function": {"name": "f"}}}, 400, "tool_choice"),
        ("/v1/completions", {"prompt": "Hi", "max_tokens": -1}, 422, ""),
        ("/v1/embeddings", {"input": "Hi"}, 400, "no embeddings"),
    ]
    for path, body, want, words in cases:
        status, reply, _ = call(f"{a}{path}", body, key=KEY_A)
        text = json.dumps(reply)
        assert status == want and words in text, (path, body, status, text[:300])
    status, reply, _ = call(f"{a}/v1/completions", {"prompt": "Hi", "max_tokens": 2, "presence_penalty": None},
                            key=KEY_A)
    assert status == 200  # null means the default, as in OpenAI's API (upstream handed None to llama.cpp)
    assert call(f"{a}/v1/models", key=KEY_A)[0] == 200  # and the server is still up


# --- fuzzing from the server's own schema ------------------------------------------------------------

def test_fuzzing_from_the_openapi_schema_finds_no_5xx_hang_or_crash(smollm2, tmp_path):
    """schemathesis at test size (benchmarks/http_fuzz.py runs 1,000): every operation of /openapi.json with
    drawn bodies, then the hand-written cases, against `pop-local serve` in a subprocess."""
    from helpers.http_fuzz import run
    from pop_local.converter.writer import write_pop_gguf

    model = str(write_pop_gguf(smollm2, tmp_path / "smollm2.pop.gguf", "20-29", min_tokens=0))
    r = run(model, requests=80, seed=3)
    assert r["requests"] >= 80 and r["operations"] >= 8
    assert (r["server_errors"], r["unanswered"], r["hangs"], r["crashes"]) == (0, 0, 0, 0), r["failures"]
    assert r["after"] == 200 and r["tracebacks"] == 0, r["failures"]
    hand = r["hand_written"]
    assert hand["100 MB body"] == 413 and hand["foreign origin"] == 403 and hand["invalid UTF-8"] == 400
    assert hand["malformed JSON"] == 422 and hand["bad grammar"] == 400 and hand["unknown fields"] == 200
    assert max(hand.values()) < 500
