"""The streamed calibration (one layer at a time from the GGUF) against the in-memory one, the
estimate against a measured conversion, and the memory refusal."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


# Small: 96-token samples, a frontier to the paper's third, and the fewest samples each path accepts (a
# frontier holds a quarter of 8 out; a fit alone takes 4). The two paths see the same inputs whatever their
# number, and the comparison needs no more to tell a wrong layer, candidate or fit apart.
def _calibrate(src, streamed, samples=None, fit_kv_for=None, frontier=True, dtype="float32"):
    from pop_local.converter.calibrate import FrontierPlan, calibrate
    from pop_local.format.metadata import read_pop_metadata

    return calibrate(src, read_pop_metadata(src), hf_model=None, data=None, dataset=None,
                     samples=samples or (8 if frontier else 4), seq_len=96,
                     response_tokens=32, device="cpu", dtype=dtype, seed=0, streamed=streamed,
                     frontier=FrontierPlan(0.34, "tail") if frontier else None, fit_kv_for=fit_kv_for)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def both_paths(request):
    """Both paths on SmolLM2 with a frontier (its fits included); on Gemma-3 the importance only, the
    architecture-specific part (sliding window, norm offset, scaled embeddings): its frontier took two
    minutes more, and the frontier's code is the same as SmolLM2's and gemma2's (generated, below)."""
    src = request.getfixturevalue(request.param)
    frontier = request.param == "smollm2"
    return request.param, _calibrate(src, True, frontier=frontier), _calibrate(src, False, frontier=frontier)


def test_streamed_and_in_memory_calibrations_agree(both_paths):
    """Same samples, same definitions: the two differ only in float32 rounding (eager vs SDPA
    attention, one layer at a time vs the whole model, the frontier's suffix-only passes), which
    measured 1e-6..1e-4 relative on both models. The tolerances below are 10-100x that and far below
    what tells two layers or two candidates apart (neighbouring candidates differ by >= 5% in KL)."""
    name, s, m = both_paths
    for stage in ("prefill", "decode"):
        a, b = np.array(getattr(s.importance, stage)), np.array(getattr(m.importance, stage))
        assert np.abs(a - b).max() <= 2e-3 * np.abs(b).max(), (name, stage, a, b)
        assert list(np.argsort(-a)[:5]) == list(np.argsort(-b)[:5]) or np.allclose(a, b, rtol=1e-3)
    if name != "smollm2":
        assert s.frontier is None and m.frontier is None
        return
    assert [c.skip for c in s.frontier] == [c.skip for c in m.frontier]
    for cs, cm in zip(s.frontier, m.frontier):
        for field in ("kl_own", "kl_fitted"):
            x, y = getattr(cs, field), getattr(cm, field)
            assert abs(x - y) <= 1e-3 + 0.01 * abs(y), (name, cs.skip, field, x, y)
        for field in ("top1_own", "top1_fitted"):  # a near-tie may flip one token's argmax
            assert abs(getattr(cs, field) - getattr(cm, field)) <= 1.5 / s.held_out["tokens"] + 1e-9
        assert cs.speedup == cm.speedup
    assert s.held_out == m.held_out
    # the fitted projections themselves, for the paper's set (the default budget's reference)
    paper = next(c for c in m.frontier if len(c.skip) == round(len(m.importance.prefill) / 3))
    twin = next(c for c in s.frontier if c.skip == paper.skip)
    for il in paper.skip:
        for kv in ("k", "v"):
            assert (np.isfinite(paper.fitted.lam_alpha[il][kv]) == np.isfinite(twin.fitted.lam_alpha[il][kv]))
            a, b = twin.fitted.weights[il][kv], paper.fitted.weights[il][kv]
            assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b), (name, il, kv)


def test_streamed_fit_of_a_given_block_matches_the_pruned_passes(smollm2):
    """--kv fitted with a given set (no budget): the streamed z-moment fit equals kv_fit's pruned passes."""
    block = tuple(range(18, 28))  # a block that does not end at the last layer
    s = _calibrate(smollm2, True, fit_kv_for=lambda imp: block, frontier=False)
    m = _calibrate(smollm2, False, fit_kv_for=lambda imp: block, frontier=False)
    assert s.fitted[0] == m.fitted[0] == block
    for il in block:
        for kv in ("k", "v"):
            a, b = s.fitted[1].weights[il][kv], m.fitted[1].weights[il][kv]
            assert np.linalg.norm(a - b) <= 1e-3 * np.linalg.norm(b), (il, kv)
            assert s.fitted[1].rel_error_own[il][kv] == pytest.approx(m.fitted[1].rel_error_own[il][kv],
                                                                      rel=1e-3, abs=1e-6)


def _run_cli(args):
    """(the finished process, seconds)."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "pop_local.apps.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    return proc, time.time() - started


def test_a_conversion_prints_its_estimate_and_its_peak_within_it(smollm2, tmp_path):
    """The estimate line before the work starts, its memory within half of the measured peak (its time is
    wall-clock, which a shared machine cannot assert: benchmarks/converter_cost.py records estimate and
    measured time side by side). The answer check's rule is asserted on the embedded default's first start
    (test_cli.py) and its fitted candidates in test_answers.py: here it would add minutes and no memory."""
    out = tmp_path / "smol.pop.gguf"
    proc, _seconds = _run_cli(["convert", smollm2, "-o", str(out), "--samples", "8", "--max-ratio", "0.34",
                               "--no-answer-check"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r"about (\d+) min and ([\d.]+) GB \(estimate\)", proc.stderr)
    assert m, proc.stderr[-2000:]
    from pop_local.converter.calibration_data import BUILTIN_PROMPTS
    from pop_local.converter.cost import estimate

    # the memory does not depend on the machine's measured rates (None: the reference machine's)
    cost = estimate(smollm2, 8, 256, 48, frontier_ratio=0.34, prompts=BUILTIN_PROMPTS, answer_check=False)
    assert f"{cost.peak_bytes / 2**30:.1f}" == m.group(2)
    # the converter's own peak (VmHWM: a forked child's getrusage also keeps the RSS pytest had when it forked)
    peak = float(re.search(r"peak memory ([\d.]+) GB\)", proc.stdout).group(1)) * 2**30
    assert 0.5 * peak <= cost.peak_bytes <= 1.5 * peak, (cost.peak_bytes, peak)


def test_the_reported_peak_is_the_converters_own_not_its_parents():
    """A child forked from a large process (pytest, after many models) starts with the parent's RSS;
    getrusage keeps that across exec, VmHWM does not. The conversion's printed peak is VmHWM."""
    ballast = np.ones(600 * 2**20 // 8)  # 600 MiB touched in this process
    code = "from pop_local.converter.cost import peak_rss_bytes; print(peak_rss_bytes())"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    own = int(child.communicate()[0])
    assert ballast.sum() > 0 and 10 * 2**20 < own < 300 * 2**20, own


def test_a_calibration_that_does_not_fit_in_memory_is_refused_before_loading(smollm2, tmp_path):
    out = tmp_path / "x.pop.gguf"
    proc, seconds = _run_cli(["convert", smollm2, "-o", str(out), "--max-memory", "0.5"])
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.match(r"Error: calibration needs about [\d.]+ GB but 0\.5 GB is --max-memory",
                                        lines[0]), proc.stderr
    assert "--samples" in lines[0] and "--no-calibrate" in lines[0]
    assert not out.exists() and not list(tmp_path.iterdir())
    assert seconds < 30  # refused from the file's header, before any model is loaded or sampled


def test_max_memory_must_be_positive(smollm2, tmp_path):
    proc, _ = _run_cli(["convert", smollm2, "-o", str(tmp_path / "x.gguf"), "--max-memory", "-1"])
    assert proc.returncode == 1 and "--max-memory must be a positive" in proc.stderr


@pytest.mark.parametrize("arch", ["gemma2", "qwen3moe", "qwen2"])
def test_streamed_and_in_memory_agree_on_other_architectures(arch_model, arch):
    """Final-logit soft-capping and sliding windows (gemma2), merged MoE experts (qwen3moe), Q/K/V
    biases (qwen2): generated weights (6 layers), the same tolerance as above. (Q/K norms run inside
    the attention module in both paths; qwen3 converts streamed in test_converter_archs.py.)"""
    from helpers.tiny_models import Dims, tiny_model

    # arch_model gives qwen2 as SmolLM2's 30 layers rewritten (2 minutes here); 6 generated layers test the same
    src = tiny_model(arch, Dims(n_layer=6)) if arch == "qwen2" else arch_model(arch)
    s, m = _calibrate(src, True), _calibrate(src, False)
    for stage in ("prefill", "decode"):
        a, b = np.array(getattr(s.importance, stage)), np.array(getattr(m.importance, stage))
        assert np.abs(a - b).max() <= 2e-3 * np.abs(b).max() + 1e-12, (arch, stage, a, b)
    for cs, cm in zip(s.frontier, m.frontier):
        assert cs.skip == cm.skip
        for field in ("kl_own", "kl_fitted"):
            x, y = getattr(cs, field), getattr(cm, field)
            assert abs(x - y) <= 1e-3 + 0.01 * abs(y), (arch, cs.skip, field, x, y)


def test_streamed_calibration_in_bfloat16_follows_float32(arch_model):
    """--dtype bfloat16 (what a GPU would run): the layers in bf16, the head and all statistics in
    float32/float64; the importance profile keeps its shape (no GPU here: --device cuda/mps take the
    same code with another torch device)."""
    src = arch_model("gemma2")
    a = _calibrate(src, True, dtype="bfloat16", frontier=False)
    b = _calibrate(src, True, frontier=False)
    for stage in ("prefill", "decode"):
        x, y = np.array(getattr(a.importance, stage)), np.array(getattr(b.importance, stage))
        assert np.corrcoef(x, y)[0, 1] > 0.9, (stage, x, y)
