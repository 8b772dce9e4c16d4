"""Converted test models made once per content.

A real calibrating conversion takes minutes on two cores, and several modules need the same one. The
first `converted(src, args)` runs `pop-local convert SRC -o OUT ARGS` (the real command, through click's
CliRunner) and keeps the file and what the command printed under a key made of:
- the input file's bytes (sha256),
- the arguments,
- every Python source of pop_local/ and converter/ (the converter, the format, the runtime its answer
  check runs), the loaded libllama's bytes, and the versions of torch, transformers, gguf and numpy.
So a change to the converter re-runs every conversion and an unchanged tree re-runs none. Entries live in
$POP_LOCAL_TEST_CACHE (default: <pop-local's cache>/test-conversions); an entry is written to a temporary
folder and renamed, so an interrupted run leaves none half-made.

Tests that check the conversion itself (its progress, interruption, reproducibility) run it themselves.
Callers must not modify the returned file: copy it first.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cache_root() -> Path:
    explicit = os.environ.get("POP_LOCAL_TEST_CACHE")
    if explicit:
        return Path(explicit)
    from pop_local.runtime.models import cache_dir

    return Path(cache_dir()) / "test-conversions"


def _file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def _input_digest(path: str, size: int, mtime_ns: int) -> str:
    return _file_sha256(path)


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """What a conversion's result depends on besides its input and arguments."""
    import llama_cpp

    from pop_local.runtime.upstream import libllama

    h = hashlib.sha256()
    for folder in ("pop_local", "converter"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".jsonl", ".txt"):
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    h.update(_file_sha256(libllama()._name).encode())
    for dist in ("torch", "transformers", "gguf", "numpy", "accelerate"):
        h.update(f"{dist}=={importlib.metadata.version(dist)}\n".encode())
    h.update(f"llama_cpp=={llama_cpp.__version__}\n".encode())
    return h.hexdigest()


def converted(src: str, args: list[str], name: str = "model.pop.gguf") -> tuple[str, str]:
    """(path, printed output) of `pop-local convert SRC -o <cache>/NAME ARGS`, made once per content."""
    from click.testing import CliRunner

    from pop_local.apps.cli import cli

    st = os.stat(src)
    key = hashlib.sha256(json.dumps([_input_digest(os.path.realpath(src), st.st_size, st.st_mtime_ns), args, name,
                                     code_fingerprint()]).encode()).hexdigest()[:24]
    entry = cache_root() / key
    if not (entry / "output.txt").is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".making-"))
        try:
            r = CliRunner().invoke(cli, ["convert", src, "-o", str(tmp / name), *args])
            assert r.exit_code == 0, r.output[-3000:]
            (tmp / "output.txt").write_text(r.output, encoding="utf-8")
            (tmp / "args.json").write_text(json.dumps({"src": src, "args": args}), encoding="utf-8")
            if entry.exists():  # made meanwhile by another run
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, entry)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return str(entry / name), (entry / "output.txt").read_text(encoding="utf-8")
