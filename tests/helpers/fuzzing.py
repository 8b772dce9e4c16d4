"""Seeded mutation fuzzing of everything that reads pop.* metadata.

Targets
  reader    pop_local.format.gguf_kv + pop_local.format.metadata.read_pop_metadata (the header reader and every
            pop.* check, the quality frontier's included) on byte-level mutations of a POP file's
            header: truncation, bit flips, huge lengths and counts, wrong value types, spliced bytes;
            every 10th input also through `pop-local inspect`.
  keys      the same readers on structured mutations: pop.* keys with malformed skip sets, wrong
            types, partial or inconsistent frontiers, out-of-range numbers (written with gguf).
  native    libllama's own key checks (native/pop.cpp), differentially against the Python checks:
            mutated runtime keys through kv_overrides and through files, loaded by a plain
            llama_cpp.Llama in a worker process (a crash kills the worker, not the run). Both must
            accept or reject the same inputs and, when they accept, agree on the skip set.

Oracle: an input is accepted, or rejected with a PopError whose message is one line naming the key or
the file; anything else is a crash, more than 5 s is a hang, and the input file must be unchanged.

    python benchmarks/fuzz.py --inputs 10000 --seed 0 [--json fuzz.json]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from pop_local import keys  # noqa: E402
from pop_local.errors import PopError  # noqa: E402

N_LAYER = 8  # the tiny native model's layers
HANG_SECONDS = 5

# skip-set strings that have broken parsers before, or might
NASTY_SKIP_SETS = ["", " ", "0", "7", "8", "0-7", "3-3", "5-2", "1,1", "1,0", "0-", "-3", "-", ",", "1,", ",1",
                   "1,,2", "1 - 3", " 2 , 4 ", "007", "1-3,2", "1e3", "0x3", "+3", "3.0", "٣", "１", "1\t,\t2",
                   "2\n", "99999999999999999999", "4294967297", "2147483648", "1000001", "1-1000000",
                   "0,1,2,3,4,5,6,7", "a", "1-a", "1;2", "\u00a02", "1-3 ,5-6", "6-7,1-2"]


@dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    crashes: List[str] = field(default_factory=list)
    hangs: List[str] = field(default_factory=list)
    bad_messages: List[str] = field(default_factory=list)
    modified: int = 0
    disagreements: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> Dict[str, Any]:
        return {"inputs": self.inputs, "accepted": self.accepted, "rejected": self.rejected,
                "crashes": len(self.crashes), "hangs": len(self.hangs), "bad_messages": len(self.bad_messages),
                "inputs_modified": self.modified, "disagreements": len(self.disagreements),
                "seconds": round(self.seconds, 1), "examples": (self.crashes + self.hangs + self.bad_messages
                                                                + self.disagreements)[:5]}


# --- seed files ----------------------------------------------------------------------------------

def _frontier_keys(n_layer: int) -> Dict[str, Any]:
    from pop_local.format.frontier import Budget, FrontierRow, frontier_fields

    rows = [FrontierRow(tuple(range(n_layer - k, n_layer)), 0.02 * k, 0.01 * k, 1 - 0.03 * k, 1 - 0.02 * k,
                        1 + 0.05 * k, 1 + 0.06 * k) for k in range(1, n_layer // 2 + 1)]
    chosen = len(rows) - 2
    fields = frontier_fields(rows, chosen, Budget(max_kl="paper"), 0.1, (4, 192))
    fields[keys.SKIP_LAYERS] = ",".join(str(i) for i in rows[chosen].skip)
    return fields


def _typed(value: Any):
    from gguf import GGUFValueType

    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, int):
        return value, GGUFValueType.UINT32 if 0 <= value < 2**32 else GGUFValueType.INT64, None
    if isinstance(value, float):
        return value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    items = list(value)
    sub = _typed(items[0])[1] if items else GGUFValueType.UINT32
    if sub == GGUFValueType.UINT32 and any(isinstance(x, float) for x in items):
        sub = GGUFValueType.FLOAT32
    return items, GGUFValueType.ARRAY, sub


def write_gguf(path: str, arch: str, kv: Dict[str, Any], typed: Optional[Dict[str, Tuple[Any, Any, Any]]] = None,
               tensors: Optional[Dict[str, Any]] = None) -> None:
    """A GGUF with these keys (plain Python values, or (value, type, sub_type) in `typed`) and tensors."""
    from gguf import GGUFWriter

    w = GGUFWriter(path, arch)
    for name, value in kv.items():
        v, t, sub = _typed(value)
        w.add_key_value(name, v, t, sub_type=sub)
    for name, (v, t, sub) in (typed or {}).items():
        w.add_key_value(name, v, t, sub_type=sub)
    for name, data in (tensors or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reader_seed(folder: str) -> str:
    """A small POP file: llama hyperparameters, a short vocabulary, every pop.* key incl. a frontier."""
    import numpy as np

    kv = {"general.name": "fuzz-seed", "llama.block_count": 30, "llama.context_length": 8192,
          "llama.embedding_length": 576, "llama.attention.head_count": 9, "llama.rope.freq_base": 10000.0,
          "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": [f"t{i}" for i in range(64)],
          "tokenizer.ggml.token_type": [1] * 64, keys.VERSION: keys.SCHEMA_VERSION, keys.ENABLED: True,
          keys.MIN_TOKENS: keys.DEFAULT_MIN_TOKENS, keys.KV_METHOD: "own",
          keys.IMPORTANCE_PREFILL: [0.1 * i for i in range(30)], **_frontier_keys(30)}
    path = os.path.join(folder, "seed.pop.gguf")
    write_gguf(path, "llama", kv, tensors={"token_embd.weight": np.zeros((4, 8), np.float32)})
    return path


def tiny_model(smollm2: str, folder: str) -> str:
    """A llama model small enough to load in milliseconds: SmolLM2's vocabulary, 8 layers of 64
    dimensions with random weights. Only its pop.* keys matter to the fuzzer."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(smollm2, "r")
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    dims = {"llama.block_count": N_LAYER, "llama.embedding_length": 64, "llama.feed_forward_length": 128,
            "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16,
            "llama.context_length": 256}
    typed = {}
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture" or f.name in dims:
            continue
        t = f.types[0]
        typed[f.name] = (f.contents(), t, f.types[-1] if t == GGUFValueType.ARRAY else None)
    rng = np.random.default_rng(0)

    def w(*shape):
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)

    tensors = {"token_embd.weight": w(n_vocab, 64).astype(np.float16), "output_norm.weight": np.ones(64, np.float32)}
    for i in range(N_LAYER):
        tensors.update({f"blk.{i}.attn_norm.weight": np.ones(64, np.float32), f"blk.{i}.attn_q.weight": w(64, 64),
                        f"blk.{i}.attn_k.weight": w(32, 64), f"blk.{i}.attn_v.weight": w(32, 64),
                        f"blk.{i}.attn_output.weight": w(64, 64), f"blk.{i}.ffn_norm.weight": np.ones(64, np.float32),
                        f"blk.{i}.ffn_gate.weight": w(128, 64), f"blk.{i}.ffn_up.weight": w(128, 64),
                        f"blk.{i}.ffn_down.weight": w(64, 128)})
    path = os.path.join(folder, "tiny.gguf")
    write_gguf(path, "llama", dims, typed, tensors)
    return path


# --- the Python checks ---------------------------------------------------------------------------

class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def python_verdict(path: str, overrides: Optional[Dict[str, Any]] = None):
    """("ok", metadata) or ("rejected", message) or ("crash", repr) or ("hang", None)."""
    from pop_local.format.metadata import read_pop_metadata, resolve_runtime_metadata

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    try:
        meta = read_pop_metadata(path)
        if overrides is not None:
            meta = resolve_runtime_metadata(meta, overrides)
        return "ok", meta
    except _Hang:
        return "hang", None
    except PopError as e:
        return "rejected", str(e)
    except Exception as e:  # exactly what the fuzzer looks for
        return "crash", f"{type(e).__name__}: {e}"[:300]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _names_the_problem(message: str, path: str) -> bool:
    return "\n" not in message and ("pop." in message or path in message or "general.architecture" in message
                                    or ".block_count" in message)


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_python(path: str, tally: Tally, label: str, cli: bool = False) -> None:
    before = _digest(path)
    verdict, detail = python_verdict(path)
    tally.inputs += 1
    if verdict == "ok":
        tally.accepted += 1
    elif verdict == "rejected":
        tally.rejected += 1
        if not _names_the_problem(detail, path):
            tally.bad_messages.append(f"{label}: {detail[:200]}")
    elif verdict == "hang":
        tally.hangs.append(label)
    else:
        tally.crashes.append(f"{label}: {detail}")
    if cli:
        from click.testing import CliRunner

        from pop_local.apps.cli import cli as command

        r = CliRunner().invoke(command, ["inspect", path])
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        if r.exit_code not in (0, 1) or (r.exit_code == 1 and len(errors) != 1) or r.exception and r.exit_code != 1:
            tally.crashes.append(f"{label}: inspect exit {r.exit_code}: {r.output[-200:]!r}")
    if _digest(path) != before:
        tally.modified += 1


# --- byte-level mutations --------------------------------------------------------------------------

def header_fields(data: bytes) -> List[Tuple[int, str]]:
    """(offset, kind) of every length, count and type field in a GGUF header, for targeted mutations."""
    out = [(8, "u64"), (16, "u64")]
    pos = 24
    n_kv = struct.unpack_from("<Q", data, 16)[0]
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    for _ in range(n_kv):
        n = struct.unpack_from("<Q", data, pos)[0]
        out.append((pos, "u64"))
        pos += 8 + n
        out.append((pos, "type"))
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if vtype == 8:
            out.append((pos, "u64"))
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        elif vtype == 9:
            out.append((pos, "type"))
            etype, count = struct.unpack_from("<IQ", data, pos)
            out.append((pos + 4, "u64"))
            pos += 12
            if etype == 8:
                for _ in range(count):
                    out.append((pos, "u64"))
                    pos += 8 + struct.unpack_from("<Q", data, pos)[0]
            else:
                pos += sizes[etype] * count
        else:
            pos += sizes[vtype]
    return out


def mutate_bytes(data: bytes, fields: List[Tuple[int, str]], rng: random.Random) -> Tuple[bytes, str]:
    buf = bytearray(data)
    kind = rng.choice(["truncate", "bitflip", "huge", "type", "splice", "zero"])
    if kind == "truncate":
        return bytes(buf[:rng.randrange(len(buf))]), kind
    if kind == "bitflip":
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
    elif kind == "huge":
        offset, what = rng.choice([f for f in fields if f[1] == "u64"])
        value = rng.choice([2**64 - 1, 2**63, 2**32, 2**31 - 1, len(buf), len(buf) + 1, rng.getrandbits(64)])
        struct.pack_into("<Q", buf, offset, value)
    elif kind == "type":
        offset, _ = rng.choice([f for f in fields if f[1] == "type"])
        struct.pack_into("<I", buf, offset, rng.choice(list(range(14)) + [255, 2**31, 2**32 - 1]))
    elif kind == "splice":
        a, b = sorted(rng.randrange(len(buf)) for _ in range(2))
        at = rng.randrange(len(buf))
        buf[at:at] = buf[a:b][:4096]
    else:
        a = rng.randrange(len(buf))
        buf[a:a + rng.randint(1, 64)] = bytes(min(64, len(buf) - a))
    return bytes(buf), kind


def fuzz_reader(seed_path: str, n: int, rng: random.Random, folder: str, tally: Tally, cli_every: int = 10) -> None:
    with open(seed_path, "rb") as f:
        data = f.read()
    fields = header_fields(data)
    path = os.path.join(folder, "mutant.gguf")
    started = time.time()
    for i in range(n):
        mutant, kind = mutate_bytes(data, fields, rng)
        with open(path, "wb") as f:
            f.write(mutant)
        check_python(path, tally, f"reader #{i} ({kind})", cli=cli_every > 0 and i % cli_every == 0)
    tally.seconds += time.time() - started


# --- structured pop.* mutations --------------------------------------------------------------------

def _random_skip_text(rng: random.Random, n_layer: int) -> str:
    if rng.random() < 0.4:
        return rng.choice(NASTY_SKIP_SETS)
    if rng.random() < 0.5:  # plausible sets, some out of range or out of order
        parts, at = [], rng.randrange(0, n_layer + 2)
        for _ in range(rng.randint(1, 4)):
            a = at + rng.randint(-2, 3)
            b = a + rng.randint(-1, 4)
            parts.append(f"{a}" if rng.random() < 0.4 else f"{a}-{b}")
            at = b + rng.randint(0, 3)
        return rng.choice([",", ", ", " ,"]).join(parts)
    return "".join(rng.choice("0123456789-, ") for _ in range(rng.randint(1, 12)))


def _wrong_type(rng: random.Random):
    from gguf import GGUFValueType as T

    return rng.choice([(7, T.UINT32, None), (1, T.INT32, None), (-1, T.INT32, None), (1.0, T.FLOAT32, None),
                       (True, T.BOOL, None), ("1", T.STRING, None), ([1, 2], T.ARRAY, T.UINT32),
                       (["20-29"], T.ARRAY, T.STRING), (2**40, T.UINT64, None), (1, T.UINT8, None)])


def mutate_keys(base: Dict[str, Any], rng: random.Random, runtime_only: bool = False):
    """(kv, typed) with some pop.* keys mutated: values, types, presence, array lengths."""
    kv = dict(base)
    typed: Dict[str, Any] = {}
    runtime = [keys.SKIP_LAYERS, keys.ENABLED, keys.VERSION]
    names = runtime if runtime_only else [k for k in kv if k.startswith("pop.")]
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(names)
        typed.pop(name, None)
        r = rng.random()
        if r < 0.15:
            kv.pop(name, None)
        elif r < 0.45:
            kv.pop(name, None)
            typed[name] = _wrong_type(rng)
        elif name == keys.SKIP_LAYERS:
            kv[name] = _random_skip_text(rng, N_LAYER if runtime_only else 30)
        elif name == keys.VERSION:
            kv[name] = rng.choice([0, 1, 2, keys.SCHEMA_VERSION + 1, 2**32 - 1])
        elif name == keys.ENABLED:
            kv[name] = rng.random() < 0.5
        elif isinstance(kv.get(name), list):
            items = list(kv[name])
            op = rng.choice(["drop", "add", "empty", "nan", "negative", "huge", "string"])
            if op == "drop" and items:
                items.pop(rng.randrange(len(items)))
            elif op == "add":
                items.append(items[-1] if items else 0.5)
            elif op == "empty":
                items = []
            elif items and op in ("nan", "negative", "huge"):
                i = rng.randrange(len(items))
                if isinstance(items[i], (int, float)):
                    items[i] = {"nan": float("nan"), "negative": -1.0, "huge": 1e30}[op]
                else:
                    items[i] = _random_skip_text(rng, 30)
            elif items and op == "string" and isinstance(items[0], str):
                items[rng.randrange(len(items))] = _random_skip_text(rng, 30)
            if items:
                kv[name] = items
            else:
                kv.pop(name)
                from gguf import GGUFValueType as T

                typed[name] = ([], T.ARRAY, T.FLOAT32)
        elif isinstance(kv.get(name), (int, float)):
            kv[name] = rng.choice([-1, 0, 10**6, 2**31, float("nan"), float("inf"), 0.5])
        else:
            kv[name] = _random_skip_text(rng, 30)
    return kv, typed


def _check_python_override(path: str, tally: Tally, label: str, rng: random.Random) -> None:
    """pop.prefill.min_tokens as a kv_override (read by PopLlama only, so there is no native verdict to
    compare with): accepted exactly when it is a whole number in range, else one line naming the key."""
    if python_verdict(path)[0] != "ok":
        return
    value = rng.choice([0, 1, 128, keys.MAX_MIN_TOKENS, keys.MAX_MIN_TOKENS + 1, -1, 2**40, True, 1.0, "128", None])
    verdict, detail = python_verdict(path, {keys.MIN_TOKENS: value})
    valid = type(value) is int and 0 <= value <= keys.MAX_MIN_TOKENS
    tally.inputs += 1
    if verdict == "ok" and valid and detail.min_tokens == value:
        tally.accepted += 1
    elif verdict == "rejected" and not valid and detail.startswith(keys.MIN_TOKENS + ":") and "\n" not in detail:
        tally.rejected += 1
    else:
        tally.disagreements.append(f"{label}: min_tokens override {value!r}: {verdict} {str(detail)[:200]}")


def fuzz_keys(seed_path: str, n: int, rng: random.Random, folder: str, tally: Tally, cli_every: int = 10) -> None:
    import numpy as np

    from pop_local.format.gguf_kv import read_gguf_kv

    base = read_gguf_kv(seed_path)
    base.pop("general.architecture")
    path = os.path.join(folder, "keys.gguf")
    started = time.time()
    i = 0
    while i < n:
        kv, typed = mutate_keys(base, rng)
        if os.path.exists(path):
            os.remove(path)
        try:
            write_gguf(path, "llama", kv, typed, {"token_embd.weight": np.zeros((4, 8), np.float32)})
        except Exception:  # gguf refuses some (e.g. empty arrays): draw another
            continue
        check_python(path, tally, f"keys #{i}", cli=cli_every > 0 and i % cli_every == 0)
        _check_python_override(path, tally, f"keys #{i}", rng)
        i += 1
    tally.seconds += time.time() - started


# --- native, differentially ------------------------------------------------------------------------

def native_worker() -> None:
    """Loads each case with a plain llama_cpp.Llama (no Python-side checks); one JSON line per case."""
    import llama_cpp

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        case = json.loads(line)
        try:
            llm = llama_cpp.Llama(case["path"], n_ctx=32, n_batch=32, verbose=False,
                                  kv_overrides=case.get("overrides") or None)
            out = {"ok": True, "skip": llm.metadata.get(keys.SKIP_LAYERS), "enabled": llm.metadata.get(keys.ENABLED)}
            llm.close()
        except ValueError:
            out = {"ok": False}
        print(json.dumps(out), flush=True)


class Worker:
    def __init__(self) -> None:
        self.proc = None

    def ask(self, case: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The worker's answer; None when it died (a crash) or timed out (a hang)."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         text=True)
            json.loads(self.proc.stdout.readline())
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc = None
            return None
        return json.loads(line)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _override_case(rng: random.Random) -> Dict[str, Any]:
    overrides: Dict[str, Any] = {}
    for name in rng.sample([keys.SKIP_LAYERS, keys.ENABLED], rng.randint(1, 2)):
        r = rng.random()
        if name == keys.SKIP_LAYERS:
            overrides[name] = _random_skip_text(rng, N_LAYER) if r < 0.8 else rng.choice([3, 1.5, True])
        else:
            overrides[name] = (r < 0.4) if r < 0.8 else rng.choice([1, 0, "true", 0.0])
    return {k: v for k, v in overrides.items() if not (isinstance(v, str) and ("\x00" in v or len(v.encode()) > 127))}


def _agree(tally: Tally, label: str, verdict: str, detail: Any, native: Optional[Dict[str, Any]]) -> None:
    from pop_local.format.layers import format_layers

    tally.inputs += 1
    if native is None:
        tally.crashes.append(f"{label}: the native loader died")
        return
    if verdict == "crash":
        tally.crashes.append(f"{label}: {detail}")
        return
    if verdict == "hang":
        tally.hangs.append(label)
        return
    if native["ok"]:
        tally.accepted += 1
    else:
        tally.rejected += 1
    if (verdict == "ok") != native["ok"]:
        tally.disagreements.append(f"{label}: python {verdict} ({str(detail)[:120]}), native "
                                   f"{'accepts' if native['ok'] else 'rejects'}")
    elif native["ok"]:
        py_skip = format_layers(detail.skip_layers)
        native_skip = native.get("skip") or ""
        py_enabled = "true" if detail.enabled else "false"
        if py_skip != native_skip or py_enabled != native.get("enabled"):
            tally.disagreements.append(f"{label}: python {py_skip!r}/{py_enabled}, native {native_skip!r}/"
                                       f"{native.get('enabled')}")


def fuzz_native(model: str, n_overrides: int, n_files: int, rng: random.Random, folder: str,
                tallies: Tuple[Tally, Tally]) -> None:
    from pop_local.format.gguf_kv import read_gguf_kv

    worker = Worker()
    try:
        by_override, by_file = tallies
        started = time.time()
        for i in range(n_overrides):
            case = _override_case(rng)
            verdict, detail = python_verdict(model, case)
            _agree(by_override, f"override #{i} {case}", verdict, detail,
                   worker.ask({"path": model, "overrides": case}))
        by_override.seconds += time.time() - started
        started = time.time()
        from gguf import GGUFReader, GGUFValueType

        base = read_gguf_kv(model, want_strings=lambda k: False)
        reader = GGUFReader(model, "r")
        typed_base = {}
        for f in reader.fields.values():
            if f.name.startswith("GGUF.") or f.name == "general.architecture":
                continue
            t = f.types[0]
            typed_base[f.name] = (f.contents(), t, f.types[-1] if t == GGUFValueType.ARRAY else None)
        tensors = {t.name: t.data for t in reader.tensors}
        path = os.path.join(folder, "native.gguf")
        for i in range(n_files):
            kv, typed = mutate_keys({k: v for k, v in base.items() if k.startswith("pop.")} or
                                    {keys.SKIP_LAYERS: "4-7", keys.ENABLED: True, keys.VERSION: 1}, rng,
                                    runtime_only=True)
            all_typed = {k: v for k, v in typed_base.items() if not k.startswith("pop.")}
            all_typed.update({k: _typed(v) for k, v in kv.items()})
            all_typed.update(typed)
            if os.path.exists(path):
                os.remove(path)
            write_gguf(path, "llama", {}, all_typed, tensors)
            verdict, detail = python_verdict(path)
            _agree(by_file, f"file #{i} {dict(kv, **{k: v[0] for k, v in typed.items()})}", verdict, detail,
                   worker.ask({"path": path}))
        by_file.seconds += time.time() - started
    finally:
        worker.close()


# --- the run ---------------------------------------------------------------------------------------

def run(smollm2: str, inputs: int, seed: int, folder: str, cli_every: int = 10) -> Dict[str, Dict[str, Any]]:
    """Fuzz every target; `inputs` split 70% reader, 20% keys, 10% native (half through kv_overrides)."""
    import logging

    logging.getLogger("gguf").setLevel(logging.ERROR)  # the writer warns about the duplicate keys we make
    rng = random.Random(seed)
    seed_path = reader_seed(folder)
    model = tiny_model(smollm2, folder)
    n_native = max(4, inputs // 10)
    n_keys = max(2, inputs // 5)
    tallies = {name: Tally() for name in ("reader", "keys", "native: kv_overrides", "native: files")}
    fuzz_reader(seed_path, inputs - n_keys - n_native, rng, folder, tallies["reader"], cli_every)
    fuzz_keys(seed_path, n_keys, rng, folder, tallies["keys"], cli_every)
    fuzz_native(model, n_native // 2, n_native - n_native // 2, rng, folder,
                (tallies["native: kv_overrides"], tallies["native: files"]))
    return {name: t.row() for name, t in tallies.items()}


if __name__ == "__main__":  # the native worker (Worker starts this file as a child process)
    native_worker()
