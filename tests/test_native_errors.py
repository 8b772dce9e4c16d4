"""Errors that come from libllama itself: native metadata checks, unsupported architectures, unpatched builds."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def run_python(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("override, message", [
    ('"25-35"', "pop.prefill.skip_layers: layer 35 is out of range (the model has 30 layers, 0-29)"),
    ('"20-x"', "pop.prefill.skip_layers: expected a layer index at position 3 in \"20-x\""),
    ("7", "pop.prefill.skip_layers: the override must be a string"),
])
def test_native_loader_rejects_bad_skip_layers(smollm2, override, message):
    """The plain llama_cpp.Llama (no Python-side checks) fails to load and llama.cpp's log names the key."""
    code = ("import llama_cpp\n"
            f"llama_cpp.Llama({smollm2!r}, kv_overrides={{'pop.prefill.skip_layers': {override}}}, verbose=True)\n")
    r = run_python(code)
    assert r.returncode != 0
    assert message in r.stderr


def test_native_loader_accepts_and_logs_skip_set(smollm2):
    code = ("import llama_cpp\n"
            f"llama_cpp.Llama({smollm2!r}, n_ctx=256, kv_overrides={{'pop.prefill.skip_layers': '20-29'}}, "
            "verbose=True)\n")
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "prefill-only pruning: skip layers 20-29 (on)" in r.stderr


def test_unsupported_architecture_warns_once_and_runs_full(arch_model):
    """ernie4_5 (SmolLM2's tensors under that name) has no POP graph support: one warning at load, a
    note in Python, the full graph and identical logits."""
    code = f"""
import numpy as np
from pop_local import PopLlama
from pop_local.runtime.models import pop_notes
llm = PopLlama({arch_model("ernie4_5")!r}, n_ctx=512, verbose=True, kv_overrides={{'pop.prefill.skip_layers': '20-29'}})
assert not llm.pop_supported and not llm.pop_active and llm.skip_layers == tuple(range(20, 30))
print(pop_notes(llm, llm.pop_metadata))
toks = llm.tokenize(b"The keeper wound the clock at eight, at midnight and at four.")
def run(on):
    llm.pop_enabled = on
    llm.reset(); llm.eval(toks)
    return llm.last_logits()
assert np.array_equal(run(True), run(False))
s = llm.pop_stats()
assert s["pruned_tokens"] == 0 and s["full_tokens"] == 2 * len(toks), s
print("OK")
"""
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("OK")
    from pop_local.runtime import native as _native

    assert ("POP does not support the ernie4_5 architecture in this build "
            f"(supported: {', '.join(_native.ARCHITECTURES)}): the full model runs") in r.stdout
    assert r.stderr.count("prefill-only pruning is not supported for architecture 'ernie4_5'") == 1


def _vanilla_lib():
    """Unpatched libllama built by `native/build.py --vanilla` (.ci/run does it), or POP_LOCAL_VANILLA_LIB."""
    if os.environ.get("POP_LOCAL_VANILLA_LIB"):
        return os.environ["POP_LOCAL_VANILLA_LIB"]
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native"))
    import build

    path = build.vanilla_lib_dir()
    return str(path) if (path / "libllama.so").exists() or (path / "libllama.dylib").exists() else None


VANILLA = _vanilla_lib()


@pytest.mark.skipif(not VANILLA, reason="no unpatched libllama: run `python native/build.py --vanilla` (.ci/run does)")
def test_unpatched_build_raises_with_rebuild_hint(smollm2):
    code = f"""
from pop_local import PopLlama, PopNativeError
try:
    PopLlama({smollm2!r})
except PopNativeError as e:
    print("RAISED", e)
"""
    r = run_python(code, env={"LLAMA_CPP_LIB_PATH": VANILLA})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "RAISED" in r.stdout and "pop_llama_" in r.stdout and "native/build.py" in r.stdout


def test_vocab_only_load_of_a_pop_file(smollm2):
    """A tokenizer-only load has no layer count: the skip set is not checked then (it was refused as
    out of range for a model "with 0 layers")."""
    code = ("import llama_cpp\n"
            f"llm = llama_cpp.Llama({smollm2!r}, vocab_only=True, verbose=False,\n"
            "                      kv_overrides={'pop.prefill.skip_layers': '20-29'})\n"
            "print(len(llm.tokenize(b'The capital of France')))\n")
    r = run_python(code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) > 2
