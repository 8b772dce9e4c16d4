"""Fitted K/V projections: the ridge fit, the GGUF tensors, and the native runtime using them."""

import numpy as np
import pytest
from click.testing import CliRunner

from helpers.calibration_models import sample, tiny_gemma3, tiny_llama
from pop_local.apps.cli import cli
from pop_local.format import keys
from pop_local.runtime.upstream import context_pointer


def _stats(make, skip, n=16):
    from pop_local.converter.arch import arch_spec
    from pop_local.converter.kv_fit import collect_kv_stats

    model = make()
    spec = arch_spec(model.config.model_type)
    seqs = [sample(24, seed=s) for s in range(n)]
    return model, spec, collect_kv_stats(model, spec, model.config.num_hidden_layers, skip, seqs)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_first_skipped_layer_of_a_tail_needs_no_fit(make):
    """Skipping layers 2-3 leaves layer 2's input untouched: its own projection is already exact."""
    from pop_local.converter.kv_fit import fit_kv

    _, _, stats = _stats(make, [2, 3])
    fit = fit_kv(stats)
    assert fit.rel_error_own[2]["k"] == pytest.approx(0, abs=1e-12)
    assert fit.rel_error_own[2]["v"] == pytest.approx(0, abs=1e-12)
    assert fit.lam_alpha[2] == {"k": float("inf"), "v": float("inf")}  # so it keeps its own weights
    # deeper: the own projection is off, and the fit is closer on held-out sequences
    for kv in ("k", "v"):
        assert fit.rel_error_own[3][kv] > 1e-3
        assert fit.rel_error_fitted[3][kv] < fit.rel_error_own[3][kv]


def test_ridge_solution_matches_least_squares_and_shrinks_to_own():
    from pop_local.converter.kv_fit import _Moments, _solve

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    w_true = rng.normal(size=(8, 3))
    y = x @ w_true
    m = _Moments.empty(8, 3, 3)
    m.add(x, {"k": y, "v": y})
    w0 = rng.normal(size=(8, 3))
    assert np.allclose(_solve(m, w0, "k", 1e-12), w_true, atol=1e-6)   # no ridge: exact
    assert np.allclose(_solve(m, w0, "k", 1e9), w0, atol=1e-6)         # strong ridge: the own weights
    assert m.error(w_true, "k") == pytest.approx(0, abs=1e-8)
    assert m.error(w0, "k") == pytest.approx(((x @ w0 - y) ** 2).sum())


def test_llama_k_permutation_matches_the_gguf_layout(smollm2):
    """HF K weights, permuted, are exactly llama.cpp's attn_k rows (dequantized)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    from pop_local.converter.calibrate import load_model
    from pop_local.converter.kv_fit import llama_permute_k

    model, _ = load_model(smollm2, None, "cpu", "float32")
    w_hf = model.model.layers[20].self_attn.k_proj.weight.detach().numpy()
    t = next(t for t in GGUFReader(smollm2, "r").tensors if t.name == "blk.20.attn_k.weight")
    w_gguf = dequantize(t.data, t.tensor_type).reshape(w_hf.shape)
    assert np.array_equal(llama_permute_k(w_hf, 3), w_gguf)
    assert not np.array_equal(w_hf, w_gguf)


def test_kv_fitted_needs_calibration(smollm2, tmp_path):
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(tmp_path / "x.gguf"), "--layers", "20-29",
                                 "--no-calibrate", "--kv", "fitted"])
    assert r.exit_code == 1 and "--kv fitted needs calibration" in r.output
    assert not (tmp_path / "x.gguf").exists()


# --- the real model, end to end ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted_file(smollm2, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "smollm2.fitted.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--kv", "fitted", "--samples", "12"])
    assert r.exit_code == 0, r.output
    return str(out)


@pytest.fixture(scope="module")
def own_file(smollm2, tmp_path_factory):
    from pop_local.converter.writer import write_pop_gguf

    out = tmp_path_factory.mktemp("own") / "smollm2.own.gguf"
    write_pop_gguf(smollm2, out, "20-29")
    return str(out)


@pytest.mark.slow
def test_fitted_file_has_tensors_and_keys(fitted_file):
    from gguf import GGMLQuantizationType, GGUFReader

    from pop_local import read_pop_metadata

    meta = read_pop_metadata(fitted_file)
    assert meta.skip_layers == tuple(range(20, 30)) and meta.extra[keys.KV_METHOD] == "fitted"
    names = meta.extra[keys.KV_K_TENSORS] + meta.extra[keys.KV_V_TENSORS]
    tensors = {t.name: t for t in GGUFReader(fitted_file, "r").tensors}
    fitted = [n for n in names if n.endswith(".pop")]
    assert len(fitted) >= 17
    # layer 20's input is unchanged by the skip, so its own K/V are exact and stay
    assert "blk.20.attn_k.weight" in names and "blk.20.attn_v.weight" in names
    for n in fitted:
        assert tensors[n].tensor_type == GGMLQuantizationType.Q4_1  # the file's own type for K/V
        assert list(tensors[n].shape) == list(tensors[n.replace(".pop", ".weight")].shape)
    alphas = meta.extra[keys.KV_FIT_ALPHA_K] + meta.extra[keys.KV_FIT_ALPHA_V]
    assert len(alphas) == 20
    deep_own, deep_fit = meta.extra[keys.KV_FIT_ERR_OWN_V][-1], meta.extra[keys.KV_FIT_ERR_V][-1]
    assert deep_fit < deep_own / 2  # layer 29's V: the fit halves the held-out error at least


def _kl(p_logits, q_logits):
    return float((np.exp(p_logits) * (p_logits - q_logits)).sum(axis=-1).mean())


@pytest.mark.slow
def test_runtime_uses_fitted_projections_and_they_help(fitted_file, own_file, long_text):
    from pop_local import PopLlama
    from pop_local.measure.evaluate import continuation_logprobs

    fit = PopLlama(fitted_file, n_ctx=1024, n_batch=512, verbose=False)
    own = PopLlama(own_file, n_ctx=1024, n_batch=512, verbose=False)
    assert fit.n_fitted_layers >= 9 and fit.fitted_active and fit.kv_mode == "fitted"
    assert own.n_fitted_layers == 0 and not own.fitted_active
    toks = fit.tokenize(long_text.encode(), add_bos=True)
    ctx, cont = toks[:512], toks[512:576]

    full = continuation_logprobs(own, "full", ctx, cont)
    assert np.array_equal(continuation_logprobs(fit, "full", ctx, cont), full)  # extra tensors change nothing else
    paper = continuation_logprobs(own, "pop", ctx, cont)
    assert np.array_equal(continuation_logprobs(fit, "pop", ctx, cont), paper)  # kv "own" = the paper's POP
    fitted = continuation_logprobs(fit, "pop_fitted", ctx, cont)
    assert not np.array_equal(fitted, paper)
    assert _kl(full, fitted) < _kl(full, paper)

    fit.skip_layers = "22-29"  # not the set the projections were fitted for: own projections again
    assert not fit.fitted_active and fit.pop_stats()["kv"] == "own"
    fit.close()
    own.close()


@pytest.mark.slow
def test_reconverting_drops_old_fitted_tensors(fitted_file, tmp_path):
    from gguf import GGUFReader

    from pop_local.converter.writer import write_pop_gguf

    out = tmp_path / "again.gguf"
    write_pop_gguf(fitted_file, out, "22-29")
    assert not [t.name for t in GGUFReader(str(out), "r").tensors if t.name.endswith(".pop")]


@pytest.mark.slow
def test_eval_reports_paper_and_fitted_pop_side_by_side(fitted_file, tmp_path):
    import json

    out = tmp_path / "eval.json"
    r = CliRunner().invoke(cli, ["eval", fitted_file, "--ctx", "256", "--continuation", "32", "--windows", "1",
                                 "--passkey", "", "--json", str(out)])
    assert r.exit_code == 0, r.output
    modes = json.loads(out.read_text())["modes"]
    assert "pop_fitted" in modes and "| pop_fitted |" in r.output
    assert modes["pop_fitted"]["kl_to_full"] != modes["pop"]["kl_to_full"]


@pytest.mark.slow
def test_fitted_tensor_in_a_gemma3_file(tmp_path, gemma3):
    """A Gemma 3 file (sliding-window layers) with one pop tensor: the full model's logits are exactly
    the original's, POP with kv "own" equals POP on the file without it, and kv "fitted" uses it."""
    from gguf import GGMLQuantizationType as T

    from pop_local import PopLlama
    from pop_local.converter.kv_tensors import encode_tensor
    from pop_local.converter.writer import write_pop_gguf

    w = np.random.default_rng(0).normal(size=(256, 640)).astype(np.float32) * 0.02  # [n_embd_k_gqa, n_embd]
    plain, fitted = tmp_path / "plain.gguf", tmp_path / "fitted.gguf"
    write_pop_gguf(gemma3, plain, "12-17")
    write_pop_gguf(gemma3, fitted, "12-17", extra_tensors={"blk.13.attn_k.pop": (encode_tensor(w, T.Q8_0), T.Q8_0)})

    def logits(path, pop, kv="fitted"):
        import llama_cpp

        llm = PopLlama(str(path), n_ctx=256, verbose=False, pop=pop, min_tokens=0)
        try:
            llm.kv_mode = kv
            llm.eval(llm.tokenize(b"The keeper wound the clock at eight, at midnight and at four.", add_bos=True))
            ptr = llama_cpp.llama_get_logits_ith(context_pointer(llm), -1)
            return llm.n_fitted_layers, np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).copy()
        finally:
            llm.close()

    n_orig, orig = logits(gemma3, pop=False)
    n_fit, full = logits(fitted, pop=False)
    assert (n_orig, n_fit) == (0, 1)
    assert np.array_equal(orig, full)
    _, own_plain = logits(plain, pop=True)
    _, own = logits(fitted, pop=True, kv="own")
    _, fit = logits(fitted, pop=True)
    assert np.array_equal(own, own_plain)
    assert not np.array_equal(fit, own) and not np.array_equal(own, full)


def test_the_dual_ridge_is_the_primal_one_when_rows_are_fewer_than_inputs():
    """fit_layer_rows' n x n form (few samples, a wide model) and fit_layer's d x d form: one minimiser."""
    import numpy as np

    from pop_local.converter.kv_fit import _Moments, fit_layer, fit_layer_rows

    rng = np.random.default_rng(0)
    d, n_fit, n_held = 96, 60, 30
    w0 = {kv: rng.standard_normal((d, 16)) for kv in ("k", "v")}
    truth = {kv: w0[kv] + 0.3 * rng.standard_normal((d, 16)) for kv in ("k", "v")}
    xf, xh = rng.standard_normal((n_fit, d)), rng.standard_normal((n_held, d))
    yf = {kv: xf @ truth[kv] + 0.1 * rng.standard_normal((n_fit, 16)) for kv in ("k", "v")}
    yh = {kv: xh @ truth[kv] + 0.1 * rng.standard_normal((n_held, 16)) for kv in ("k", "v")}

    def moments(x, y):
        return _Moments(x.T @ x, {kv: x.T @ y[kv] for kv in ("k", "v")},
                        {kv: float((y[kv] ** 2).sum()) for kv in ("k", "v")}, x.shape[0])

    primal = fit_layer(moments(xf, yf), moments(xh, yh), w0)
    dual = fit_layer_rows(xf, yf, xh, yh, w0)
    for kv in ("k", "v"):
        assert dual[kv][1] == primal[kv][1] and np.isfinite(dual[kv][1])  # the same ridge strength chosen
        np.testing.assert_allclose(dual[kv][0], primal[kv][0], rtol=1e-4, atol=1e-5)
        assert dual[kv][2] == pytest.approx(primal[kv][2], rel=1e-9)
        assert dual[kv][3] == pytest.approx(primal[kv][3], rel=1e-6)
