"""Property-based HTTP fuzzing of `pop-local serve`: schemathesis draws requests for every operation of
the server's own OpenAPI schema (bodies valid, and invalid, against it) and sends them over loopback to
the real server in a subprocess; then hand-written cases no schema describes (malformed JSON, invalid
UTF-8, a 100 MB body, negative and huge max_tokens, unknown fields, a foreign origin).

Oracle: every request is answered (no 5xx, none past the timeout: a hang), the server process stays up
(no crash), and after the run it still answers a normal request.

    python benchmarks/http_fuzz.py --requests 1000 --seed 0 [--json results/http-fuzz.json]
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional

from helpers.serve_process import serving

N_CTX = 128  # bounds every generation: a huge max_tokens ends at the context


def _send_raw(port: int, head: str, body: bytes, timeout: float) -> int:
    """The status of one request written by hand (for bodies no HTTP client sends); 0 when none came."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + body[:1 << 16])
        try:
            for start in range(1 << 16, len(body), 1 << 20):
                s.sendall(body[start:start + (1 << 20)])
        except OSError:  # answered and closed before the whole body went: what a cap does
            pass
        reply = b""
        try:
            while b"\r\n" not in reply:
                more = s.recv(4096)
                if not more:
                    break
                reply += more
        except OSError:
            pass
    line = reply.split(b"\r\n")[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0


def _post(port: int, path: str, body: bytes, timeout: float, headers: str = "") -> int:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n{headers}")
    return _send_raw(port, head, body, timeout)


HAND_WRITTEN = {
    # name: (path, body, extra headers)
    "malformed JSON": ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"', ""),
    "invalid UTF-8": ("/v1/completions", b'{"prompt": "\xff\xfe\xfd", "max_tokens": 2}', ""),
    "not an object": ("/v1/chat/completions", b'[1, 2, 3]', ""),
    "negative max_tokens": ("/v1/completions", b'{"prompt": "Hello", "max_tokens": -5}', ""),
    "huge max_tokens": ("/v1/completions", b'{"prompt": "Hello", "max_tokens": 1000000000000}', ""),
    "unknown fields": ("/v1/chat/completions",
                       b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "frobnicate": [1]}', ""),
    "wrong types": ("/v1/chat/completions", b'{"messages": "hi", "max_tokens": "two", "temperature": []}', ""),
    "bad grammar": ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2, "grammar": "root ::= ("}', ""),
    "bad logit_bias": ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2, "logit_bias": {"x": 1e309}}', ""),
    "a prompt longer than the context": ("/v1/completions",
                                         json.dumps({"prompt": "word " * 4 * N_CTX, "max_tokens": 2}).encode(), ""),
    "foreign origin": ("/v1/completions", b'{"prompt": "Hi", "max_tokens": 2}', "Origin: http://evil.example\r\n"),
    "100 MB body": ("/v1/completions", b'{"prompt": "' + b"a" * (100 * 2**20) + b'"}', ""),
}


def _sender(send, label: str):
    """A one-argument test body for hypothesis.given (which takes no defaults) sending each case under `label`."""
    def send_case(case):
        send(case, label)

    return send_case


def run(model: str, *, requests: int, seed: int = 0, timeout_s: float = 120.0, server_args=(),
        progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Fuzz a server of `model` with about `requests` schema-drawn requests and the hand-written cases."""
    import hypothesis
    import requests as http
    import schemathesis
    from hypothesis import HealthCheck, Phase, strategies
    from schemathesis import GenerationMode

    say = progress or (lambda text: None)
    statuses: Counter = Counter()
    by_operation: Dict[str, Counter] = {}
    failures: List[Dict[str, Any]] = []
    hangs = crashes = 0
    started = time.time()
    log = tempfile.TemporaryFile("w+")  # the server's output: read for tracebacks, never a full pipe
    with log, serving(model, "--n-ctx", str(N_CTX), *server_args, log=log) as (port, proc):
        base = f"http://127.0.0.1:{port}"
        schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        sent = 0

        def send(case, label: str) -> None:
            nonlocal sent, hangs, crashes
            sent += 1
            try:
                status = case.call(base_url=base, timeout=timeout_s).status_code
            except http.exceptions.Timeout:
                hangs += 1
                failures.append({"operation": label, "what": "hang", "body": repr(case.body)[:300]})
                return
            except http.exceptions.ConnectionError as e:
                if proc.poll() is not None:
                    crashes += 1
                    raise RuntimeError(f"the server exited ({proc.returncode}) on {label}") from e
                status = 0
            statuses[status] += 1
            by_operation.setdefault(label, Counter())[status] += 1
            if status >= 500 or status == 0:
                failures.append({"operation": label, "status": status, "body": repr(case.body)[:1500],
                                 "query": repr(case.query)[:200]})

        rounds = 0
        while sent < requests and rounds < 20:
            before = sent
            per = max(1, (requests - sent) // len(operations))
            for op in operations:
                label = f"{op.method.upper()} {op.path}"
                fuzz = hypothesis.settings(max_examples=per, deadline=None, database=None, phases=[Phase.generate],
                                           suppress_health_check=list(HealthCheck))(
                    hypothesis.seed(seed + rounds)(hypothesis.given(case=strategies.one_of(
                        op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE)))(
                        _sender(send, label))))
                fuzz()
                say(f"{label}: {sum(by_operation.get(label, Counter()).values())} requests, {sent} in all")
                if sent >= requests:
                    break
            rounds += 1
            if sent == before:
                break
        hand = {}
        for name, (path, body, headers) in HAND_WRITTEN.items():
            status = _post(port, path, body, timeout_s, headers) if proc.poll() is None else 0
            hand[name] = status
            say(f"by hand, {name}: {status}")
            if status >= 500 or status == 0:
                failures.append({"operation": f"POST {path}", "what": name, "status": status})
            if proc.poll() is not None:
                crashes += 1
                failures.append({"operation": f"POST {path}", "what": f"the server exited ({proc.returncode})"})
                break
        after = 0 if proc.poll() is not None else http.post(
            f"{base}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=timeout_s).status_code
        log.seek(0)
        output = log.read()
        tracebacks = output.count("Traceback (most recent call last)")
        errors = sorted({line for line in output.splitlines() if line.startswith("Exception: ")})
        if tracebacks:  # the last one whole: where a 500 came from
            failures.append({"what": "the server's last traceback",
                             "log": output[output.rfind("Traceback (most recent call last)"):][:3000]})
        if crashes:
            failures.append({"what": "the server's last output", "log": output[-1500:]})
    return {
        "requests": sent, "operations": len(operations), "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "by_operation": {k: {str(s): n for s, n in sorted(v.items())} for k, v in sorted(by_operation.items())},
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "unanswered": statuses.get(0, 0), "hangs": hangs, "crashes": crashes,
        "hand_written": hand, "after": after, "tracebacks": tracebacks, "server_exceptions": errors[:20],
        "failures": failures[:20],
        "seconds": round(time.time() - started, 1), "seed": seed, "n_ctx": N_CTX,
    }
