"""Converter: virtual gates, importance, skip-set choice, `pop-local convert` / `inspect`."""

import os

import pytest
import torch
import transformers
from click.testing import CliRunner

from helpers.calibration_models import sample, tiny_gemma3, tiny_llama
from pop_local import keys, read_pop_metadata
from pop_local.apps.cli import cli
from pop_local.converter import choose_skip_layers
from pop_local.converter.arch import UnsupportedArchitecture, arch_spec


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_gates_at_one_reproduce_logits_exactly(make):
    from pop_local.converter.importance import VirtualGates

    model = make()
    ids = torch.tensor([sample()])
    ref = model(input_ids=ids).logits
    gates = VirtualGates(model, arch_spec(model.config.model_type), 4)
    gates.boundary = 7
    with gates.attached():
        gated = model(input_ids=ids).logits
        with torch.no_grad():
            gates.decode[2] = 0.0
        changed = model(input_ids=ids).logits
    assert torch.equal(ref, gated)
    # a decode gate changes only positions from the boundary on
    assert torch.equal(changed[0, :7], ref[0, :7]) and not torch.equal(changed[0, 7:], ref[0, 7:])
    assert torch.equal(model(input_ids=ids).logits, ref)  # hooks removed on exit


@pytest.mark.parametrize("make, branches", [
    (tiny_llama, ("self_attn.o_proj", "mlp.down_proj")),
    (tiny_gemma3, ("self_attn.o_proj", "mlp.down_proj")),  # the post-norms then output zeros too
])
def test_layer_with_zeroed_outputs_has_zero_importance(make, branches):
    from pop_local.converter.importance import layer_importance

    model = make()
    layer = model.model.layers[1]
    for path in branches:
        mod = layer
        for part in path.split("."):
            mod = getattr(mod, part)
        mod.weight.zero_()
    seqs = [sample(16, s) for s in range(4)]
    imp = layer_importance(model, arch_spec(model.config.model_type), 4, seqs, [10] * 4)
    assert imp.prefill[1] < 1e-12 and imp.decode[1] < 1e-12
    assert min(imp.decode[i] for i in (0, 2, 3)) > 1e-8
    assert imp.prefill[3] == 0.0  # the last layer's prefill positions reach no later layer


def test_unsupported_architecture_lists_the_supported_ones():
    from pop_local.converter.arch import check_gguf_architecture

    with pytest.raises(UnsupportedArchitecture,
                       match="supported: gemma2, gemma3, gemma3_text, llama, qwen2, qwen3, qwen3_moe"):
        arch_spec("gpt2")
    with pytest.raises(UnsupportedArchitecture, match="'gpt2' cannot be calibrated from the GGUF .* `hf_model`, or .* "
                                                      "`layers=...` `calibrate=False`"):
        check_gguf_architecture("gpt2")
    check_gguf_architecture("llama")


def test_choose_skip_layers():
    assert choose_skip_layers(30) == tuple(range(20, 30))
    assert choose_skip_layers(18) == tuple(range(12, 18))
    assert choose_skip_layers(30, ratio=0.2) == tuple(range(24, 30))
    imp = [5.0] * 30
    imp[3] = imp[7] = imp[29] = 0.0
    assert choose_skip_layers(30, ratio=0.1, strategy="score", prefill_importance=imp) == (3, 7, 29)


def test_default_samples_fit_the_model_file(smollm2, tmp_path):
    """64 calibration samples for a small model; 16 for a file over 512 MiB (the 1.5B's 15 minutes)."""
    from pop_local.converter.convert import default_samples

    big = tmp_path / "big.gguf"
    with open(big, "wb") as f:
        f.truncate(600 * 2**20)  # sparse: the size is what counts
    assert default_samples(smollm2) == 64 and default_samples(str(big)) == 16


def test_cli_no_calibrate_writes_and_inspect_shows(smollm2, tmp_path):
    out = tmp_path / "m.pop.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--layers", "20-29", "--no-calibrate"])
    assert r.exit_code == 0, r.output
    meta = read_pop_metadata(out)
    assert meta.skip_layers == tuple(range(20, 30))
    assert meta.extra[keys.KV_K_TENSORS][0] == "blk.20.attn_k.weight" and meta.extra[keys.STRATEGY] == "explicit"
    r = CliRunner().invoke(cli, ["inspect", str(out)])
    assert r.exit_code == 0 and "pop.prefill.skip_layers = 20-29" in r.output


@pytest.mark.parametrize("args, code, message", [
    (["--layers", "20-40", "--no-calibrate"], 1, "out of range"),
    (["--no-calibrate"], 2, "--no-calibrate needs --layers"),
    (["--layers", "20-29", "--no-calibrate", "--ratio", "2"], 0, None),
])
def test_cli_convert_bad_requests(smollm2, tmp_path, args, code, message):
    out = tmp_path / "m.pop.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out)] + args)
    assert r.exit_code == code, r.output
    if message:
        assert message in r.output
        assert not out.exists()


def test_cli_convert_bad_files(smollm2, tmp_path):
    runner = CliRunner()
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    trunc = tmp_path / "trunc.gguf"
    with open(smollm2, "rb") as f:
        trunc.write_bytes(f.read(4096))
    for bad in (text, trunc, tmp_path / "missing.gguf"):
        r = runner.invoke(cli, ["convert", str(bad), "-o", str(tmp_path / "o.gguf"), "--layers", "1", "--no-calibrate"])
        assert r.exit_code == 1 and r.output.startswith("Error: ") and len(r.output.strip().splitlines()) == 1, r.output
    existing = tmp_path / "exists.gguf"
    existing.write_bytes(b"keep me")
    r = runner.invoke(cli, ["convert", smollm2, "-o", str(existing), "--layers", "1", "--no-calibrate"])
    assert r.exit_code == 1 and "--force" in r.output and existing.read_bytes() == b"keep me"
    r = runner.invoke(cli, ["convert", smollm2, "-o", "/proc/nope/o.gguf", "--layers", "1", "--no-calibrate"])
    assert r.exit_code == 1
    assert sorted(os.listdir(tmp_path)) == ["exists.gguf", "notes.gguf", "trunc.gguf"]


@pytest.mark.slow
def test_real_calibration_of_smollm2(smollm2, tmp_path):
    """A small real calibration on CPU, the paper's recipe (--kv own without a budget): profiles in the
    file, the last third as skip set, runtime picks it up."""
    out = tmp_path / "smol.pop.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--samples", "3", "--seq-len", "64",
                                 "--kv", "own"])
    assert r.exit_code == 0, r.output
    meta = read_pop_metadata(out)
    pre, dec = meta.extra[keys.IMPORTANCE_PREFILL], meta.extra[keys.IMPORTANCE_DECODE]
    assert len(pre) == len(dec) == 30 and meta.skip_layers == tuple(range(20, 30))
    assert pre[29] == 0.0 and dec[29] > 0
    assert meta.extra[keys.CALIB_SAMPLES] == 3 and meta.extra[keys.CALIB_DATA] == "builtin"
    r = CliRunner().invoke(cli, ["inspect", str(out), "--plot", str(tmp_path / "imp.png")])
    assert r.exit_code == 0 and (tmp_path / "imp.png").stat().st_size > 1000
    from pop_local import PopLlama

    llm = PopLlama(str(out), n_ctx=256, verbose=False)
    assert llm.skip_layers == tuple(range(20, 30)) and llm.pop_active


def _run(code, env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_hub_reference_resolves_from_the_cache_offline(smollm2, tmp_path):
    """org/repo/file.gguf goes through huggingface_hub, which honours its cache and HF_HUB_OFFLINE."""
    snap = tmp_path / "models--someone--smol" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "smol.gguf").symlink_to(smollm2)
    (tmp_path / "models--someone--smol" / "refs").mkdir()
    (tmp_path / "models--someone--smol" / "refs" / "main").write_text("0123abcd")
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    code = "from pop_local.runtime.models import resolve_model; print(resolve_model('someone/smol/smol.gguf'))"
    r = _run(code, env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("snapshots/0123abcd/smol.gguf")
    code = ("from pop_local.runtime.models import resolve_model\n"
            "try:\n    resolve_model('someone/other/x.gguf')\nexcept Exception as e:\n    print(type(e).__name__, e)")
    r = _run(code, env)
    assert "PopModelNotFound" in r.stdout and "HF_HUB_OFFLINE is set" in r.stdout


def test_hub_reference_parsing():
    from pop_local.runtime.models import parse_hub_ref

    assert parse_hub_ref("org/repo/file.gguf") == ("org/repo", "file.gguf")
    assert parse_hub_ref("org/repo:sub/file.gguf") == ("org/repo", "sub/file.gguf")
    for bad in ("file.gguf", "org/file.gguf", "org/repo/file.bin"):
        with pytest.raises(ValueError):
            parse_hub_ref(bad)


def test_same_seed_same_importance():
    from pop_local.converter.calibrate import sample_responses
    from pop_local.converter.importance import layer_importance

    model = tiny_llama()
    prompts = [sample(10, s) for s in range(3)]

    def run(seed):
        seqs = sample_responses(model, prompts, 6, seed)
        return seqs, layer_importance(model, arch_spec("llama"), 4, seqs, [10] * 3)

    (s1, i1), (s2, i2), (s3, _) = run(7), run(7), run(8)
    assert s1 == s2 and i1.prefill == i2.prefill and i1.decode == i2.decode
    assert s1 != s3
    assert all(len(s) > 10 for s in s1)


def test_calibration_prompt_files(tmp_path):
    from pop_local.converter.calibrate import load_dataset_prompts, load_prompts
    from pop_local.converter.calibration_data import BUILTIN_PROMPTS
    from pop_local.errors import PopError

    assert load_prompts(None) == BUILTIN_PROMPTS and len(BUILTIN_PROMPTS) >= 20
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n\n{"instruction": "b"}\n{"text": "c"}\n')
    assert load_prompts(str(j)) == ["a", "b", "c"]
    t = tmp_path / "p.txt"
    t.write_text("first prompt\nstill first\n\nsecond\n")
    assert load_prompts(str(t)) == ["first prompt\nstill first", "second"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(PopError, match="bad.jsonl:2: not JSON"):
        load_prompts(str(bad))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"answer": "a"}\n')
    with pytest.raises(PopError, match='nofield.jsonl:1: expected an object'):
        load_prompts(str(nofield))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(PopError, match="no prompts"):
        load_prompts(str(empty))
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(PopError, match="needs the datasets library"):
            load_dataset_prompts("some/dataset", 4)


@pytest.mark.slow
def test_hf_model_calibrates_on_another_checkpoint(smollm2, tmp_path):
    """--hf-model: importance comes from the named transformers checkpoint (here a tiny random llama
    with SmolLM2's tokenizer and layer count), the GGUF only supplies the file to copy."""
    folder, name = os.path.split(smollm2)
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=30,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    transformers.LlamaForCausalLM(cfg).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    out = tmp_path / "m.pop.gguf"
    r = CliRunner().invoke(cli, ["convert", smollm2, "-o", str(out), "--hf-model", str(ckpt), "--samples", "2",
                                 "--seq-len", "32", "--strategy", "score"])
    assert r.exit_code == 0, r.output
    meta = read_pop_metadata(out)
    assert meta.extra[keys.CALIB_SOURCE] == str(ckpt) and meta.extra[keys.STRATEGY] == "score"
    assert len(meta.skip_layers) == 10 and len(meta.extra[keys.IMPORTANCE_DECODE]) == 30
