"""The converter on every supported architecture: the PyTorch model it calibrates (transformers'
reading of the GGUF) is the model llama.cpp runs, and fitted K/V projections work end to end on an
architecture with Q/K/V biases (qwen2) and one with a K norm (qwen3)."""

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (the calibration model)
from click.testing import CliRunner

from pop_local.apps.cli import cli
from pop_local.format import keys

pytestmark = pytest.mark.slow

TEXT = ("The lighthouse keeper kept two logbooks. In the first she wrote the weather, the ships and the oil; "
        "in the second, which nobody read, she wrote what the sea had said to her that day.")


def _log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _runtime_and_calibration_logits(path):
    """Every position's logits for TEXT: (llama.cpp's, transformers' reading of the same GGUF)."""
    from pop_local import PopLlama
    from pop_local.converter.calibrate import load_model

    llm = PopLlama(path, n_ctx=256, logits_all=True, verbose=False, pop=False)
    try:
        toks = llm.tokenize(TEXT.encode(), add_bos=True)
        llm.eval(toks)
        ours = np.array(llm.scores[:len(toks)], dtype=np.float64)
    finally:
        llm.close()
    model, _tok = load_model(path, None, "cpu", "float32")
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor([toks])).logits[0].double().numpy()
    return ours, theirs


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_calibration_model_is_the_runtime_model(arch_model, arch):
    """Every position's next-token distribution from transformers (dequantized weights, float32) is
    close to llama.cpp's (quantized matmuls): same top-1 almost everywhere, small KL."""
    path = arch_model(arch)
    ours, theirs = _runtime_and_calibration_logits(path)
    p, q = _log_softmax(ours), _log_softmax(theirs)
    agree = float((p.argmax(-1) == q.argmax(-1)).mean())
    kl = float((np.exp(p) * (p - q)).sum(-1).mean())
    assert agree >= 0.9 and kl < 0.05, (agree, kl)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_fitted_kv_end_to_end(arch_model, long_text, tmp_path, arch):
    """convert --kv fitted, then the runtime: fitted tensors load and are used, the full model is
    untouched, and "own" is the paper's POP."""
    from pop_local import PopLlama, read_pop_metadata
    from pop_local.converter.writer import write_pop_gguf
    from pop_local.measure.evaluate import continuation_logprobs

    src = arch_model(arch)
    fitted, own = tmp_path / "fitted.gguf", tmp_path / "own.gguf"
    r = CliRunner().invoke(cli, ["convert", src, "-o", str(fitted), "--kv", "fitted", "--samples", "4",
                                 "--layers", "20-29"])
    assert r.exit_code == 0, r.output
    assert read_pop_metadata(str(fitted)).extra[keys.KV_METHOD] == "fitted"
    write_pop_gguf(src, own, "20-29")

    fit = PopLlama(str(fitted), n_ctx=1024, verbose=False)
    base = PopLlama(str(own), n_ctx=1024, verbose=False)
    try:
        assert fit.n_fitted_layers >= 9 and fit.fitted_active
        toks = fit.tokenize(long_text.encode(), add_bos=True)
        ctx, cont = toks[:384], toks[384:416]
        assert np.array_equal(continuation_logprobs(fit, "full", ctx, cont),
                              continuation_logprobs(base, "full", ctx, cont))
        assert np.array_equal(continuation_logprobs(fit, "pop", ctx, cont),
                              continuation_logprobs(base, "pop", ctx, cont))
        assert not np.array_equal(continuation_logprobs(fit, "pop_fitted", ctx, cont),
                                  continuation_logprobs(fit, "pop", ctx, cont))
    finally:
        fit.close()
        base.close()


# tiny random-weight models (tests/tiny_models.py): mechanics only
NO_CALIBRATION = ["qwen35", "deepseek2", "gemma4", "gpt-oss", "phi3"]


@pytest.mark.parametrize("arch", NO_CALIBRATION)
def test_layers_without_calibration_on_any_architecture(tmp_path, arch):
    """--layers ... --no-calibrate writes the keys for any architecture; the runtime prunes that set."""
    from helpers.tiny_models import Dims, tiny_model
    from pop_local import PopLlama, read_pop_metadata

    src, out = tiny_model(arch, Dims(n_layer=6)), tmp_path / "out.gguf"
    r = CliRunner().invoke(cli, ["convert", src, "-o", str(out), "--layers", "3-5", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    assert read_pop_metadata(str(out)).skip_layers == (3, 4, 5)
    # min_tokens=0: TEXT is under the default minimum for some tokenizers
    llm = PopLlama(str(out), n_ctx=512, verbose=False, min_tokens=0)
    try:
        assert llm.skip_layers == (3, 4, 5) and llm.pop_active
        llm.eval(llm.tokenize(TEXT.encode(), add_bos=True))
        assert llm.pop_stats()["pruned_tokens"] > 0
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["qwen35", "deepseek2"])
def test_calibration_of_an_architecture_transformers_cannot_read_stops_with_one_line(tmp_path, arch):
    from helpers.tiny_models import Dims, tiny_model

    src, out = tiny_model(arch, Dims(n_layer=6)), tmp_path / "out.gguf"
    r = CliRunner().invoke(cli, ["convert", src, "-o", str(out), "--samples", "8"])
    assert r.exit_code != 0 and not out.exists()
    line = r.output.strip().splitlines()[-1]
    assert len(r.output.strip().splitlines()) == 1 and "--hf-model" in line and "--no-calibrate" in line, r.output


@pytest.mark.parametrize("arch", ["gemma2", "qwen3moe"])
def test_calibration_model_is_the_runtime_model_on_generated_weights(arch):
    """transformers' reading of a generated GGUF computes what llama.cpp computes (random weights: the
    logits themselves are compared, their top-1 is meaningless; measured: gemma2 correlation 0.9995)."""
    from helpers.tiny_models import Dims, tiny_model

    path = tiny_model(arch, Dims(n_layer=6))
    ours, theirs = _runtime_and_calibration_logits(path)
    # llama.cpp quantizes activations for its Q8_0 matmuls, transformers runs dequantized float32
    corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    assert corr > 0.995 and np.abs(ours - theirs).max() < 0.5 * ours.std(), \
        (corr, np.abs(ours - theirs).max(), ours.std())
