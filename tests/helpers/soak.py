"""Soak test of `pop-local serve`: concurrent clients, mixed streaming, abandoned streams, stats polled.

The server runs in its own process on 127.0.0.1. First every distinct request is run alone, one at a
time (the reference answers, temperature 0); then `--clients` threads send `--requests` requests drawn
from the same set: chat and plain completions, streaming and not, and a share of the streams read
for a few chunks and then dropped (the connection closed). A poller reads GET /pop/stats every 0.2 s
throughout. Reported: failed requests, truncated streams (no finish_reason, or a stream that ended
early), answers that differ from the reference, /pop/stats failures and slowest poll, and the
server's RSS after the reference pass and at the end.

    python benchmarks/soak.py [MODEL] --clients 8 --requests 400 --abandon 0.1 [--json soak.json]
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "Write one sentence about the sea.",
           "What is 7 times 8?", "Give a synonym for 'quick'.", "Why do leaves fall in autumn?",
           "Translate 'good morning' into Spanish.", "What does a lighthouse keeper do?",
           "List two uses of copper.", "Describe a canal lock in one sentence."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Optional[str], args: List[str], timeout: float = 600) -> Tuple[subprocess.Popen, int]:
    port = _free_port()
    cmd = ([sys.executable, "-m", "pop_local.apps.cli", "serve"] + ([model] if model else [])
           + ["--port", str(port), *args])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _body(kind: str, prompt: str, max_tokens: int, stream: bool) -> Tuple[str, bytes]:
    if kind == "chat":
        data = {"messages": [{"role": "user", "content": prompt}]}
        path = "/v1/chat/completions"
    else:
        data = {"prompt": f"Question: {prompt}\nAnswer:"}
        path = "/v1/completions"
    data.update({"max_tokens": max_tokens, "temperature": 0, "stream": stream})
    return path, json.dumps(data).encode()


def _text_of(kind: str, choice: Dict[str, Any], streamed: bool) -> str:
    if kind == "chat":
        part = choice.get("delta" if streamed else "message") or {}
        return part.get("content") or ""
    return choice.get("text") or ""


def request(port: int, kind: str, prompt: str, max_tokens: int, stream: bool, abandon_after: Optional[int] = None,
            timeout: float = 600) -> Dict[str, Any]:
    """One request: {"text", "finish", "chunks", "abandoned"} or {"error"}."""
    path, body = _body(kind, prompt, max_tokens, stream)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        if not stream:
            out = json.loads(r.read())
            choice = out["choices"][0]
            return {"text": _text_of(kind, choice, False), "finish": choice.get("finish_reason"), "chunks": 1}
        text, finish, chunks = "", None, 0
        for raw in r:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            choice = json.loads(payload)["choices"][0]
            text += _text_of(kind, choice, True)
            finish = choice.get("finish_reason") or finish
            chunks += 1
            if abandon_after is not None and chunks >= abandon_after:
                return {"abandoned": True, "chunks": chunks}
        return {"text": text, "finish": finish, "chunks": chunks}
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()  # for an abandoned stream: the client goes away mid-stream


def soak(model: Optional[str], *, clients: int = 8, requests: int = 400, abandon: float = 0.1, max_tokens: int = 24,
         seed: int = 0, server_args: Optional[List[str]] = None, progress=None) -> Dict[str, Any]:
    proc, port = start_server(model, server_args or ["--n-ctx", "2048"])
    try:
        cases = [(kind, p) for p in PROMPTS for kind in ("chat", "completion")]
        reference = {}
        for kind, prompt in cases:  # alone, one at a time
            out = request(port, kind, prompt, max_tokens, stream=False)
            if "error" in out:
                raise RuntimeError(f"reference request failed: {out['error']}")
            reference[(kind, prompt)] = out["text"]
        rss_start = rss_mb(proc.pid)

        rng = random.Random(seed)
        plan = []
        for _ in range(requests):
            kind, prompt = rng.choice(cases)
            stream = rng.random() < 0.5
            abandon_after = rng.randint(1, 4) if stream and rng.random() < abandon * 2 else None
            plan.append((kind, prompt, stream, abandon_after))
        lock = threading.Lock()
        results: List[Tuple[Tuple[str, str, bool, Optional[int]], Dict[str, Any]]] = []
        polls: List[float] = []
        poll_errors: List[str] = []
        rss_samples: List[float] = []
        stop = threading.Event()

        def poller():
            while not stop.is_set():
                started = time.time()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    conn.request("GET", "/pop/stats")
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200 or "pruned_tokens" not in json.loads(body):
                        poll_errors.append(f"HTTP {r.status}")
                    conn.close()
                except (OSError, http.client.HTTPException, ValueError) as e:
                    poll_errors.append(f"{type(e).__name__}: {e}")
                polls.append(time.time() - started)
                stop.wait(0.2)

        def client():
            while True:
                with lock:
                    if not plan:
                        return
                    item = plan.pop()
                out = request(port, item[0], item[1], max_tokens, item[2], item[3])
                with lock:
                    results.append((item, out))
                    if len(results) % 50 == 0:
                        rss_samples.append(rss_mb(proc.pid))
                    if progress:
                        progress(len(results), requests)

        started = time.time()
        poll_thread = threading.Thread(target=poller, daemon=True)
        poll_thread.start()
        workers = [threading.Thread(target=client) for _ in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        poll_thread.join()
        seconds = time.time() - started
        rss_end = rss_mb(proc.pid)

        failed = [f"{item[:2]}: {out['error']}" for item, out in results if "error" in out]
        done = [(item, out) for item, out in results if "error" not in out and not out.get("abandoned")]
        truncated = [f"{item[:2]}: finish {out.get('finish')}" for item, out in done
                     if out.get("finish") not in ("stop", "length")]
        differ = [f"{item[:2]} stream={item[2]}: {out['text']!r} != {reference[item[:2]]!r}" for item, out in done
                  if out["text"] != reference[item[:2]]]
        return {"model": os.path.basename(model) if model else "default (SmolLM2-135M-Instruct)", "clients": clients,
                "requests": requests, "streaming": sum(1 for item, _ in results if item[2]),
                "abandoned": sum(1 for _, out in results if out.get("abandoned")), "completed": len(done),
                "failed": len(failed), "truncated": len(truncated), "differ_from_alone": len(differ),
                "stats_polls": len(polls), "stats_failures": len(poll_errors),
                "slowest_poll_s": round(max(polls), 3) if polls else None,
                "rss_after_reference_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
                "rss_growth_mb": round(rss_end - rss_start, 1), "rss_samples_mb": [round(x, 1) for x in rss_samples],
                "seconds": round(seconds, 1), "examples": (failed + truncated + differ + poll_errors)[:5]}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
